"""SparseCBM's loops on a tiny random decoder and a synthetic task whose concepts are token presence: training
lowers the loss, pruning reaches the scheduled sparsity for every concept, a killed run resumes to the same numbers,
the intervention leaves the masks as they were, and both macro-F1s against formulas written out here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import iti.concepts.sparsecbm_training as training
from iti.concepts.bottleneck import original_macro_f1
from iti.concepts.concept_masks import ConceptMasks, masked_linear_names
from iti.concepts.joint_cbm import JointCBM, lower_hidden_states, split_backbone
from iti.concepts.sparsecbm_training import TrainingSchedule, evaluate, mask_intervention, train_sparse_cbm

from ..conftest import make_tiny_model


def _data(backbone, n: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 100, (n, 8), generator=g)
    concepts = torch.randint(0, 3, (n, 4), generator=g)
    for c in range(4):  # concept c's class is written into the review as token 3c + class
        ids[:, c] = 3 * c + concepts[:, c] + 1
    labels = concepts[:, 0].clone() + (concepts[:, 1] == 1).long()  # a rating the concepts determine (0..3)
    attn = torch.ones_like(ids)
    states = lower_hidden_states(backbone, ids, attn, 1)
    return [(states[i : i + 4], attn[i : i + 4], concepts[i : i + 4], labels[i : i + 4]) for i in range(0, n, 4)]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    backbone = make_tiny_model("llama").model
    top = split_backbone(backbone, 1)
    masks = ConceptMasks(top, 4, masked_linear_names(top, r"layers\.0\.mlp\."))
    torch.manual_seed(seed)
    return backbone, JointCBM(top, masks=masks)


SCHEDULE = TrainingSchedule(epochs=5, lr=3e-3, prune_start=1, prune_end=3, initial_sparsity=0.2, final_sparsity=0.5,
                            fisher_batches=3, block=8, damp=1e-4)


def test_training_prunes_on_schedule_and_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    backbone, model = _model()
    train, dev = _data(backbone, 32, 0), _data(backbone, 16, 1)
    done = train_sparse_cbm(model, train, dev, SCHEDULE, tmp_path / "a", progress=False)
    history = done["history"]
    assert [h["sparsity"] for h in history] == [None, 0.2, pytest.approx(0.35), 0.5, 0.5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # the kept checkpoint is the best dev epoch, and the model holds it
    best = max(range(5), key=lambda e: (history[e]["task_accuracy"], -e))
    assert done["best_epoch"] == best and evaluate(model, dev)["task_accuracy"] == history[best]["task_accuracy"]
    if best >= 3:
        for c in range(4):
            assert all(s == pytest.approx(0.5, abs=0.01) for s in model.masks.sparsity(c).values())

    # the same run killed during epoch 2's evaluation, then run again: the same history to the last digit
    _, again = _model()
    real = training.evaluate
    calls = {"n": 0}

    def dies_at_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "evaluate", dies_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_sparse_cbm(again, train, dev, SCHEDULE, tmp_path / "b", progress=False)
    monkeypatch.setattr(training, "evaluate", real)
    _, resumed_model = _model(seed=5)  # other initial weights: everything must come from the checkpoint
    resumed = train_sparse_cbm(resumed_model, train, dev, SCHEDULE, tmp_path / "b", progress=False)
    assert [h["epoch"] for h in resumed["history"]] == list(range(5))
    assert resumed["history"] == history


def test_the_intervention_reports_before_and_after_and_leaves_the_masks_as_they_were(tmp_path):
    backbone, model = _model()
    data = _data(backbone, 8, 2)
    for i in range(len(model.masks.names)):  # some sparsity, so that regrowing has something to regrow
        m = model.masks.mask(i)
        m &= torch.rand(m.shape, generator=torch.Generator().manual_seed(i)) > 0.3
    masks = [model.masks.mask(i).clone() for i in range(len(model.masks.names))]
    got = mask_intervention(model, data, portion=0.3)
    assert got["before"] == evaluate(model, data)
    assert got["concepts_intervened"] > 0
    assert all(torch.equal(model.masks.mask(i), masks[i]) for i in range(len(masks)))


def test_both_macro_f1_definitions():
    true = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])

    def f1(t, p):  # binary F1 of the positive class, written out
        tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    # SparseCBM: per class, the mean of the F1 of "is c" and of "is not c"; then the mean over classes
    want = np.mean([(f1(true == c, pred == c) + f1(true != c, pred != c)) / 2 for c in (0, 1, 2)])
    assert original_macro_f1(true, pred) == pytest.approx(want)
    sk = np.mean([f1(true == c, pred == c) for c in (0, 1, 2)])
    assert original_macro_f1(true, pred) > sk  # the original's figure comes out higher


def test_sparsecbm_concept_macro_f1_pools_the_four_aspects_as_its_code_does():
    from iti.concepts.bottleneck import task_and_concept_metrics

    rng = np.random.default_rng(0)
    concepts, pred = rng.integers(0, 3, (30, 4)), rng.integers(0, 3, (30, 4))
    pred[:, 0] = concepts[:, 0]  # one aspect right: pooling and averaging over aspects then differ
    t, p = concepts.ravel(), pred.ravel()

    def f1(a, b):
        tp, fp, fn = np.sum(a & b), np.sum(~a & b), np.sum(a & ~b)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    pooled = np.mean([(f1(t == c, p == c) + f1(t != c, p != c)) / 2 for c in (0, 1, 2)])
    m = task_and_concept_metrics(np.zeros(30, int), np.zeros(30, int), pred, concepts)
    assert m["concept_macro_f1_sparsecbm"] == pytest.approx(pooled)
    assert m["concept_macro_f1_sparsecbm"] != pytest.approx(np.mean([m[f"{a}_macro_f1_sparsecbm"] for a in
                                                                     ("food", "service", "ambiance", "noise")]))
    assert m["concept_accuracy"] == pytest.approx(float((concepts == pred).mean()))


def test_a_killed_intervention_resumes_from_its_checkpoint_to_the_same_numbers(tmp_path, monkeypatch):
    import iti.concepts.joint_cbm as joint_cbm
    from iti.concepts.concept_masks import ConceptMaskError

    backbone, model = _model()
    data = _data(backbone, 12, 3)
    for i in range(len(model.masks.names)):
        m = model.masks.mask(i)
        m &= torch.rand(m.shape, generator=torch.Generator().manual_seed(i)) > 0.3
    whole = mask_intervention(model, data, portion=0.3)
    real, calls = joint_cbm.regrow_concept_mask, {"n": 0}

    def dies_late(*a, **k):  # killed in the last batch, after the first two were recorded
        calls["n"] += 1
        if calls["n"] > whole["concepts_intervened"] - 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "regrow_concept_mask", dies_late)
    with pytest.raises(KeyboardInterrupt):
        mask_intervention(model, data, portion=0.3, checkpoint=tmp_path / "mi.json")
    import json

    assert 1 <= len(json.loads((tmp_path / "mi.json").read_text())["records"]) < len(data)
    recorded = json.loads((tmp_path / "mi.json").read_text())["records"]
    counted = {"n": 0}

    def counts(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(training, "regrow_concept_mask", counts)
    assert mask_intervention(model, data, portion=0.3, checkpoint=tmp_path / "mi.json") == whole
    # only the unrecorded batches ran again
    assert counted["n"] == whole["concepts_intervened"] - sum(r["changed"] for r in recorded)
    with pytest.raises(ConceptMaskError, match="portion 0.3"):
        mask_intervention(model, data, portion=0.5, checkpoint=tmp_path / "mi.json")
