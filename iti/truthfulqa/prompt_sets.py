"""The prompt sets activations are collected on, built exactly as honest_llama's get_activations does.

- ``tqa_mc2``: ``"Q: {question} A: {choice}"`` for every mc2 choice, question-major (5,882 prompts).
- ``tqa_gen``: the same format over the generation split's correct answers (label 1), then incorrect (label 0).
- ``tqa_gen_end_q``: ``"Q: {question} A: {answer} Q: {random question}"``, one random question drawn per
  generation row. The original draws it from numpy's unseeded global RNG; here it comes from
  ``numpy.random.default_rng(seed)`` so the same seed gives the same prompts.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..errors import EmptyInputError
from ..features import PromptSet
from .data import TruthfulQA, load_truthfulqa

QA_FORMAT = "Q: {question} A: {answer}"
QA_END_Q_FORMAT = "Q: {question} A: {answer} Q: {rand_question}"


def _tqa_mc2(tqa: TruthfulQA, questions: set[int], seed: int) -> PromptSet:
    prompts, labels, qids = [], [], []
    for qi, item in enumerate(tqa.mc):
        if qi not in questions:
            continue
        for choice, label in item.mc2:
            prompts.append(QA_FORMAT.format(question=item.question, answer=choice))
            labels.append(label)
            qids.append(qi)
    return PromptSet("tqa_mc2", prompts, np.asarray(labels, dtype=np.int64), np.asarray(qids, dtype=np.int64), QA_FORMAT)


def _tqa_gen_rows(tqa: TruthfulQA, questions: set[int], fmt: str, rand_questions: list[str] | None, name: str) -> PromptSet:
    prompts, labels, qids, cats = [], [], [], []
    for gi, item in enumerate(tqa.gen):
        qi = tqa.mc_index_of_gen[gi]
        if qi not in questions:
            continue
        rand_q = rand_questions[gi] if rand_questions is not None else None
        for answers, label in ((item.correct_answers, 1), (item.incorrect_answers, 0)):
            for answer in answers:
                prompts.append(fmt.format(question=item.question, answer=answer, rand_question=rand_q))
                labels.append(label)
                qids.append(qi)
                cats.append(item.category)
    return PromptSet(name, prompts, np.asarray(labels, dtype=np.int64), np.asarray(qids, dtype=np.int64), fmt, categories=cats)


def _tqa_gen(tqa: TruthfulQA, questions: set[int], seed: int) -> PromptSet:
    return _tqa_gen_rows(tqa, questions, QA_FORMAT, None, "tqa_gen")


def _tqa_gen_end_q(tqa: TruthfulQA, questions: set[int], seed: int) -> PromptSet:
    # One draw per generation row over the whole data set, so a subset's prompts equal the full set's.
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(tqa.gen), size=len(tqa.gen))
    rand_questions = [tqa.gen[int(j)].question for j in draws]
    ps = _tqa_gen_rows(tqa, questions, QA_END_Q_FORMAT, rand_questions, "tqa_gen_end_q")
    ps.meta["seed"] = seed
    return ps


BUILDERS: dict[str, Callable[[TruthfulQA, set[int], int], PromptSet]] = {
    "tqa_mc2": _tqa_mc2,
    "tqa_gen": _tqa_gen,
    "tqa_gen_end_q": _tqa_gen_end_q,
}


def build_prompt_set(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    max_questions: int | None = None,
    seed: int = 42,
    truthfulqa: TruthfulQA | None = None,
) -> PromptSet:
    """Build a named prompt set; ``max_questions`` keeps the first N questions (in mc order)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    if max_questions is not None and int(max_questions) <= 0:
        raise EmptyInputError(f"max_questions must be positive, got {max_questions}")
    tqa = truthfulqa or load_truthfulqa(data_dir, max_questions=max_questions)
    n = len(tqa) if max_questions is None else int(max_questions)
    ps = BUILDERS[name](tqa, set(range(min(n, len(tqa)))), seed)
    ps.meta.update({"source": tqa.origin, "num_questions": int(len(set(ps.question_ids.tolist())))})
    if max_questions is not None:
        ps.meta["max_questions"] = int(max_questions)
    return ps
