"""Writing the files a user names (`-o`, `--junit`, snapshots) as Unix tools do.

A regular file (or a path not there yet) is replaced atomically: the text
goes to a temporary file beside it, which is renamed over it, so a reader
never sees half a report.  The new file gets the mode the user's umask
gives (or keeps the mode of the file it replaces); a read-only file is
refused, even for root, who could otherwise write anything.

Anything else is written through, never replaced: a device (`/dev/null`,
`/dev/full`), a FIFO, `/dev/stdout`.  Renaming over those would turn
`/dev/null` into a regular file for the whole machine (issue 13).  A
symlink is followed: its target is what gets written.  `-` is stdout, as
for most Unix tools: `ctxlab snapshot -o - | jq`.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from ctxlab.errors import OutputFileError as OutputError
from ctxlab.terminal import reader_gone


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _mode(path: Path) -> int | None:
    """The mode of what `path` names (following links), None if nothing."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def is_stdout_name(path: Path) -> bool:
    return str(path) == "-"


def shown(path: Path) -> str:
    """`path` as messages name it."""
    return "stdout" if is_stdout_name(path) else str(path)


def check_writable(path: Path) -> None:
    """Refuse a path that cannot be written, before any work is done.

    Devices and FIFOs are not opened here: opening a FIFO waits for a reader."""
    if is_stdout_name(path):
        return
    mode = _mode(path)
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {path}: it is a directory")
    if _written_through(path, mode):
        return
    if mode is not None and not mode & 0o222:
        raise OutputError(f"cannot write {path}: it is read-only")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        # A dangling symlink's target is what would be written: name its directory.
        where = path.parent if path.parent.resolve() == parent else parent
        raise OutputError(f"cannot write {path}: {where} is not a writable directory")


def same_regular_file(path: Path, other: Path) -> bool:
    """Do both name one regular file (through links, or as different
    spellings)?  Devices are left out: `/dev/stdin` and `/dev/stdout` may be
    one terminal."""
    try:
        return stat.S_ISREG(path.stat().st_mode) and os.path.samefile(path, other)
    except OSError:  # one of them is not there (an output not written yet)
        return False


def _written_through(path: Path, mode: int | None) -> bool:
    # /dev/stdout redirected to a file is a regular file too, but replacing
    # it would unlink the file the shell opened for us.
    special = str(path.absolute()).startswith(("/dev/", "/proc/"))
    return mode is not None and (special or not stat.S_ISREG(mode))


def write(path: Path, text: str) -> None:
    """Write all of `text` to `path`, or raise OutputError and leave the
    file as it was."""
    if is_stdout_name(path):
        _write_stdout(text)
        return
    check_writable(path)
    mode = _mode(path)
    try:
        if _written_through(path, mode):
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text)  # close() flushes: ENOSPC surfaces here
        else:
            _replace(path.resolve(), text, mode)
    except BrokenPipeError:
        if _is_stdout(path):  # `ctxlab snapshot -o /dev/stdout | head -1`: as when stdout is printed to
            raise reader_gone() from None
        raise OutputError(f"cannot write {path}: Broken pipe") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def _write_stdout(text: str) -> None:
    # As bytes, like a file: a stream switched to ASCII for an old terminal
    # would replace what a JUnit file says in other scripts.  A stdout that
    # cannot take it (`> /dev/full`) fails as any print to it does: main()
    # says so and discards what stdout still buffers.
    sys.stdout.flush()  # what was printed before comes first
    try:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise reader_gone() from None


def _is_stdout(path: Path) -> bool:
    try:
        named, stdout = os.stat(path), os.fstat(1)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (stdout.st_dev, stdout.st_ino)


def _umask() -> int:
    # The umask can only be read by setting it; ctxlab runs no threads here.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace(path: Path, text: str, mode: int | None) -> None:
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates 0600: give the file the mode a plain
        # open() would have (or the mode of the file it replaces).
        os.chmod(handle.name, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
