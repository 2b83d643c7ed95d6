"""Greedy answers to TruthfulQA questions, batched with left padding, with honest_llama's post-processing."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..architectures import model_device
from ..batching import pad_batch, pad_token_id
from ..intervention import Intervention

#: Where an answer ends for :func:`postprocess_answer`: the model starting the next question of the primer.
ANSWER_END = "Q:"


def postprocess_answer(text: str) -> str:
    """honest_llama: strip, keep what precedes the next "Q:", take what follows the first "A:" if any, strip."""
    text = text.strip().split(ANSWER_END)[0]
    parts = text.split("A:")
    if len(parts) > 1:
        text = parts[1]
    return text.strip()


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    intervention: Intervention | None = None,
    max_new_tokens: int = 50,
    batch_size: int = 16,
    progress: bool = True,
    stop_at_next_question: bool = True,
) -> list[str]:
    """Greedy decoding of up to ``max_new_tokens``; the shift (if any) reaches the last prompt token and every
    generated token, as in honest_llama's 'lt' setting. A row stops at its first "Q:" (where the model starts the
    next question), since :func:`postprocess_answer` drops everything from there on: the answers are those of the
    full ``max_new_tokens``, without the decode steps nobody reads (``stop_at_next_question=False``: all of them)."""
    device = model_device(model)
    hf_model: Any = model  # a transformers model: generate() is not nn.Module's
    pad = pad_token_id(tokenizer)
    encoded = [list(e) for e in tokenizer(list(prompts))["input_ids"]]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    eos = getattr(tokenizer, "eos_token_id", None)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            # left padding: every row's last prompt token is at the end
            ids, mask = pad_batch([encoded[i] for i in idx], pad, padding_side="left")
            width = ids.shape[1]
            kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad, eos_token_id=eos)
            if stop_at_next_question:
                kwargs.update(stop_strings=[ANSWER_END], tokenizer=tokenizer)
            if intervention is not None:
                with intervention.applied(model, positions="last"):
                    out = hf_model.generate(**kwargs)
            else:
                out = hf_model.generate(**kwargs)
            for j, i in enumerate(idx):
                answers[i] = postprocess_answer(tokenizer.decode(out[j, width:], skip_special_tokens=True))
    return answers
