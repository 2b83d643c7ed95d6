"""SparseCBM's per-concept subnetworks on a tiny random decoder: each concept's logits depend on its own mask and on
no other (the released code's bug, every pass through the food mask, cannot come back), all-ones masks equal the
plain backbone pooled by hand, and the masks are saved with the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iti.concepts.concept_masks import ConceptMaskError, ConceptMasks, masked_linear_names
from iti.concepts.joint_cbm import JointCBM

from ..conftest import make_tiny_model


@pytest.fixture()
def cbm():
    torch.manual_seed(0)
    backbone = make_tiny_model("llama").model
    masks = ConceptMasks(backbone, 4, masked_linear_names(backbone, r"layers\.\d+\.(self_attn|mlp)\."))
    model = JointCBM(backbone, masks=masks).eval()
    ids = torch.randint(3, 100, (3, 7))
    attn = torch.ones_like(ids)
    attn[1, 5:] = 0  # a right-padded row
    return model, ids, attn


def _prune(model: JointCBM, concept: int, share: float = 0.5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for i in range(len(model.masks.names)):
        m = model.masks.mask(i)
        m[concept] &= torch.rand(m.shape[1:], generator=g) >= share


def test_each_concept_reads_its_own_mask_and_no_other(cbm):
    model, ids, attn = cbm
    with torch.no_grad():
        before = torch.stack([model.concept_logits(ids, attn, c) for c in range(4)])
        _prune(model, 1)
        after = torch.stack([model.concept_logits(ids, attn, c) for c in range(4)])
    assert not torch.allclose(after[1], before[1])  # its own mask changed: its logits move
    for c in (0, 2, 3):
        assert torch.equal(after[c], before[c])  # another concept's mask changed: nothing moves
    assert model.masks.sparsity(1)[model.masks.names[0]] == pytest.approx(0.5, abs=0.1)
    assert model.masks.sparsity(0)[model.masks.names[0]] == 0.0
    assert 0.3 < model.masks.overlap(0, 1) < 0.7 and model.masks.overlap(2, 3) == 1.0


def test_full_masks_equal_the_plain_backbone_pooled_by_hand(cbm):
    model, ids, attn = cbm
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids, attention_mask=attn).last_hidden_state
        keep = attn.unsqueeze(-1).float()
        pooled = (hidden * keep).sum(1) / keep.sum(1)  # the mean over the real tokens, written out
        concepts, labels = model(ids, attn)
        for c in range(4):
            want = pooled @ model.concept_heads[c].weight.T + model.concept_heads[c].bias
            assert torch.allclose(concepts[c], want, atol=1e-5)
        flat = torch.cat([concepts[c] for c in range(4)], dim=1)  # concept 0's three logits, then concept 1's...
        assert torch.allclose(labels, flat @ model.label_head.weight.T + model.label_head.bias, atol=1e-5)


def test_gradients_reach_only_the_kept_weights_and_the_module_weights_stay_dense(cbm):
    model, ids, attn = cbm
    _prune(model, 2, share=0.9)
    name = model.masks.names[0]
    weight = dict(model.backbone.named_parameters())[name]
    dense = weight.detach().clone()
    model.concept_logits(ids, attn, 2).sum().backward()
    assert weight.grad is not None
    assert torch.all(weight.grad[~model.masks.mask(0)[2]] == 0)  # a pruned entry gets no gradient from concept 2
    assert torch.equal(weight.detach(), dense)  # masking never writes into the shared weights


def test_masks_are_saved_with_the_model_and_bad_layouts_are_refused(cbm):
    model, _, _ = cbm
    _prune(model, 3)
    state = model.state_dict()
    assert torch.equal(state["masks.mask_0"][3], model.masks.mask(0)[3]) and state["masks.mask_0"].dtype == torch.bool
    with pytest.raises(ConceptMaskError, match="no nn.Linear layer of the backbone matches"):
        masked_linear_names(model.backbone, "no_such_layer")
    with pytest.raises(ConceptMaskError, match="concept 4 out of range 0..3"):
        model.concept_logits(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), 4)
    with pytest.raises(ConceptMaskError, match="3 masks for 4 concepts"):
        JointCBM(model.backbone, masks=ConceptMasks(model.backbone, 3, model.masks.names))


def test_pruning_one_concept_sets_its_masks_from_the_obs_saliency_and_leaves_the_others(cbm):
    from iti.concepts.joint_cbm import joint_loss, masked_weight_gradients, prune_concept
    from iti.concepts.obs_pruning import keep_mask, obs_saliency

    model, ids, attn = cbm
    model.train()
    g = torch.Generator().manual_seed(0)
    batches = [(ids, attn, torch.randint(0, 3, (3, 4), generator=g), torch.randint(0, 5, (3,), generator=g)) for _ in range(4)]
    grads = masked_weight_gradients(model, batches, concept=2)
    name = model.masks.names[0]
    weight = dict(model.backbone.named_parameters())[name]
    # the first row is the gradient of concept 2's loss + the task loss on the first batch, taken here by hand
    model.zero_grad()
    joint_loss(model, *batches[0], only=2).backward()
    assert torch.allclose(grads[name][0], weight.grad.reshape(-1)) and grads[name].shape == (4, weight.numel())
    others = [model.masks.mask(0)[c].clone() for c in (0, 1, 3)]
    prune_concept(model, 2, grads, sparsity=0.5, block=8, damp=1e-4)
    want = keep_mask(obs_saliency(weight, grads[name], block=8, damp=1e-4), 0.5)
    assert torch.equal(model.masks.mask(0)[2], want) and model.masks.sparsity(2)[name] == pytest.approx(0.5, abs=1e-3)
    assert all(torch.equal(model.masks.mask(0)[c], o) for c, o in zip((0, 1, 3), others))


def _original_modify_mask(mask: np.ndarray, grad: np.ndarray, w: np.ndarray, ratio: float) -> np.ndarray:
    """SparseCBM's SubnetLinear_Mask.modify_mask, written out in numpy (stable sorts for ties)."""
    change, pruned = int(ratio * w.size), int((mask == 0).sum())
    new = mask.copy().reshape(-1)
    order = np.argsort(np.abs(mask * grad * w).reshape(-1), kind="stable")
    new[order[:pruned + change]] = 0
    new[order[pruned + change:]] = 1
    grow = np.abs((1 - new) * (grad * w).reshape(-1) + 1e10 * new)
    order = np.argsort(grow, kind="stable")
    new[order[:pruned]] = 0
    new[order[pruned:]] = 1
    return new.reshape(mask.shape)


