"""A baked model as a GGUF file for llama.cpp, and a baked GGUF read back as an intervention.

The file is llama.cpp's ``llama`` architecture with f32 or f16 tensors (1-D tensors stay f32, as llama.cpp's
converter keeps them), Q and K rows permuted as its converter permutes them, the tokenizer as a byte-level BPE
(``tokenizer.ggml.model = "gpt2"``), and the baked shift as ``blk.{i}.attn_output.bias`` (head and attention-output
steering) or ``blk.{i}.ffn_down.bias`` (MLP-output and residual steering, baked where ``config.mlp_bias`` allows): the
llama architecture loads both (and the q/k/v, gate and up biases) as optional tensors and adds them after their
projections.
Bias tensors that are all zero are left out. Only Llama-layout models are written (Llama; Mistral and Qwen2 through
the Llama checkpoint :func:`iti.bake.save_baked` also writes) with the default rope; anything else is refused
with :class:`~iti.errors.InexpressibleExportError` before a byte is written.

transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``) builds the model from the GGUF metadata,
which has no ``attention_bias`` key, so it drops ``attn_output.bias`` and returns the *unbaked* model;
:func:`load_gguf_model` reads the file with the ``gguf`` package instead and keeps the bias.

:func:`load_gguf_steering` reads a baked GGUF against its base model: the weights must be the base model's (else
:class:`~iti.errors.GgufModelMismatchError`); the biases minus the base model's are the steering, ``attn_out`` from
``attn_output.bias`` and ``mlp_out`` from ``ffn_down.bias`` (a baked ``resid_post`` vector reads back as the
``mlp_out`` vector it was baked as: the same addition to the residual stream). :func:`import_gguf` solves it into ITI
head shifts (:mod:`iti.interop.shifts`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .._version import __version__
from ..architectures import model_layout
from ..errors import GgufModelMismatchError, InexpressibleExportError, InteropError
from ..intervention import Intervention
from ..io import atomic_path
from ..steering import SiteKey, Steering
from .files import refuse_existing
from .shifts import intervention_from_steering, model_name_of, steering_from_outputs

ARCH = "llama"
GGUF_DTYPES = ("f32", "f16")
#: largest relative difference ``|A - B| / |B|`` of a weight read from the GGUF and the base model's, for the
#: GGUF to count as that model: f16 rounding is ~1e-3; quantized tensors (q4/q8) get the looser bound
SAME_WEIGHTS_RTOL = 0.02
SAME_WEIGHTS_RTOL_QUANTIZED = 0.25


def _llama_model(model: torch.nn.Module) -> torch.nn.Module:
    layout = model_layout(model)
    if layout.model_type == "llama":
        return model
    if layout.spec.output_bias == "llama":  # Mistral, Qwen2: Llama with other defaults, when the config says so
        from ..bake import as_llama_checkpoint
        from ..errors import UnsupportedArchitectureError

        try:
            return as_llama_checkpoint(model)
        except UnsupportedArchitectureError as e:
            raise InexpressibleExportError(f"GGUF export writes llama.cpp's llama architecture: {e}") from None
    raise InexpressibleExportError(
        f"GGUF export writes llama.cpp's llama architecture, which cannot express a {layout.model_type!r} model (its norms, "
        "attention or layout differ); export it for pyvene or lm-eval instead")


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type != "default":
        raise InexpressibleExportError(f"GGUF export writes the default rope only; this model uses rope type {rope_type!r}")
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)) if isinstance(rope, dict) else 10000.0)


def _permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of Q/K rows: within each head, the two rotary halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Tokens, token types and merges of a byte-level BPE tokenizer (a transformers fast tokenizer), padded to
    the embedding's ``vocab_size`` with unused tokens."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise InexpressibleExportError("GGUF export writes a byte-level BPE tokenizer (the 'gpt2' GGUF tokenizer); this "
                                       f"tokenizer is {model.get('type') or type(tokenizer).__name__}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: (int(t["id"]), bool(t.get("special"))) for t in spec.get("added_tokens", [])}
    for text, (i, _) in added.items():
        vocab[text] = i
    if max(vocab.values()) >= vocab_size:
        raise InexpressibleExportError(f"the tokenizer has ids up to {max(vocab.values())}, the model's embedding {vocab_size} rows")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = int(gguf.TokenType.NORMAL)
    for i, special in added.values():
        types[i] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _special_ids(tokenizer: Any) -> dict[str, int]:
    out = {}
    for name in ("bos", "eos", "unk", "pad"):
        i = getattr(tokenizer, f"{name}_token_id", None)
        if i is not None:
            out[name] = int(i)
    return out


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos and ids != tokenizer("a", add_special_tokens=False)["input_ids"]


def export_gguf(model: torch.nn.Module, tokenizer: Any, path: str | os.PathLike, *, dtype: str = "f32",
                tokenizer_pre: str = "default", name: str | None = None, force: bool = False) -> Path:
    """Write ``model`` (baked or not) as a GGUF file of llama.cpp's llama architecture (module docstring).

    ``tokenizer_pre`` names llama.cpp's pre-tokenizer (``"smollm"`` for SmolLM2, ``"llama-bpe"`` for Llama 3);
    ``"default"`` is the GPT-2 split, right for byte-level BPE tokenizers without their own rule."""
    import gguf

    path = Path(path)
    if dtype not in GGUF_DTYPES:
        raise InexpressibleExportError(f"GGUF export writes {' or '.join(GGUF_DTYPES)} tensors, not {dtype!r}")
    refuse_existing([path], force)
    llama = _llama_model(model)
    config: Any = llama.config
    g = model_layout(llama).geometry
    theta = _rope_theta(config)
    vocab_size = int(config.vocab_size)
    tok = tokenizer_fields(tokenizer, vocab_size)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, g.num_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors: list[tuple[str, np.ndarray]] = []
    for hf_name, t in llama.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InexpressibleExportError(f"GGUF export has no llama.cpp name for the tensor {hf_name}")
        a = t.detach().float().cpu().numpy()
        if hf_name.endswith(".bias") and not np.any(a):
            continue  # llama.cpp's biases are optional: zero ones are left out
        if ".self_attn.q_proj." in hf_name:
            a = _permute_rows(a, g.num_heads)
        elif ".self_attn.k_proj." in hf_name:
            a = _permute_rows(a, g.num_kv_heads)
        a = a.astype(np.float16) if dtype == "f16" and a.ndim > 1 else a.astype(np.float32)
        tensors.append((gguf_name, np.ascontiguousarray(a)))
    baked = getattr(model.config, "iti_baked", None) or []
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(name or model_name_of(model))
        w.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
        w.add_embedding_length(g.hidden_size)
        w.add_block_count(g.num_layers)
        w.add_feed_forward_length(int(config.intermediate_size))
        w.add_rope_dimension_count(g.head_dim)
        w.add_head_count(g.num_heads)
        w.add_head_count_kv(g.num_kv_heads)
        if g.head_dim * g.num_heads != g.hidden_size:
            w.add_key_length(g.head_dim)
            w.add_value_length(g.head_dim)
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_rope_freq_base(theta)
        w.add_vocab_size(vocab_size)
        w.add_file_type(int(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer_pre)
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        special = _special_ids(tokenizer)
        for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
            if key in special:
                add(special[key])
        w.add_add_bos_token(_adds_bos(tokenizer))
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str):
            w.add_chat_template(template)
        w.add_string("iti.version", __version__)
        w.add_string("iti.baked", json.dumps([str(b) for b in (baked if isinstance(baked, list) else [baked])]))
        for gguf_name, a in tensors:
            w.add_tensor(gguf_name, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """The value of the metadata field ``key`` of a ``GGUFReader``, or ``default`` when the file has none."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _tensor(t: Any) -> np.ndarray:
    """A GGUF tensor as float32 in numpy order ([rows, cols]), dequantized where it is quantized."""
    import gguf

    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        a = np.asarray(t.data)
    else:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
    return a.astype(np.float32).reshape([int(d) for d in reversed(list(t.shape))])


