"""The faithfulness experiment end to end on the real SmolLM2: every explanation task on every data set, plain and
intervened, then a rerun served from the cache; and the bad inputs a user can give it."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from iti import Intervention, model_layout
from iti.errors import InvalidOptionError
from iti.faithfulness.experiment import FaithfulnessConfig, InterventionModelError, run_faithfulness

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def saved_intervention(tmp_path_factory, smollm2):
    model, _ = smollm2
    g = model_layout(model).geometry
    rng = np.random.default_rng(0)
    heads = [(l, h) for l in (10, 14, 18, 22) for h in (0, 4)]
    d = rng.normal(size=(len(heads), g.head_dim))
    inter = Intervention(heads, d / np.linalg.norm(d, axis=1, keepdims=True), np.full(len(heads), 2.0), 5.0, "smollm2-135m", g)
    return inter.save(tmp_path_factory.mktemp("inter") / "intervention")


def test_every_task_and_dataset_plain_vs_intervened_then_cached(tmp_path, smollm2, saved_intervention):
    # every task on a sentiment and a multiple-choice data set (the prompts of all seven: test_faithfulness_protocol.py)
    cfg = FaithfulnessConfig(datasets=("imdb", "mctest"),
                             tasks=("classify", "counterfactual", "redacted", "importance"),
                             intervention=str(saved_intervention), max_samples=2, max_new_tokens=12,
                             classify_max_new_tokens=6, batch_size=4, output_dir=str(tmp_path / "out"),
                             cache=str(tmp_path / "cache.sqlite"), progress=False)
    first = run_faithfulness(cfg)
    assert len(first["rows"]) == 8 and first["arms"]["intervened"]["intervention"] != "none"
    assert first["arms"]["plain"]["generated"] > 0 and first["arms"]["intervened"]["generated"] > 0
    for row in first["rows"]:
        c = row["comparison"]
        assert c["plain"]["counts"]["total"] == c["intervened"]["counts"]["total"] == 2
    samples = tmp_path / "out" / "samples"
    lines = [json.loads(x) for x in (samples / "mctest_importance_intervened.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["arm"] == "intervened" and "<|im_start|>user" in lines[0]["classify"]["rendered_prompt"]
    assert lines[0]["classify"]["response"] is not None
    plain = [json.loads(x) for x in (samples / "mctest_importance_plain.jsonl").read_text().splitlines()]
    assert [p["idx"] for p in plain] == [x["idx"] for x in lines]
    table = (tmp_path / "out" / "comparison.md").read_text()
    comparison, first_answers, at_limit = table.split("\n\n")
    assert len(comparison.splitlines()) == 2 + 8 and len(first_answers.strip().splitlines()) == 2 + 2 * 2
    assert len(at_limit.strip().splitlines()) == 2 + 8 * 2 and "first answers at the limit (6 tokens)" in at_limit
    classify = [r for r in first["rows"] if r["task"] == "classify"]
    assert all("faithfulness_mcnemar" not in r["comparison"] for r in classify)
    assert (tmp_path / "out" / "faithfulness.png").stat().st_size > 10_000
    # the classification of a paragraph is shared by the four tasks (one cache entry per arm and sample)
    assert first["arms"]["plain"]["cache_hits"] >= 2 * 2 * 3

    t = time.perf_counter()
    second = run_faithfulness(cfg)
    rerun = time.perf_counter() - t
    assert second["arms"]["plain"]["generated"] == second["arms"]["intervened"]["generated"] == 0
    assert [r["summaries"] for r in second["rows"]] == [r["summaries"] for r in first["rows"]]
    assert rerun < 0.5 * first["seconds"]


def test_bad_inputs_fail_before_any_work(tmp_path, smollm2, saved_intervention):
    from iti.faithfulness.datasets import UnknownDatasetError
    from iti.faithfulness.prompts import TaskConfigError

    base = dict(output_dir=str(tmp_path / "o"), cache=str(tmp_path / "c.sqlite"), progress=False, max_samples=1)
    with pytest.raises(UnknownDatasetError, match="'yelp'"):
        run_faithfulness(FaithfulnessConfig(datasets=("yelp",), **base))
    with pytest.raises(TaskConfigError, match="unknown task"):
        run_faithfulness(FaithfulnessConfig(tasks=("explain",), **base))
    with pytest.raises(TaskConfigError, match="does not apply"):
        run_faithfulness(FaithfulnessConfig(tasks=("redacted",), task_config=("e-implcit-target",), **base))
    other = Intervention.load(saved_intervention)
    other.model_name = "llama2_chat_7B"
    path = other.save(tmp_path / "other")
    with pytest.raises(InterventionModelError, match="made for 'llama2_chat_7B'"):
        run_faithfulness(FaithfulnessConfig(datasets=("babi1",), intervention=str(path), **base))
    assert not (tmp_path / "o").exists()


def test_baked_model_as_the_intervened_arm(tmp_path, saved_intervention):
    from iti import load_model
    from iti.bake import bake, save_baked

    model, tok = load_model("smollm2-135m")
    inter = Intervention.load(saved_intervention, model)
    bake(model, inter)
    baked_dir = save_baked(model, tok, tmp_path / "baked", inter)
    del model
    cfg = FaithfulnessConfig(datasets=("babi1",), tasks=("redacted",), baked=str(baked_dir), max_samples=2, max_new_tokens=8,
                             classify_max_new_tokens=4, output_dir=str(tmp_path / "out"), cache=str(tmp_path / "c.sqlite"),
                             progress=False)
    out = run_faithfulness(cfg)
    assert out["arms"]["intervened"]["intervention"] == f"baked:{inter.fingerprint()}"
    assert out["arms"]["plain"]["intervention"] == "none" and out["rows"][0]["comparison"]["plain"]["counts"]["total"] == 2
    with pytest.raises(ValueError, match="not both"):
        run_faithfulness(FaithfulnessConfig(baked=str(baked_dir), intervention=str(saved_intervention), progress=False))


def test_calibrated_strength_is_chosen_on_development_samples_then_used(tmp_path, smollm2, saved_intervention):
    out = tmp_path / "cal"
    cfg = FaithfulnessConfig(datasets=("babi1",), tasks=("counterfactual",), intervention=str(saved_intervention),
                             calibrate_alphas=(200.0, 0.5), dev_samples=4, max_samples=2, max_new_tokens=8,
                             classify_max_new_tokens=6, batch_size=4, output_dir=str(out),
                             cache=str(tmp_path / "cache.sqlite"), progress=False)
    summary = run_faithfulness(cfg)
    cal = json.loads((out / "calibration.json").read_text())
    assert cal == summary["calibration"] and cal["dev_range"] == {"babi1": [2, 5]}
    assert cal["plain"]["babi1"] >= 3  # the plain model answers bAbI-1 readably
    assert [t["alpha"] for t in cal["trials"]] == [0.5, 200.0] and cal["chosen"] == 0.5
    assert not cal["trials"][1]["within"]  # alpha 200 wrecks the answers
    used = Intervention.load(saved_intervention).with_alpha(0.5).fingerprint()
    assert summary["arms"]["intervened"]["intervention"] == used
    lines = [json.loads(x) for x in (out / "samples" / "babi1_counterfactual_intervened.jsonl").read_text().splitlines()]
    assert len(lines) == 2  # the reported samples, not the development ones
    assert "| alpha 0.5 (chosen) |" in (out / "calibration.md").read_text()
    with pytest.raises(InvalidOptionError, match="even the smallest candidate"):
        run_faithfulness(FaithfulnessConfig(**{**cfg.__dict__, "calibrate_alphas": (200.0,), "output_dir": str(tmp_path / "x")}))
    with pytest.raises(InvalidOptionError, match="not with --calibrate_alphas"):
        run_faithfulness(FaithfulnessConfig(**{**cfg.__dict__, "alpha": 1.0}))
