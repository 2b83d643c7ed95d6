"""Content fingerprints of what determines a result: checkpoint files, loaded weights and settings.

Why: a result may be reused (a finished validation row, a feature directory, a cached generation) only when
everything that produced it is the same. Names are not enough: two checkpoints can share a directory name, a
checkpoint can be overwritten in place, a subset run and a full run can share an output directory. So reuse is
keyed by content: a SHA-256 of the checkpoint's files (computed once per file and remembered by path, size and
modification time, so a 14 GB model is hashed once, not on every run), of the loaded tensors when the model did
not come from a local directory, and of the settings as canonical JSON. When a stored fingerprint differs,
:func:`describe_difference` says what differs in words.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .io import atomic_write_json, sha256_file
from .paths import cache_dir

#: Files whose bytes determine a checkpoint's outputs (weights, their index, the config, the tokenizer).
CHECKPOINT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "*.index.json", "config.json", "tokenizer.json",
                       "tokenizer.model", "tokenizer_config.json", "generation_config.json")


def canonical_json(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON."""
    return hashlib.sha256(canonical_json(dict(settings)).encode()).hexdigest()


def _hash_cache_path() -> Path:
    return cache_dir() / "fingerprints" / "file_sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of one file, remembered by (absolute path, size, mtime): a changed file is hashed again."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    store = _hash_cache_path()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(p))
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = sha256_file(p)
    known[str(p)] = {"stamp": stamp, "sha256": digest}
    try:
        atomic_write_json(store, known)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """The files of a checkpoint directory that determine its outputs, sorted by name."""
    d = Path(directory)
    found = {f for pattern in CHECKPOINT_PATTERNS for f in d.glob(pattern) if f.is_file()}
    return sorted(found)


def checkpoint_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 over the names and contents of a checkpoint directory's weight, config and tokenizer files."""
    files = checkpoint_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory} holds no checkpoint files ({', '.join(CHECKPOINT_PATTERNS)})")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def state_fingerprint(model: Any, dtype: Any = None) -> str:
    """SHA-256 over every tensor of the model's state dict (name, dtype, shape and bytes); with ``dtype`` (a torch
    dtype), of its floating-point tensors cast to it, as a copy of the model loaded in that dtype would hash."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu")
        t = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """What the model's weights are: ``ckpt:<sha>`` of the local checkpoint it was loaded from, else ``state:<sha>``
    of its loaded tensors. Edits made in memory after loading (a baked bias) are not seen by the checkpoint
    route: key those by the edit's own fingerprint as well."""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if source and Path(source).is_dir() and checkpoint_files(source):
        return "ckpt:" + checkpoint_fingerprint(source)
    return "state:" + state_fingerprint(model)


def compute_dtype(model: Any) -> str:
    """The dtype the model computes in, by name (``float32``, ``bfloat16``): that of its first floating-point
    parameter (what ``--dtype`` resolved to when it loaded)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), next(model.parameters()).dtype)
    return str(dtype).removeprefix("torch.")


def weights_match(recorded: str | None, recorded_dtype: str | None, model: Any, current: str | None = None) -> bool | None:
    """Whether ``model`` has the weights a fingerprint was recorded from (:func:`model_fingerprint`, by a model that
    computed in ``recorded_dtype``); None when nothing was recorded. A ``state:`` fingerprint recorded in another
    dtype is compared with this model's tensors cast to that dtype (the same checkpoint loaded in float32 and in
    float16 matches); a ``ckpt:`` one with a model not loaded from a checkpoint directory cannot match.
    ``current``: this model's :func:`model_fingerprint`, when already computed."""
    if not recorded:
        return None
    current = current or model_fingerprint(model)
    if recorded == current:
        return True
    if recorded.startswith("state:") and recorded_dtype and (current.startswith("ckpt:") or recorded_dtype != compute_dtype(model)):
        import torch

        dtype = getattr(torch, str(recorded_dtype), None)
        if isinstance(dtype, torch.dtype):
            return recorded == "state:" + state_fingerprint(model, dtype)
    return False


def describe_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """The settings that differ, in words: ``max_questions 4 -> 8; preset 'qa' -> 'lm-eval'``. A key ending in
    ``_sha256`` holds a content hash: it is reported as ``<what>: content differs``, not as two hashes."""
    parts = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if canonical_json(a) != canonical_json(b):
            if key.endswith("_sha256"):
                parts.append(f"{key[: -len('_sha256')]}: content differs")
            else:
                parts.append(f"{key} {a!r} -> {b!r}")
    return "; ".join(parts) if parts else "nothing"