def open_gguf(path: str | os.PathLike, architecture: str, what: str, *, unreadable: type[InteropError] = InteropError,
              other_architecture: type[InteropError] = GgufModelMismatchError) -> Any:
    """A ``gguf.GGUFReader`` of ``path``, refused with ``unreadable`` when the file is missing or no GGUF, and with
    ``other_architecture`` when its ``general.architecture`` is not ``architecture`` (``what``: the file in words)."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise unreadable(f"{what} {path} does not exist")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise unreadable(f"{path} is not a readable GGUF file ({e})") from None
    arch = gguf_field(reader, "general.architecture")
    if arch != architecture:
        raise other_architecture(f"{path} is a GGUF of architecture {arch!r}, not a {what} ({architecture!r})")
    return reader


def _reader(path: str | os.PathLike) -> Any:
    return open_gguf(path, ARCH, "llama-architecture GGUF file")


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A transformers ``LlamaForCausalLM`` read from a llama-architecture GGUF with the ``gguf`` package, keeping
    the ``attn_output.bias`` tensors that transformers' own GGUF loader drops (module docstring)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    reader = _reader(path)
    p = f"{ARCH}."
    n_layers, heads = int(gguf_field(reader, p + "block_count")), int(gguf_field(reader, p + "attention.head_count"))
    kv = int(gguf_field(reader, p + "attention.head_count_kv", heads))
    hidden = int(gguf_field(reader, p + "embedding_length"))
    names = {t.name: t for t in reader.tensors}
    vocab = int(gguf_field(reader, p + "vocab_size", 0) or names["token_embd.weight"].shape[-1])
    has_bias = any(n.endswith(".bias") and ".attn_" in n for n in names)
    has_mlp_bias = any(n.endswith(".bias") and ".ffn_" in n for n in names)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(gguf_field(reader, p + "feed_forward_length")),
        num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=int(gguf_field(reader, p + "attention.key_length", hidden // heads)),
        rms_norm_eps=float(gguf_field(reader, p + "attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(gguf_field(reader, p + "context_length", 2048)),
        rope_parameters={"rope_type": "default", "rope_theta": float(gguf_field(reader, p + "rope.freq_base", 10000.0))},
        tie_word_embeddings="output.weight" not in names, attention_bias=has_bias, mlp_bias=has_mlp_bias,
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"), eos_token_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    state: dict[str, torch.Tensor] = {}
    for hf_name, like in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name not in names:
            if hf_name.endswith(".bias"):
                state[hf_name] = torch.zeros(like.shape, dtype=dtype)
                continue
            raise GgufModelMismatchError(f"{path} has no tensor {gguf_name} ({hf_name})")
        a = _tensor(names[gguf_name])
        if ".self_attn.q_proj." in hf_name:
            a = _unpermute_rows(a, heads)
        elif ".self_attn.k_proj." in hf_name:
            a = _unpermute_rows(a, kv)
        if tuple(a.shape) != tuple(like.shape):
            raise GgufModelMismatchError(f"{path}: {gguf_name} has shape {tuple(a.shape)}, the config needs {tuple(like.shape)}")
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)  # its buffers are computed, not stored
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise GgufModelMismatchError(f"{path} lacks tensors for {left[:5]}")
    return cast(torch.nn.Module, model.eval())


def _finite(a: np.ndarray, path: str | os.PathLike, name: str) -> np.ndarray:
    """``a``, after refusing NaN or infinite values with an :class:`InteropError` naming the file and tensor."""
    if not np.isfinite(a).all():
        raise InteropError(f"{path}: tensor {name} holds NaN or infinite values")
    return a


def _bias_delta(module: torch.nn.Module, tensor: Any, path: str | os.PathLike, name: str) -> np.ndarray:
    """A GGUF bias tensor minus ``module``'s own bias (zero where it has none), as float64."""
    own = getattr(module, "bias", None)
    base = own.detach().double().cpu().numpy() if isinstance(own, torch.Tensor) else 0.0
    return _finite(_tensor(tensor), path, name).astype(np.float64).reshape(-1) - base


