"""SparseCBM's training, evaluation and intervention loops over a :class:`~iti.concepts.joint_cbm.JointCBM`.

Training (``train_sparse_cbm``): Adam on the top layers and the heads, SparseCBM's joint loss, and after each epoch of
the pruning schedule every concept's masks set anew from OBS saliencies of ``fisher_batches`` mini-batch gradients;
the checkpoint with the best dev task accuracy among the epochs at the final sparsity is kept (the released script
tests the last epoch). Each epoch is
saved (safetensors + JSON), so a killed run resumes from its last finished epoch with the same result.
Evaluation reports accuracy and both macro-F1s: scikit-learn's and SparseCBM's own (the mean over classes of a
one-vs-rest macro-F1), named apart. The same loop trains the baselines: a dense JointCBM (no masks) and a
:class:`~iti.concepts.joint_cbm.PooledClassifier` (plain fine-tuning, no bottleneck)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_save_safetensors, atomic_write_json
from .bottleneck import task_and_concept_metrics
from .concept_masks import ConceptMaskError
from .joint_cbm import JointCBM, joint_loss, masked_weight_gradients, prune_concept, regrow_concept_mask, restore_concept_mask
from .obs_pruning import scheduled_sparsity

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, attention mask, concepts (B, C), labels


@dataclass(frozen=True)
class TrainingSchedule:
    """How long and how hard: SparseCBM's values where they fit a CPU (its own: 30 epochs, pruning epochs 2-15)."""
    epochs: int = 8
    lr: float = 1e-4
    concept_weight: float = 5.0
    prune_start: int = 2
    prune_end: int = 6
    initial_sparsity: float = 0.2
    final_sparsity: float = 0.7
    fisher_batches: int = 20
    block: int = 20
    damp: float = 1e-7
    fisher: str = "block"
    seed: int = 0


