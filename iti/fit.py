"""Fit an ITI intervention on the training questions of a fold (honest_llama's validate_2fold inner loop)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .architectures import HeadGeometry
from .directions import mass_mean_directions, probe_directions, projection_stds, random_directions, random_heads, top_heads, unit
from .features import FeatureSet
from .intervention import Intervention
from .probes import HeadProbes, split_questions


@dataclass
class FoldProbes:
    """Probes trained on one fold's train split, with their validation accuracy per head."""

    probes: HeadProbes
    accuracies: np.ndarray  # [L, H]
    train_questions: np.ndarray
    val_questions: np.ndarray


def train_fold_probes(features: FeatureSet, train_questions: np.ndarray, *, val_ratio: float = 0.2, seed: int = 42) -> FoldProbes:
    """Split the fold's training questions into train and validation (by question, seeded), fit every head's
    probe on train and score it on validation."""
    tr, va = split_questions(train_questions, val_ratio, seed)
    q = features.question_ids
    rows_tr, rows_va = np.isin(q, tr), np.isin(q, va)
    X = features.head_wise
    probes = HeadProbes().fit(np.asarray(X[rows_tr], dtype=np.float32), features.labels[rows_tr])
    acc = probes.score(np.asarray(X[rows_va], dtype=np.float32), features.labels[rows_va])
    return FoldProbes(probes, acc, tr, va)


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
    geometry: HeadGeometry = features.geometry
    chosen = top_heads(fold.accuracies, num_heads) if heads == "top" else random_heads(geometry, num_heads, seed)
    train_q = np.concatenate([fold.train_questions, fold.val_questions])
    if direction == "mass_mean":
        rows = np.isin(features.question_ids, train_q)
        raw = mass_mean_directions(features.head_wise[rows], features.labels[rows], chosen)
    elif direction == "probe":
        raw = probe_directions(fold.probes.coef_, chosen)
    elif direction == "random":
        raw = random_directions(len(chosen), geometry.head_dim, seed)
    else:
        raise ValueError(f"direction must be mass_mean, probe or random, got {direction!r}")
    dirs = unit(raw)
    tune_rows = slice(None) if tune_on_all_questions else np.isin(tuning.question_ids, train_q)
    stds = projection_stds(tuning.head_wise[tune_rows], chosen, dirs)
    meta = {"heads": heads, "direction": direction, "seed": seed, "num_heads": num_heads,
            "train_questions": int(len(train_q)), "tuning_rows": int(len(tuning.labels[tune_rows]))}
    return Intervention(chosen, dirs, stds, alpha, model_name, geometry, meta)
