"""Logistic-regression probes for every (layer, head) at once.

honest_llama fits ``sklearn.linear_model.LogisticRegression(max_iter=1000)`` once per head (L x H fits, e.g. 1,024
for LLaMA-7B). The problems are independent and small (D features each), so here they are solved together:
Newton's method on sklearn's objective, ``C * sum(log-loss) + 0.5 * |w|^2`` (L2, intercept not penalized),
with one batched D+1 x D+1 solve per head per step. The objective is strictly convex, so this reaches the
optimum sklearn's lbfgs approximates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import EmptyInputError, NonFiniteInputError


def _check_labels(y: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y)).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} feature rows but {len(y)} labels")
    if n == 0:
        raise EmptyInputError("no training rows")
    values = set(torch.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(values)}")
    if len(values) < 2:
        raise ValueError("labels contain one class only: a probe needs both true and false examples")
    return y


def _non_finite_error(Xt: torch.Tensor, layers: int, heads: int, dtype: torch.dtype) -> NonFiniteInputError:
    """Describe where X ``[N, L*H, D]`` is not finite once cast to the fitting dtype: rows and (layer, head)s."""
    bad = torch.zeros(Xt.shape[0], Xt.shape[1], dtype=torch.bool)
    for start in range(0, Xt.shape[0], 256):  # row blocks: never a full-size copy of X
        bad[start : start + 256] = ~torch.isfinite(Xt[start : start + 256].to(dtype)).all(dim=-1)
    rows = bad.any(dim=1).nonzero().reshape(-1).tolist()
    flat = bad.any(dim=0).nonzero().reshape(-1).tolist()
    where = [(k // heads, k % heads) for k in flat]
    more = lambda xs: f"{xs[:10]}{' ...' if len(xs) > 10 else ''}"  # noqa: E731
    return NonFiniteInputError(
        f"features hold NaN or infinite values (as {str(dtype).replace('torch.', '')}) in {len(rows)} of {Xt.shape[0]} "
        f"rows (rows {more(rows)}) at {len(where)} (layer, head)s: {', '.join(map(str, where[:10]))}"
        f"{' ...' if len(where) > 10 else ''}; the probes would come out NaN. Drop or recollect those rows (a float16 "
        "overflow? collect with dtype float32), or fit with dtype=torch.float64 if the values are only too large."
    )


@dataclass
class ProbeFit:
    """Convergence record: Newton iterations used and the largest final gradient entry (of the mean loss)."""

    iterations: int
    max_grad_norm: float


class HeadProbes:
    """All-heads logistic regression with scikit-learn's estimator contract.

    ``fit(X, y)`` with X ``[N, L, H, D]`` and 0/1 labels ``[N]``; ``predict_proba(X)`` -> ``[N, L, H]``
    (probability of label 1 per head); ``score(X, y)`` -> accuracy per head ``[L, H]``.
    ``coef_`` is ``[L, H, D]`` and ``intercept_`` ``[L, H]``.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 100, tol: float = 1e-4, dtype: torch.dtype = torch.float32, chunk_heads: int = 64):
        if C <= 0:
            raise ValueError(f"C must be positive, got {C}")
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.dtype = dtype
        self.chunk_heads = int(chunk_heads)

    def fit(self, X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> HeadProbes:
        """Fit every head's probe on X ``[N, L, H, D]`` and 0/1 labels ``[N]`` (both classes needed); sets
        ``coef_``, ``intercept_`` and ``fit_`` (convergence). Non-finite features (NaN, inf, or too large for
        ``dtype``) raise :class:`~iti.errors.NonFiniteInputError` naming the rows and (layer, head)s."""
        shape = tuple(np.shape(X))
        if len(shape) != 4:
            raise ValueError(f"features must be [N, layers, heads, head_dim], got shape {shape}")
        n, layers, heads, d = shape
        yt = _check_labels(y, n).double()
        Xt = torch.as_tensor(X if isinstance(X, torch.Tensor) else np.asarray(X)).reshape(n, layers * heads, d)
        K = layers * heads
        coef = torch.zeros(K, d, dtype=torch.float64)
        intercept = torch.zeros(K, dtype=torch.float64)
        iterations, worst = 0, 0.0
        for start in range(0, K, self.chunk_heads):  # bounds memory at chunk x N x (D+2)
            sl = slice(start, min(K, start + self.chunk_heads))
            # [k, N, D+2]: features, a ones column for the intercept, and a work column (see _newton)
            buf = torch.empty(sl.stop - sl.start, n, d + 2, dtype=self.dtype)
            buf[:, :, :d] = Xt[:, sl].permute(1, 0, 2)
            if not torch.isfinite(buf[:, :, :d]).all():
                raise _non_finite_error(Xt, layers, heads, self.dtype)
            buf[:, :, d] = 1.0
            w, it, g = self._newton(buf, yt)
            coef[sl], intercept[sl] = w[:, :d], w[:, d]
            iterations, worst = max(iterations, it), max(worst, g)
        self.coef_ = coef.reshape(layers, heads, d).numpy()
        self.intercept_ = intercept.reshape(layers, heads).numpy()
        self.shape_ = (layers, heads, d)
        self.fit_ = ProbeFit(iterations, worst)
        return self

    def _newton(self, buf: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """Newton steps for k independent problems. ``buf`` is [k, N, D+2]: features, ones, a work column."""
        k, n, width = buf.shape
        d1 = width - 1  # weights incl. intercept
        Xa = buf[:, :, :d1]
        # Features stay in the probes' dtype (products with them are the cost); weights, margins, losses and
        # gradients are accumulated in float64 so the stopping test and the line search are not swamped by rounding.
        reg = torch.ones(d1, dtype=torch.float64)
        reg[-1] = 0.0  # the intercept is not penalized, as in sklearn
        w = torch.zeros(k, d1, dtype=torch.float64)
        C = self.C
        weighted = torch.empty_like(buf)

        def margins(w: torch.Tensor) -> torch.Tensor:
            return torch.bmm(Xa, w.to(buf.dtype).unsqueeze(-1)).squeeze(-1).double()

        def objective(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            loss = torch.nn.functional.softplus(z) - y * z  # -log-likelihood per row
            return C * loss.sum(1) + 0.5 * (reg * w * w).sum(1)

        z = margins(w)
        f = objective(w, z)
        grad_norm = float("inf")
        for it in range(1, self.max_iter + 1):
            p = torch.sigmoid(z)
            # One product gives the Hessian and the gradient: Xa^T [Xa * s | p - y].
            torch.mul(Xa, (p * (1 - p)).clamp_min(1e-12).to(buf.dtype).unsqueeze(-1), out=weighted[:, :, :d1])
            weighted[:, :, d1] = (p - y).to(buf.dtype)
            prod = torch.bmm(Xa.transpose(1, 2), weighted).double()
            grad = C * prod[:, :, d1] + reg * w
            # sklearn's lbfgs stops when the largest gradient entry of the *mean* loss is below tol (1e-4).
            grad_norm = float(grad.abs().max()) / n
            if grad_norm < self.tol:
                return w, it - 1, grad_norm
            hess = C * prod[:, :, :d1] + torch.diag_embed(reg.expand(k, -1))
            step = torch.linalg.solve(hess + 1e-10 * torch.eye(d1, dtype=torch.float64), grad.unsqueeze(-1)).squeeze(-1)
            # Backtracking per head guards against overshooting; a full step is almost always taken.
            t = torch.ones(k, dtype=torch.float64)
            for _ in range(30):
                w_new = w - t[:, None] * step
                z_new = margins(w_new)
                f_new = objective(w_new, z_new)
                # A step counts as bad only if it raises the objective beyond float32 rounding of the margins.
                bad = f_new > f + 1e-6 * f.abs()
                if not bool(bad.any()):
                    break
                t = torch.where(bad, t * 0.5, t)
            w, z, f = w_new, z_new, f_new
        return w, self.max_iter, grad_norm

    def _check_fitted(self, X) -> tuple[int, int, int, int]:
        if not hasattr(self, "coef_"):
            raise RuntimeError("HeadProbes is not fitted: call fit(X, y) first")
        shape = tuple(np.shape(X))
        if len(shape) != 4 or shape[1:] != self.shape_:
            raise ValueError(f"features of shape {shape} do not match the fitted [N, {', '.join(map(str, self.shape_))}]")
        return shape  # type: ignore[return-value]

    def decision_function(self, X) -> np.ndarray:
        """Logits ``[N, L, H]`` (log-odds of label 1 per head), in float64; X must match the fitted shape."""
        self._check_fitted(X)
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        coef = torch.as_tensor(self.coef_, dtype=torch.float64)
        z = torch.einsum("nlhd,lhd->nlh", Xt, coef) + torch.as_tensor(self.intercept_, dtype=torch.float64)
        return z.numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Probability of label 1 per head, ``[N, L, H]``."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def predict(self, X) -> np.ndarray:
        """0/1 prediction per head, ``[N, L, H]`` (1 where the logit is positive)."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def score(self, X, y) -> np.ndarray:
        """Accuracy of each head's probe: ``[L, H]``."""
        y = np.asarray(y).reshape(-1, 1, 1)
        return (self.predict(X) == y).mean(axis=0)


def split_questions(question_ids: np.ndarray, val_ratio: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Split *questions* (not rows) into train and validation, as honest_llama does; returns question ids."""
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    questions = np.unique(np.asarray(question_ids))
    if len(questions) < 2 and val_ratio > 0:
        raise EmptyInputError("need at least two questions to split into train and validation")
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(questions, size=int(len(questions) * (1 - val_ratio)), replace=False))
    return train, np.setdiff1d(questions, train)


PROBES_TENSORS = "probes.safetensors"
PROBES_META = "probes.json"


def save_probes(probes: HeadProbes, path: str | os.PathLike) -> Path:
    """Write fitted probes to the directory ``path``: ``probes.safetensors`` (``coef`` ``[L, H, D]``, ``intercept``
    ``[L, H]``) and ``probes.json`` (settings, convergence, the tensors' sha256). honest_llama's ``save_probes``
    pickles its list of scikit-learn probes; this is the same content without pickle."""
    from ._version import __version__
    from .io import atomic_save_safetensors, atomic_write_json, sha256_file

    if not hasattr(probes, "coef_"):
        raise ValueError("save_probes: the probes are not fitted (call fit first)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(path / PROBES_TENSORS, {"coef": np.ascontiguousarray(probes.coef_),
                                                    "intercept": np.ascontiguousarray(probes.intercept_)})
    atomic_write_json(path / PROBES_META, {
        "format": "iti-probes", "format_version": 1, "iti_version": __version__, "shape": list(probes.shape_),
        "C": probes.C, "max_iter": probes.max_iter, "tol": probes.tol, "dtype": str(probes.dtype).replace("torch.", ""),
        "fit": {"iterations": probes.fit_.iterations, "max_grad_norm": probes.fit_.max_grad_norm},
        "tensors_sha256": sha256_file(path / PROBES_TENSORS)})
    return path


def load_probes(path: str | os.PathLike) -> HeadProbes:
    """Read probes :func:`save_probes` wrote; a missing, partial or altered file is a
    :class:`~iti.errors.FeatureFileError` naming it."""
    from .errors import FeatureFileError
    from .io import read_checked_tensors

    meta, tensors = read_checked_tensors(path, PROBES_META, PROBES_TENSORS, "iti-probes", "probes file")
    try:
        shape = tuple(int(x) for x in meta["shape"])
        probes = HeadProbes(C=meta["C"], max_iter=meta["max_iter"], tol=meta["tol"], dtype=getattr(torch, meta["dtype"]))
        coef, intercept = tensors["coef"], tensors["intercept"]
        fit = ProbeFit(int(meta["fit"]["iterations"]), float(meta["fit"]["max_grad_norm"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise FeatureFileError(f"{path} holds incomplete probes: missing {e}") from None
    if len(shape) != 3 or coef.shape != shape or intercept.shape != shape[:2]:
        raise FeatureFileError(f"{path}: coef {coef.shape} and intercept {intercept.shape} do not match the recorded shape {shape}")
    probes.coef_, probes.intercept_, probes.fit_ = coef, intercept, fit
    probes.shape_ = (shape[0], shape[1], shape[2])
    return probes
