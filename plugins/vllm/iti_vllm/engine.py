"""The patches into vLLM 0.32.0 (private functions; :func:`iti_vllm.register` checks the version).

* Validation: each OpenAI request's ``to_sampling_params`` (API server) and ``InputProcessor._validate_params``
  (offline ``LLM`` too) parse the steering arguments and raise ``VLLMValidationError`` (HTTP 400, one line).
* Steering: after the model loads, a forward pre-hook on every ``layers.N.self_attn.o_proj`` adds
  ``coef @ shift[N]``, where ``coef`` ``[tokens, K]`` holds each token's strength for each of the K values the batch
  uses (zero for plain requests and, under ``last``, for prompt tokens before the last one). The runner builds it
  each step from the scheduled requests, their prompt lengths and the tokens' positions, which keeps it exact
  under continuous batching, chunked prefill and prefix-cache hits. Needs eager mode (a compiled graph would not
  see the hooks): a server started without ``--enforce-eager`` refuses to start.
* Prefix cache: a steered request's blocks that hold steered tokens get an extra hash key (name, strength,
  positions, prompt length), so no request ever reuses K/V computed under another steering; under ``last`` the
  blocks before the last prompt token keep their plain hashes and stay shared with plain requests.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .library import SteeringChoice, SteeringEntry, SteeringRequestError, check_geometry, load_library, parse_request

logger = logging.getLogger("iti_vllm")
STATE_KEY = "iti_steering"
_O_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj$")


@lru_cache(maxsize=1)
def library() -> dict[str, SteeringEntry]:
    """This process's library (read once from ``$ITI_VLLM_STEERING``)."""
    return load_library()


def _choice(sampling_params: Any) -> SteeringChoice | None:
    """A request's steering inside the engine, where nothing may raise: a bad request was refused at the API."""
    try:
        return parse_request(getattr(sampling_params, "extra_args", None), library())
    except SteeringRequestError as e:
        logger.error("iti-vllm: serving a request plain: %s", e)
        return None


# --- validation ----------------------------------------------------------------------------------------------------
def _validated(to_sampling_params):
    def wrapper(self, *args, **kwargs):
        params = to_sampling_params(self, *args, **kwargs)
        _validate(params)
        return params

    wrapper.__wrapped__ = to_sampling_params  # type: ignore[attr-defined]
    return wrapper


def _validate(params: Any) -> None:
    from vllm.exceptions import VLLMValidationError

    try:
        parse_request(getattr(params, "extra_args", None), library())
    except SteeringRequestError as e:
        raise VLLMValidationError(str(e), parameter="vllm_xargs") from None


def _patch_validation() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.v1.engine.input_processor import InputProcessor

    classes: list[Any] = [ChatCompletionRequest, CompletionRequest]
    try:
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        classes.append(ResponsesRequest)
    except ImportError:
        pass
    for cls in classes:
        cls.to_sampling_params = _validated(cls.to_sampling_params)
    original = InputProcessor._validate_params

    def _validate_params(self, params, *args, **kwargs):
        result = original(self, params, *args, **kwargs)
        _validate(params)
        return result

    InputProcessor._validate_params = _validate_params


# --- prefix cache --------------------------------------------------------------------------------------------------
def _patch_prefix_cache() -> None:
    import vllm.v1.core.block_pool as block_pool
    import vllm.v1.core.kv_cache_utils as kv_cache_utils

    original = kv_cache_utils.generate_block_hash_extra_keys

    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        keys, next_mm = original(request, start_token_idx, end_token_idx, start_mm_idx)
        try:
            choice = _choice(getattr(request, "sampling_params", None))
            if choice is None:
                return keys, next_mm
            prompt = int(request.num_prompt_tokens)
            if choice.positions == "last" and end_token_idx <= prompt - 1:
                return keys, next_mm  # before the last prompt token: computed as by the plain model
            return (*(keys or ()), (*choice.cache_key(), prompt)), next_mm
        except Exception:  # the engine core must never die here
            logger.exception("iti-vllm: prefix-cache key")
            return keys, next_mm

    kv_cache_utils.generate_block_hash_extra_keys = generate_block_hash_extra_keys
    block_pool.generate_block_hash_extra_keys = generate_block_hash_extra_keys


# --- steering in the worker ----------------------------------------------------------------------------------------
@dataclass
class BatchSteering:
    """One step's steering: each token's strength per value used, and per layer the values' unit shifts."""
    coef: torch.Tensor                   # [tokens, K]
    shifts: dict[int, torch.Tensor]      # layer -> [K, H * D]


def _request_choice(runner: Any, req_id: str, state: Any) -> SteeringChoice | None:
    """A request's steering, parsed once per request (kept on the runner while the request lives)."""
    choices = runner._iti_choices
    if req_id not in choices:
        if len(choices) > 2 * len(runner.requests) + 64:  # forget finished requests
            for gone in [r for r in choices if r not in runner.requests]:
                del choices[gone]
        choices[req_id] = _choice(getattr(state, "sampling_params", None))
    return choices[req_id]


