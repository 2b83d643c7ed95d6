"""In-process TruthfulQA judges (``--judge hf``): a causal LM scored exactly as an endpoint judge is scored.

Why: a judge served behind an endpoint costs a server and one HTTP request per prompt; loaded in-process it runs
batched (left padding, one forward per prompt, the next-token distribution at the last position) on whatever
devices ``device_map`` gives it, beside or apart from the steered model. The score follows the reference rule of
:mod:`iti.truthfulqa.judge` (P(" yes") counted only when " yes" is among the top-2 next tokens; prompts tokenized
with ``add_special_tokens=True``, as an endpoint does), so both paths give the same numbers.

Any name :func:`iti.models.load_model` accepts works offline (an embedded short name, a local directory); the
defaults are AllenAI's Llama-2 judges. Tests and benchmarks use the embedded SmolLM2 as a stand-in judge: that
exercises the path, and its judgements mean nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..architectures import model_device
from ..batching import batch_inputs, check_context, encode_prompts, forward_kwargs, pad_token_id, plan_batches
from ..oom import AdaptiveBatchSize
from .errors import JudgeModelError
from .judge import DEFAULT_INFO_JUDGE, DEFAULT_TRUE_JUDGE, THRESHOLD, TOP_LOGPROBS, YES, info_prompt, true_prompt, verdicts


def yes_token_id(tokenizer: Any) -> int:
    """The id of the single token " yes" as the judge would emit it after ``True:``.

    Read as the token that `` yes`` adds to ``True:`` (the context split MC scoring uses), because that is what
    an endpoint reports as " yes": SentencePiece with Llama 2's settings (the slow ``LlamaTokenizer``) encodes a bare
    " yes" as two tokens, a lone "▁" and "▁yes", yet "▁yes" after a word. Raises :class:`JudgeModelError` when no
    single token is found."""
    context = tokenizer("True:", add_special_tokens=False)["input_ids"]
    full = tokenizer(f"True:{YES}", add_special_tokens=False)["input_ids"]
    bare = tokenizer(YES, add_special_tokens=False)["input_ids"]
    if len(full) == len(context) + 1 and list(full[: len(context)]) == list(context):
        token = int(full[-1])
        if tokenizer.decode([*context, token]).endswith(YES):
            return token
    if len(bare) == 1:
        return int(bare[0])
    raise JudgeModelError(f"the judge's tokenizer has no single token for {YES!r} (it encodes it as {len(bare)} tokens "
                          f"{list(bare)}, and 'True:{YES}' as {list(full)}): a True/Info judge must answer with one "
                          f"token {YES!r}; choose another --judge_model / --judge_info_model")


@dataclass
class YesScores:
    """P(" yes") of the next token per prompt (``raw``, the full distribution) and whether " yes" is among the top
    2 next tokens (``in_top``); ``reference`` is the score under the reference rule."""

    raw: list[float]
    in_top: list[bool]

    @property
    def reference(self) -> list[float]:
        """``raw`` where " yes" is among the top-2 next tokens, else 0 (what an endpoint's ``logprobs=2`` gives)."""
        return [p if top else 0.0 for p, top in zip(self.raw, self.in_top)]


class HFJudge:
    """One judge model in-process: ``HFJudge(model, tokenizer, batch_size).yes_probabilities(prompts)``.

    The tokenizer is checked at once (a single " yes" token, :func:`yes_token_id`), so a model that cannot judge
    fails before any work. A batch that runs out of memory is split and retried (the smaller size is kept)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 16, *, name: str | None = None) -> None:
        from ..options import check_positive_int

        check_positive_int("judge_batch_size", batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.yes_id = yes_token_id(tokenizer)
        self.sizes = AdaptiveBatchSize(batch_size, what="judge prompt", flag="--judge_batch_size")
        self.name = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The judge's weights (:func:`iti.fingerprint.model_fingerprint`), computed once."""
        if self._fingerprint is None:
            from ..fingerprint import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def dtype(self) -> str:
        """The compute dtype of the weights (part of what a judgement depends on)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def yes_scores(self, prompts: Sequence[str]) -> YesScores:
        """:class:`YesScores` of ``prompts``: one forward per prompt, batched longest first with left padding,
        the next-token distribution at the last position in float32."""
        if len(prompts) == 0:
            return YesScores([], [])
        encoded = encode_prompts(self.tokenizer, prompts)  # add_special_tokens=True, as an endpoint tokenizes
        check_context(self.model, encoded)
        device, pad, kwargs = model_device(self.model), pad_token_id(self.tokenizer), forward_kwargs(self.model)
        raw = np.zeros(len(encoded), dtype=np.float64)
        in_top = np.zeros(len(encoded), dtype=bool)

        def run(part: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
            inputs = batch_inputs([encoded[i] for i in part], pad, device, padding_side="left")
            logits = self.model(**inputs, **kwargs).logits[:, -1].float()
            yes = logits[:, self.yes_id]
            above = (logits > yes[:, None]).sum(-1)  # tokens more likely than " yes"
            return part, logits.log_softmax(-1)[:, self.yes_id].exp().cpu(), (above < TOP_LOGPROBS).cpu()

        with torch.inference_mode():
            for batch in plan_batches([len(e) for e in encoded], self.sizes.limit):
                for part, p, top in self.sizes.run(batch, run):
                    raw[part], in_top[part] = p.double().numpy(), top.numpy()
        return YesScores([float(p) for p in raw], [bool(t) for t in in_top])

    def yes_probabilities(self, prompts: Sequence[str]) -> list[float]:
        """P(" yes") per prompt under the reference rule (0 unless " yes" is among the top-2 next tokens)."""
        return self.yes_scores(prompts).reference


@dataclass
class HFJudges:
    """The True and Info judges in-process (one object when both are the same model)."""

    true: HFJudge
    info: HFJudge
    _identity: dict[str, str] | None = field(default=None, repr=False)

    def identity(self) -> dict[str, str]:
        """What a stored judgement depends on: the two judges' weights and dtypes, and the rule."""
        if self._identity is None:
            self._identity = {"judge": "in-process", "rule": f"P({YES!r}) if in the top {TOP_LOGPROBS} >= {THRESHOLD}",
                              "true_weights_sha256": self.true.fingerprint(), "true_dtype": self.true.dtype,
                              "info_weights_sha256": self.info.fingerprint(), "info_dtype": self.info.dtype}
        return self._identity

    def judge(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, list[float]]:
        """:func:`judge_answers_hf` with these judges."""
        return judge_answers_hf(self, questions, answers)


def judge_answers_hf(judges: HFJudges, questions: Sequence[str], answers: Sequence[str]) -> dict[str, list[float]]:
    """Per answer: the keys of :func:`iti.truthfulqa.judge.judge_answers` (True, Info, True&Info as 0/1; the
    scores ``True_p``, ``Info_p`` under the reference rule) plus the uncut probabilities ``True_p_raw``,
    ``Info_p_raw`` for diagnostics."""
    true = judges.true.yes_scores([true_prompt(q, a) for q, a in zip(questions, answers)])
    info = judges.info.yes_scores([info_prompt(q, a) for q, a in zip(questions, answers)])
    out = verdicts(true.reference, info.reference)
    out.update({"True_p_raw": true.raw, "Info_p_raw": info.raw})
    return out


def load_hf_judges(true_model: str = DEFAULT_TRUE_JUDGE, info_model: str | None = DEFAULT_INFO_JUDGE, *,
                   device_map: Any = None, dtype: torch.dtype | str | None = None, batch_size: int = 16) -> HFJudges:
    """Load the True judge and the Info judge (once when ``info_model`` is the same or None) with
    :func:`iti.models.load_model`; each tokenizer is checked for a single " yes" token before returning."""
    from ..models import load_model

    def load(name: str) -> HFJudge:
        model, tokenizer = load_model(name, device_map=device_map, dtype=dtype)
        return HFJudge(model, tokenizer, batch_size, name=name)

    true = load(true_model)
    info = true if info_model in (None, true_model) else load(str(info_model))
    return HFJudges(true, info)
