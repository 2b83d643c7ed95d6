"""One writer per output directory: a second process is refused at once instead of interleaving its files.

Why a lock file with ``flock``: the kernel drops the lock when the holder exits for any reason (kill -9 included),
so a crashed run never leaves a stale lock behind that needs deleting by hand; the file keeps the holder's pid
only to say who holds it. A clean exit removes the file (while holding the lock; a process that opened the old
file meanwhile notices that it is gone and locks the new one).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputLockedError

LOCK_NAME = ".iti.lock"


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, what: str = "output directory", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing; ``name`` is the lock file inside it, one per
    output when several outputs share a folder) for the block; raise :class:`OutputLockedError` at once if
    another process holds it."""
    import fcntl

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLockedError(f"{what} {d} is being written by another process (pid {holder}); wait for it to "
                                    "finish or stop it, or choose another output directory") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there now
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield d
    finally:
        path.unlink(missing_ok=True)  # while still holding it, so no lock file is left behind
        os.close(fd)  # closing the descriptor releases the lock