def load_gguf_steering(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Steering:
    """The steering baked into a llama-architecture GGUF of ``model``: per layer, its ``attn_output.bias`` minus the
    model's own output bias (``attn_out``) and its ``ffn_down.bias`` minus the model's MLP output bias (``mlp_out``).
    A GGUF whose sizes or weights are not ``model``'s is refused with :class:`GgufModelMismatchError`."""
    reader = _reader(path)
    layout = model_layout(model)
    g = layout.geometry
    p = f"{ARCH}."
    sizes = {"block_count": g.num_layers, "embedding_length": g.hidden_size, "attention.head_count": g.num_heads,
             "attention.head_count_kv": g.num_kv_heads}
    for key, want in sizes.items():
        got = gguf_field(reader, p + key)
        if got is None or int(got) != want:
            raise GgufModelMismatchError(f"{path} is a GGUF of another model: {p}{key} is {got}, the model has {want}")
    names = {t.name: t for t in reader.tensors}
    import gguf

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    embed = cast(Any, model).get_input_embeddings().weight.detach().float().cpu().numpy()
    checks = [("token_embd.weight", embed)]
    vectors: dict[SiteKey, np.ndarray] = {}
    for layer in range(g.num_layers):
        module = layout.head_out_module(model, layer)
        w = cast(torch.Tensor, module.weight).detach().float().cpu().numpy()
        checks.append((f"blk.{layer}.attn_output.weight", w))
        mlp_out = layout.mlp_out_module(model, layer)
        for site, owner, name in (("attn_out", module, f"blk.{layer}.attn_output.bias"),
                                  ("mlp_out", mlp_out, f"blk.{layer}.ffn_down.bias")):
            if name in names:
                delta = _bias_delta(owner, names[name], path, name)
                if np.any(delta):
                    vectors[(site, layer)] = delta
    for name, want in checks:
        if name not in names:
            raise GgufModelMismatchError(f"{path} has no {name}: not a GGUF of this model")
        got = _finite(_tensor(names[name]), path, name)  # a NaN difference would pass the tolerance (NaN > tol is False)
        if got.shape != want.shape:
            raise GgufModelMismatchError(f"{path} is a GGUF of another model: {name} has shape {got.shape}, the model's {want.shape}")
        rel = float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), 1e-30)
        bound = SAME_WEIGHTS_RTOL if names[name].tensor_type in plain else SAME_WEIGHTS_RTOL_QUANTIZED
        if rel > bound:
            raise GgufModelMismatchError(f"{path} is a GGUF of another model: its {name} differs from the model's by "
                                         f"{rel:.3f} of its norm (at most {bound} allowed)")
    if not vectors:
        raise InteropError(f"{path} carries no baked shift: its attn_output and ffn_down biases equal the model's own")
    meta = {"imported_from": "gguf", "path": str(path), "positions": "all", "baked": gguf_field(reader, "iti.baked")}
    return steering_from_outputs(model, vectors, model_name=model_name or model_name_of(model), meta=meta, source=str(path))


def import_gguf(path: str | os.PathLike, model: torch.nn.Module, *, model_name: str | None = None) -> Intervention:
    """The intervention baked into a llama-architecture GGUF of ``model`` (:func:`load_gguf_steering`), solved back
    to head shifts; a GGUF with a baked MLP or residual shift has no head form and is refused naming it."""
    steering = load_gguf_steering(path, model, model_name=model_name)
    return intervention_from_steering(model, steering, model_name=model_name, source=str(path))
