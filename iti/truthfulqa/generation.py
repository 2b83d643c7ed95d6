"""Greedy answers to TruthfulQA questions, batched with left padding, with honest_llama's post-processing."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..architectures import model_device
from ..batching import eos_token_ids, pad_batch, pad_token_id
from ..decoding import decode
from ..intervention import Intervention
from ..kv_cache import SharedPrefix

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
    share_prefix: bool = True,
) -> list[str]:
    """Greedy decoding of up to ``max_new_tokens``; the shift (if any) reaches the last prompt token and every
    generated token, as in honest_llama's 'lt' setting. A row stops at its first "Q:" (where the model starts the
    next question), since :func:`postprocess_answer` drops everything from there on: the answers are those of the
    full ``max_new_tokens``, without the decode steps nobody reads (``stop_at_next_question=False``: all of them).

    ``share_prefix``: the token prefix all prompts share (instruction + primer, 215 of SmolLM2's ~227 prompt
    tokens) is encoded once, without the shift (it never reaches the last prompt token), and every batch decodes on
    top of a fork of its cache; a finished row leaves the batch. ``share_prefix=False`` is the reference:
    ``generate()`` on the full prompts, as honest_llama runs it.
    """
    encoded = [list(e) for e in tokenizer(list(prompts))["input_ids"]]
    if not encoded:
        return []
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    eos = eos_token_ids(model, tokenizer)
    shared = _common_prefix_length(encoded) if share_prefix else 0
    device = model_device(model)
    with torch.inference_mode():
        prefix_cache = SharedPrefix(model, encoded[0][:shared], device) if shared else None
        for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            rows = [encoded[i] for i in idx]
            if prefix_cache is None:
                tokens = _generate_full(model, tokenizer, rows, intervention, max_new_tokens, eos, stop_at_next_question)
            else:
                tokens = _greedy_on_prefix(model, tokenizer, rows, intervention, prefix_cache, max_new_tokens,
                                           eos, stop_at_next_question)
            for i, toks in zip(idx, tokens):
                cut = next((j for j, t in enumerate(toks) if t in eos), len(toks))
                answers[i] = postprocess_answer(tokenizer.decode(toks[:cut], skip_special_tokens=True))
    return answers


def _common_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own (the one the shift
    reaches); 0 when one prompt is too short to share anything."""
    first, shortest = encoded[0], min(len(e) for e in encoded)
    n = 0
    while n < shortest - 1 and all(e[n] == first[n] for e in encoded):
        n += 1
    return n


def _generate_full(model: torch.nn.Module, tokenizer: Any, rows: list[list[int]], intervention: Intervention | None,
                   max_new_tokens: int, eos: set[int], stop_at_next_question: bool) -> list[list[int]]:
    """transformers' ``generate`` on left-padded full prompts: the reference the shared-prefix loop must equal."""
    pad = pad_token_id(tokenizer)
    ids, mask = pad_batch(rows, pad, padding_side="left")  # every row's last prompt token at the end
    device = model_device(model)
    kwargs: dict[str, Any] = dict(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=sorted(eos) or None)
    if stop_at_next_question:
        kwargs.update(stop_strings=[ANSWER_END], tokenizer=tokenizer)
    hf_model: Any = model  # a transformers model: generate() is not nn.Module's
    with intervention.applied(model, positions="last") if intervention is not None else contextlib.nullcontext():
        out = hf_model.generate(**kwargs)
    return [row.tolist() for row in out[:, ids.shape[1] :]]


def _greedy_on_prefix(model: torch.nn.Module, tokenizer: Any, rows: list[list[int]], intervention: Intervention | None,
                      prefix_cache: SharedPrefix, max_new_tokens: int, eos: set[int],
                      stop_at_next_question: bool) -> list[list[int]]:
    """Greedy tokens of each row, decoded on a fork of the shared prefix's cache. Each row's own part is left
    padded (the padding sits between the prefix and the row, masked), so all rows end at the same column, the last
    prompt token, from which on the shift applies (an absolute column: ``positions="last"`` would take the first
    forward on a cache for a continuation); position ids count real tokens only, as if each row ran alone."""
    shared = prefix_cache.length
    ids, mask = pad_batch([r[shared:] for r in rows], pad_token_id(tokenizer), padding_side="left")
    past = prefix_cache.batch(len(rows))
    attn = prefix_cache.attention(mask)
    positions = shared + (mask.cumsum(1) - 1).clamp(min=0)
    last_prompt_column = shared + ids.shape[1] - 1
    with (intervention.applied(model, positions=last_prompt_column) if intervention is not None
          else contextlib.nullcontext()):
        return _greedy_loop(model, tokenizer, ids, attn, positions, past, max_new_tokens, eos, stop_at_next_question)


def _greedy_loop(model: torch.nn.Module, tokenizer: Any, step_ids: torch.Tensor, attn: torch.Tensor,
                 positions: torch.Tensor, past: Any, max_new_tokens: int, eos: set[int],
                 stop_at_next_question: bool) -> list[list[int]]:
    """Greedy tokens of each row, step by step until every row has ended (EOS, its next "Q:", or ``max_new_tokens``)."""
    def ended(tokens: list[int]) -> bool:
        return tokens[-1] in eos or (stop_at_next_question and ANSWER_END in tokenizer.decode(tokens, skip_special_tokens=True))

    tokens, _ = decode(model, step_ids, attn, positions, past, max_steps=max_new_tokens,
                       next_tokens=lambda logits, *_: logits.argmax(-1), ended=ended)
    return tokens
