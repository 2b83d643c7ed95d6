"""A sparse concept bottleneck read from a frozen model's heads.

SparseCBM prunes one weight mask per concept inside a fine-tuned encoder. On a frozen decoder the same question
becomes: which few heads carry each concept? Per aspect, every head gets a 3-way probe (one-vs-rest logistic
probes, all heads at once); the top-k heads by held-out accuracy form that concept's "subnetwork", and a
multinomial probe on their concatenated outputs predicts the concept. A label head maps the 12 concept
probabilities (4 aspects x 3 classes) to the 5 ratings: the bottleneck. The label head learns from cross-fitted
(out-of-fold) concept probabilities, as calibrated as the ones it will get on test, not from the probes' own
over-confident fit to their training rows.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from ..directions import top_heads
from ..errors import EmptyInputError, InvalidOptionError
from ..options import check_range
from ..probes import HeadProbes
from .cebab import ASPECTS

N_CLASSES = 3


def review_prompt(text: str) -> str:
    """The prompt whose last token is read: the review, then the rating question (answer tokens "1".."5")."""
    return f"Review: {text.strip()}\nRating (1-5):"


def head_concept_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                          C: float = 1.0) -> np.ndarray:
    """[L, H] held-out accuracy of a one-vs-rest 3-way probe on each head (argmax of the three decision values).

    A class absent from the training labels is never predicted (its probe cannot be fitted)."""
    if len(X_train) == 0 or len(X_val) == 0:
        raise EmptyInputError("head_concept_accuracy needs training and validation rows")
    scores = []
    for c in range(N_CLASSES):
        yc = (y_train == c).astype(np.float32)
        if yc.min() == yc.max():
            scores.append(np.full((len(X_val),) + X_val.shape[1:3], -np.inf, dtype=np.float32))
            continue
        scores.append(HeadProbes(C=C).fit(X_train, yc).decision_function(X_val))  # [N, L, H]
    pred = np.stack(scores, -1).argmax(-1)
    return (pred == y_val[:, None, None]).mean(0)


def grouped_folds(groups: Sequence[Hashable] | np.ndarray, n_folds: int, seed: int, rows: int | None = None) -> np.ndarray:
    """``[N]`` fold index (0..n_folds-1) per row: the distinct group ids, sorted then shuffled by ``seed``, are dealt
    to the folds in turn, so the rows of one group (a review and its counterfactual edits) never sit on both sides
    of a split and the folds differ in size by at most one group."""
    ids = np.asarray(groups)
    if rows is not None and (ids.ndim != 1 or len(ids) != rows):
        raise InvalidOptionError(f"groups: one group id per row ({rows} rows), got shape {ids.shape}")
    check_range("label_folds", n_folds, 2, integer=True, why="cross-fitting needs a held-out fold and a fitted one")
    distinct, row_group = np.unique(ids, return_inverse=True)
    if len(distinct) < n_folds:
        raise InvalidOptionError(f"--label_folds: at most the number of distinct groups ({len(distinct)}), got {n_folds}")
    fold_of_group = np.empty(len(distinct), dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(distinct))] = np.arange(len(distinct)) % n_folds
    return fold_of_group[row_group.reshape(-1)]


def _gather(X: np.ndarray, heads: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([X[:, l, h, :] for l, h in heads], axis=1)


@dataclass
class SparseConceptBottleneck:
    """Top-``k`` heads per aspect -> 3-way concept probes -> 12 concept probabilities -> 5-way rating."""

    k: int = 8
    C: float = 1.0
    seed: int = 0
    label_folds: int = 5  # cross-fitting folds of the label head's inputs (see fit)
    heads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    head_accuracy: dict[str, np.ndarray] = field(default_factory=dict)

    def select_heads(self, X_train, C_train, X_val, C_val) -> SparseConceptBottleneck:
        """Rank every head per aspect by held-out accuracy (probes fitted on train, scored on val)."""
        for j, aspect in enumerate(ASPECTS):
            acc = head_concept_accuracy(X_train, C_train[:, j], X_val, C_val[:, j], self.C)
            self.head_accuracy[aspect] = acc
            self.heads[aspect] = top_heads(acc, self.k)
        return self

    def fit(self, X: np.ndarray, concepts: np.ndarray, ratings: np.ndarray,
            groups: Sequence[Hashable] | np.ndarray | None = None) -> SparseConceptBottleneck:
        """Fit each aspect's concept probe on its selected heads (X ``[N, L, H, D]``, concepts ``[N, 4]``) on every
        row, then the label head (ratings 0..4) on cross-fitted concept probabilities: each row's probabilities come
        from probes fitted on the other ``label_folds`` - 1 folds, because probes score their own training rows
        more confidently than the test rows the label head will see. ``groups`` (one id per row, e.g. CEBaB's
        ``original_id``) keeps a review and its edits in one fold; ``None`` makes every row its own group. Needs
        ``heads`` (from :meth:`select_heads` or set directly)."""
        if not self.heads:
            raise ValueError("select_heads first (or set .heads)")
        self.folds_ = grouped_folds(np.arange(len(X)) if groups is None else groups, self.label_folds, self.seed,
                                    rows=len(X))
        self.concept_models_ = self._fit_concepts(X, concepts)
        self.label_inputs_ = np.zeros((len(X), len(ASPECTS), N_CLASSES))  # out-of-fold concept probabilities
        for f in range(self.label_folds):
            held = self.folds_ == f
            self.label_inputs_[held] = self._probabilities(self._fit_concepts(X[~held], concepts[~held]), X[held])
        self.label_model_ = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        self.label_model_.fit(self.label_inputs_.reshape(len(X), -1), ratings)
        return self

    def _fit_concepts(self, X: np.ndarray, concepts: np.ndarray) -> dict[str, LogisticRegression | DummyClassifier]:
        """One probe per aspect; an aspect with a single class in these rows (a small fold of a rare aspect) gets
        that class with probability 1, where a logistic regression cannot be fitted at all."""
        models: dict[str, LogisticRegression | DummyClassifier] = {}
        for j, aspect in enumerate(ASPECTS):
            A, c = _gather(X, self.heads[aspect]), concepts[:, j]
            single = len(np.unique(c)) == 1
            m = DummyClassifier(strategy="prior") if single else LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
            models[aspect] = m.fit(A, c)
        return models

    def _probabilities(self, models: dict[str, LogisticRegression | DummyClassifier], X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), len(ASPECTS), N_CLASSES))
        for j, aspect in enumerate(ASPECTS):
            m = models[aspect]
            out[:, j, m.classes_] = m.predict_proba(_gather(X, self.heads[aspect]))
        return out

    def concept_probabilities(self, X: np.ndarray) -> np.ndarray:
        """[N, 4, 3] from the probes fitted on every training row; a class the probe never saw gets probability 0."""
        return self._probabilities(self.concept_models_, X)

    def predict_concepts(self, X: np.ndarray) -> np.ndarray:
        """``[N, 4]`` most probable class per aspect (0 Negative, 1 Positive, 2 unknown)."""
        return self.concept_probabilities(X).argmax(-1)

    def rating_probabilities(self, X: np.ndarray, concept_probs: np.ndarray | None = None) -> np.ndarray:
        """[N, 5]; pass ``concept_probs`` to run the label head on edited concepts (oracle correction)."""
        cp = self.concept_probabilities(X) if concept_probs is None else concept_probs
        out = np.zeros((len(cp), 5))
        out[:, self.label_model_.classes_] = self.label_model_.predict_proba(cp.reshape(len(cp), -1))
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``[N]`` most probable rating as a class index 0..4 (stars - 1)."""
        return self.rating_probabilities(X).argmax(-1)

    def expected_rating(self, X: np.ndarray, concept_probs: np.ndarray | None = None) -> np.ndarray:
        """Expected stars (1-5) under the label head: a continuous rating whose change can be compared with humans'."""
        return self.rating_probabilities(X, concept_probs) @ np.arange(1, 6)


