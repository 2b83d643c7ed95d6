"""SparseCBM's experiment: the standard CBM intervention and the mask summary against formulas written out here, token
attributions against the full (unsplit) backbone run with the concept's masked weights, settings refused before the
model loads, `validation/concepts.py --method`, and on the real SmolLM2 a small CEBaB run that a rerun with the same
seed reproduces number for number."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from iti.concepts.concept_masks import ConceptMasks, masked_linear_names
from iti.concepts.joint_cbm import JointCBM, pool, split_backbone
from iti.concepts.sparsecbm_experiment import SparseCBMConfig, mask_summary, run_sparsecbm, token_attributions
from iti.concepts.sparsecbm_training import gold_concept_intervention, typical_concept_logits
from iti.errors import InvalidOptionError

from ..conftest import make_tiny_model, tiny_tokenizer


def _cbm(seed: int = 0):
    torch.manual_seed(seed)
    full = make_tiny_model("llama")
    top = split_backbone(full.model, 1)
    masks = ConceptMasks(top, 4, masked_linear_names(top))
    cbm = JointCBM(top, masks=masks).eval()
    g = torch.Generator().manual_seed(seed)
    for i in range(len(masks.names)):  # different random subnetworks per concept
        masks.mask(i)[:] = torch.rand(masks.mask(i).shape, generator=g) >= 0.4
    return full, cbm


def _batches(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, 6, 32, generator=g)
    attn = torch.ones(n, 6, dtype=torch.long)
    attn[::3, 4:] = 0
    concepts, labels = torch.randint(0, 3, (n, 4), generator=g), torch.randint(0, 5, (n,), generator=g)
    return [(states[i : i + 4], attn[i : i + 4], concepts[i : i + 4], labels[i : i + 4]) for i in range(0, n, 4)]


def test_the_standard_cbm_intervention_writes_each_gold_class_typical_logits():
    _, cbm = _cbm()
    batches = _batches()
    with torch.no_grad():
        logits = torch.cat([cbm(b[0], b[1])[0] for b in batches], 1).numpy()  # (C, N, K)
    gold = torch.cat([b[2] for b in batches]).numpy()
    labels = torch.cat([b[3] for b in batches]).numpy()
    typical = typical_concept_logits(cbm, batches).numpy()
    for c in range(4):
        for k in range(3):
            if (gold[:, c] == k).any():
                np.testing.assert_allclose(typical[c, k], logits[c][gold[:, c] == k].mean(0), rtol=1e-5, atol=1e-6)
    fixed = logits.copy()
    for c in range(4):
        for n in range(len(gold)):
            if logits[c, n].argmax() != gold[n, c]:
                fixed[c, n] = typical[c, gold[n, c]]
    w, b = cbm.label_head.weight.detach().numpy(), cbm.label_head.bias.detach().numpy()
    want = (fixed.transpose(1, 0, 2).reshape(len(gold), -1) @ w.T + b).argmax(-1)
    got = gold_concept_intervention(cbm, batches, torch.from_numpy(typical))
    assert got["after"]["task_accuracy"] == pytest.approx(float((want == labels).mean()))
    assert got["concepts_set"] == int(sum((logits[c].argmax(-1) != gold[:, c]).sum() for c in range(4)))


def test_mask_summary_counts_shared_entries_and_names_the_full_models_layers():
    _, cbm = _cbm()
    s = mask_summary(cbm, first_layer=1)
    assert all(n.startswith("layers.1.") for n in s["names"])
    stacked = [torch.stack([cbm.masks.mask(i)[c] for c in range(4)]).reshape(4, -1).numpy() for i in range(len(s["names"]))]
    for name, m in zip(s["names"], stacked):
        share = [float((m.sum(0) == k).mean()) for k in range(5)]
        np.testing.assert_allclose(s["kept_by_concepts"][name], share)
    every = np.concatenate(stacked, 1)
    jaccard = (every[0] & every[2]).sum() / (every[0] | every[2]).sum()
    assert s["overlap"][0][2] == pytest.approx(jaccard)
    assert s["mean_sparsity"]["food"] == pytest.approx(1 - float(np.mean([m[0].mean() for m in stacked])))


def test_token_attributions_equal_grad_times_input_through_the_full_backbone_with_the_masked_weights():
    full, cbm = _cbm()
    tok = tiny_tokenizer()
    cfg = SparseCBMConfig(trainable_layers=1, max_length=32)
    rows = token_attributions(full, tok, cbm, ["the quick brown fox"], cfg)
    ids = torch.tensor([tok("the quick brown fox", truncation=True, max_length=32)["input_ids"]])
    attn = torch.ones_like(ids)
    last = int(full.config.num_hidden_layers) - 1
    for c, aspect in enumerate(("food", "service", "ambiance", "noise")):
        weights = {n.replace("layers.0.", f"layers.{last}.", 1): w for n, w in cbm.masks.masked_weights(cbm.backbone, c).items()}
        weights |= {f"norm.{k}": v for k, v in cbm.backbone.norm.state_dict().items()}
        embeds = full.model.embed_tokens(ids).detach().requires_grad_()
        hidden = functional_call(full.model, weights, args=(), kwargs={"inputs_embeds": embeds, "attention_mask": attn},
                                 strict=False).last_hidden_state
        logit = cbm.concept_heads[c](pool(hidden, attn, "mean"))[0]
        logit[logit.argmax()].backward()
        np.testing.assert_allclose(rows[0]["concepts"][aspect]["attribution"], (embeds.grad * embeds).sum(-1)[0].detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert rows[0]["tokens"] == [tok.decode([i]) for i in ids[0].tolist()]


@pytest.mark.parametrize("change, option", [
    ({"prune_end": 8}, "prune_start/prune_end"), ({"final_sparsity": 1.0}, "final_sparsity"),
    ({"sparsity_curve": (0.5, -0.1)}, "sparsity_curve"), ({"mask_portion": 1.5}, "mask_portion"),
    ({"trainable_layers": 0}, "trainable_layers"), ({"lr": 0.0}, "lr"),
])
def test_impossible_settings_are_refused_before_anything_loads(tmp_path, change, option):
    cfg = SparseCBMConfig(output_dir=str(tmp_path / "run"), **change)
    with pytest.raises(InvalidOptionError, match=f"--{option}"):
        run_sparsecbm(cfg)
    assert not (tmp_path / "run").exists()


def test_the_validation_script_picks_the_method():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "validation"))
    try:
        import concepts as script
    finally:
        sys.path.pop(0)
    assert script.command(["--method", "sparsecbm", "--epochs", "2"]) == ["sparsecbm", "--epochs", "2"]
    assert script.command(["--seed", "1", "--method=bottleneck"]) == ["concepts", "--seed", "1"]
    assert script.command(["--ks", "4"]) == ["concepts", "--ks", "4"]
    with pytest.raises(SystemExit, match="choose one of bottleneck, sparsecbm"):
        script.command(["--method", "sparse"])


def _numbers(summary: dict) -> dict:
    summary = json.loads(json.dumps(summary))
    summary.pop("seconds")
    summary.pop("config")
    for row in summary["models"]:
        row.pop("seconds_this_run")
    return summary


SMALL = dict(max_reviews=12, epochs=3, prune_start=1, prune_end=2, sparsity_curve=(), fisher_batches=1, block=8,
             batch_size=8, head_ks=(1,), attribution_reviews=1, progress=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, smollm2):
    out = tmp_path_factory.mktemp("sparsecbm") / "a"
    return out, run_sparsecbm(SparseCBMConfig(output_dir=str(out), **SMALL))


def test_a_small_cebab_run_trains_prunes_and_intervenes(small_run):
    out, first = small_run
    main = next(m for m in first["models"] if m["model"] == first["main"])
    assert main["best_epoch"] == 2 and first["masks"]["mean_sparsity"]["food"] == pytest.approx(0.7, abs=1e-3)
    assert {m["kind"] for m in first["models"]} == {"sparsecbm", "dense", "finetune"}
    assert first["mask_intervention_test"]["concepts_intervened"] > 0
    for name in ("results.md", "predictions_test.jsonl", "attributions.json", "masks.png", "sparsity_accuracy.png",
                 "attributions.png"):
        assert (out / name).is_file(), name
    y = [json.loads(line)["rating"] for line in (out / "predictions_test.jsonl").read_text().splitlines()]
    majority = first["majority_test"]["task_accuracy"]
    assert any(majority == pytest.approx(np.mean(np.array(y) == k)) for k in range(1, 6))  # one rating's share


@pytest.mark.slow  # two more runs (about 1.5 min on 2 cores)
def test_a_rerun_from_scratch_and_a_resumed_run_give_the_same_numbers(small_run, tmp_path):
    out, first = small_run
    second = run_sparsecbm(SparseCBMConfig(output_dir=str(tmp_path / "b"), **SMALL))
    assert _numbers(second) == _numbers(first)
    again = run_sparsecbm(SparseCBMConfig(output_dir=str(out), **SMALL))  # finished: read back, scored again
    assert _numbers(again) == _numbers(first)
