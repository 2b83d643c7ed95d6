"""Greedy TruthfulQA answers from an OpenAI-compatible server: a served model (plain or baked), or iti's vLLM plugin
steering each request by name and strength, so an alpha sweep or a cost-matched comparison runs against one server.

The prompts are sent as the token ids :func:`~iti.truthfulqa.generation.generate_answers` feeds the model in process,
the answer stops at the next "Q:" (vLLM cuts the stop string; what precedes it is what honest_llama's
post-processing keeps) and goes through the same :func:`~iti.truthfulqa.generation.postprocess_answer`."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from ..errors import EndpointError
from ..openai_client import post_completion
from .generation import ANSWER_END, postprocess_answer


def remote_answers(url: str, served_model: str, tokenizer: Any, prompts: Sequence[str], *,
                   steering: dict[str, Any] | None = None, max_new_tokens: int = 50, api_key: str | None = None,
                   timeout: float = 120.0, max_workers: int = 8, progress: bool = True) -> list[str]:
    """One greedy completion per prompt from ``url`` (``…/v1``); ``steering``: the plugin's ``vllm_xargs``
    (:func:`iti.openai_client.plugin_steering_args`). Any failure raises :class:`~iti.errors.EndpointError` naming
    the prompt; nothing is half-returned."""
    encoded = [list(e) for e in tokenizer(list(prompts))["input_ids"]]

    def one(ids: list[int]) -> str:
        body: dict[str, Any] = {"model": served_model, "prompt": ids, "max_tokens": max_new_tokens, "temperature": 0,
                                "stop": [ANSWER_END]}
        if steering:
            body["vllm_xargs"] = dict(steering)
        data = post_completion(url, body, api_key=api_key, timeout=timeout)
        try:
            text = data["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{url} answered without a completion text: is it an OpenAI-compatible endpoint?") from None
        return postprocess_answer(str(text))

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(tqdm(pool.map(one, encoded), total=len(encoded), desc="remote answers", unit="question",
                         disable=not progress))
