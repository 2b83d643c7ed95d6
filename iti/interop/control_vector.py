"""llama.cpp's control vectors: residual steering as a GGUF of ``direction.{k}`` tensors.

``llama-cli -m model.gguf --control-vector steer.gguf`` (and llama-server, and the C API through
``common_control_vector_load``) reads a GGUF of architecture ``controlvector`` holding one float32 tensor
``direction.{k}`` per steered block and adds it, times the strength, to the residual stream at the output of block
``k`` (0-based, llama.cpp's ``l_out-k``) at every position: iti's ``resid_post`` site of layer ``k`` with
``positions="all"``. That is also what repeng exports (``ControlVector.export_gguf``: the same tensor names,
``controlvector.model_hint`` and ``controlvector.layer_count``), so its vectors read here as a :class:`~iti.Steering`.

llama.cpp refuses ``direction.0`` (it cannot steer the output of the first block) and silently ignores a ``k`` past
the last block; both are refused here with :class:`~iti.errors.InexpressibleExportError` /
:class:`~iti.errors.SteeringFileError` naming the layer, as is any vector at a site other than ``resid_post``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..architectures import model_layout
from ..errors import InexpressibleExportError, SteeringFileError
from ..intervention import Intervention
from ..io import atomic_path
from ..steering import SiteKey, Steering
from .files import refuse_existing
from .gguf_format import gguf_field, open_gguf
from .shifts import as_steering, model_name_of, steering_from_outputs

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def export_control_vector(value: Intervention | Steering, path: str | os.PathLike, *, model_hint: str | None = None,
                          force: bool = False) -> Path:
    """Write the ``resid_post`` vectors of ``value`` as llama.cpp's control-vector GGUF (module docstring);
    ``model_hint``: the model type recorded for readers (default: the value's model name). Refused before a byte is
    written when the value steers another site or layer 0, which a control vector cannot express."""
    import gguf

    path = Path(path)
    if path.suffix != ".gguf":
        raise InexpressibleExportError(f"llama.cpp reads a control vector from a .gguf file, not {path.name!r}")
    steering = as_steering(value)
    other = [f"{site} of layer {layer}" for site, layer in steering.vectors if site != "resid_post"]
    if other:
        raise InexpressibleExportError(
            f"a llama.cpp control vector adds to the residual stream after a block (resid_post) only; this steering also "
            f"steers {', '.join(other)}. Export it for lm-eval or pyvene, or bake it (iti bake) and export the GGUF model")
    if 0 in steering.layers("resid_post"):
        raise InexpressibleExportError("llama.cpp refuses direction.0: a control vector cannot steer the output of block 0 "
                                       "(layer 0); steer layer 1 or later")
    refuse_existing([path], force)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint or steering.model_name or "unknown")
        w.add_uint32(f"{ARCH}.layer_count", len(steering.vectors))
        for (_, layer), vec in steering.vectors.items():
            w.add_tensor(f"direction.{layer}", np.ascontiguousarray(vec, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def load_control_vector(path: str | os.PathLike, model: torch.nn.Module, *, strength: float = 1.0,
                        model_name: str | None = None) -> Steering:
    """Read a llama.cpp / repeng control-vector GGUF as the ``resid_post`` :class:`Steering` it is for ``model``
    (``strength`` times each vector, as ``--control-vector-scaled`` does), at every position."""
    path = Path(path)
    reader = open_gguf(path, ARCH, "control vector", unreadable=SteeringFileError, other_architecture=SteeringFileError)
    if not np.isfinite(strength):
        raise SteeringFileError(f"the strength must be finite, got {strength}")
    g = model_layout(model).geometry
    vectors: dict[SiteKey, np.ndarray] = {}
    for t in reader.tensors:
        m = _DIRECTION.match(t.name)
        if m is None:
            raise SteeringFileError(f"{path}: tensor {t.name!r} is not a direction.{{layer}} tensor")
        layer = int(m.group(1))
        if layer == 0 or layer >= g.num_layers:
            raise SteeringFileError(f"{path}: direction.{layer} steers no block llama.cpp steers (layers 1..{g.num_layers - 1} "
                                    "of this model)")
        vec = np.asarray(t.data, dtype=np.float64).reshape(-1)
        if vec.size != g.hidden_size:
            raise SteeringFileError(f"{path}: direction.{layer} has {vec.size} values, the model's residual stream {g.hidden_size}")
        if not np.isfinite(vec).all():
            raise SteeringFileError(f"{path}: direction.{layer} holds NaN or infinite values")
        key = ("resid_post", layer)
        vectors[key] = vectors.get(key, 0.0) + strength * vec
    if not vectors:
        raise SteeringFileError(f"{path} holds no direction tensors")
    meta = {"imported_from": "llama.cpp control vector", "path": str(path), "positions": "all",
            "model_hint": gguf_field(reader, f"{ARCH}.model_hint"), "strength": float(strength)}
    return steering_from_outputs(model, vectors, model_name=model_name or model_name_of(model), meta=meta, source=str(path))
