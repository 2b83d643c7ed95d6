"""honest_llama's feature arrays to and from iti's feature store, so features already computed are kept.

honest_llama's ``get_activations.py`` saves, per model and data set, in ``features/``:

- ``{model}_{dataset}_head_wise.npy``: ``[N, layers, heads * head_dim]``, the last token's o_proj input (float16
  from an fp16 model); its ``validate_2fold.py`` reshapes it to ``[N, layers, heads, head_dim]``, our layout;
- ``{model}_{dataset}_labels.npy``: ``[N]`` ints, 1 for a true answer;
- ``{model}_{dataset}_layer_wise.npy``: ``[N, layers + 1, hidden]``, ``hidden_states`` of the last token: the
  embeddings, then each block's output, the last one after the final norm (ours: ``[N, layers, hidden]``, each
  block's output before any norm). ITI reads only head_wise and labels.

Importing needs the prompt set the rows were collected on (its question ids group the rows; honest_llama keeps
none) and the model's head geometry (the flat ``heads * head_dim`` cannot be cut without it); the labels must equal
the prompt set's row by row, which catches arrays of another prompt order or TruthfulQA version. ``layer_wise``
comes in without its embedding row, the last layer still after the final norm (the manifest says so). Exporting
writes head_wise and labels, and layer_wise as ``[N, layers, hidden]`` when asked (no embedding row: we never
stored one). Files are read with ``allow_pickle=False``; the categories ``.pkl`` is neither read nor written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..architectures import HeadGeometry
from ..errors import HonestLlamaFeatureError
from ..features import PromptSet, load_features, output_name, read_manifest, write_feature_arrays
from ..io import sha256_file
from ..paths import features_dir
from .files import atomic_files

KINDS = ("head_wise", "labels", "layer_wise")


def honest_llama_paths(folder: str | os.PathLike, model_name: str, dataset: str) -> dict[str, Path]:
    """``{kind: folder/{model}_{dataset}_{kind}.npy}`` for head_wise, labels and layer_wise."""
    return {k: Path(folder) / f"{model_name}_{dataset}_{k}.npy" for k in KINDS}


def _save_npy(path: Path, array: Any) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, np.asarray(array), allow_pickle=False)


def export_honest_llama_features(features_path: str | os.PathLike, out_folder: str | os.PathLike, *, model_name: str | None = None,
                                 dataset: str | None = None, layer_wise: bool = False, force: bool = False) -> dict[str, Path]:
    """Write a features directory of ours as honest_llama's ``.npy`` files (module docstring); ``model_name`` and
    ``dataset`` name the files (default: the manifest's). All files appear together or none does."""
    manifest = read_manifest(features_path)
    has_layer_wise = "layer_wise" in manifest["files"]
    if layer_wise and not has_layer_wise:
        raise HonestLlamaFeatureError(f"{features_path} was collected without layer_wise features; export without them")
    fs = load_features(features_path, layer_wise=layer_wise)
    n, L, H, D = fs.head_wise.shape
    paths = honest_llama_paths(out_folder, model_name or manifest["model"]["name"], dataset or manifest["dataset"]["name"])
    wanted = [k for k in KINDS if k != "layer_wise" or layer_wise]
    with atomic_files([paths[k] for k in wanted], force=force) as tmps:
        for kind, tmp in zip(wanted, tmps):
            if kind == "head_wise":
                _save_npy(tmp, fs.head_wise.reshape(n, L, H * D))
            elif kind == "labels":
                _save_npy(tmp, fs.labels.astype(np.int64))
            else:
                _save_npy(tmp, fs.layer_wise)
    return {k: paths[k] for k in wanted}


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise HonestLlamaFeatureError(f"honest_llama features file {path} does not exist") from None
    except ValueError as e:  # a pickled object array, a corrupt header
        raise HonestLlamaFeatureError(f"{path} is not a plain numpy array file ({e})") from None


def read_honest_llama_features(folder: str | os.PathLike, model_name: str, dataset: str, geometry: HeadGeometry, *,
                               layer_wise: bool = True) -> dict[str, np.ndarray]:
    """honest_llama's arrays, checked against each other and ``geometry``: ``head_wise`` as ``[N, L, H, D]``,
    ``labels`` ``[N]``, and ``layer_wise`` ``[N, L, hidden]`` (embedding row dropped) when present and wanted."""
    paths = honest_llama_paths(folder, model_name, dataset)
    g = geometry
    head = _load(paths["head_wise"])
    if head.ndim == 3 and head.shape[1:] == (g.num_layers, g.head_out_size):
        head = head.reshape(head.shape[0], g.num_layers, g.num_heads, g.head_dim)
    elif not (head.ndim == 4 and head.shape[1:] == (g.num_layers, g.num_heads, g.head_dim)):
        raise HonestLlamaFeatureError(
            f"{paths['head_wise']} has shape {list(head.shape)}; the model's geometry needs [N, {g.num_layers}, "
            f"{g.head_out_size}] (layers, heads x head_dim = {g.num_heads} x {g.head_dim})")
    labels = np.asarray(_load(paths["labels"])).reshape(-1)
    n = head.shape[0]
    if len(labels) != n:
        raise HonestLlamaFeatureError(f"{paths['labels']} has {len(labels)} labels but {paths['head_wise'].name} has {n} rows")
    if not np.isin(labels, (0, 1)).all():
        raise HonestLlamaFeatureError(f"{paths['labels']} holds labels other than 0 and 1")
    out = {"head_wise": head, "labels": labels.astype(np.int64)}
    if layer_wise and paths["layer_wise"].exists():
        lw = _load(paths["layer_wise"])
        if lw.ndim != 3 or lw.shape[0] != n or lw.shape[1] not in (g.num_layers, g.num_layers + 1) or lw.shape[2] != g.hidden_size:
            raise HonestLlamaFeatureError(
                f"{paths['layer_wise']} has shape {list(lw.shape)}; expected [{n}, {g.num_layers} + 1, {g.hidden_size}] "
                "(rows as in head_wise; the embeddings and each layer; the hidden size)")
        out["layer_wise"] = lw[:, 1:] if lw.shape[1] == g.num_layers + 1 else lw
    return out


def import_honest_llama_features(folder: str | os.PathLike, prompt_set: PromptSet, *, model_name: str, geometry: HeadGeometry,
                                 dataset: str | None = None, out_dir: str | os.PathLike | None = None, layer_wise: bool = True,
                                 force: bool = False) -> Path:
    """Turn honest_llama's ``{model_name}_{dataset}_*.npy`` in ``folder`` into a features directory of ours,
    ``<out_dir>/<model_name>_<dataset>`` (module docstring), and return it. ``prompt_set`` is the prompt set the rows
    were collected on (its order, labels and question ids); ``dataset`` defaults to its name."""
    dataset = dataset or prompt_set.name
    arrays = read_honest_llama_features(folder, model_name, dataset, geometry, layer_wise=layer_wise)
    n = len(arrays["labels"])
    if len(prompt_set) != n:
        raise HonestLlamaFeatureError(f"the honest_llama arrays hold {n} rows but the prompt set {prompt_set.name!r} has "
                                      f"{len(prompt_set)}: they were collected on another data set or TruthfulQA version")
    differ = np.flatnonzero(arrays["labels"] != prompt_set.labels)
    if len(differ):
        raise HonestLlamaFeatureError(
            f"the honest_llama labels differ from the prompt set {prompt_set.name!r} at {len(differ)} rows (first: row "
            f"{differ[0]}): the arrays follow another prompt order or TruthfulQA version")
    head = arrays["head_wise"]
    dtype = head.dtype if head.dtype in (np.float16, np.float32) else np.dtype(np.float32)
    paths = honest_llama_paths(folder, model_name, dataset)
    kinds = [k for k in KINDS if k in arrays]
    job = {
        "model": {"name": model_name, "model_type": None, "geometry": geometry.to_dict(), "compute_dtype": None,
                  "weights_sha256": None},
        "dataset": {"name": dataset, "prompt_format": prompt_set.prompt_format, "num_rows": n,
                    "prompts_sha256": prompt_set.fingerprint(), **{k: v for k, v in prompt_set.meta.items() if k != "source"}},
        "positions": "last",
        "dtype": np.dtype(dtype).name,
        "batch_size": 1,
        "layer_wise": "layer_wise" in arrays,
        "imported_from": {
            "format": "honest_llama",
            "files": {k: {"file": paths[k].name, "sha256": sha256_file(paths[k])} for k in kinds},
            "note": "rows in the prompt set's order; the prompts were honest_llama's (tqa_gen_end_q's random question "
                    "differs from ours); layer_wise is honest_llama's hidden_states[1:], its last layer after the final norm",
        },
    }
    final = Path(out_dir) if out_dir is not None else features_dir()
    return write_feature_arrays(final / output_name(model_name, dataset), job, prompt_set, head, arrays.get("layer_wise"), force=force)
