"""The oBERT saliency checked against the Fisher written out in full (a dense block-diagonal matrix inverted with
numpy), against sparseml's rank-one construction of the same inverse, and the mask and schedule by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iti.concepts.obs_pruning import (
    PruningError,
    block_fisher_inverse_diagonal,
    diagonal_saliency,
    keep_mask,
    obs_saliency,
    scheduled_sparsity,
)


def _dense_block_fisher(grads: np.ndarray, block: int, damp: float) -> np.ndarray:
    m, n = grads.shape
    fisher = damp * np.eye(n)
    for start in range(0, n, block):
        s = slice(start, min(start + block, n))
        fisher[s, s] += grads[:, s].T @ grads[:, s] / m
    return fisher


def test_block_fisher_inverse_matches_the_dense_matrix_and_sparsemls_rank_one_updates():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(7, 23))  # 23 entries: the last block of 5 is short
    got = block_fisher_inverse_diagonal(torch.tensor(grads), block=6, damp=1e-3).numpy()
    dense = np.linalg.inv(_dense_block_fisher(grads, 6, 1e-3))
    np.testing.assert_allclose(got, np.diag(dense), rtol=1e-8)
    # sparseml: F^-1 starts at I / damp and takes one Sherman-Morrison update per gradient, scaled by 1/m
    inv = np.eye(6) / 1e-3
    for g in grads[:, :6]:
        u = inv @ g
        inv -= np.outer(u, u) / (len(grads) + g @ u)
    np.testing.assert_allclose(got[:6], np.diag(inv), rtol=1e-6)


def test_saliency_is_w_squared_over_twice_the_inverse_diagonal():
    rng = np.random.default_rng(1)
    w, grads = rng.normal(size=(4, 5)), rng.normal(size=(9, 20))
    got = obs_saliency(torch.tensor(w), torch.tensor(grads), block=4, damp=1e-2).numpy()
    want = (w.reshape(-1) ** 2 / (2 * np.diag(np.linalg.inv(_dense_block_fisher(grads, 4, 1e-2))))).reshape(4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    # block 1 is the diagonal Fisher: the fallback
    one = obs_saliency(torch.tensor(w), torch.tensor(grads), block=1, damp=1e-2).numpy()
    np.testing.assert_allclose(diagonal_saliency(torch.tensor(w), torch.tensor(grads), damp=1e-2).numpy(), one, rtol=1e-8)


def test_keep_mask_drops_exactly_the_least_salient_share_and_the_schedule_is_linear():
    sal = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.7]])
    keep = keep_mask(sal, 0.25)  # 2 of 8 dropped: 0.1 and 0.2
    assert keep.tolist() == [[True, False, True, True], [False, True, True, True]]
    assert keep_mask(sal, 0.0).all() and int(keep_mask(torch.zeros(10), 0.7).sum()) == 3
    assert [scheduled_sparsity(e) for e in (0, 1, 2, 8, 15, 20)] == [None, None, 0.2, pytest.approx(0.2 + 0.5 * 6 / 13), 0.7, 0.7]
    with pytest.raises(PruningError, match="sparsity must be in"):
        keep_mask(sal, 1.0)
    with pytest.raises(PruningError, match="gradients of 3 entries for a weight of 8"):
        obs_saliency(sal, torch.zeros(2, 3))
