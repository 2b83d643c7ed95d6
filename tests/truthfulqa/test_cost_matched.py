"""Rows matched on cost: every kind's alpha is searched per fold until its KL on the search texts meets the
budget; the summary puts ITI beside its controls at that budget, with paired tests, and draws the frontier."""
import json

import numpy as np
import pytest

from iti.errors import InvalidOptionError
from iti.stats import paired_permutation_p
from iti.truthfulqa.config import plan_rows
from iti.truthfulqa.experiment import ValidationConfig, run_validation

from ..conftest import write_tqa_features

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def features8(smollm2, tmp_path_factory):
    return write_tqa_features(*smollm2, tmp_path_factory.mktemp("features8"), max_questions=8)


@pytest.mark.slow
def test_two_budgets_trace_the_frontier(smollm2, features8, tmp_path):
    """Slow (~15 min on 2 busy cores): two budgets x three kinds x two folds, each with its own alpha search."""
    model, tok = smollm2
    cfg = ValidationConfig(features_dir=str(features8), ce_samples=3, budget_texts=3, generate=False, num_heads="5%",
                           alpha=5.0, max_questions=6, kl_budget=[0.05, 0.2])
    summary = run_validation(model, tok, cfg, tmp_path / "v")
    assert cfg.num_heads == 14  # 5% of 270 heads
    budget_rows = [r for r in summary["rows"] if r.get("budget") is not None]
    assert {(r["name"], r["budget"]) for r in budget_rows} == {(n, b) for n in ("ITI", "random heads", "random direction")
                                                             for b in (0.05, 0.2)}
    for fold in (0, 1):
        row = json.loads((tmp_path / "v" / "rows" / f"fold{fold}_random-heads_kl0.2_k14_s42.json").read_text())
        search = row["budget_search"]
        assert abs(search["reached"] - 0.2) <= 0.05 * 0.2 and search["alpha"] == row["alpha_found"]
        assert [a for a, _ in search["trace"]][0] == 5.0
    for r in budget_rows:  # the reported KL is on other texts: near the budget, not equal to it
        assert 0.2 * r["budget"] < r["KL"] < 5 * r["budget"]
        assert len(r["alphas"]) == 2
    matched = summary["cost_matched"]
    assert [(e["budget"], sorted(e["iti_minus"])) for e in matched] == [(0.05, ["random direction", "random heads"]),
                                                                      (0.2, ["random direction", "random heads"])]
    assert all(0 < d["p"] <= 1 for e in matched for d in e["iti_minus"].values())
    md = (tmp_path / "v" / "summary.md").read_text()
    assert "Cost-matched" in md and "| KL 0.2 | 42 | random direction |" in md
    assert (tmp_path / "v" / "frontier.png").stat().st_size > 10_000
    again = run_validation(model, tok, cfg, tmp_path / "v")  # from the stored rows: the same numbers
    assert again["cost_matched"] == summary["cost_matched"]


def test_one_budget_row_set_meets_its_kl_and_reruns_from_the_stored_rows(smollm2, features8, tmp_path):
    model, tok = smollm2
    cfg = ValidationConfig(features_dir=str(features8), ce_samples=2, budget_texts=2, generate=False, num_heads=6,
                           alpha=5.0, max_questions=4, kl_budget=[0.1])
    summary = run_validation(model, tok, cfg, tmp_path / "v")
    for name in ("ITI", "random-heads", "random-direction"):
        for fold in (0, 1):
            row = json.loads((tmp_path / "v" / "rows" / f"fold{fold}_{name}_kl0.1_k6_s42.json").read_text())
            assert abs(row["budget_search"]["reached"] - 0.1) <= 0.005 and row["budget_search"]["alpha"] == row["alpha_found"]
    (entry,) = summary["cost_matched"]
    assert sorted(entry["kinds"]) == ["ITI", "random direction", "random heads"] and len(entry["iti_minus"]) == 2
    assert "| KL 0.1 | 42 | random heads |" in (tmp_path / "v" / "summary.md").read_text()
    assert not (tmp_path / "v" / "frontier.png").exists()  # one budget: no frontier to draw
    table = (tmp_path / "v" / "summary.md").read_bytes()
    stored = json.loads((tmp_path / "v" / "summary.json").read_text())
    again = run_validation(model, tok, cfg, tmp_path / "v")  # every row from the cache: the same table, byte for byte
    assert again["cost_matched"] == summary["cost_matched"]
    assert (tmp_path / "v" / "summary.md").read_bytes() == table
    rerun = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert {k: v for k, v in rerun.items() if k != "runtime_seconds_this_invocation"} == \
        {k: v for k, v in stored.items() if k != "runtime_seconds_this_invocation"}


