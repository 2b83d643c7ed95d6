"""Where the MC shift starts, and what it does to MC2: ITI (K = 48, alpha 15, mass-mean) fitted on questions 20..99
and MC-scored on questions 0..19 with SmolLM2-135M, plain and under each ``--mc_shift_start``: the last context token
(the default: every answer token scored under the shift, as steered decoding produces it), the first answer token
(the former default, which leaves the first answer token unsteered) and honest_llama's len(question prompt) + 4 (the
second answer token for SmolLM2).

    python get_activations/get_activations.py --max_questions 100 --output_dir /tmp/i16feat  # tqa_mc2
    python get_activations/get_activations.py --max_questions 100 --output_dir /tmp/i16feat --dataset_name tqa_gen_end_q
    python -m benchmarks.mc_shift_start /tmp/i16feat
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(features_dir: str, first: int = 0, count: int = 20) -> None:
    from iti import load_features, load_model, load_truthfulqa
    from iti.fitting import fit_intervention
    from iti.truthfulqa.mc_scoring import SHIFT_STARTS, mc_metrics, score_choices
    from iti.truthfulqa.prompts import mc_questions, shared_prefix

    root = Path(features_dir)
    mc2 = load_features(root / "smollm2-135m_tqa_mc2", mmap=False)
    gen = load_features(root / "smollm2-135m_tqa_gen_end_q", mmap=False)
    scored = np.arange(first, first + count)
    train = np.setdiff1d(np.unique(mc2.question_ids), scored)
    rows, tune = np.isin(mc2.question_ids, train), np.isin(gen.question_ids, train)
    inter = fit_intervention(mc2.head_wise[rows], mc2.labels[rows], mc2.question_ids[rows], num_heads=48, method="mass_mean",
                             alpha=15.0, std_from=gen.head_wise[tune], seed=42, geometry=mc2.geometry, model_name="smollm2-135m")
    model, tok = load_model("smollm2-135m")
    qs = mc_questions(load_truthfulqa(max_questions=int(scored.max()) + 1), scored, "qa", "default")
    prefix = shared_prefix("qa", "default")
    scores = {"plain": score_choices(model, tok, qs, prefix=prefix, progress=False)}
    for start in SHIFT_STARTS:
        scores[start] = score_choices(model, tok, qs, prefix=prefix, intervention=inter, shift_start=start, progress=False)
    print(f"questions {first}..{first + count - 1}, fitted on the other {len(train)}")
    for name, s in scores.items():
        print(f"{name}: MC2 {mc_metrics(qs, s).summary()['MC2']:.4f}")
    one_token = sum(1 for q in qs for c in q.continuations if len(tok(q.context + c)["input_ids"]) == len(tok(q.context)["input_ids"]) + 1)
    print(f"one-token answers among the {sum(len(q.continuations) for q in qs)}: {one_token}")
    for a, b in (("last_context_token", "first_answer_token"), ("first_answer_token", "original")):
        diff = max(float(np.abs(x - y).max()) for x, y in zip(scores[a], scores[b]))
        print(f"largest per-answer log-prob difference, {a} vs {b}: {diff:.2f} nats")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "features", *(int(a) for a in args[1:3]))
