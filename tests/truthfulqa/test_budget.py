"""Alpha by disruption budget: the search on known cost curves, and head counts given as a share of all heads."""
import math

import pytest

from iti.errors import InvalidOptionError
from iti.truthfulqa.budget import BudgetNotReachedError, alpha_for_budget, parse_head_count


@pytest.mark.parametrize("target", [0.03, 0.1, 1.0, 2.0, 50.0])
def test_search_hits_the_budget_on_a_quadratic_cost(target):
    """KL of a small shift grows like alpha^2: the alpha found is sqrt(target / c) within the tolerance."""
    c = 0.013
    found = alpha_for_budget(lambda a: c * a * a, target, rel_tol=0.02)
    assert abs(found.reached - target) <= 0.02 * target
    assert found.alpha == pytest.approx(math.sqrt(target / c), rel=0.011)
    assert (found.alpha, found.reached) in found.trace and len(found.trace) <= 24
    assert found.to_dict()["trace"][0] == [1.0, c]


def test_search_is_deterministic_and_keeps_the_closest_alpha_when_out_of_evaluations():
    cost = lambda a: 1 - math.exp(-a)  # noqa: E731 - saturates at 1
    a, b = (alpha_for_budget(cost, 0.5, rel_tol=1e-9, max_evals=5) for _ in range(2))
    assert a == b and len(a.trace) == 5
    assert abs(a.reached - 0.5) == min(abs(c - 0.5) for _, c in a.trace)


def test_a_budget_the_shift_cannot_reach_is_refused():
    with pytest.raises(BudgetNotReachedError, match="stays below the budget 2"):
        alpha_for_budget(lambda a: 1 - math.exp(-a), 2.0)
    with pytest.raises(InvalidOptionError, match="positive"):
        alpha_for_budget(lambda a: a, 0.0)


def test_head_counts_as_a_share_of_all_heads():
    assert parse_head_count("4.7%", 1024) == 48  # the paper's share of LLaMA-7B's heads
    assert parse_head_count("4.7%", 270) == 13  # ... on SmolLM2
    assert parse_head_count("0.1%", 270) == 1
    assert parse_head_count("48", 270) == 48 and parse_head_count(48, 270) == 48
    for bad in ("0%", "120%", "abc", "3.5", "0", "271"):
        with pytest.raises(InvalidOptionError):
            parse_head_count(bad, 270)
