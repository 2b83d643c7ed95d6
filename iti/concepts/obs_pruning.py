"""SparseCBM's second-order pruning (oBERT / Optimal Brain Surgeon saliency): which weights of a concept's
subnetwork to drop, from an empirical block-diagonal Fisher of that concept's loss gradients.

For a weight matrix flattened to ``n`` entries and ``m`` gradient samples ``g_1..g_m``, each block of ``block``
consecutive entries gets ``F = damp * I + (1/m) sum_j g_j g_j^T`` (oBERT's empirical Fisher, as sparseml's
``EmpiricalBlockFisherInverse`` builds it by rank-one updates); a weight's saliency is ``w^2 / (2 [F^-1]_ii)``, the
loss increase OBS predicts for removing it. Weights are only masked, never corrected (as SparseCBM does). Where
memory is short, :func:`diagonal_saliency` keeps the Fisher's diagonal alone, and says so in its name."""
from __future__ import annotations

import torch

from ..errors import ItiError


class PruningError(ItiError, ValueError):
    """Pruning inputs that do not fit (shapes, a sparsity outside [0, 1), no gradients)."""


def block_fisher_inverse_diagonal(grads: torch.Tensor, block: int = 20, damp: float = 1e-7) -> torch.Tensor:
    """diag(F^-1) for each entry, F the empirical block Fisher of ``grads`` (m, n); the last block may be shorter."""
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise PruningError(f"grads must be (samples, entries) with at least one sample, got shape {tuple(grads.shape)}")
    if block < 1 or not damp > 0:
        raise PruningError(f"block must be >= 1 and damp > 0, got block={block}, damp={damp}")
    m, n = grads.shape
    g = grads.to(torch.float64)
    pad = (-n) % block
    if pad:
        g = torch.cat([g, torch.zeros(m, pad, dtype=g.dtype, device=g.device)], dim=1)
    blocks = g.reshape(m, -1, block).permute(1, 0, 2)  # (n_blocks, m, block)
    fisher = damp * torch.eye(block, dtype=g.dtype, device=g.device) + blocks.transpose(1, 2) @ blocks / m
    inverse_diag = torch.linalg.inv(fisher).diagonal(dim1=1, dim2=2).reshape(-1)
    return inverse_diag[:n].to(grads.dtype)


def obs_saliency(weight: torch.Tensor, grads: torch.Tensor, block: int = 20, damp: float = 1e-7) -> torch.Tensor:
    """w^2 / (2 [F^-1]_ii) per entry of ``weight``; ``grads`` holds one flattened gradient of the weight per row."""
    w = weight.detach().reshape(-1)
    if grads.shape[-1] != w.numel():
        raise PruningError(f"gradients of {grads.shape[-1]} entries for a weight of {w.numel()}")
    inv = block_fisher_inverse_diagonal(grads.detach().reshape(grads.shape[0], -1), block, damp)
    return (w.to(inv.dtype) ** 2 / (2 * inv)).reshape(weight.shape)


def diagonal_saliency(weight: torch.Tensor, grads: torch.Tensor, damp: float = 1e-7) -> torch.Tensor:
    """The diagonal-Fisher fallback: w^2 (damp + mean g^2) / 2 (block size 1 of :func:`obs_saliency`)."""
    g = grads.detach().reshape(grads.shape[0], -1)
    if g.shape[1] != weight.numel():
        raise PruningError(f"gradients of {g.shape[1]} entries for a weight of {weight.numel()}")
    return (weight.detach().reshape(-1) ** 2 * (damp + (g**2).mean(0)) / 2).reshape(weight.shape)


def keep_mask(saliency: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the weights kept: all but the ``sparsity`` share with the lowest saliency, per matrix (layer-wise
    uniform sparsity, as SparseCBM); ties broken by position so the count is exact."""
    if not 0.0 <= sparsity < 1.0:
        raise PruningError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = saliency.reshape(-1)
    drop = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if drop:
        keep[torch.argsort(flat, stable=True)[:drop]] = False
    return keep.reshape(saliency.shape)


def scheduled_sparsity(epoch: int, start: int = 2, end: int = 15, initial: float = 0.2, final: float = 0.7) -> float | None:
    """SparseCBM's schedule: None before ``start`` (no pruning yet), then linear from ``initial`` at ``start`` to
    ``final`` at ``end``, and ``final`` after it."""
    if epoch < start:
        return None
    if end <= start or epoch >= end:
        return final
    return initial + (final - initial) * (epoch - start) / (end - start)
