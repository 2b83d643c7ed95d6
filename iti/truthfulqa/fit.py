"""One fold of honest_llama's validate_2fold: probes on the fold's training questions, then an intervention, both
through the library's one recipe (:func:`iti.directions.fit_head_probes`, :func:`iti.intervention.fit_intervention`)."""
from __future__ import annotations

import numpy as np

from ..directions import ProbeFit, fit_head_probes
from ..features import FeatureSet
from ..intervention import Intervention, fit_intervention

#: Probes trained on one fold's train split, with their validation accuracy per head (the library's ProbeFit).
FoldProbes = ProbeFit


def train_fold_probes(features: FeatureSet, train_questions: np.ndarray, *, val_ratio: float = 0.2, seed: int = 42) -> FoldProbes:
    """Split the fold's training questions into train and validation (by question, seeded), fit every head's
    probe on train and score it on validation."""
    return fit_head_probes(features.head_wise, features.labels, features.question_ids, val_ratio=val_ratio, seed=seed,
                           split_groups=train_questions)


def build_intervention(
    features: FeatureSet,
    tuning: FeatureSet,
    fold: FoldProbes,
    *,
    num_heads: int,
    alpha: float,
    model_name: str,
    direction: str = "mass_mean",
    heads: str = "top",
    seed: int = 42,
    tune_on_all_questions: bool = False,
) -> Intervention:
    """Heads: "top" (by validation accuracy) or "random"; direction: "mass_mean", "probe" or "random".

    Mass-mean directions pool the train and validation questions of the fold (as the original). The std of the
    projections comes from the tuning set (tqa_gen_end_q) restricted to the fold's training questions; the
    original used every question, test fold included (``tune_on_all_questions=True``).
    """
    train_q = np.concatenate([fold.train_questions, fold.val_questions])
    rows = np.isin(features.question_ids, train_q)
    tune_rows = slice(None) if tune_on_all_questions else np.isin(tuning.question_ids, train_q)
    std_from = tuning.head_wise[tune_rows]
    meta = {"heads": heads, "direction": direction, "seed": seed, "num_heads": num_heads,
            "train_questions": int(len(train_q)), "tuning_rows": int(len(std_from))}
    return fit_intervention(features.head_wise[rows], features.labels[rows], features.question_ids[rows], num_heads=num_heads,
                            method=direction, head_choice="probe_accuracy" if heads == "top" else "random", alpha=alpha,
                            std_from=std_from, probes=fold, seed=seed, geometry=features.geometry, model_name=model_name, meta=meta)


#: what ``meta["fitted_on"]`` says of an intervention fitted by :func:`fit_on_all_questions`
ALL_QUESTIONS = "all questions"


def fit_on_all_questions(
    features: FeatureSet,
    tuning: FeatureSet,
    *,
    num_heads: int,
    alpha: float,
    model_name: str,
    direction: str = "probe",
    heads: str = "top",
    seed: int = 42,
    val_ratio: float = 0.2,
) -> Intervention:
    """honest_llama's edit_weight.py: the intervention fitted on every question of the features (817 for the full
    TruthfulQA), not on a fold. Probes on a seeded 80/20 split of all questions pick the top heads ("top"; "random"
    draws them), directions from all rows ("mass_mean", "probe" or "random"), stds from every tuning row
    (tqa_gen_end_q), as the original. ``meta["fitted_on"]`` is :data:`ALL_QUESTIONS`."""
    questions = int(len(np.unique(features.question_ids)))
    meta = {"fitted_on": ALL_QUESTIONS, "questions": questions, "heads": heads, "direction": direction, "seed": seed,
            "num_heads": num_heads, "val_ratio": val_ratio, "tuning_rows": int(len(tuning.question_ids)),
            "features": {fs.manifest["dataset"]["name"]: fs.manifest.get("job_id") for fs in (features, tuning)}}
    return fit_intervention(features, num_heads=num_heads, method=direction, head_choice="probe_accuracy" if heads == "top" else "random",
                            alpha=alpha, std_from=tuning, val_ratio=val_ratio, seed=seed, model_name=model_name, meta=meta)