def batch_steering(runner: Any, positions: torch.Tensor, num_tokens: int) -> BatchSteering | None:
    """The steering of the step the runner is about to run (None: no request in it is steered)."""
    batch = runner.input_batch
    n = int(batch.num_reqs)
    steered = []
    for r, req_id in enumerate(batch.req_ids[:n]):
        state = runner.requests.get(req_id)
        choice = _request_choice(runner, req_id, state) if state is not None else None
        if choice is not None and choice.strength != 0.0:
            steered.append((r, state, choice))
    if not steered:
        return None
    names = runner._iti_names
    starts = runner.query_start_loc.np[: n + 1]
    pos = (positions if positions.dim() == 1 else positions[0]).reshape(-1)[:num_tokens].cpu().numpy()
    cols = sorted({names.index(c.name) for _, _, c in steered})
    coef = np.zeros((num_tokens, len(cols)), dtype=np.float32)
    for r, state, choice in steered:
        s, e, col = int(starts[r]), int(starts[r + 1]), cols.index(names.index(choice.name))
        if choice.positions == "all":
            coef[s:e, col] = choice.strength
        else:
            coef[s:e, col] = np.where(pos[s:e] >= int(state.num_prompt_tokens) - 1, choice.strength, 0.0)
    key = tuple(cols)
    if key not in runner._iti_stacked:  # per layer, the used values' unit shifts stacked [K, H * D]
        lib, zero = library(), runner._iti_zero
        layers = {layer for c in cols for layer in lib[names[c]].unit}
        runner._iti_stacked[key] = {layer: torch.stack([runner._iti_shifts[names[c]].get(layer, zero) for c in cols])
                                    for layer in layers}
    return BatchSteering(torch.from_numpy(coef).to(runner._iti_zero.device), runner._iti_stacked[key])


def _o_proj_hook(layer: int, offset: int):
    from vllm.forward_context import get_forward_context, is_forward_context_available

    def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
        if not is_forward_context_available():
            return None
        state = get_forward_context().additional_kwargs.get(STATE_KEY)
        if state is None or layer not in state.shifts:
            return None
        x = args[0]
        shift = state.shifts[layer][:, offset : offset + x.shape[-1]].to(x.device)
        add = state.coef[: x.shape[0]].to(x.device) @ shift
        return (x + add.to(x.dtype), *args[1:])

    return hook


def _install_hooks(runner: Any) -> None:
    """After the model loads: check the library against it, refuse a compiled model, hook every o_proj (once)."""
    if getattr(runner, "_iti_shifts", None) is not None:
        return
    lib = library()
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    config = runner.model_config.hf_config
    text = getattr(config, "text_config", config)
    num_heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // num_heads)
    o_projs = {int(m.group(1)): mod for name, mod in model.named_modules() if (m := _O_PROJ.search(name))}
    if not o_projs:
        raise RuntimeError(f"iti-vllm: no layers.N.self_attn.o_proj in {type(model).__name__}; this architecture is not supported")
    check_geometry(lib, len(o_projs), num_heads, head_dim)
    if lib:
        from vllm.config import CompilationMode

        if runner.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise RuntimeError("iti-vllm: serve with --enforce-eager (a compiled model would not run the steering hooks)")
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    width = num_heads * head_dim // get_tensor_model_parallel_world_size()
    offset = get_tensor_model_parallel_rank() * width
    device = next(model.parameters()).device  # the shifts live there once, not copied to the GPU in every hook call
    runner._iti_shifts = {name: {l: torch.from_numpy(v).to(device) for l, v in e.unit.items()} for name, e in lib.items()}
    runner._iti_names, runner._iti_choices, runner._iti_stacked = list(lib), {}, {}
    runner._iti_zero = torch.zeros(num_heads * head_dim, device=device)
    hooked = sorted({layer for e in lib.values() for layer in e.unit})  # only the layers some value shifts
    for layer in hooked:
        o_projs[layer].register_forward_pre_hook(_o_proj_hook(layer, offset))
    logger.info("iti-vllm: %d steering values (%s) on %d of %d o_proj layers", len(lib), ", ".join(lib) or "none",
                len(hooked), len(o_projs))


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner_classes: list[Any] = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        runner_classes.append(CPUModelRunner)
    except ImportError:
        pass
    for cls in runner_classes:
        if "load_model" in cls.__dict__:
            original_load = cls.__dict__["load_model"]

            def load_model(self, *args, _original=original_load, **kwargs):
                _original(self, *args, **kwargs)
                _install_hooks(self)

            cls.load_model = load_model
    original_forward = GPUModelRunner._model_forward

    def _model_forward(self, input_ids=None, positions=None, *args, **kwargs):
        from vllm.forward_context import get_forward_context

        steering = None
        if positions is not None and getattr(self, "_iti_names", None):
            num_tokens = int(input_ids.shape[0]) if input_ids is not None else int(positions.shape[-1])
            steering = batch_steering(self, positions, num_tokens)
        if steering is None:
            return original_forward(self, input_ids, positions, *args, **kwargs)
        context = get_forward_context()
        context.additional_kwargs[STATE_KEY] = steering
        try:
            return original_forward(self, input_ids, positions, *args, **kwargs)
        finally:
            context.additional_kwargs.pop(STATE_KEY, None)

    GPUModelRunner._model_forward = _model_forward


def install() -> None:
    """Every patch; each touches only code its process runs."""
    library()  # a library that cannot be served stops the process that loads it, with the reason
    _patch_validation()
    _patch_prefix_cache()
    _patch_runner()
