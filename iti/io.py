"""Atomic file writes and a safetensors writer that fills tensors in place.

Why in place: activation files can be larger than what we want to hold twice in memory, and a resumable
collection needs to write rows into a file as batches finish. Safetensors is a plain layout (header length,
JSON header, raw little-endian bytes), so we pre-allocate it and memory-map the data region.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

_ST_DTYPES = {
    np.dtype("float16"): "F16",
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text so that readers see the old file or the complete new one, never a partial write."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` atomically as JSON (indent 1, keys in insertion order) with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or corrupt file into an error that names it."""
    from .errors import FeatureFileError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatureFileError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatureFileError(f"{what} {path} is not valid JSON (truncated or corrupt?): {e}") from None


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in blocks (4 MiB by default) so large files are never loaded whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def allocate_safetensors(
    path: str | os.PathLike,
    specs: Mapping[str, tuple[np.dtype | str, tuple[int, ...]]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Create a zero-filled safetensors file with the given tensor names, dtypes and shapes."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _ST_DTYPES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def read_safetensors_header(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """Return (data start offset, header) and check that the file is as long as the header says."""
    from .errors import FeatureFileError

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FeatureFileError(f"{path} is truncated: no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size, 100 * 1024 * 1024):
                raise FeatureFileError(f"{path} is corrupt: header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise FeatureFileError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatureFileError(f"{path} is corrupt: unreadable safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        raise FeatureFileError(f"{path} is truncated: {size} bytes on disk, the header needs {8 + n + end}")
    return 8 + n, header


def open_safetensors_memmap(path: str | os.PathLike, name: str, mode: str = "r") -> np.memmap:
    """Memory-map one tensor of a safetensors file (``mode='r+'`` to fill it in place)."""
    from .errors import FeatureFileError

    start, header = read_safetensors_header(path)
    if name not in header:
        raise FeatureFileError(f"{path} has no tensor named {name!r} (has: {sorted(k for k in header if k != '__metadata__')})")
    info = header[name]
    shape = tuple(info["shape"])
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=_NP_DTYPES[info["dtype"]])  # type: ignore[return-value]
    return np.memmap(path, dtype=_NP_DTYPES[info["dtype"]], mode=mode, offset=start + info["data_offsets"][0], shape=shape)