def original_macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """SparseCBM's "macro F1": for each class present in ``true``, the macro-F1 of the binary one-vs-rest problem,
    then their mean (higher than scikit-learn's multi-class macro-F1)."""
    classes = np.unique(true)
    return float(np.mean([f1_score(true == c, pred == c, average="macro") for c in classes]))


def task_and_concept_metrics(pred_ratings, ratings, pred_concepts=None, concepts=None) -> dict[str, float]:
    """Accuracy and two macro-F1s for the rating and per aspect: scikit-learn's (``*_macro_f1``; the concepts' is the
    mean over aspects) and SparseCBM's own (``*_macro_f1_sparsecbm``, :func:`original_macro_f1`; the concepts' pools
    every (review, aspect) pair, as SparseCBM computes it), named apart. Without concepts (a model with no bottleneck),
    the rating's only."""
    out = {"task_accuracy": float(accuracy_score(ratings, pred_ratings)),
           "task_macro_f1": float(f1_score(ratings, pred_ratings, average="macro")),
           "task_macro_f1_sparsecbm": original_macro_f1(np.asarray(ratings), np.asarray(pred_ratings))}
    if concepts is None or pred_concepts is None or np.asarray(pred_concepts).shape[-1] == 0:
        return out
    for j, aspect in enumerate(ASPECTS):
        out[f"{aspect}_accuracy"] = float(accuracy_score(concepts[:, j], pred_concepts[:, j]))
        out[f"{aspect}_macro_f1"] = float(f1_score(concepts[:, j], pred_concepts[:, j], average="macro", labels=[0, 1, 2],
                                                     zero_division=0))
        out[f"{aspect}_macro_f1_sparsecbm"] = original_macro_f1(concepts[:, j], pred_concepts[:, j])
    for name in ("accuracy", "macro_f1"):
        out[f"concept_{name}"] = float(np.mean([out[f"{a}_{name}"] for a in ASPECTS]))
    # SparseCBM's concept macro-F1 pools the (review, aspect) pairs of all four aspects, as its code does
    out["concept_macro_f1_sparsecbm"] = original_macro_f1(np.asarray(concepts).ravel(), np.asarray(pred_concepts).ravel())
    return out


def oracle_correction(model: SparseConceptBottleneck, X: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """Ratings after setting every mispredicted concept to its gold class (one-hot) in the bottleneck: the
    analogue of CBM test-time intervention."""
    probs = model.concept_probabilities(X)
    wrong = probs.argmax(-1) != concepts
    gold = np.eye(N_CLASSES)[concepts]
    fixed = np.where(wrong[..., None], gold, probs)
    return model.rating_probabilities(X, fixed).argmax(-1)
