"""Concept bottleneck and concept-level intervention on CEBaB (the SparseCBM idea, on a frozen decoder)."""
from __future__ import annotations

from .cebab import ASPECTS, CONCEPT_CLASSES, CebabSplit, EditPair, Review, load_cebab, majority_baseline

__all__ = ["ASPECTS", "CONCEPT_CLASSES", "CebabSplit", "EditPair", "Review", "load_cebab", "majority_baseline"]
