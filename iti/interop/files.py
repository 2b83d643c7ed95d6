"""Writing another tool's files all at once: a directory or a set of files appears whole, or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputExistsError
from ..io import fsync_dir, set_plain_modes


def refuse_existing(paths: list[Path], force: bool) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists, unless ``force``."""
    if force:
        return
    for p in paths:
        if p.exists():
            raise OutputExistsError(f"{p} already exists; pass force=True (--force) to replace it, or choose another output")


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out``; on success it replaces ``out`` in one rename, on any
    error it is removed and ``out`` is left as it was. An existing ``out`` is refused unless ``force``."""
    out = Path(out)
    refuse_existing([out], force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.urandom(6).hex()}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        set_plain_modes(tmp, dirs=True)
        for p in tmp.iterdir():
            if p.is_file():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(paths: list[Path], *, force: bool = False) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of ``paths``; when the block succeeds every one is renamed into place
    (a set of files written together, such as honest_llama's ``.npy`` arrays), else all are removed."""
    refuse_existing(paths, force)
    tmps = []
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmps.append(p.parent / f".{p.name}.{os.urandom(6).hex()}.tmp")
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        set_plain_modes(tmps[0].parent, tmps)
        for tmp, p in zip(tmps, paths):
            os.replace(tmp, p)
        for parent in {p.parent for p in paths}:
            fsync_dir(parent)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
