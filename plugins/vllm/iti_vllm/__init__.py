"""iti's vLLM plugin: per-request attention-head steering with ITI's position rule.

Install it into vLLM's environment (``pip install plugins/vllm``), point ``ITI_VLLM_STEERING`` at a directory of
saved iti interventions or ``head_out`` steering values, and serve with ``--enforce-eager``. A request then names a
value, a strength and the positions in the OpenAI API's extra arguments::

    extra_body={"vllm_xargs": {"iti": "truthful", "iti_strength": 15, "iti_positions": "last"}}

``last`` shifts the last prompt token and every generated token (ITI's rule, what ``Intervention.applied`` does in
process); ``all`` shifts every token (what a baked checkpoint does). A request that names nothing is the plain model.
Bad arguments are a 400 with one line; the server keeps serving.

vLLM calls :func:`register` once in each of its processes (API server, engine core, workers)."""
from __future__ import annotations

import os

SUPPORTED_VLLM = "0.32.0"
_registered = False


def register() -> None:
    """Patch this process's part of vLLM: request validation (API server), prefix-cache keys (engine core), the
    o_proj hooks and the per-step token map (workers). Idempotent."""
    global _registered
    if _registered:
        return
    import vllm

    if vllm.__version__ != SUPPORTED_VLLM:
        raise RuntimeError(f"iti-vllm supports vLLM {SUPPORTED_VLLM} (it hooks private functions), found {vllm.__version__}")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the v1 runner is the one hooked (the CPU build's default)
    from . import engine

    engine.install()
    _registered = True
