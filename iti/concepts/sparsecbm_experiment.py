"""SparseCBM on CEBaB end to end (``iti sparsecbm``, ``python validation/concepts.py --method sparsecbm``): the joint
concept bottleneck with one pruned subnetwork per concept, trained on the top decoder layers of a causal LM, its mask
intervention and the standard CBM intervention on test, the sparsity curve, the baselines in one table (dense joint
CBM, plain fine-tuning, the frozen-head bottleneck of ``iti concepts``, the majority class), and the three levels of
explanation (concept predictions per review, the subnetworks, token attributions).

The lower layers are frozen and run once per review (their output is cached in the run directory); the top
``trainable_layers`` layers and the heads are trained, and every ``nn.Linear`` weight in them is masked per concept.
Each trained model is a resumable directory of safetensors checkpoints under ``train/``."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EmptyInputError
from ..io import atomic_save_safetensors, atomic_write_json, atomic_write_text
from ..options import check_each, check_positive_int, check_range, check_seed, refuse
from ..paths import results_dir
from ..run_directory import RunDirectory
from .bottleneck import grouped_folds, oracle_correction, task_and_concept_metrics
from .cebab import ASPECTS, CONCEPT_CLASSES, CebabSplit, load_cebab
from .concept_masks import ConceptMasks, masked_linear_names
from .joint_cbm import FISHERS, POOLINGS, JointCBM, PooledClassifier, lower_hidden_states, split_backbone
from .sparsecbm_training import (
    Batch,
    TrainingSchedule,
    evaluate,
    gold_concept_intervention,
    mask_intervention,
    predict,
    train_sparse_cbm,
    typical_concept_logits,
)

RESULTS = "validation/concepts_results/sparsecbm"
SPLIT_NAMES = ("train_exclusive", "dev", "test")


@dataclass
class SparseCBMConfig:
    """Settings of one ``iti sparsecbm`` run. The defaults fit CEBaB in about an hour on 2 CPU cores (the last decoder
    layer trained and masked, 8 epochs, pruning over epochs 2-6 to 70 %); ``--trainable_layers 12 --epochs 30
    --prune_end 15 --lr 1e-5 --max_length 512`` is closer to the original's full fine-tuning on a GPU."""
    model: str = field(default="smollm2-135m", metadata={"help": "embedded name, short name, hub id or local dir"})
    trainable_layers: int = field(default=1, metadata={
        "help": "top decoder layers trained and masked (the layers below are frozen and run once per review)"})
    masked: str | None = field(default=None, metadata={
        "help": "regex over the top layers' Linear names to mask (default: every Linear: q/k/v/o/gate/up/down)"})
    pooling: str = field(default="mean", metadata={"help": "how the last hidden state is pooled (SparseCBM: mean)",
                                                   "choices": POOLINGS})
    max_length: int = field(default=128, metadata={"help": "tokens per review (CEBaB reviews: 25 on average, 92 at most)"})
    epochs: int = field(default=8, metadata={"help": "training epochs (SparseCBM: 30); the best-dev epoch is kept"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (SparseCBM: 1e-5 on the whole backbone)"})
    concept_weight: float = field(default=5.0, metadata={"help": "weight of the concept loss (SparseCBM's LAMBD_XtoC)"})
    prune_start: int = field(default=2, metadata={"help": "first pruning epoch (SparseCBM: 2)"})
    prune_end: int = field(default=6, metadata={"help": "epoch the final sparsity is reached (SparseCBM: 15)"})
    initial_sparsity: float = field(default=0.2, metadata={"help": "sparsity at prune_start (SparseCBM: 0.2)"})
    final_sparsity: float = field(default=0.7, metadata={"help": "sparsity of the reported model (SparseCBM: 0.7)"})
    sparsity_curve: Sequence[float] = field(default=(0.5, 0.9), metadata={
        "help": "further final sparsities trained for the sparsity-accuracy curve (none = skip)", "nargs": "*"})
    fisher: str = field(default="block", metadata={
        "help": "empirical Fisher of the OBS saliency: block-diagonal, or its diagonal (the low-memory fallback)",
        "choices": FISHERS})
    fisher_batches: int = field(default=20, metadata={"help": "mini-batch gradients in the empirical Fisher (oBERT: 20)"})
    block: int = field(default=20, metadata={"help": "Fisher block size (SparseCBM: 20)"})
    damp: float = field(default=1e-7, metadata={"help": "Fisher dampening"})
    mask_portion: float = field(default=0.3, metadata={
        "help": "share of a mask pruned and regrown by the intervention (SparseCBM's MASK_PORTION)"})
    baselines: bool = field(default=True, metadata={
        "help": "skip the dense joint CBM, fine-tuning and frozen-head baselines", "flag": "no_baselines", "invert": True})
    head_ks: Sequence[int] = field(default=(1, 4, 16, 64), metadata={
        "help": "heads per concept tried by the frozen-head bottleneck baseline (chosen on dev)"})
    attribution_reviews: int = field(default=4, metadata={"help": "test reviews shown with token attributions"})
    max_reviews: int | None = field(default=None, metadata={"help": "seeded sample of N reviews per split (default: all)"})
    batch_size: int = field(default=16, metadata={"help": "reviews per mini-batch"})
    seed: int = field(default=0, metadata={"help": "seed of the sample, batch order, heads and training"})
    dtype: str | None = field(default=None, metadata={
        "help": "float32 (CPU default), bfloat16, float16 or auto (bf16 on a CPU with native bf16)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root holding cebab/ (default: $ITI_DATA_DIR, ../shared/data, hub)"})
    output_dir: str = field(default_factory=lambda: str(results_dir(RESULTS) / "run"), metadata={
        "help": "where the run goes (default: validation/concepts_results/sparsecbm/run under the output root)"})
    progress: bool = field(default=True, metadata={"help": "no progress output", "flag": "quiet", "invert": True})
    force: bool = field(default=False, metadata={
        "help": "replace a run with other settings in output_dir (refused otherwise)"})

    def validate(self) -> None:
        """Refuse impossible settings before the model loads: counts >= 1, sparsities in [0, 1), the pruning window
        inside the epochs, and an existing data_dir."""
        from ..models import check_dtype, resolve_model
        from ..paths import data_search

        resolve_model(self.model)
        for name in ("trainable_layers", "max_length", "epochs", "fisher_batches", "block", "batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_reviews", self.max_reviews, none_ok=True, why="leave it out for all")
        check_range("attribution_reviews", self.attribution_reviews, 0, integer=True)
        check_seed("seed", self.seed)
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("concept_weight", self.concept_weight, 0.0)
        check_range("damp", self.damp, 0.0, lo_open=True)
        check_range("mask_portion", self.mask_portion, 0.0, 1.0)
        for name in ("initial_sparsity", "final_sparsity"):
            check_range(name, getattr(self, name), 0.0, 1.0, hi_open=True)
        check_each(check_range, "sparsity_curve", self.sparsity_curve, lo=0.0, hi=1.0, hi_open=True)
        if not 0 <= self.prune_start <= self.prune_end < self.epochs:
            raise refuse("prune_start/prune_end", f"0 <= prune_start <= prune_end < epochs ({self.epochs})",
                         [self.prune_start, self.prune_end])
        if not self.head_ks and self.baselines:
            raise EmptyInputError("the frozen-head baseline needs at least one k (--head_ks)")
        check_each(check_positive_int, "head_ks", self.head_ks)
        if self.dtype not in (None, "auto"):
            check_dtype(self.dtype)
        if self.data_dir is not None:
            data_search(self.data_dir)

    def schedule(self, final_sparsity: float | None = None) -> TrainingSchedule:
        """The training schedule of the model pruned to ``final_sparsity`` (default: the reported one)."""
        return TrainingSchedule(epochs=self.epochs, lr=self.lr, concept_weight=self.concept_weight,
                                prune_start=self.prune_start, prune_end=self.prune_end,
                                initial_sparsity=self.initial_sparsity,
                                final_sparsity=self.final_sparsity if final_sparsity is None else final_sparsity,
                                fisher_batches=self.fisher_batches, block=self.block, damp=self.damp,
                                fisher=self.fisher, seed=self.seed)

    def sparsities(self) -> list[float]:
        """Every final sparsity trained: the reported one and the curve's, ascending."""
        return sorted({float(self.final_sparsity), *(float(s) for s in self.sparsity_curve)})


#: fields that do not change a run's outputs
_NOT_SETTINGS = {"output_dir", "progress", "force", "data_dir"}


def run_settings(cfg: SparseCBMConfig) -> dict[str, Any]:
    """The settings that determine a run's outputs, as recorded in its ``run.json``."""
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items() if k not in _NOT_SETTINGS}


def run_directory(out: str | Path) -> RunDirectory:
    """The run's output directory (``run.json`` holds the settings)."""
    return RunDirectory(Path(out), "SparseCBM run", outputs=("summary.json", "results.md", "predictions_test.jsonl",
                                                             "attributions.json", "*.png"))


def review_batches(backbone: torch.nn.Module, tok: Any, split: CebabSplit, batch_size: int, max_length: int,
                   trainable_layers: int, order: np.ndarray, progress: bool = False) -> list[Batch]:
    """Mini-batches of (hidden states entering the top layers (B, T, d), attention mask, concepts (B, 4), ratings (B,))
    over the raw review texts (SparseCBM feeds the text alone), right-padded, in ``order``."""
    encoded = tok([r.text for r in split.reviews], truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    concepts, ratings = torch.from_numpy(split.concepts), torch.from_numpy(split.ratings)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    from tqdm.auto import tqdm

    batches = []
    for start in tqdm(range(0, len(order), batch_size), desc=f"frozen layers, {split.name}", unit="batch",
                      disable=not progress):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            attn[row, : len(encoded[i])] = 1
        hidden = lower_hidden_states(backbone, ids, attn, trainable_layers)
        batches.append((hidden.contiguous(), attn, concepts[idx].clone(), ratings[idx].clone()))
    return batches


def cached_batches(path: Path, build) -> list[Batch]:
    """The batches stored at ``path`` (safetensors), or ``build()``'s, stored there atomically first: the frozen
    lower layers run once per run directory."""
    from safetensors.torch import load_file

    if path.is_file():
        stored = load_file(str(path))
        n = len({k.split(".")[0] for k in stored})
        return [tuple(stored[f"{i}.{part}"] for part in ("inputs", "attention_mask", "concepts", "labels"))  # type: ignore[misc]
                for i in range(n)]
    batches = build()
    atomic_save_safetensors(path, {f"{i}.{part}": t.contiguous() for i, b in enumerate(batches)
                                   for part, t in zip(("inputs", "attention_mask", "concepts", "labels"), b)})
    return batches


def build_model(kind: str, model: Any, cfg: SparseCBMConfig) -> Any:
    """A fresh model of ``kind`` (``sparsecbm``, ``dense``, ``finetune``) on a copy of the top layers, its new heads
    drawn from ``cfg.seed``."""
    top = split_backbone(model.model, cfg.trainable_layers)
    torch.manual_seed(cfg.seed)
    if kind == "finetune":
        built: Any = PooledClassifier(top, n_labels=5, concept_classes=len(CONCEPT_CLASSES), pooling=cfg.pooling)
    else:
        masks = ConceptMasks(top, len(ASPECTS), masked_linear_names(top, cfg.masked)) if kind == "sparsecbm" else None
        built = JointCBM(top, n_concepts=len(ASPECTS), concept_classes=len(CONCEPT_CLASSES), n_labels=5,
                         pooling=cfg.pooling, masks=masks)
    return built.to(next(model.parameters()).dtype)


def _variant(name: str, kind: str, model, cfg: SparseCBMConfig, batches: dict[str, list[Batch]], out: Path,
             schedule: TrainingSchedule) -> tuple[Any, dict[str, Any]]:
    t0 = time.perf_counter()
    built = build_model(kind, model, cfg)
    record = train_sparse_cbm(built, batches["train_exclusive"], batches["dev"], schedule, out / "train" / name,
                              progress=cfg.progress)
    row = {"model": name, "kind": kind, "best_epoch": record["best_epoch"], "test": evaluate(built, batches["test"]),
           "history": record["history"], "seconds_this_run": time.perf_counter() - t0}
    if cfg.progress:
        print(f"[sparsecbm] {name}: test task accuracy {row['test']['task_accuracy']:.3f}", flush=True)
    return built, row


def mask_summary(cbm: JointCBM, first_layer: int = 0) -> dict[str, Any]:
    """Per concept and masked weight the share pruned (uniform per matrix by construction, as SparseCBM prunes), per
    weight the share of entries kept by exactly 0..n_concepts concepts (a shared core against concept-specific
    weights), and the Jaccard overlap of each pair of concepts' kept weights (all masked layers together). Weight names
    carry the layer's index in the full model (``first_layer`` + index in the top layers)."""
    assert cbm.masks is not None
    masks = cbm.masks

    def full_name(n: str) -> str:
        parts = n.split(".")
        return ".".join([parts[0], str(int(parts[1]) + first_layer), *parts[2:]]) if parts[0] == "layers" else n

    kept_by = {}
    for i, n in enumerate(masks.names):
        counts = masks.mask(i).reshape(masks.n_concepts, -1).sum(0)
        kept_by[full_name(n)] = (torch.bincount(counts, minlength=masks.n_concepts + 1).double() / counts.numel()).tolist()
    sparsity = {a: masks.sparsity(c) for c, a in enumerate(ASPECTS)}
    return {"names": [full_name(n) for n in masks.names],
            "sparsity": {a: {full_name(n): v for n, v in per.items()} for a, per in sparsity.items()},
            "mean_sparsity": {a: float(np.mean(list(per.values()))) for a, per in sparsity.items()},
            "kept_by_concepts": kept_by,
            "overlap": [[masks.overlap(a, b) for b in range(len(ASPECTS))] for a in range(len(ASPECTS))]}


def token_attributions(model, tok, cbm: JointCBM, texts: Sequence[str], cfg: SparseCBMConfig) -> list[dict[str, Any]]:
    """Gradient x input on each concept's predicted-class logit, per input token: the token embeddings run through the
    frozen lower layers and the concept's own subnetwork, and the attribution is sum_d(grad * embedding)."""
    backbone = model.model
    first = int(backbone.config.num_hidden_layers) - cfg.trainable_layers
    rows = []
    for text in texts:
        ids = torch.tensor([tok(text, truncation=True, max_length=cfg.max_length)["input_ids"]])
        attn = torch.ones_like(ids)
        tokens = [tok.decode([i]) for i in ids[0].tolist()]
        row: dict[str, Any] = {"text": text, "tokens": tokens, "concepts": {}}
        for c, aspect in enumerate(ASPECTS):
            embeds = backbone.embed_tokens(ids).detach().requires_grad_()
            hidden = backbone(inputs_embeds=embeds, attention_mask=attn, output_hidden_states=True).hidden_states[first]
            logits = cbm.concept_logits(hidden, attn, c)[0]
            predicted = int(logits.argmax())
            logits[predicted].backward()
            assert embeds.grad is not None
            row["concepts"][aspect] = {"predicted": CONCEPT_CLASSES[predicted],
                                       "attribution": (embeds.grad * embeds).sum(-1)[0].tolist()}
        rows.append(row)
    cbm.zero_grad(set_to_none=True)
    return rows


def run_sparsecbm(cfg: SparseCBMConfig) -> dict[str, Any]:
    """Run the experiment into ``output_dir`` (resumable: rerun the same command) and return the summary. A directory
    holding a run with other settings is refused before the model loads, unless ``force``."""
    from ..models import load_model

    cfg.validate()
    directory = run_directory(cfg.output_dir)
    directory.check(run_settings(cfg), force=cfg.force)
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, dtype=cfg.dtype)
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        from ..errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(f"{cfg.model}: SparseCBM needs a decoder with model.model.layers")
    with directory.claimed(run_settings(cfg), force=cfg.force):
        return _run_claimed(cfg, model, tok, t0)


def _run_claimed(cfg: SparseCBMConfig, model: Any, tok: Any, t0: float) -> dict[str, Any]:
    from .cebab import majority_baseline
    from .experiment import _sample

    out = Path(cfg.output_dir)
    used = {s: _sample(load_cebab(s, cfg.data_dir), cfg.max_reviews, cfg.seed) for s in SPLIT_NAMES}
    for p in model.parameters():
        p.requires_grad_(False)
    batches = {}
    for s in SPLIT_NAMES:
        order = (np.random.default_rng(cfg.seed).permutation(len(used[s])) if s == "train_exclusive"
                 else np.arange(len(used[s])))
        batches[s] = cached_batches(out / "hidden_states" / f"{s}.safetensors", lambda s=s, order=order: review_batches(
            model.model, tok, used[s], cfg.batch_size, cfg.max_length, cfg.trainable_layers, order, cfg.progress))
    t_states = time.perf_counter() - t0
    rows, models = [], {}  # name -> JointCBM or PooledClassifier
    for sparsity in cfg.sparsities():
        name = f"sparsecbm_{sparsity:g}"
        models[name], row = _variant(name, "sparsecbm", model, cfg, batches, out, cfg.schedule(sparsity))
        row["sparsity"] = sparsity
        rows.append(row)
    main_name = f"sparsecbm_{float(cfg.final_sparsity):g}"
    main = models[main_name]
    if cfg.baselines:
        for kind in ("dense", "finetune"):
            models[kind], row = _variant(kind, kind, model, cfg, batches, out, cfg.schedule(0.0))
            rows.append(row)
    typical = typical_concept_logits(main, batches["train_exclusive"])
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
        "compute_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "sizes": {s: len(v) for s, v in used.items()},
        "masked_weights": main.masks.names if main.masks is not None else [],
        "models": rows, "main": main_name,
        "mask_intervention_test": mask_intervention(main, batches["test"], cfg.mask_portion, cfg.progress,
                                                    out / "mask_intervention_test.json"),
        "gold_concept_intervention_test": gold_concept_intervention(main, batches["test"], typical),
        "masks": mask_summary(main, int(model.config.num_hidden_layers) - cfg.trainable_layers),
    }
    if cfg.baselines:
        result["dense_gold_concept_intervention_test"] = gold_concept_intervention(
            models["dense"], batches["test"], typical_concept_logits(models["dense"], batches["train_exclusive"]))
        result["frozen_heads"] = _frozen_head_baseline(cfg, model, tok, used, out)
    y, C = used["test"].ratings, used["test"].concepts
    majority_rating = int(np.bincount(used["train_exclusive"].ratings, minlength=5).argmax())
    majority_concepts = [int(np.bincount(used["train_exclusive"].concepts[:, j], minlength=3).argmax())
                         for j in range(len(ASPECTS))]
    result["majority_test"] = task_and_concept_metrics(np.full(len(y), majority_rating), y,
                                                       np.tile(majority_concepts, (len(y), 1)), C)
    assert result["majority_test"]["concept_accuracy"] == majority_baseline(used["train_exclusive"], used["test"])["mean"]
    _write_predictions(main, batches["test"], used["test"], out)
    if cfg.attribution_reviews:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(used["test"]), size=min(cfg.attribution_reviews, len(used["test"])),
                                                              replace=False))
        attributions = token_attributions(model, tok, main, [used["test"].reviews[i].text for i in pick], cfg)
        for i, row in zip(pick, attributions):
            row["gold"] = {a: CONCEPT_CLASSES[k] for a, k in zip(ASPECTS, used["test"].reviews[i].concepts)}
        atomic_write_json(out / "attributions.json", attributions)
        result["attribution_reviews"] = [int(i) for i in pick]
    result["seconds"] = {"lower_states": t_states, "total_this_run": time.perf_counter() - t0}
    atomic_write_json(out / "summary.json", result)
    atomic_write_text(out / "results.md", results_markdown(result))
    from .sparsecbm_figures import plot_sparsecbm

    plot_sparsecbm(result, out)
    return result


