"""SparseCBM's subnetworks: one binary mask per concept over each chosen ``nn.Linear`` weight of a backbone.

A concept's forward pass runs the backbone with every masked weight replaced by ``W * M_concept``
(``torch.func.functional_call``: the module's own weights are never touched, so the concepts cannot leak into each
other through a shared "current mask" as in the released code, where every pass used the food mask)."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ItiError


class ConceptMaskError(ItiError, ValueError):
    """A mask layout that does not fit the backbone (no matching Linear layer, a concept out of range)."""


def masked_linear_names(backbone: nn.Module, pattern: str | None = None) -> list[str]:
    """The weight names of the backbone's ``nn.Linear`` layers (optionally those whose name matches ``pattern``),
    in module order."""
    names = [f"{name}.weight" for name, m in backbone.named_modules() if isinstance(m, nn.Linear)
             and (pattern is None or re.search(pattern, name))]
    if not names:
        raise ConceptMaskError(f"no nn.Linear layer of the backbone matches {pattern!r}" if pattern else
                               "the backbone has no nn.Linear layer to mask")
    return names


class ConceptMasks(nn.Module):
    """``n_concepts`` binary masks (all ones at first) for each weight in ``names``; buffers, so they are saved and
    moved with the module. ``masks[i][c]`` is concept ``c``'s mask of weight ``names[i]``."""

    def __init__(self, backbone: nn.Module, n_concepts: int, names: Sequence[str]):
        super().__init__()
        if n_concepts < 1:
            raise ConceptMaskError(f"n_concepts must be >= 1, got {n_concepts}")
        params = dict(backbone.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ConceptMaskError(f"the backbone has no weight {missing[0]!r}")
        self.names, self.n_concepts = list(names), n_concepts
        for i, n in enumerate(self.names):
            self.register_buffer(f"mask_{i}", torch.ones(n_concepts, *params[n].shape, dtype=torch.bool))

    def mask(self, index: int) -> torch.Tensor:
        """All concepts' masks of weight ``names[index]``: (n_concepts, *weight shape), bool."""
        return getattr(self, f"mask_{index}")

    def _check(self, concept: int) -> None:
        if not 0 <= concept < self.n_concepts:
            raise ConceptMaskError(f"concept {concept} out of range 0..{self.n_concepts - 1}")

    def masked_weights(self, backbone: nn.Module, concept: int) -> dict[str, torch.Tensor]:
        """``{name: W * M_concept}`` for every masked weight (gradients flow to W through the kept entries)."""
        self._check(concept)
        params = dict(backbone.named_parameters())
        return {n: params[n] * self.mask(i)[concept].to(params[n].dtype) for i, n in enumerate(self.names)}

    def sparsity(self, concept: int) -> dict[str, float]:
        """Share of zeros in each masked weight of ``concept``."""
        self._check(concept)
        return {n: 1.0 - self.mask(i)[concept].float().mean().item() for i, n in enumerate(self.names)}

    def overlap(self, a: int, b: int) -> float:
        """Jaccard overlap of two concepts' kept weights over all masked layers (1.0: the same subnetwork)."""
        self._check(a)
        self._check(b)
        both = either = 0
        for i in range(len(self.names)):
            ma, mb = self.mask(i)[a], self.mask(i)[b]
            both += int((ma & mb).sum())
            either += int((ma | mb).sum())
        return both / either if either else 1.0
