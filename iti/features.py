"""Activation features on disk: resumable, atomic, shardable collection, and loading with checks.

One collection writes a directory ``<out>/<model>_<dataset>/``::

    manifest.json           what was collected, how, and the question id of every row
    head_wise.safetensors   "head_wise"  [N, L, H, D]   (float16 by default)
    labels.safetensors      "labels"     [N]            (1 = true answer)
    layer_wise.safetensors  "layer_wise" [N, L, hidden] (residual stream after each block; optional)

Work in progress lives in ``<name>.partial/`` with a ``progress.json`` listing finished batches; rows are
written in place into pre-allocated safetensors files, so an interrupted run resumes where it stopped and
ends byte-identical to an uninterrupted one. The partial directory is renamed into place only when complete.
A shard ``i/n`` takes every n-th batch of the same global batch plan, so merged shards equal a single run.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from ._version import __version__
from .architectures import HeadGeometry, ModelLayout, model_layout
from .batching import check_context, encode_prompts, pad_token_id, plan_batches
from .collect import iter_last_token_batches
from .errors import EmptyInputError, FeatureFileError, OutputExistsError
from .io import (
    SafetensorsRowWriter,
    allocate_safetensors,
    atomic_save_safetensors,
    atomic_write_json,
    fsync_dir,
    open_safetensors_memmap,
    read_json,
    read_safetensors_header,
    sha256_file,
)
from .locks import output_lock
from .paths import features_dir

FORMAT = "iti-features"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
_SHARD_RE = re.compile(r"^(?P<stem>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)$")


@dataclass
class FeatureSet:
    """Loaded features. ``head_wise`` and ``layer_wise`` are read-only memory maps unless loaded eagerly.
    ``group_ids``: the group of each row (rows of one group stay on one side of a split: a TruthfulQA question, a
    CEBaB review); stored under the manifest's readable key ``question_ids``, also this object's name for them."""

    path: Path
    manifest: dict[str, Any]
    head_wise: np.ndarray
    labels: np.ndarray
    group_ids: np.ndarray
    layer_wise: np.ndarray | None

    @property
    def question_ids(self) -> np.ndarray:
        """The group ids under TruthfulQA's name for them (and the manifest's key)."""
        return self.group_ids

    @property
    def geometry(self) -> HeadGeometry:
        """Head geometry of the model the features came from, as recorded in the manifest."""
        return HeadGeometry.from_dict(self.manifest["model"]["geometry"])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PromptSet:
    """The rows a collection runs on: a prompt, a label and a group id per row.

    ``question_ids`` are the group ids that keep related rows together when data are split (TruthfulQA's question
    index in its mc order, a CEBaB review's index, ...); the name is kept because it is the manifest's key.
    ``prompt_format`` and ``meta`` describe how the prompts were made and go into the features manifest."""

    name: str
    prompts: list[str]
    labels: np.ndarray
    question_ids: np.ndarray
    prompt_format: str
    categories: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.question_ids = np.asarray(self.question_ids, dtype=np.int64)
        n = len(self.prompts)
        if len(self.labels) != n or len(self.question_ids) != n:
            raise ValueError(f"{n} prompts but {len(self.labels)} labels and {len(self.question_ids)} question ids")

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        """sha256 over prompts, labels and question ids: identifies the exact rows of a collection."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(p.encode())
            h.update(b"\0")
        h.update(self.labels.tobytes())
        h.update(self.question_ids.tobytes())
        return h.hexdigest()


def output_name(model_name: str, dataset: str, shard: tuple[int, int] | None = None) -> str:
    """Directory name of a collection, ``<model>_<dataset>``, with ``.shard-i-of-n`` appended for one shard of
    several."""
    stem = f"{model_name}_{dataset}"
    return stem if shard is None or shard[1] == 1 else f"{stem}.shard-{shard[0]}-of-{shard[1]}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; anything else raises the ``--shard`` InvalidOptionError (a ValueError)."""
    from .options import check_shard

    return check_shard(text)


def _versions() -> dict[str, str]:
    import transformers

    return {"iti": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _job_description(model_name: str, model: torch.nn.Module, layout: ModelLayout, ps: PromptSet, *, dtype: str, batch_size: int,
                     layer_wise: bool) -> dict[str, Any]:
    from .fingerprint import model_fingerprint

    compute_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {
        "model": {"name": model_name, "model_type": layout.model_type, "geometry": layout.geometry.to_dict(), "compute_dtype": compute_dtype,
                  # the weights, not the name: two checkpoints named runs/a/final and runs/b/final differ here
                  "weights_sha256": model_fingerprint(model)},
        "dataset": {
            "name": ps.name,
            "prompt_format": ps.prompt_format,
            "num_rows": len(ps),
            "prompts_sha256": ps.fingerprint(),
            **{k: v for k, v in ps.meta.items() if k != "source"},
        },
        "positions": "last",
        "dtype": dtype,
        "batch_size": int(batch_size),
        "layer_wise": bool(layer_wise),
    }


def _job_id(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def _flat(job: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"name": ...}}`` -> ``{"model.name": ...}`` (one level), for differences in words."""
    out: dict[str, Any] = {}
    for key, value in job.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _refuse(path: Path, what: str, existing: dict[str, Any] | None, wanted: dict[str, Any]) -> OutputExistsError:
    from .fingerprint import describe_difference

    if existing is None:
        why = "a job this version cannot compare (no record of its settings)"
    else:
        keys = set(_flat(wanted))
        why = f"a different job ({describe_difference({k: v for k, v in _flat(existing).items() if k in keys}, _flat(wanted))})"
    return OutputExistsError(
        f"{path} already holds {what} of {why}; pass force=True (--force) to replace it, or choose another output directory"
    )


def _tensor_specs(g: HeadGeometry, n: int, dtype: np.dtype, layer_wise: bool) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {"head_wise": (dtype, (n, g.num_layers, g.num_heads, g.head_dim))}
    if layer_wise:
        specs["layer_wise"] = (dtype, (n, g.num_layers, g.hidden_size))
    return specs


def write_features(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_set: PromptSet,
    out_dir: str | os.PathLike | None = None,
    *,
    model_name: str,
    batch_size: int = 32,
    dtype: str = "float16",
    layer_wise: bool = True,
    shard: tuple[int, int] | None = None,
    force: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Collect last-token head activations of ``prompt_set`` into ``out_dir`` and return the output directory.

    An existing complete output of the same job is returned as is; one of a different job is refused unless
    ``force``. An interrupted run resumes from its ``.partial`` directory. ``shard=(i, n)`` collects every
    n-th batch only; join the shards with :func:`merge_shards`. ``on_batch(done, total)`` is called after each
    batch is safely on disk.
    """
    if len(prompt_set) == 0:
        raise EmptyInputError(f"prompt set {prompt_set.name!r} is empty: nothing to collect")
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    shard = shard or (0, 1)
    out_root = Path(out_dir) if out_dir is not None else features_dir()
    final = out_root / output_name(model_name, prompt_set.name, shard)
    # one collection per output at a time: a second process is refused before it touches the .partial files
    with output_lock(out_root, f"features output {final.name} in", name=f".{final.name}.lock"):
        return _write_features(model, tokenizer, prompt_set, final, model_name=model_name, batch_size=batch_size,
                               np_dtype=np_dtype, layer_wise=layer_wise, shard=shard, force=force, progress=progress,
                               on_batch=on_batch)


def _write_features(model, tokenizer, prompt_set: PromptSet, final: Path, *, model_name: str, batch_size: int,
                    np_dtype: np.dtype, layer_wise: bool, shard: tuple[int, int], force: bool, progress: bool,
                    on_batch: Callable[[int, int], None] | None) -> Path:
    partial = final.with_name(final.name + ".partial")
    layout = model_layout(model)  # resolved once, passed to everything below
    job = _job_description(model_name, model, layout, prompt_set, dtype=np_dtype.name, batch_size=batch_size, layer_wise=layer_wise)
    job_id = _job_id(job)

    if (final / MANIFEST).exists():
        existing = read_json(final / MANIFEST, "features manifest")
        if existing.get("job_id") == job_id and not force:
            print(f"[iti] {final} is already complete for this job; nothing to do", flush=True)
            return final
        if not force:
            raise _refuse(final, "features", existing, job)
    elif final.exists() and not force:
        raise OutputExistsError(f"{final} exists but has no {MANIFEST}; remove it or pass force=True (--force)")

    encoded = encode_prompts(tokenizer, prompt_set.prompts)
    check_context(model, encoded)
    batches = plan_batches([len(r) for r in encoded], batch_size)
    my_batches = list(range(shard[0], len(batches), shard[1]))
    if not my_batches:
        raise EmptyInputError(f"shard {shard[0]}/{shard[1]} gets no batches: {len(batches)} batches in all")
    rows = np.sort(np.concatenate([batches[b] for b in my_batches]))
    row_pos = np.full(len(prompt_set), -1, dtype=np.int64)
    row_pos[rows] = np.arange(len(rows))
    geometry = layout.geometry
    specs = _tensor_specs(geometry, len(rows), np_dtype, layer_wise)

    done: set[int] = set()
    progress_path = partial / PROGRESS
    if partial.exists():
        state = read_json(progress_path, "collection progress file") if progress_path.exists() else None
        if state is not None and state.get("job_id") == job_id and state.get("shard") == list(shard):
            done = set(int(b) for b in state.get("done_batches", []))
            if not force:
                for name in specs:
                    try:
                        read_safetensors_header(partial / f"{name}.safetensors")  # truncated -> clear error
                    except FeatureFileError as e:
                        raise FeatureFileError(f"{e}; the unfinished collection {partial} is damaged: pass force=True "
                                               "(--force) to start it over") from None
        elif not force:
            raise _refuse(partial, "an unfinished collection", None if state is None else state.get("job"), job)
        if force:  # --force always starts over, whatever state the unfinished collection is in
            shutil.rmtree(partial)
            done = set()
    if not partial.exists():
        partial.mkdir(parents=True)
        for name, spec in specs.items():
            allocate_safetensors(partial / f"{name}.safetensors", {name: spec})
        atomic_write_json(progress_path, {"job_id": job_id, "job": job, "shard": list(shard), "done_batches": []})
    elif done:
        print(f"[iti] resuming {partial}: {len(done)}/{len(my_batches)} batches already on disk", flush=True)

    writers = {name: SafetensorsRowWriter(partial / f"{name}.safetensors", name) for name in specs}
    todo = [b for b in my_batches if b not in done]
    bar = tqdm(total=len(rows), initial=sum(len(batches[b]) for b in done), unit="prompt",
               desc=f"{model_name} {prompt_set.name}", disable=not progress)
    try:
        results = iter_last_token_batches(
            model, encoded, [batches[b] for b in todo], pad_id=pad_token_id(tokenizer), residual=layer_wise, layout=layout, progress=bar
        )
        for b, (idx, heads, resid) in zip(todo, results):
            pos = row_pos[idx]
            writers["head_wise"].write(pos, heads.numpy())
            if layer_wise and resid is not None:
                writers["layer_wise"].write(pos, resid.numpy())
            for w in writers.values():
                w.flush()
            done.add(b)
            atomic_write_json(progress_path, {"job_id": job_id, "job": job, "shard": list(shard), "done_batches": sorted(done)})
            if on_batch is not None:
                on_batch(len(done), len(my_batches))
    finally:
        bar.close()
        for w in writers.values():
            w.close()

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "job_id": job_id,
        **job,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "shard": {"index": shard[0], "count": shard[1], "rows": rows.tolist()} if shard[1] > 1 else None,
        "question_ids": prompt_set.question_ids[rows].tolist(),
    }
    if prompt_set.categories is not None:
        manifest["categories"] = [prompt_set.categories[i] for i in rows]
    _finalize(partial, final, manifest, prompt_set.labels[rows], prompt_set.question_ids[rows], specs, force)
    return final


def _finalize(partial: Path, final: Path, manifest: dict[str, Any], labels: np.ndarray, question_ids: np.ndarray,
              specs: dict[str, Any], force: bool) -> None:
    atomic_save_safetensors(partial / "labels.safetensors", {"labels": np.ascontiguousarray(labels, dtype=np.int64),
                                                             "question_ids": np.ascontiguousarray(question_ids, dtype=np.int64)})
    files = {}
    for name, (dt, shape) in {**specs, "labels": (np.dtype("int64"), (len(labels),))}.items():
        path = partial / f"{name}.safetensors"
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = {"file": path.name, "tensor": name, "shape": list(shape), "dtype": np.dtype(dt).name, "sha256": sha256_file(path)}
    manifest["files"] = files
    atomic_write_json(partial / MANIFEST, manifest)
    (partial / PROGRESS).unlink(missing_ok=True)
    if final.exists():
        if not force:
            raise OutputExistsError(f"{final} appeared while collecting; pass force=True to replace it")
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(final.parent)


def write_feature_arrays(final: str | os.PathLike, job: dict[str, Any], prompt_set: PromptSet, head_wise: np.ndarray,
                         layer_wise: np.ndarray | None = None, *, force: bool = False, chunk_rows: int = 1024) -> Path:
    """Write a complete features directory from arrays computed elsewhere (features imported from another tool),
    in the layout :func:`write_features` writes: ``head_wise`` [N, L, H, D] and ``layer_wise`` [N, L, hidden] are
    copied in chunks of rows (memory maps stay memory maps), labels and question ids come from ``prompt_set``.
    ``job`` is the manifest's description of what was collected (``model``, ``dataset``, ``dtype``, ...); it is
    the manifest with the file list, question ids and versions added. Done in ``<final>.partial`` and renamed into
    place only when complete; an existing ``final`` is refused unless ``force``."""
    final = Path(final)
    if final.exists() and not force:
        raise OutputExistsError(f"{final} already exists; pass force=True (--force) to replace it, or choose another output directory")
    n = len(prompt_set)
    if head_wise.shape[0] != n or (layer_wise is not None and layer_wise.shape[0] != n):
        raise FeatureFileError(f"{n} prompts but {head_wise.shape[0]} head_wise rows"
                               + ("" if layer_wise is None else f" and {layer_wise.shape[0]} layer_wise rows"))
    np_dtype = np.dtype(job.get("dtype", head_wise.dtype))
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {"head_wise": (np_dtype, tuple(int(d) for d in head_wise.shape))}
    if layer_wise is not None:
        specs["layer_wise"] = (np_dtype, tuple(int(d) for d in layer_wise.shape))
    partial = final.with_name(final.name + ".partial")
    with output_lock(final.parent, f"features output {final.name} in", name=f".{final.name}.lock"):
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            for name, (dt, shape) in specs.items():
                source = head_wise if name == "head_wise" else cast(np.ndarray, layer_wise)
                allocate_safetensors(partial / f"{name}.safetensors", {name: (dt, shape)})
                with SafetensorsRowWriter(partial / f"{name}.safetensors", name) as out:
                    for start in range(0, n, chunk_rows):
                        rows = np.arange(start, min(n, start + chunk_rows))
                        out.write(rows, np.asarray(source[start:start + len(rows)], dtype=dt))
                    out.flush()
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "job_id": _job_id(job), **job,
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
                        "shard": None, "question_ids": prompt_set.question_ids.tolist()}
            if prompt_set.categories is not None:
                manifest["categories"] = list(prompt_set.categories)
            _finalize(partial, final, manifest, prompt_set.labels, prompt_set.question_ids, specs, force)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return final


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of a features directory, without opening any array (cheap: what was collected, the
    model's geometry, the question id of every row). Problems raise :class:`FeatureFileError`."""
    path = Path(path)
    if not path.is_dir():
        hint = " (an unfinished collection: rerun it to resume)" if path.with_name(path.name + ".partial").exists() else ""
        raise FeatureFileError(f"features directory {path} does not exist{hint}")
    manifest = read_json(path / MANIFEST, "features manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FeatureFileError(f"{path / MANIFEST} is not an iti features manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FeatureFileError(f"{path / MANIFEST} has format_version {manifest.get('format_version')}; this iti reads {FORMAT_VERSION}")
    for key in ("files", "question_ids", "model", "dataset"):
        if key not in manifest:
            raise FeatureFileError(f"{path / MANIFEST} lacks the key {key!r} (truncated or hand-edited?)")
    return manifest


#: What :func:`check_features_weights` says of the features' weights (recorded in run.json and intervention metas).
SAME_WEIGHTS, UNRECORDED_WEIGHTS, OTHER_WEIGHTS = "same weights", "not recorded", "other weights (--features_from_other_weights)"


def check_features_weights(manifests: dict[str, dict[str, Any]], model: torch.nn.Module, *, allow_other: bool = False,
                           current: str | None = None) -> str:
    """Refuse features (``manifests``, by directory) collected from other weights than ``model``: features are found
    by directory name, so two checkpoints of one name (runs/a/final, runs/b/final) would share them. Returns
    :data:`SAME_WEIGHTS`; :data:`OTHER_WEIGHTS` instead of refusing with ``allow_other``; :data:`UNRECORDED_WEIGHTS`
    when a manifest holds no weights fingerprint (collected by an iti before it recorded one, or imported from
    honest_llama), which cannot be checked and is not refused. ``current``: the model's
    :func:`~iti.fingerprint.model_fingerprint`, when already computed."""
    from .errors import FeatureWeightsError
    from .fingerprint import model_fingerprint, weights_match

    current = current or model_fingerprint(model)
    seen = {str(p): weights_match(m.get("model", {}).get("weights_sha256"), m.get("model", {}).get("compute_dtype"), model, current)
            for p, m in manifests.items()}
    other = [p for p, same in seen.items() if same is False]
    if other and not allow_other:
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or "the model"
        raise FeatureWeightsError(
            f"the features {', '.join(other)} were collected from other weights than the model being steered ({source}): "
            "features are found by the model's directory name, so another checkpoint of that name shares them. Collect this "
            "model's own features (python get_activations/get_activations.py --model_name <its path> --output_dir DIR, then "
            "--features_dir DIR), or pass --features_from_other_weights to use these anyway (recorded in the result)")
    if other:
        return OTHER_WEIGHTS
    return UNRECORDED_WEIGHTS if None in seen.values() else SAME_WEIGHTS


def load_features(path: str | os.PathLike, *, layer_wise: bool = False, mmap: bool = True, verify: bool = True) -> FeatureSet:
    """Load a features directory written by :func:`write_features` or :func:`merge_shards`.

    Every problem (missing, truncated or corrupt file, shapes that disagree with the manifest, checksum
    mismatch with ``verify``) raises :class:`FeatureFileError` naming the file.
    """
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest["files"]
    wanted = ["head_wise", "labels"] + (["layer_wise"] if layer_wise else [])
    arrays: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in files:
            raise FeatureFileError(f"{path} has no {name} features (collected without them?)")
        info = files[name]
        file = path / info["file"]
        _, header = read_safetensors_header(file)
        if verify and sha256_file(file) != info["sha256"]:
            raise FeatureFileError(f"{file} is corrupt: its sha256 differs from the one in {MANIFEST}")
        tensors = ["labels", "question_ids"] if name == "labels" else [name]
        for t in tensors:
            if t not in header:
                raise FeatureFileError(f"{file} has no tensor {t!r}")
            arr = open_safetensors_memmap(file, t, mode="r")
            arrays[t] = arr if mmap and name != "labels" else np.array(arr)
        if list(arrays[tensors[0]].shape) != info["shape"]:
            raise FeatureFileError(f"{file} holds shape {list(arrays[tensors[0]].shape)}, the manifest says {info['shape']}")
    n = len(manifest["question_ids"])
    if len(arrays["labels"]) != n or arrays["head_wise"].shape[0] != n:
        raise FeatureFileError(f"{path}: {n} question ids, {len(arrays['labels'])} labels, {arrays['head_wise'].shape[0]} rows")
    if not np.array_equal(arrays["question_ids"], np.asarray(manifest["question_ids"])):
        raise FeatureFileError(f"{path}: question ids in labels.safetensors and {MANIFEST} disagree")
    _check_manifest_against_arrays(path, manifest, arrays, n)
    return FeatureSet(path, manifest, arrays["head_wise"], arrays["labels"], arrays["question_ids"], arrays.get("layer_wise"))


def _check_manifest_against_arrays(path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], n: int) -> None:
    """The manifest's geometry and row count must describe the arrays on disk (a hand-edited or mixed-up manifest
    would otherwise pass: the file shapes it lists are checked, not what the rest of it says)."""
    where = path / MANIFEST
    try:
        g = HeadGeometry.from_dict(manifest["model"]["geometry"])
    except (KeyError, TypeError, ValueError) as e:
        raise FeatureFileError(f"{where} has no usable model geometry ({type(e).__name__}: {e})") from None
    head_file = path / manifest["files"]["head_wise"]["file"]
    got = tuple(arrays["head_wise"].shape[1:])
    for name, want, have in zip(("num_layers", "num_heads", "head_dim"), (g.num_layers, g.num_heads, g.head_dim), got):
        if want != have:
            raise FeatureFileError(
                f"{where} says {name}={want} (geometry {g.num_layers} layers x {g.num_heads} heads x {g.head_dim}), but "
                f"{head_file} holds [rows, layers, heads, head_dim] = {list(arrays['head_wise'].shape)}: the manifest "
                "does not belong to these arrays (hand-edited or copied from another collection?); collect again."
            )
    if "layer_wise" in manifest["files"]:
        layer_file = path / manifest["files"]["layer_wise"]["file"]
        if "layer_wise" in arrays:
            shape = list(arrays["layer_wise"].shape)
        else:
            _, header = read_safetensors_header(layer_file)
            shape = list(header.get("layer_wise", {}).get("shape", []))
        if len(shape) == 3 and (shape[1], shape[2]) != (g.num_layers, g.hidden_size):
            raise FeatureFileError(
                f"{where} says num_layers={g.num_layers}, hidden_size={g.hidden_size}, but {layer_file} holds "
                f"[rows, layers, hidden] = {shape}: the manifest does not belong to these arrays; collect again."
            )
    shard = manifest.get("shard")
    if shard:
        expected, what = len(shard.get("rows", [])), "shard rows"
    else:
        expected, what = manifest["dataset"].get("num_rows"), "dataset num_rows"
    if expected != n:
        raise FeatureFileError(
            f"{where} says {what}={expected}, but {head_file} and labels.safetensors hold {n} rows: the manifest "
            "does not belong to these arrays (hand-edited, or from an unfinished or other collection?); collect again."
        )


def find_shards(final: Path) -> dict[int, Path]:
    """Shard directories of ``final`` by shard index, finished or not; raises when shards of different counts
    (stale ones) sit side by side."""
    shards: dict[int, Path] = {}
    counts = set()
    for p in final.parent.glob(f"{final.name}.shard-*-of-*"):
        m = _SHARD_RE.match(p.name)
        if m and m.group("stem") == final.name and p.is_dir():
            shards[int(m.group("i"))] = p
            counts.add(int(m.group("n")))
    if len(counts) > 1:
        raise FeatureFileError(f"shards of {final.name} with different counts: {sorted(counts)}; remove the stale ones")
    return shards


def merge_shards(final: str | os.PathLike, *, force: bool = False, remove_shards: bool = False) -> Path:
    """Join ``<final>.shard-i-of-n`` directories into ``final`` after checking that their manifests agree."""
    final = Path(final)
    shards = find_shards(final)
    if not shards:
        raise FeatureFileError(f"no shards found for {final} (expected {final.name}.shard-<i>-of-<n>/)")
    some = next(iter(shards.values()))
    n = int(_SHARD_RE.match(some.name).group("n"))  # type: ignore[union-attr]
    missing = [i for i in range(n) if i not in shards or not (shards[i] / MANIFEST).exists()]
    if missing:
        raise FeatureFileError(f"cannot merge {final.name}: shards {missing} of {n} are missing or unfinished")
    sets = [load_features(shards[i], layer_wise=True, verify=True) if _has_layer_wise(shards[i]) else load_features(shards[i]) for i in range(n)]
    ref = sets[0].manifest
    for fs in sets[1:]:
        for key in ("job_id", "model", "dataset", "dtype", "batch_size", "layer_wise", "positions"):
            if fs.manifest.get(key) != ref.get(key):
                raise FeatureFileError(f"shard manifests disagree on {key!r}: {sets[0].path.name} vs {fs.path.name}")
    total = int(ref["dataset"]["num_rows"])
    rows = [np.asarray(fs.manifest["shard"]["rows"], dtype=np.int64) for fs in sets]
    allrows = np.sort(np.concatenate(rows))
    if not np.array_equal(allrows, np.arange(total)):
        raise FeatureFileError(f"shards of {final.name} do not cover rows 0..{total - 1} exactly once")
    if (final / MANIFEST).exists() and not force:
        raise OutputExistsError(f"{final} already exists; pass force=True to replace it")
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    g = sets[0].geometry
    specs = _tensor_specs(g, total, np.dtype(ref["dtype"]), bool(ref["layer_wise"]))
    labels = np.empty(total, dtype=np.int64)
    qids = np.empty(total, dtype=np.int64)
    categories: list[Any] | None = [None] * total if "categories" in ref else None
    for name, spec in specs.items():
        allocate_safetensors(partial / f"{name}.safetensors", {name: spec})
        with SafetensorsRowWriter(partial / f"{name}.safetensors", name) as out:
            for fs, r in zip(sets, rows):
                out.write(r, fs.head_wise if name == "head_wise" else cast(np.ndarray, fs.layer_wise))  # layer_wise: in every shard
            out.flush()
    for fs, r in zip(sets, rows):
        labels[r] = fs.labels
        qids[r] = fs.question_ids
        if categories is not None:
            for j, i in enumerate(r):
                categories[i] = fs.manifest["categories"][j]
    manifest = {k: v for k, v in ref.items() if k not in ("files", "shard", "question_ids", "categories", "created")}
    manifest.update({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "shard": None,
        "merged_from": [fs.path.name for fs in sets],
        "question_ids": qids.tolist(),
    })
    if categories is not None:
        manifest["categories"] = categories
    _finalize(partial, final, manifest, labels, qids, specs, force)
    if remove_shards:
        for p in shards.values():
            shutil.rmtree(p)
    return final


def _has_layer_wise(path: Path) -> bool:
    return "layer_wise" in read_json(path / MANIFEST, "features manifest").get("files", {})