def _frozen_head_baseline(cfg: SparseCBMConfig, model, tok, used: dict[str, CebabSplit], out: Path) -> dict[str, Any]:
    """``iti concepts``' bottleneck on the frozen model's last-token head outputs (k chosen on dev), with its oracle
    correction, on the same reviews."""
    from ..models import resolve_model
    from .experiment import ConceptConfig, _features, head_bottleneck_sweep

    groups = [r.original_id for r in used["train_exclusive"].reviews]
    label_folds = ConceptConfig().label_folds  # the same folds as `iti concepts`
    grouped_folds(groups, label_folds, cfg.seed)
    name = resolve_model(cfg.model).name
    X = {s: _features(model, tok, name, v, out, cfg.batch_size, cfg.progress) for s, v in used.items()}
    C = {s: v.concepts for s, v in used.items()}
    y = {s: v.ratings for s, v in used.items()}
    _, sweep, best_k, bn = head_bottleneck_sweep(X, C, y, groups, cfg.head_ks, cfg.seed, label_folds, cfg.progress)
    test = next(r for r in sweep if r["k"] == best_k and r["split"] == "test")
    fixed = oracle_correction(bn, X["test"], C["test"])
    return {"chosen_k": best_k, "test": {k: v for k, v in test.items() if k not in ("k", "split")},
            "oracle_correction_test": task_and_concept_metrics(fixed, y["test"])}


