"""The effect of --mc_shift_start original (honest_llama's len(question prompt) + 4, the second answer token for
SmolLM2) against the default first answer token: ITI (K = 48, alpha 15, mass-mean) fitted on questions 20..99 and
MC-scored on questions 0..19 with SmolLM2-135M.

    python get_activations/get_activations.py --max_questions 100 --output_dir /tmp/i16feat  # tqa_mc2
    python get_activations/get_activations.py --max_questions 100 --output_dir /tmp/i16feat --dataset_name tqa_gen_end_q
    python -m benchmarks.mc_shift_start /tmp/i16feat
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(features_dir: str) -> None:
    from iti import load_features, load_model, load_truthfulqa
    from iti.intervention import fit_intervention
    from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
    from iti.truthfulqa.prompts import mc_questions, shared_prefix

    root = Path(features_dir)
    mc2 = load_features(root / "smollm2-135m_tqa_mc2", mmap=False)
    gen = load_features(root / "smollm2-135m_tqa_gen_end_q", mmap=False)
    train = np.arange(20, 100)
    rows, tune = np.isin(mc2.question_ids, train), np.isin(gen.question_ids, train)
    inter = fit_intervention(mc2.head_wise[rows], mc2.labels[rows], mc2.question_ids[rows], num_heads=48, method="mass_mean",
                             alpha=15.0, std_from=gen.head_wise[tune], seed=42, geometry=mc2.geometry, model_name="smollm2-135m")
    model, tok = load_model("smollm2-135m")
    qs = mc_questions(load_truthfulqa(max_questions=20), np.arange(20), "qa", "default")
    scores = {}
    for start in ("first_answer_token", "original"):
        scores[start] = score_choices(model, tok, qs, prefix=shared_prefix("qa", "default"), intervention=inter,
                                      shift_start=start, progress=False)
        print(f"{start}: MC2 {mc_metrics(qs, scores[start]).summary()['MC2']:.4f}")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(scores["first_answer_token"], scores["original"]))
    print(f"largest per-answer log-prob difference: {diff:.2f} nats")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "features")
