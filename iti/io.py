"""Atomic file writes and a safetensors writer that fills tensors in place.

Why in place: activation files can be larger than what we want to hold twice in memory, and a resumable
collection needs to write rows into a file as batches finish. Safetensors is a plain layout (header length,
JSON header, raw little-endian bytes), so we pre-allocate it and write rows at their byte offsets
(:class:`SafetensorsRowWriter`). Rows go through ``pwrite`` rather than a writable memory map so that what has
been written sits in the page cache, not in the collecting process's resident set.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

_ST_DTYPES: dict[np.dtype, str] = {
    np.dtype("float16"): "F16",
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_NP_DTYPES: dict[str, np.dtype] = {v: k for k, v in _ST_DTYPES.items()}


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_plain(path: Path) -> int:
    """Create ``path`` (which must not exist) as a plain ``open(path, "w")`` would, and return its permission bits
    (0o666 less the umask, or whatever default ACLs of the directory give)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)


def plain_file_mode(directory: str | os.PathLike) -> int:
    """The permission bits a plain ``open(path, "w")`` gives a new file in ``directory`` now."""
    directory = Path(directory)
    for _ in range(100):
        probe = directory / f".iti-mode-probe.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            mode = _create_plain(probe)
        except FileExistsError:
            continue
        probe.unlink()
        return mode
    raise FileExistsError(f"could not create a probe file in {directory}")


def plain_dir_mode(directory: str | os.PathLike) -> int:
    """The permission bits a plain ``os.mkdir`` gives a new directory in ``directory`` now."""
    for _ in range(100):
        probe = Path(directory) / f".iti-mode-probe.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.mkdir(probe)
        except FileExistsError:
            continue
        try:
            return probe.stat().st_mode & 0o7777
        finally:
            probe.rmdir()
    raise FileExistsError(f"could not create a probe directory in {directory}")


def set_plain_modes(directory: str | os.PathLike, paths: Any = None, *, dirs: bool = False) -> None:
    """Give files written by another library's writer (safetensors' ``save_file`` and Hugging Face's
    ``save_pretrained`` create private 0600 files) the mode a plain ``open`` would have given: ``paths``, or every
    file under ``directory``; with ``dirs``, ``directory`` and the directories under it get a plain mkdir's mode
    (for a directory made by ``tempfile.mkdtemp``, 0700)."""
    directory = Path(directory)
    mode = plain_file_mode(directory)
    files = [Path(p) for p in paths] if paths is not None else [p for p in directory.rglob("*") if p.is_file()]
    for p in files:
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                os.chmod(p, mode)
    if dirs:
        dmode = plain_dir_mode(directory.parent)
        for d in [directory, *(p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink())]:
            with contextlib.suppress(OSError):
                os.chmod(d, dmode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The result gets the mode a plain ``open(path, "w")`` gives (umask respected), also when the writer replaced
    the temporary file by its own (safetensors' ``save_file`` writes a private file and renames it into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp_path = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            mode = _create_plain(tmp_path)  # not mkstemp: that makes the file private (0600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        yield tmp_path
        if (tmp_path.stat().st_mode & 0o7777) != mode:
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                            metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays, or torch tensors (kept in their dtype, bfloat16 included), as one safetensors file,
    atomically and with the mode of a plain write: the one place the library calls safetensors' ``save_file``."""
    values = list(tensors.values())
    if values and not isinstance(values[0], np.ndarray):
        from safetensors.torch import save_file as save_torch

        payload = {k: v.detach().contiguous() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_torch(payload, str(tmp), metadata=dict(metadata) if metadata else None)
        return
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text so that readers see the old file or the complete new one, never a partial write."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` atomically as JSON (indent 1, keys in insertion order) with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def atomic_save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib ``fig`` as a PNG atomically (a half-written figure never replaces a good one) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


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


def disk_full_error(path: str | os.PathLike, needed: int | None = None):
    """The :class:`~iti.errors.DiskFullError` for a write to ``path``: the file system's free space there and,
    when known, the bytes the write needs."""
    import shutil

    from .errors import DiskFullError

    where = Path(path).resolve()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = f"needs {needed / 1e6:,.1f} MB, " if needed is not None else ""
    return DiskFullError(f"no space left on the device holding {where}: the write {need}{free / 1e6:,.1f} MB are free "
                         "there; free space, or write the output (--output_dir, $ITI_CACHE) to another disk")


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
    total = 8 + len(raw) + offset
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(total)
        if hasattr(os, "posix_fallocate") and offset:
            try:  # reserve the blocks now, so a full disk fails here with the size, not half-way through a run
                os.posix_fallocate(f.fileno(), 0, total)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise disk_full_error(path, total) from None
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate: stay sparse
                    raise


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


def read_checked_tensors(directory: str | os.PathLike, meta_file: str, tensor_file: str, fmt: str,
                         what: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON record and the tensors of a saved value (an intervention, a steering value): the record must name
    ``fmt`` as its format and the tensor file must have the sha256 it records; anything else is a
    :class:`~iti.errors.FeatureFileError` naming the file."""
    from safetensors.numpy import load_file

    from .errors import FeatureFileError

    directory = Path(directory)
    meta = read_json(directory / meta_file, what)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise FeatureFileError(f"{directory / meta_file} is not an {fmt.replace('-', ' ')} file")
    tensor_path = directory / tensor_file
    read_safetensors_header(tensor_path)
    if sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise FeatureFileError(f"{tensor_path} is corrupt: its sha256 differs from the one in {meta_file}")
    return meta, load_file(str(tensor_path))


def open_safetensors_memmap(path: str | os.PathLike, name: str, mode: Literal["r", "r+", "c"] = "r") -> np.memmap:
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


class SafetensorsRowWriter:
    """Writes rows (first-axis slices) of one tensor of a pre-allocated safetensors file at their offsets.

    ``flush`` makes the rows written so far durable (fsync) before a caller records them as done."""

    def __init__(self, path: str | os.PathLike, name: str) -> None:
        from .errors import FeatureFileError

        self.path = Path(path)
        start, header = read_safetensors_header(self.path)
        if name not in header:
            raise FeatureFileError(f"{self.path} has no tensor named {name!r}")
        info = header[name]
        self.dtype = _NP_DTYPES[info["dtype"]]
        self.shape = tuple(info["shape"])
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._start = start + info["data_offsets"][0]
        self._fd = os.open(self.path, os.O_RDWR)

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[j]`` as row ``positions[j]``; consecutive positions go out in one call."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape != (len(positions), *self.shape[1:]):
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit {len(positions)} rows of {self.shape[1:]}")
        if len(positions) and (positions.min() < 0 or positions.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row positions must lie in 0..{self.shape[0] - 1}")
        order = np.argsort(positions, kind="stable")
        pos, data = positions[order], rows[order]
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        for run_start, run_end in zip([0, *breaks], [*breaks, len(pos)]):
            buf = data[run_start:run_end].data.cast("B")
            offset = self._start + int(pos[run_start]) * self.row_bytes
            while buf:
                n = os.pwrite(self._fd, buf, offset)
                buf, offset = buf[n:], offset + n

    def flush(self) -> None:
        """fsync the file."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsRowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