@torch.no_grad()
def predict(model: JointCBM, batches: Sequence[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """(label predictions (N,), concept predictions (N, C))."""
    model.eval()
    labels, concepts = [], []
    for inputs, attn, _, _ in batches:
        concept_logits, label_logits = model(inputs, attn)
        labels.append(label_logits.argmax(-1))
        concepts.append(concept_logits.argmax(-1).T)
    return torch.cat(labels).numpy(), torch.cat(concepts).numpy()


def evaluate(model: JointCBM, batches: Sequence[Batch]) -> dict[str, float]:
    """:func:`~iti.concepts.bottleneck.task_and_concept_metrics` of the model's predictions on ``batches``."""
    pred_labels, pred_concepts = predict(model, batches)
    labels = torch.cat([b[3] for b in batches]).numpy()
    concepts = torch.cat([b[2] for b in batches]).numpy()
    return task_and_concept_metrics(pred_labels, labels, pred_concepts, concepts)


def mask_intervention(model: JointCBM, batches: Sequence[Batch], portion: float = 0.3,
                      progress: bool = False, checkpoint: Path | None = None) -> dict[str, Any]:
    """SparseCBM's test-time intervention, one review at a time: for each concept the model gets wrong, prune and
    regrow that concept's mask toward the gold label, read the concept again, restore the mask; the label head then
    reads the concept logits as they are after the interventions. Returns metrics before and after. With
    ``checkpoint`` (a JSON path) each finished batch is recorded there atomically, and a rerun resumes after it."""
    from tqdm.auto import tqdm

    model.eval()
    done: list[dict[str, Any]] = []
    if checkpoint is not None and checkpoint.is_file():
        stored = json.loads(checkpoint.read_text())
        if stored.get("portion") != portion or stored.get("batches") != len(batches):
            raise ConceptMaskError(f"{checkpoint} holds a mask intervention with portion {stored.get('portion')} over "
                                   f"{stored.get('batches')} batches, not {portion} over {len(batches)}; remove it")
        done = stored["records"]
    for inputs, attn, concepts, _labels in tqdm(batches[len(done):], desc="mask intervention", unit="batch",
                                               initial=len(done), total=len(batches), disable=not progress):
        record: dict[str, Any] = {"before_l": [], "before_c": [], "after_l": [], "after_c": [], "changed": 0}
        for i in range(inputs.shape[0]):
            x, a, gold = inputs[i : i + 1], attn[i : i + 1], concepts[i]
            with torch.no_grad():
                logits, label_logits = model(x, a)
            record["before_l"].append(int(label_logits.argmax()))
            record["before_c"].append(logits.argmax(-1)[:, 0].tolist())
            fixed = logits.clone()
            for c in range(logits.shape[0]):
                if int(logits[c, 0].argmax()) != int(gold[c]):
                    saved = regrow_concept_mask(model, c, x, a, gold[c : c + 1], portion)
                    with torch.no_grad():
                        fixed[c] = model.concept_logits(x, a, c)
                    restore_concept_mask(model, c, saved)
                    record["changed"] += 1
            with torch.no_grad():
                record["after_l"].append(int(model.label_head(fixed.permute(1, 0, 2).flatten(1)).argmax()))
            record["after_c"].append(fixed.argmax(-1)[:, 0].tolist())
        done.append(record)
        if checkpoint is not None:
            atomic_write_json(checkpoint, {"portion": portion, "batches": len(batches), "records": done})
    gl = torch.cat([b[3] for b in batches]).numpy()
    gc = torch.cat([b[2] for b in batches]).numpy()

    def joined(key: str) -> np.ndarray:
        return np.array([v for r in done for v in r[key]])

    return {"before": task_and_concept_metrics(joined("before_l"), gl, joined("before_c"), gc),
            "after": task_and_concept_metrics(joined("after_l"), gl, joined("after_c"), gc),
            "concepts_intervened": sum(r["changed"] for r in done)}


@torch.no_grad()
def typical_concept_logits(model: JointCBM, batches: Sequence[Batch]) -> torch.Tensor:
    """(n_concepts, classes, classes): for each concept and gold class, the mean concept-logit vector over the
    reviews of ``batches`` (train) of that class; what the standard CBM intervention writes in for a concept set to
    gold (Koh et al. set a concept to a typical value of its training distribution)."""
    model.eval()
    logits, gold = [], []
    for inputs, attn, concepts, _ in batches:
        logits.append(model(inputs, attn)[0])
        gold.append(concepts)
    every, labels = torch.cat(logits, 1), torch.cat(gold)  # (C, N, K), (N, C)
    C, _, K = every.shape
    out = torch.zeros(C, K, K, dtype=every.dtype)
    for c in range(C):
        for k in range(K):
            chosen = every[c, labels[:, c] == k]
            out[c, k] = chosen.mean(0) if len(chosen) else torch.nn.functional.one_hot(torch.tensor(k), K).to(every.dtype) * 10
    return out


@torch.no_grad()
def gold_concept_intervention(model: JointCBM, batches: Sequence[Batch], typical: torch.Tensor) -> dict[str, Any]:
    """The standard CBM test-time intervention beside SparseCBM's: every mispredicted concept's logits replaced by the
    typical logits of its gold class (:func:`typical_concept_logits`), then the label head reads them. Returns the task
    metrics after it and how many concepts were set."""
    model.eval()
    after, gold_labels, changed = [], [], 0
    for inputs, attn, concepts, labels in batches:
        logits, _ = model(inputs, attn)
        wrong = logits.argmax(-1) != concepts.T  # (C, B)
        fixed = torch.where(wrong[..., None], typical[torch.arange(len(logits))[:, None], concepts.T], logits)
        changed += int(wrong.sum())
        after.append(model.label_head(fixed.permute(1, 0, 2).flatten(1)).argmax(-1))
        gold_labels.append(labels)
    pred, gold = torch.cat(after).numpy(), torch.cat(gold_labels).numpy()
    return {"after": task_and_concept_metrics(pred, gold), "concepts_set": changed}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as tensors (safetensors) and its groups as JSON: no pickle."""
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().clone()
               for i, st in state["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": state["param_groups"], "keys": {str(i): sorted(st) for i, st in state["state"].items()}}


def _save_epoch(model: JointCBM, optimizer: torch.optim.Optimizer, out: Path, record: dict[str, Any], name: str) -> None:
    """``name``.safetensors (model, masks included), ``name``.optimizer.safetensors and ``name``.json, each atomic; the
    JSON last, so a record always has its tensors."""
    tensors, groups = _optimizer_tensors(optimizer)
    atomic_save_safetensors(out / f"{name}.safetensors", model.state_dict())
    atomic_save_safetensors(out / f"{name}.optimizer.safetensors", tensors)
    atomic_write_json(out / f"{name}.json", {**record, "optimizer": groups})


def _load_epoch(model: JointCBM, optimizer: torch.optim.Optimizer | None, out: Path, name: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    record = json.loads((out / f"{name}.json").read_text())
    model.load_state_dict(load_file(str(out / f"{name}.safetensors")))
    if optimizer is not None:
        tensors = load_file(str(out / f"{name}.optimizer.safetensors"))
        groups = record["optimizer"]
        state = {int(i): {k: tensors[f"{i}.{k}"] for k in keys} for i, keys in groups["keys"].items()}
        optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})
    record.pop("optimizer", None)
    return record


def train_sparse_cbm(model: JointCBM, train: Sequence[Batch], dev: Sequence[Batch], schedule: TrainingSchedule,
                     out: Path, progress: bool = True) -> dict[str, Any]:
    """Train, prune on the schedule and keep the best-dev checkpoint in ``out`` (``best.*``); resumes from
    ``last.*``. Returns the history and the best epoch; the model ends holding the best checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=schedule.lr)
    record: dict[str, Any] = {"schedule": asdict(schedule), "epoch": -1, "history": [], "best_epoch": None,
                              "best_dev_task_accuracy": -1.0}
    if (out / "last.json").is_file():
        record = _load_epoch(model, optimizer, out, "last")
        if record["schedule"] != asdict(schedule):
            from .concept_masks import ConceptMaskError

            raise ConceptMaskError(f"{out} holds a run with another schedule ({record['schedule']}); choose another directory")
    for epoch in range(record["epoch"] + 1, schedule.epochs):
        torch.manual_seed(schedule.seed * 1000 + epoch)
        model.train()
        order = torch.randperm(len(train)).tolist()
        losses = []
        for k in order:
            optimizer.zero_grad(set_to_none=True)
            inputs, attn, concepts, labels = train[k]
            loss = joint_loss(model, inputs, attn, concepts, labels, concept_weight=schedule.concept_weight)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        sparsity = None if model.masks is None else scheduled_sparsity(
            epoch, schedule.prune_start, schedule.prune_end, schedule.initial_sparsity, schedule.final_sparsity)
        if sparsity is not None and model.masks is not None:
            fisher = [train[k] for k in order[: schedule.fisher_batches]]
            for c in range(model.masks.n_concepts):
                grads = masked_weight_gradients(model, fisher, c, schedule.concept_weight)
                prune_concept(model, c, grads, sparsity, schedule.block, schedule.damp, schedule.fisher)
        dev_metrics = evaluate(model, dev)
        record["history"].append({"epoch": epoch, "train_loss": float(np.mean(losses)), "sparsity": sparsity, **dev_metrics})
        record["epoch"] = epoch
        pruned_to_final = model.masks is None or epoch >= schedule.prune_end  # the kept model has the sparsity it claims
        if pruned_to_final and dev_metrics["task_accuracy"] > record["best_dev_task_accuracy"]:
            record["best_epoch"], record["best_dev_task_accuracy"] = epoch, dev_metrics["task_accuracy"]
            _save_epoch(model, optimizer, out, record, "best")
        _save_epoch(model, optimizer, out, record, "last")
        if progress:
            shown = "none" if sparsity is None else f"{sparsity:.3f}"
            print(f"[sparsecbm] epoch {epoch}: loss {np.mean(losses):.3f}, sparsity {shown}, dev task accuracy "
                  f"{dev_metrics['task_accuracy']:.3f}", flush=True)
    _load_epoch(model, None, out, "best")
    return record
