"""The catalog index: what `read_entries` found in each scenario module,
kept on disk and reused while the module's file is unchanged, and the
modules installed plugins name, reused while sys.path is unchanged.

Parsing every scenario source with `ast` is most of what `ctxlab list` does
once the interpreter is up, and grows with the catalog (a `--scenarios`
directory of hundreds).  A module is read again when its size or
modification time (nanoseconds) differs from the indexed ones, so a scenario
edited in place shows at once, bundled or the user's own.  The index is a
convenience: when it cannot be read or written, modules are parsed as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ctxlab import __version__

# Entries are stored as their fields; a ctxlab with other fields reads none.
FORMAT = f"ctxlab {__version__} index 4"


def cache_dir() -> Path:
    """ctxlab's cache: $CTXLAB_CACHE, else $XDG_CACHE_HOME/ctxlab or ~/.cache/ctxlab."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("CTXLAB_CACHE", Path(base) / "ctxlab"))


class Index:
    """Indexed entry fields per module path; `save()` writes it back when a
    module had to be read."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "catalog-index.json"
        self.changed = False
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            document = {}
        usable = isinstance(document, dict) and document.get("format") == FORMAT
        self.modules: dict[str, list] = document.get("modules", {}) if usable else {}
        self.plugin_modules: dict[str, list] = document.get("plugins", {}) if usable else {}

    def entries(self, module: Path, read: Callable[[Path], list[dict]]) -> list[dict]:
        """The entry fields of `module`: indexed while its file is unchanged,
        else `read(module)` (whose errors propagate, and are never indexed)."""
        try:
            status = module.stat()
        except OSError:
            return read(module)  # let the reader say what is wrong
        key, stamp = str(module.resolve()), [status.st_mtime_ns, status.st_size]
        indexed = self.modules.get(key)
        if indexed is not None and indexed[0] == stamp:
            return indexed[1]
        fields = read(module)
        self.modules[key] = [stamp, fields]
        self.changed = True
        return fields

    def plugins(self, find: Callable[[], list[Path]]) -> list[Path]:
        """The modules plugins name (`find()`), found again when a directory
        on sys.path changed: installing, upgrading or removing a distribution
        adds or removes its .dist-info directory there.  Kept per Python
        environment, since each has its own plugins."""
        stamp = [[entry, _mtime(entry)] for entry in sys.path]
        indexed = self.plugin_modules.get(sys.prefix)
        if indexed is not None and indexed[0] == stamp and all(map(os.path.exists, indexed[1])):
            return [Path(path) for path in indexed[1]]
        paths = find()
        self.plugin_modules[sys.prefix] = [stamp, [str(path) for path in paths]]
        self.changed = True
        return paths

    def save(self) -> None:
        """Write the index if it changed; replace the file whole or not at all."""
        if not self.changed:
            return
        # Modules deleted since (a generated directory, an old checkout) go.
        self.modules = {key: value for key, value in self.modules.items() if os.path.exists(key)}
        text = json.dumps({"format": FORMAT, "modules": self.modules, "plugins": self.plugin_modules})
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError:  # a cache: without it the next run reads the modules again
            with contextlib.suppress(OSError):  # CTXLAB_CACHE may be a file: no temporary there either
                temporary.unlink()


def _mtime(entry: str) -> int | None:
    try:
        return os.stat(entry or ".").st_mtime_ns
    except OSError:
        return None
