"""The concept experiment end to end on the real SmolLM2, on small seeded subsets of CEBaB."""
from __future__ import annotations

import json

import pytest

from iti.concepts.experiment import ConceptConfig, run_concepts

pytestmark = pytest.mark.real


def test_concepts_end_to_end_on_a_subset(tmp_path, smollm2):
    cfg = ConceptConfig(ks=(1, 4), alphas=(0.0, 8.0), l1_strengths=(0.5,), max_reviews=40, max_pairs=4, output_dir=str(tmp_path), progress=False)
    r = run_concepts(cfg)
    assert r["sizes"] == {"train_exclusive": 40, "dev": 40, "test": 40} and r["chosen_k"] in (1, 4)
    assert {len(h) for h in r["heads"].values()} == {r["chosen_k"]}
    assert 0 <= r["test"]["concept_accuracy"] <= 1 and "dense_test" in r
    assert 0 <= r["zero_shot_test"]["task_accuracy"] <= 1 and 0 < r["majority_rating_test_accuracy"] < 1
    assert [s["split"] for s in r["sweep_l1"]] in (["dev", "test"], [None])  # None: every head switched off
    dev = r["steering"]["dev"]["summary"]
    assert {(s["alpha"], s["variant"]) for s in dev} == {(a, v) for a in (0.0, 8.0) for v in ("concept", "random_direction", "wrong_concept")}
    assert all(s["model_mean_delta"] == pytest.approx(0.0, abs=1e-4) for s in dev if s["alpha"] == 0.0)
    assert r["chosen_alpha"] == 8.0 and r["steering"]["test"]["pairs"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["chosen_k"] == r["chosen_k"]
    assert r["compute_dtype"] == "float32" and r["config"]["label_folds"] == 5
    assert r["label_head"] == {"inputs": "out-of-fold concept probabilities", "folds": 5, "grouped_by": "original_id", "seed": 0}
    for f in ("results.md", "concept_heads.png", "steering_vs_alpha.png", "steering_dev.jsonl", "steering_test.jsonl"):
        assert (tmp_path / f).stat().st_size > 0
    feats = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(feats) == 3 and all(f.startswith("smollm2-135m_cebab_") and not f.endswith(".partial") for f in feats)
    again = run_concepts(cfg)  # features are read back, not collected again: same numbers
    assert again["test"] == r["test"] and again["sweep_k"] == r["sweep_k"]
