"""CEBaB restaurant reviews as a concept-bottleneck data set: rating (5 classes) and four aspect concepts
(Negative / Positive / unknown), plus the human counterfactual edits paired with their originals.

Conventions follow SparseCBM's "pure CEBaB" setting: rows whose review has no majority rating are dropped; an
aspect that was not annotated ("") or has no majority counts as unknown. Ids are kept as strings (pandas would turn
"000000_000002" into 2).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, EmptyInputError, FeatureFileError
from ..paths import data_search

ASPECTS = ("food", "service", "ambiance", "noise")
CONCEPT_CLASSES = ("Negative", "Positive", "unknown")
_CONCEPT_INDEX = {"Negative": 0, "Positive": 1, "unknown": 2, "": 2, "no majority": 2}
SPLITS = {"train_exclusive": "train_exclusive.json", "dev": "dev.json", "validation": "dev.json", "test": "test.json"}
HUB_ID = "CEBaB/CEBaB"


@dataclass(frozen=True)
class Review:
    """One CEBaB row: text, majority rating and aspect classes; the edit fields are None for an original
    review."""
    id: str
    original_id: str
    is_original: bool
    text: str
    rating: int                   # 0..4 (stars - 1)
    concepts: tuple[int, ...]     # one class index per aspect, in ASPECTS order
    edit_type: str | None = None
    edit_goal: str | None = None


@dataclass(frozen=True)
class EditPair:
    """A human edit of one aspect toward ``edit_goal``, with the rating change it caused."""

    original: Review
    edited: Review

    @property
    def aspect(self) -> str:
        """The aspect the edit changed (the edited review's ``edit_type``)."""
        return str(self.edited.edit_type)

    @property
    def goal(self) -> str:
        """The class the edit aimed the aspect at (the edited review's ``edit_goal``)."""
        return str(self.edited.edit_goal)

    @property
    def rating_change(self) -> int:
        """Edited minus original majority rating, in stars (positive when the edit raised it)."""
        return self.edited.rating - self.original.rating


@dataclass(frozen=True)
class CebabSplit:
    """One loaded split: the reviews kept, where they were read from (a path or ``hub:...``), and how many
    rows were dropped for having no majority rating."""
    name: str
    origin: str
    reviews: tuple[Review, ...]
    dropped_no_majority: int

    def __len__(self) -> int:
        return len(self.reviews)

    @property
    def ratings(self) -> np.ndarray:
        """``[N]`` majority ratings as class indices 0..4 (stars - 1)."""
        return np.array([r.rating for r in self.reviews], dtype=np.int64)

    @property
    def concepts(self) -> np.ndarray:
        """[N, 4] class indices (0 Negative, 1 Positive, 2 unknown)."""
        return np.array([r.concepts for r in self.reviews], dtype=np.int64).reshape(-1, len(ASPECTS))

    def pairs(self) -> list[EditPair]:
        """Every edit matched to its original (same ``original_id``) in this split."""
        originals = {r.original_id: r for r in self.reviews if r.is_original}
        return [EditPair(originals[r.original_id], r) for r in self.reviews
                if not r.is_original and r.original_id in originals and r.edit_type in ASPECTS]


def _review(row: dict) -> Review | None:
    majority = str(row["review_majority"])
    if majority == "no majority":
        return None
    concepts = []
    for aspect in ASPECTS:
        value = row.get(f"{aspect}_aspect_majority") or ""
        if value not in _CONCEPT_INDEX:
            raise ValueError(f"row {row.get('id')!r}: unknown {aspect} label {value!r}")
        concepts.append(_CONCEPT_INDEX[value])
    is_original = bool(row["is_original"])
    return Review(str(row["id"]), str(row["original_id"]), is_original, str(row["description"]), int(majority) - 1,
                  tuple(concepts), None if is_original else row.get("edit_type"), None if is_original else row.get("edit_goal"))


def load_cebab(split: str, data_dir: str | os.PathLike | None = None, *, allow_hub: bool = True) -> CebabSplit:
    """``train_exclusive``, ``dev`` (alias ``validation``) or ``test`` from ``data_dir``, ``$ITI_DATA_DIR``,
    ``../shared/data`` (folder ``cebab/``), then the hub."""
    if split not in SPLITS:
        raise DataNotFoundError(f"unknown CEBaB split {split!r}; choose one of train_exclusive, dev, test")
    relative = Path("cebab") / SPLITS[split]
    search = data_search(data_dir)
    path = search.find(relative)
    if path is not None:
        try:
            rows, origin = json.loads(path.read_text(encoding="utf-8")), str(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FeatureFileError(f"{path} is not valid CEBaB JSON: {e}") from e
    else:
        hub_error = "not tried (allow_hub=False)"
        rows = None
        if allow_hub:
            try:
                from datasets import load_dataset

                hub_split = "validation" if split == "dev" else split
                rows, origin = [dict(r) for r in load_dataset(HUB_ID, split=hub_split)], f"hub:{HUB_ID}"
            except Exception as e:  # offline or missing: reported with the local misses
                hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if rows is None:
            raise DataNotFoundError(f"CEBaB {split} not found. Looked for {relative} in:\n{search.describe(relative)}\n"
                                    f"  then the Hugging Face hub ({HUB_ID}): {hub_error}\n"
                                    "Pass data_dir=/path/to/data, or set ITI_DATA_DIR.")
    try:
        parsed = [_review(r) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise FeatureFileError(f"{origin} is not in CEBaB's format: {type(e).__name__}: {e}") from e
    reviews = tuple(r for r in parsed if r is not None)
    if not reviews:
        raise EmptyInputError(f"{origin} holds no reviews with a majority rating")
    return CebabSplit(split, origin, reviews, len(parsed) - len(reviews))


def majority_baseline(train: CebabSplit, test: CebabSplit) -> dict[str, float]:
    """Concept accuracy of always predicting each aspect's most frequent class (the class counted on ``train``)."""
    out = {}
    for j, aspect in enumerate(ASPECTS):
        majority = np.bincount(train.concepts[:, j], minlength=3).argmax()
        out[aspect] = float((test.concepts[:, j] == majority).mean())
    out["mean"] = float(np.mean([out[a] for a in ASPECTS]))
    return out