def _write_predictions(cbm: JointCBM, batches: list[Batch], split: CebabSplit, out: Path) -> None:
    """predictions_test.jsonl: each test review with its gold and predicted concepts and rating (the first level of
    explanation)."""
    labels, concepts = predict(cbm, batches)
    lines = []
    for r, label, cs in zip(split.reviews, labels, concepts):
        lines.append(json.dumps({"id": r.id, "text": r.text, "rating": r.rating + 1, "predicted_rating": int(label) + 1,
                                 "concepts": {a: CONCEPT_CLASSES[k] for a, k in zip(ASPECTS, r.concepts)},
                                 "predicted_concepts": {a: CONCEPT_CLASSES[int(k)] for a, k in zip(ASPECTS, cs)}}))
    atomic_write_text(out / "predictions_test.jsonl", "\n".join(lines) + "\n")


def results_markdown(r: dict[str, Any]) -> str:
    """results.md: one table of test metrics (both macro-F1 definitions), the interventions, the sparsity curve and
    the masks' overlap."""
    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    def line(name: str, m: dict[str, Any]) -> str:
        return (f"| {name} | {f(m['task_accuracy'])} | {f(m['task_macro_f1'])} | {f(m['task_macro_f1_sparsecbm'])} | "
                f"{f(m.get('concept_accuracy'))} | {f(m.get('concept_macro_f1'))} | {f(m.get('concept_macro_f1_sparsecbm'))} |")

    rows = {row["model"]: row for row in r["models"]}
    main = rows[r["main"]]
    names = {"dense": "dense joint CBM (no masks)", "finetune": "fine-tuning (no bottleneck)"}
    lines = [f"CEBaB test ({r['sizes']['test']} reviews), {r['compute_dtype']}. Macro-F1: scikit-learn's / SparseCBM's own "
             "(mean over classes of one-vs-rest macro-F1).", "",
             "| model | task acc | task macro-F1 | task macro-F1 (SparseCBM) | concept acc | concept macro-F1 | "
             "concept macro-F1 (SparseCBM) |", "|---|---|---|---|---|---|---|",
             line(f"SparseCBM, sparsity {np.mean(list(r['masks']['mean_sparsity'].values())):.2f}", main["test"]),
             line("SparseCBM after its mask intervention", r["mask_intervention_test"]["after"]),
             line("SparseCBM after setting wrong concepts to gold", r["gold_concept_intervention_test"]["after"])]
    for kind in ("dense", "finetune"):
        if kind in rows:
            lines.append(line(names[kind], rows[kind]["test"]))
    if "dense_gold_concept_intervention_test" in r:
        lines.append(line("dense joint CBM after setting wrong concepts to gold", r["dense_gold_concept_intervention_test"]["after"]))
    if "frozen_heads" in r:
        fh = r["frozen_heads"]
        lines.append(line(f"frozen-head bottleneck (iti concepts), k = {fh['chosen_k']}", fh["test"]))
        lines.append(line("frozen-head bottleneck after setting wrong concepts to gold", fh["oracle_correction_test"]))
    lines.append(line("majority class", r["majority_test"]))
    mi = r["mask_intervention_test"]
    lines += ["", f"Mask intervention: {mi['concepts_intervened']} mispredicted concepts had their subnetwork pruned and "
              f"regrown ({r['config']['mask_portion']:g} of each mask); concept accuracy {f(mi['before']['concept_accuracy'])}"
              f" -> {f(mi['after']['concept_accuracy'])}, task accuracy {f(mi['before']['task_accuracy'])} -> "
              f"{f(mi['after']['task_accuracy'])}.", "",
              "Sparsity curve (test):", "", "| final sparsity | checkpoint kept: epoch (of all) | task acc | concept acc | concept macro-F1 |",
              "|---|---|---|---|---|"]
    for row in r["models"]:
        if row["kind"] == "sparsecbm":
            t = row["test"]
            lines.append(f"| {row['sparsity']:g} | {row['best_epoch'] + 1} of {len(row['history'])} | {f(t['task_accuracy'])} | {f(t['concept_accuracy'])} | "
                         f"{f(t['concept_macro_f1'])} |")
    ov = r["masks"]["overlap"]
    lines += ["", "Jaccard overlap of the concepts' kept weights:", "", "| | " + " | ".join(ASPECTS) + " |",
              "|---|" + "---|" * len(ASPECTS)]
    lines += [f"| {a} | " + " | ".join(f"{x:.3f}" for x in ov[i]) + " |" for i, a in enumerate(ASPECTS)]
    return "\n".join(lines) + "\n"