def test_the_mask_intervention_is_the_originals_prune_and_regrow_and_is_undone(cbm):
    from iti.concepts.joint_cbm import regrow_concept_mask, restore_concept_mask

    model, ids, attn = cbm
    _prune(model, 1, share=0.4)
    gold = torch.tensor([0, 2, 1])
    # the gradient of concept 1's loss with respect to its (float) masks, taken here through the model's own modules
    from torch.func import functional_call

    params = dict(model.backbone.named_parameters())
    soft = {n: model.masks.mask(i)[1].float().requires_grad_() for i, n in enumerate(model.masks.names)}
    hidden = functional_call(model.backbone, {n: params[n].detach() * soft[n] for n in soft}, args=(),
                             kwargs={"input_ids": ids, "attention_mask": attn}, strict=False).last_hidden_state
    keep = attn.unsqueeze(-1).float()
    logits = model.concept_heads[1]((hidden * keep).sum(1) / keep.sum(1))
    torch.nn.functional.cross_entropy(logits, gold).backward()
    before = [model.masks.mask(i).clone() for i in range(len(model.masks.names))]
    saved = regrow_concept_mask(model, 1, ids, attn, gold, portion=0.3)
    for i, n in enumerate(model.masks.names):
        want = _original_modify_mask(before[i][1].numpy().astype(np.float64), soft[n].grad.numpy(),
                                     params[n].detach().numpy(), 0.3)
        assert np.array_equal(model.masks.mask(i)[1].numpy(), want.astype(bool)), n
        assert int(model.masks.mask(i)[1].sum()) == int(before[i][1].sum())  # constant sparsity
        assert torch.equal(model.masks.mask(i)[[0, 2, 3]], before[i][[0, 2, 3]])  # the other concepts untouched
    assert any(not torch.equal(model.masks.mask(i)[1], before[i][1]) for i in range(len(before)))
    restore_concept_mask(model, 1, saved)
    assert all(torch.equal(model.masks.mask(i), before[i]) for i in range(len(before)))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_top_layers_backbone_fed_the_frozen_states_equals_the_full_backbone(arch):
    from iti.concepts.joint_cbm import lower_hidden_states, split_backbone

    backbone = make_tiny_model(arch).model
    ids = torch.randint(3, 100, (2, 6))
    attn = torch.ones_like(ids)
    attn[1, 4:] = 0
    with torch.no_grad():
        full = backbone(input_ids=ids, attention_mask=attn).last_hidden_state
        for n in (1, backbone.config.num_hidden_layers):
            top = split_backbone(backbone, n)
            got = top(inputs_embeds=lower_hidden_states(backbone, ids, attn, n), attention_mask=attn).last_hidden_state
            assert torch.allclose(got[attn.bool()], full[attn.bool()], atol=1e-5), (arch, n)
    model = JointCBM(split_backbone(backbone, 1))  # the bottleneck takes hidden states as its inputs
    concepts, labels = model(lower_hidden_states(backbone, ids, attn, 1), attn)
    assert concepts.shape == (4, 2, 3) and labels.shape == (2, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smallest_first_is_the_head_of_a_stable_argsort_ties_included(dtype):
    from iti.concepts.joint_cbm import smallest_first

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (5000,), generator=g).to(dtype)  # heavy ties, as a mask's zeros give
    for k in (0, 1, 777, 2500, 4999, 5000):
        want = torch.zeros(5000, dtype=torch.bool)
        want[torch.argsort(scores.float(), stable=True)[:k]] = True
        assert torch.equal(smallest_first(scores, k), want)
