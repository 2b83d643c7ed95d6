"""CAA and RepE beside ITI at equal cost (--methods): the rows they add, their vectors against the recipes written
out here on the stored features, and a run on SmolLM2 whose summary compares each with ITI and with the random
direction at its own site."""
import json

import numpy as np
import pytest
from sklearn.decomposition import PCA

from iti import load_features
from iti.errors import InvalidOptionError
from iti.truthfulqa.config import ValidationConfig, plan_rows
from iti.truthfulqa.experiment import run_validation
from iti.truthfulqa.fit import build_residual_steering, train_fold_layer_probes

from ..conftest import write_tqa_features


def test_methods_add_residual_rows_and_need_a_budget():
    cfg = ValidationConfig(methods=["ITI", "CAA", "RepE"], kl_budget=[0.1, 1.0], num_heads=6, max_questions=8)
    cfg.validate()
    rows = plan_rows(cfg)
    keys = [r.key for r in rows]
    assert keys[:7] == ["baseline_a0_k0_s42", "ITI_kl0.1_k6_s42", "random-heads_kl0.1_k6_s42", "random-direction_kl0.1_k6_s42",
                        "CAA_kl0.1_l1_s42", "RepE_kl0.1_l1_s42", "random-residual-direction_kl0.1_l1_s42"]
    assert [(r.site, r.direction, r.alpha) for r in rows[4:7]] == [("resid_post", "mean_diff", 1.0), ("resid_post", "pca_diff", 1.0),
                                                                 ("resid_post", "random", 1.0)]
    assert len(rows) == 13
    assert [r.key for r in plan_rows(ValidationConfig(kl_budget=[0.1], num_heads=6))] == [
        "baseline_a0_k0_s42", "ITI_kl0.1_k6_s42", "random-heads_kl0.1_k6_s42", "random-direction_kl0.1_k6_s42"]  # unchanged
    with pytest.raises(InvalidOptionError, match="equal cost"):
        ValidationConfig(methods=["ITI", "CAA"], num_heads=6, max_questions=8).validate()
    with pytest.raises(InvalidOptionError, match="--methods"):
        ValidationConfig(methods=["ITI", "ActAdd"], kl_budget=[0.1], num_heads=6, max_questions=8).validate()


@pytest.fixture(scope="module")
def features8(smollm2, tmp_path_factory):
    return write_tqa_features(*smollm2, tmp_path_factory.mktemp("features8"), max_questions=8)


@pytest.mark.real
def test_residual_vectors_are_caa_and_repe_on_the_best_layer(features8):
    """On real features: the layer is the one whose layer probe scores best on the fold's validation questions;
    CAA's vector = the mean over training questions of mean(true rows) - mean(false rows) there; RepE's = the
    first principal component (sklearn's PCA) of those per-question differences, signed toward true."""
    fs = load_features(features8 / "smollm2-135m_tqa_mc2", layer_wise=True)
    train_q = np.arange(4)
    probes = train_fold_layer_probes(fs, train_q, seed=42)
    layer = int(np.argmax(probes.accuracies.reshape(-1)))
    rows = np.isin(fs.question_ids, train_q)
    X, y, q = np.asarray(fs.layer_wise[rows], np.float64)[:, layer], fs.labels[rows], fs.question_ids[rows]
    diffs = np.stack([X[(q == i) & (y == 1)].mean(0) - X[(q == i) & (y == 0)].mean(0) for i in np.unique(q)])
    caa = build_residual_steering(fs, probes, method="mean_diff", model_name="smollm2-135m")
    assert list(caa.vectors) == [("resid_post", layer)]
    np.testing.assert_allclose(caa.vectors[("resid_post", layer)], diffs.mean(0), rtol=1e-4, atol=1e-5)
    component = PCA(n_components=1).fit(diffs).components_[0]
    if np.mean(diffs @ component < 0) > np.mean(diffs @ component > 0):
        component = -component
    repe = build_residual_steering(fs, probes, method="pca_diff", model_name="smollm2-135m")
    np.testing.assert_allclose(repe.vectors[("resid_post", layer)], component, atol=1e-4)
    rand = build_residual_steering(fs, probes, method="random", model_name="smollm2-135m", seed=3)
    assert list(rand.vectors) == [("resid_post", layer)]
    np.testing.assert_allclose(np.linalg.norm(rand.vectors[("resid_post", layer)]), 1.0, rtol=1e-5)


@pytest.mark.real
@pytest.mark.slow  # nine rows x two folds, each with its alpha search: ~3 min alone on 2 cores, 8 beside a study
def test_caa_and_repe_rows_meet_the_budget_and_are_compared_with_iti_and_their_site_control(smollm2, features8, tmp_path):
    model, tok = smollm2
    cfg = ValidationConfig(features_dir=str(features8), ce_samples=2, budget_texts=2, generate=False, num_heads=6,
                           max_questions=4, kl_budget=[0.1], methods=["ITI", "CAA", "RepE"])
    summary = run_validation(model, tok, cfg, tmp_path / "v")
    for key in ("CAA_kl0.1_l1_s42", "RepE_kl0.1_l1_s42", "random-residual-direction_kl0.1_l1_s42"):
        for fold in (0, 1):
            row = json.loads((tmp_path / "v" / "rows" / f"fold{fold}_{key}.json").read_text())
            assert abs(row["budget_search"]["reached"] - 0.1) <= 0.005 and row["spec"]["site"] == "resid_post"
            assert len(row["layers"]) == 1 and row["heads"] == []
    (entry,) = summary["cost_matched"]
    assert sorted(entry["iti_minus"]) == ["CAA", "RepE", "random direction", "random heads", "random residual direction"]
    assert sorted(entry["minus_site_control"]) == ["CAA", "RepE"]
    md = (tmp_path / "v" / "summary.md").read_text()
    assert "| KL 0.1 | 42 | CAA |" in md and "| KL 0.1 | 42 | RepE | " in md and "method − random residual direction" in md
    again = run_validation(model, tok, cfg, tmp_path / "v")  # from the stored rows: the same comparison
    assert again["cost_matched"] == summary["cost_matched"]
