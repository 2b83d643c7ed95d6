"""Strength by disruption budget: the alpha at which an intervention costs a given KL (or CE increase).

Comparing ITI with its controls at one alpha mixes two questions, "does the probed direction help" and "how much
does the shift disrupt the model"; matching each row on what it costs answers the first alone. The cost of a
shift grows with alpha (0 at alpha 0), so a bracket-then-bisect search in log-alpha finds the alpha whose cost on
neutral text hits the budget. The texts the search uses must not be the ones the row's cost is reported on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidOptionError


class BudgetNotReachedError(InvalidOptionError):
    """No alpha within the search range reaches the budget (the shift saturates below it)."""


class BudgetNotConvergedError(BudgetNotReachedError):
    """A search that ended (out of evaluations) with its closest cost outside the tolerance: the row would not be
    cost-matched, so it is not run (a budget under the cost's numerical noise, say)."""


@dataclass
class BudgetSearch:
    """The chosen alpha, the cost it reached on the search texts, and every (alpha, cost) evaluated, in order."""

    metric: str
    target: float
    alpha: float
    reached: float
    trace: list[tuple[float, float]] = field(default_factory=list)
    rel_tol: float = 0.05

    @property
    def converged(self) -> bool:
        """Whether the cost reached is within the relative tolerance of the budget (the row is cost-matched)."""
        return abs(self.reached - self.target) <= self.rel_tol * self.target

    def check(self, row: str) -> BudgetSearch:
        """This search, if it converged; else :class:`BudgetNotConvergedError`, one line naming ``row``, the budget,
        the cost reached and the tolerance."""
        if self.converged:
            return self
        alphas = [a for a, _ in self.trace] or [self.alpha]
        raise BudgetNotConvergedError(
            f"{row}: the {self.metric} budget {self.target:g} was not met, so the row is not cost-matched: after "
            f"{len(self.trace)} steps (alpha {min(alphas):.3g} to {max(alphas):.3g}) the closest {self.metric} reached is "
            f"{self.reached:.3g} at alpha {self.alpha:.3g}, outside the tolerance {self.target:g} ± {self.rel_tol * self.target:.2g} "
            f"({self.rel_tol:.0%}); a budget this small may lie under the numerical noise of the cost: raise "
            f"--{self.metric.lower()}_budget")

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "target": self.target, "alpha": self.alpha, "reached": self.reached,
                "trace": [[a, c] for a, c in self.trace], "rel_tol": self.rel_tol}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetSearch:
        """The search :meth:`to_dict` stored (rows stored before ``rel_tol`` was: the 5% every search used)."""
        return cls(d["metric"], d["target"], d["alpha"], d["reached"], [(a, c) for a, c in d.get("trace", [])], d.get("rel_tol", 0.05))


def alpha_for_budget(cost: Callable[[float], float], target: float, *, metric: str = "KL", start: float = 1.0,
                     rel_tol: float = 0.05, max_evals: int = 24, alpha_max: float = 1e4) -> BudgetSearch:
    """The alpha whose ``cost(alpha)`` is within ``rel_tol`` of ``target`` (relative), found by doubling or halving
    from ``start`` until the budget is bracketed, then bisecting in log-alpha. Stops after ``max_evals`` costs
    with the closest alpha seen (``converged`` False: :meth:`BudgetSearch.check` refuses it); raises
    :class:`BudgetNotReachedError` when even the last doubling of ``start`` within ``alpha_max`` stays below the
    budget (the message names that alpha). ``cost`` must grow with alpha (KL and CE increase do, on average over texts)."""
    if not (math.isfinite(target) and target > 0):
        raise InvalidOptionError(f"--{metric.lower()}_budget must be a positive number, got {target}")
    trace: list[tuple[float, float]] = []

    def evaluate(alpha: float) -> float:
        value = float(cost(alpha))
        trace.append((alpha, value))
        return value

    def close(value: float) -> bool:
        return abs(value - target) <= rel_tol * target

    def best() -> BudgetSearch:
        alpha, reached = min(trace, key=lambda t: abs(t[1] - target))
        return BudgetSearch(metric, target, alpha, reached, trace, rel_tol)

    alpha = start
    value = evaluate(alpha)
    lo = hi = None
    if value < target:
        lo = alpha
        while value < target and not close(value):
            if alpha * 2 > alpha_max:
                raise BudgetNotReachedError(f"{metric} {value:.4g} at alpha {alpha:g} stays below the budget {target:g} "
                                            f"(alphas {start:g} to {alpha:g} tried, doubling; the next, {alpha * 2:g}, is "
                                            f"past the search limit {alpha_max:g}): lower the budget")
            lo, alpha = alpha, alpha * 2
            value = evaluate(alpha)
        hi = alpha
    else:
        hi = alpha
        while value > target and not close(value) and len(trace) < max_evals:
            hi, alpha = alpha, alpha / 2
            value = evaluate(alpha)
        lo = alpha
    while not close(value) and len(trace) < max_evals:
        alpha = math.sqrt(lo * hi)
        value = evaluate(alpha)
        if value < target:
            lo = alpha
        else:
            hi = alpha
    return best()


def parse_head_count(value: str | int | float, total_heads: int) -> int:
    """``--num_heads``: a count (``48``) or a fraction of all heads (``4.7%``, rounded, at least 1), so that a
    study on a small model can intervene on the same share of heads as the paper's 48 of LLaMA-7B's 1,024."""
    text = str(value).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise InvalidOptionError(f"--num_heads {value!r}: a count or a percentage such as 4.7%") from None
        if not 0 < share <= 1:
            raise InvalidOptionError(f"--num_heads {value!r}: a percentage in (0, 100]")
        return max(1, round(share * total_heads))
    try:
        count = float(text)
    except ValueError:
        raise InvalidOptionError(f"--num_heads {value!r}: a count or a percentage such as 4.7%") from None
    if count != int(count) or not 1 <= count <= total_heads:
        raise InvalidOptionError(f"--num_heads {value!r}: a whole number from 1 to {total_heads} (all heads)")
    return int(count)


def head_count_arg(text: str) -> int | str:
    """``--num_heads`` on the command line: a whole number as an int, a share (``4.7%``) kept as text for
    :meth:`ValidationConfig.validate` to resolve against the model's heads."""
    text = text.strip()
    return int(text) if text.isdigit() else text
