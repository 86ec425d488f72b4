"""The catalog index: what `read_entries` found in each scenario module,
kept on disk and reused while the module's file is unchanged, and the
modules installed plugins name, reused while sys.path is unchanged.

Parsing every scenario source with `ast` is most of what `ctxlab list` does
once the interpreter is up, and grows with the catalog (a `--scenarios`
directory of hundreds).  A module is read again when its size or
modification time (nanoseconds) differs from the indexed ones, so a scenario
edited in place shows at once, bundled or the user's own.

The index is one small file per directory of scenarios (and one per Python
environment for its plugins), so a command reads only the directories it
lists: a single file for every directory ever listed grew with each
`--scenarios` a user or a test suite ever passed, until reading it cost
more than parsing the bundled scenarios.  The index is a convenience: when
a file cannot be read or written, modules are parsed as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from ctxlab import __version__

# Entries are stored as their fields; a ctxlab with other fields reads none.
FORMAT = f"ctxlab {__version__} index 6"
STALE = 30 * 24 * 3600  # seconds a directory's file is kept unwritten


def cache_dir() -> Path:
    """ctxlab's cache: $CTXLAB_CACHE, else $XDG_CACHE_HOME/ctxlab or
    ~/.cache/ctxlab.  An empty CTXLAB_CACHE counts as unset, and a relative
    XDG_CACHE_HOME is ignored, as the XDG spec asks: either would put the
    cache in whatever directory ctxlab ran in."""
    if chosen := os.environ.get("CTXLAB_CACHE"):
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "ctxlab"


class Index:
    """Indexed entry fields per module, read and written one directory's
    file at a time; `save()` writes back the files of directories where a
    module had to be read."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "catalog-index"
        self.directories: dict[str, dict[str, Any]] = {}  # directory -> module file name -> [stamp, fields]
        self.changed: set[str] = set()

    def file(self, kind: str, key: str) -> Path:
        """Where the index of `key` (a directory, or a Python prefix for
        `kind` "plugins") is kept."""
        # zlib's checksums, not hashlib (whose import alone costs ~3 ms of a
        # 150 ms `ctxlab list`): two keys sharing a name would only take
        # turns at one file, since each file says whose it is.
        raw = key.encode(errors="surrogateescape")
        return self.root / f"{kind}-{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}.json"

    def entries(self, module: Path, read: Callable[[Path], list[dict]]) -> list[dict]:
        """The entry fields of `module`: indexed while its file is unchanged,
        else `read(module)` (whose errors propagate, and are never indexed)."""
        try:
            status = module.stat()
        except OSError:
            return read(module)  # let the reader say what is wrong
        resolved = module.resolve()
        directory, stamp = str(resolved.parent), [status.st_mtime_ns, status.st_size]
        modules = self._modules(directory)
        indexed = modules.get(resolved.name)
        if isinstance(indexed, list) and len(indexed) == 2 and indexed[0] == stamp:
            return indexed[1]
        fields = read(module)
        modules[resolved.name] = [stamp, fields]
        self.changed.add(directory)
        return fields

    def plugins(self, find: Callable[[], list[Path]]) -> list[Path]:
        """The modules plugins name (`find()`), found again when a directory
        on sys.path changed: installing, upgrading or removing a distribution
        adds or removes its .dist-info directory there.  Kept per Python
        environment, since each has its own plugins."""
        stamp = [[entry, _mtime(entry)] for entry in sys.path]
        path = self.file("plugins", sys.prefix)
        indexed = self._read(path, sys.prefix) or {}
        known = indexed.get("paths")
        if indexed.get("stamp") == stamp and isinstance(known, list) and all(map(os.path.exists, known)):
            return [Path(path) for path in known]
        paths = find()
        self._write(path, {"key": sys.prefix, "stamp": stamp, "paths": [str(path) for path in paths]})
        return paths

    def save(self) -> None:
        """Write back each directory's file that changed (modules deleted
        since go); each is replaced whole or not at all.  Making a new file
        also removes those not written for STALE seconds: the directories
        of test runs and benchmarks come and go, and nothing else would."""
        new = False
        for directory in self.changed:
            modules = {name: value for name, value in self.directories[directory].items()
                       if os.path.exists(os.path.join(directory, name))}  # fmt: skip
            path = self.file("scenarios", directory)
            new = new or not path.exists()
            self._write(path, {"key": directory, "modules": modules})
        self.changed.clear()
        if new:
            self._remove_stale()

    def _remove_stale(self) -> None:
        # A directory still in use whose file goes is only parsed again.
        oldest = time.time() - STALE
        try:
            with os.scandir(self.root) as found:
                for entry in found:
                    if entry.name.startswith("scenarios-") and entry.stat().st_mtime < oldest:
                        os.unlink(entry.path)
        except OSError:
            pass

    def _modules(self, directory: str) -> dict[str, Any]:
        if directory not in self.directories:
            indexed = self._read(self.file("scenarios", directory), directory) or {}
            modules = indexed.get("modules")
            self.directories[directory] = modules if isinstance(modules, dict) else {}
        return self.directories[directory]

    def _read(self, path: Path, key: str) -> dict[str, Any] | None:
        """The document at `path` if it is this ctxlab's index of `key`."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        usable = isinstance(document, dict) and document.get("format") == FORMAT and document.get("key") == key
        return document if usable else None

    def _write(self, path: Path, document: dict[str, Any]) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"format": FORMAT, **document}), encoding="utf-8")
            os.replace(temporary, path)
        except OSError:  # a cache: without it the next run reads the modules again
            with contextlib.suppress(OSError):  # CTXLAB_CACHE may be a file: no temporary there either
                temporary.unlink()


def _mtime(entry: str) -> int | None:
    try:
        return os.stat(entry or ".").st_mtime_ns
    except OSError:
        return None
