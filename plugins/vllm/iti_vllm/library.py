"""The steering library a server holds: every saved iti intervention (``intervention.json`` + ``.safetensors``) or
``head_out`` steering value (``steering.json`` + ``.safetensors``) in one directory, each under its folder's name.

Read with json and safetensors alone (this package runs in vLLM's environment, which does not have iti): the
files are checked as iti checks them (format, the tensors' sha256, every listed vector present, the shapes the
geometry gives). A value is kept as one ``[H * D]`` vector per layer at unit strength: ``std * direction`` in each
chosen head's slice for an intervention (strength = ITI's alpha, default the saved alpha), the vectors themselves for
a steering value (strength = a multiplier, default 1)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the request's extra arguments (OpenAI API: ``extra_body={"vllm_xargs": {...}}``)
NAME_ARG, STRENGTH_ARG, POSITIONS_ARG = "iti", "iti_strength", "iti_positions"
POSITIONS = ("last", "all")
#: where the library is: a directory of saved values (set for the server, inherited by its engine processes)
LIBRARY_ENV = "ITI_VLLM_STEERING"


class SteeringLibraryError(ValueError):
    """A saved value that cannot be served (missing, corrupt, another geometry)."""


class SteeringRequestError(ValueError):
    """A request's steering arguments that cannot be honoured (unknown name, non-finite strength, ...)."""


@dataclass(frozen=True)
class SteeringEntry:
    """One servable value: per layer the ``[H * D]`` shift of the o_proj input at strength 1."""
    name: str
    kind: str                     # "intervention" or "steering"
    default_strength: float
    default_positions: str
    geometry: dict[str, int]
    unit: dict[int, np.ndarray]


@dataclass(frozen=True)
class SteeringChoice:
    """What one request asked for."""
    name: str
    strength: float
    positions: str

    def cache_key(self) -> tuple[Any, ...]:
        """Extra key of the prefix cache for the blocks this steering changes."""
        return ("iti", self.name, float(self.strength), self.positions)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(folder: Path, meta_name: str, tensor_name: str, fmt: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    meta_path, tensor_path = folder / meta_name, folder / tensor_name
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SteeringLibraryError(f"{meta_path}: unreadable ({e})") from None
    if meta.get("format") != fmt:
        raise SteeringLibraryError(f"{meta_path}: format {meta.get('format')!r}, expected {fmt!r}")
    if not tensor_path.is_file():
        raise SteeringLibraryError(f"{tensor_path} is missing")
    if meta.get("tensors_sha256") and _sha256(tensor_path) != meta["tensors_sha256"]:
        raise SteeringLibraryError(f"{tensor_path}: the sha256 differs from the one {meta_name} records (corrupt or partial)")
    try:
        return meta, load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error type
        raise SteeringLibraryError(f"{tensor_path}: unreadable ({e})") from None


def load_entry(folder: str | os.PathLike) -> SteeringEntry:
    """The value saved in ``folder`` (an iti intervention or steering directory)."""
    folder = Path(folder)
    if (folder / "intervention.json").is_file():
        meta, tensors = _read(folder, "intervention.json", "intervention.safetensors", "iti-intervention")
        g = {k: int(v) for k, v in meta["geometry"].items()}
        heads = [(int(l), int(h)) for l, h in meta["heads"]]
        directions, stds = tensors["directions"].astype(np.float32), tensors["stds"].astype(np.float32).reshape(-1)
        if directions.shape != (len(heads), g["head_dim"]) or stds.shape != (len(heads),):
            raise SteeringLibraryError(f"{folder}: directions {directions.shape} / stds {stds.shape} for {len(heads)} heads "
                                       f"of dimension {g['head_dim']}")
        unit: dict[int, np.ndarray] = {}
        for (l, h), direction, std in zip(heads, directions, stds):
            vec = unit.setdefault(l, np.zeros(g["num_heads"] * g["head_dim"], dtype=np.float32))
            vec[h * g["head_dim"] : (h + 1) * g["head_dim"]] = std * direction
        return SteeringEntry(folder.name, "intervention", float(meta["alpha"]), "last", g, unit)
    if (folder / "steering.json").is_file():
        meta, tensors = _read(folder, "steering.json", "steering.safetensors", "iti-steering")
        g = {k: int(v) for k, v in meta["geometry"].items()}
        sites = {str(s) for s, _ in meta["vectors"]}
        if sites != {"head_out"}:
            raise SteeringLibraryError(f"{folder}: only head_out vectors are served by this plugin, the value has "
                                       f"{sorted(sites)}")
        unit = {int(l): tensors[f"head_out.{l}"].astype(np.float32).reshape(-1) for _, l in meta["vectors"]}
        positions = meta.get("positions") if meta.get("positions") in POSITIONS else "last"
        return SteeringEntry(folder.name, "steering", 1.0, str(positions), g, unit)
    raise SteeringLibraryError(f"{folder} holds neither intervention.json nor steering.json")


def load_library(directory: str | os.PathLike | None = None) -> dict[str, SteeringEntry]:
    """Every value under ``directory`` (default ``$ITI_VLLM_STEERING``; none set: an empty library)."""
    directory = directory if directory is not None else os.environ.get(LIBRARY_ENV)
    if not directory:
        return {}
    root = Path(directory)
    if not root.is_dir():
        raise SteeringLibraryError(f"{LIBRARY_ENV}={directory} is not a directory")
    return {p.name: load_entry(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def check_geometry(library: dict[str, SteeringEntry], num_layers: int, num_heads: int, head_dim: int) -> None:
    """Refuse a value made for another geometry than the served model's."""
    for e in library.values():
        g = e.geometry
        if (g["num_layers"], g["num_heads"], g["head_dim"]) != (num_layers, num_heads, head_dim):
            raise SteeringLibraryError(
                f"steering {e.name!r} was made for {g['num_layers']} layers x {g['num_heads']} heads x {g['head_dim']}, "
                f"the served model has {num_layers} x {num_heads} x {head_dim}")
        for layer, vec in e.unit.items():
            if not 0 <= layer < num_layers or vec.shape != (num_heads * head_dim,):
                raise SteeringLibraryError(f"steering {e.name!r}: layer {layer} vector of shape {vec.shape}")


def parse_request(extra_args: dict[str, Any] | None, library: dict[str, SteeringEntry]) -> SteeringChoice | None:
    """The steering a request asks for (None: the plain model), or :class:`SteeringRequestError` naming the problem."""
    args = extra_args or {}
    name = args.get(NAME_ARG)
    if name is None or name == "":
        stray = [k for k in (STRENGTH_ARG, POSITIONS_ARG) if k in args]
        if stray:
            raise SteeringRequestError(f"{', '.join(stray)} given without {NAME_ARG} (the steering's name)")
        return None
    if not isinstance(name, str) or name not in library:
        known = ", ".join(sorted(library)) or "none loaded"
        raise SteeringRequestError(f"unknown steering {name!r} (known: {known})")
    entry = library[name]
    raw = args.get(STRENGTH_ARG, entry.default_strength)
    try:
        strength = float(raw)
    except (TypeError, ValueError):
        raise SteeringRequestError(f"{STRENGTH_ARG} must be a number, got {raw!r}") from None
    if not math.isfinite(strength):
        raise SteeringRequestError(f"{STRENGTH_ARG} must be finite, got {raw!r}")
    positions = args.get(POSITIONS_ARG, entry.default_positions)
    if positions not in POSITIONS:
        raise SteeringRequestError(f"{POSITIONS_ARG} must be one of {', '.join(POSITIONS)}, got {positions!r}")
    return SteeringChoice(name, strength, str(positions))