def test_frontier_plot_from_entries(tmp_path):
    from iti.truthfulqa.cost_matched import plot_frontier

    def cell(kl, gain):
        return {"KL": kl, "dMC2": {"mean": gain, "ci": [gain - 0.01, gain + 0.01]}}

    entries = [{"budget": b, "seed": s, "kinds": {"ITI": cell(b, 0.05 * b), "random heads": cell(b, 0.01), "random direction": cell(b, 0.0)}}
               for b in (0.1, 1.0) for s in (42, 1)]
    assert plot_frontier(tmp_path / "f.png", entries, "t") and (tmp_path / "f.png").stat().st_size > 10_000
    assert not plot_frontier(tmp_path / "g.png", entries[:1], "t")


def test_seed_spread_reports_itis_lead_over_each_control_per_seed():
    from iti.truthfulqa.cost_matched import seed_spread, seed_spread_markdown

    def entry(seed, lead_rh, lo_rh):
        kinds = {name: {"KL": 1.0 + 0.01 * seed, "dMC2": {"mean": g, "ci": [g - 0.01, g + 0.01]}}
                 for name, g in (("ITI", 0.05), ("random heads", 0.05 - lead_rh), ("random direction", 0.02))}
        return {"metric": "KL", "budget": 1.0, "seed": seed, "kinds": kinds,
                "iti_minus": {"random heads": {"mean": lead_rh, "ci": [lo_rh, lead_rh + 0.02], "p": 0.01},
                              "random direction": {"mean": 0.03, "ci": [0.01, 0.05], "p": 0.001}}}

    entries = [entry(42, 0.03, 0.01), entry(1, 0.01, -0.01), entry(2, 0.02, 0.004)]
    spread = seed_spread(entries + [{**entries[0], "budget": 0.1}])  # a budget with one seed has no spread
    assert list(spread) == ["KL=1"]
    rh = spread["KL=1"]["random heads"]
    assert rh["iti_minus"]["mean"] == pytest.approx(0.02) and rh["iti_minus"]["std"] == pytest.approx(0.01)
    assert rh["iti_minus"]["seeds_ci_above_0"] == 2 and rh["iti_minus"]["seeds"] == 3
    assert spread["KL=1"]["random direction"]["iti_minus"]["seeds_ci_above_0"] == 3
    assert "iti_minus" not in spread["KL=1"]["ITI"] and spread["KL=1"]["ITI"]["dMC2_std"] == pytest.approx(0.0, abs=1e-12)
    line = seed_spread_markdown(spread)[0]
    assert line.startswith("- KL=1: ITI ΔMC2 0.050 ± 0.000") and "ITI − random heads 0.020 ± 0.010 (CI above 0 for 2 of 3 seeds)" in line


def test_budget_options_are_checked_and_planned(features8):
    with pytest.raises(InvalidOptionError, match="give one of them"):
        ValidationConfig(features_dir=str(features8), kl_budget=[0.1], ce_budget=[0.1]).validate()
    with pytest.raises(InvalidOptionError, match="kl_budget"):
        ValidationConfig(features_dir=str(features8), kl_budget=[0.0]).validate()
    with pytest.raises(InvalidOptionError, match="num_heads"):
        ValidationConfig(features_dir=str(features8), num_heads="200%").validate()
    cfg = ValidationConfig(features_dir=str(features8), kl_budget=[0.1, 1.0], control_seeds=[42, 1])
    cfg.validate()
    keys = [r.key for r in plan_rows(cfg)]
    assert keys[:4] == ["baseline_a0_k0_s42", "ITI_kl0.1_k48_s42", "random-heads_kl0.1_k48_s42", "random-direction_kl0.1_k48_s42"]
    assert len(keys) == 1 + 2 * 2 * 3 and [r.generate for r in plan_rows(cfg)].count(True) == 2  # baseline + main ITI


def test_paired_permutation_p():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert paired_permutation_p(a, a.copy()) == 1.0
    assert paired_permutation_p(a + 0.5, a) < 0.001
    b = a + rng.normal(scale=1, size=200)
    assert paired_permutation_p(b, a, seed=3) == paired_permutation_p(b, a, seed=3)  # seeded
