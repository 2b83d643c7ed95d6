"""The concept experiment end to end: features on CEBaB, sparse bottleneck swept over k (chosen on dev), baselines,
oracle correction, and concept steering swept over alpha (chosen on dev pairs), reported on test."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from ..errors import EmptyInputError
from ..features import PromptSet, load_features, write_features
from ..io import atomic_write_json, atomic_write_text
from ..options import check_each, check_finite_nonneg, check_positive_int, check_range, check_ratio, check_seed, refuse
from ..paths import results_dir
from ..run_directory import RunDirectory
from .bottleneck import (
    SparseConceptBottleneck,
    grouped_folds,
    head_concept_accuracy,
    oracle_correction,
    review_prompt,
    task_and_concept_metrics,
)
from .cebab import ASPECTS, CebabSplit, load_cebab, majority_baseline
from .group_lasso import GroupLassoHeads
from .steering import VARIANTS, ConceptDirections, steer_pairs, summarize_steering, zero_shot_rating_probabilities

#: default output directory of `iti concepts`, relative to the output root (iti.paths.output_root)
RESULTS = "validation/concepts_results"

@dataclass
class ConceptConfig:
    """Settings of one ``iti concepts`` run; k and alpha are chosen on dev from ``ks`` and ``alphas``."""
    model: str = field(default="smollm2-135m", metadata={"help": "embedded name, short name, hub id or local dir"})
    ks: Sequence[int] = field(default=(1, 4, 16, 64), metadata={"help": "heads per concept to try (chosen on dev)"})
    alphas: Sequence[float] = field(default=(0.0, 2.0, 5.0, 10.0, 20.0), metadata={
        "help": "steering strengths (chosen on dev)"})
    l1_strengths: Sequence[float] = field(default=(0.7, 0.5, 0.3), metadata={
        "help": "group-lasso head selection, as fractions of the all-zero penalty (none = skip the L1 variant)",
        "nargs": "*"})
    max_reviews: int | None = field(default=None, metadata={"help": "seeded sample of N reviews per split (default: all)"})
    max_pairs: int | None = field(default=200, metadata={
        "help": "counterfactual pairs per split for steering (0 = all)", "zero_is_none": True})
    dense_baseline: bool = field(default=True, metadata={
        "help": "skip the dense all-heads probe baseline", "flag": "no_dense", "invert": True})
    seed: int = field(default=0, metadata={"help": "seed of the samples, probes and steering pairs"})
    label_folds: int = field(default=5, metadata={
        "help": "folds (grouped by original review) of the out-of-fold concept probabilities the label head is "
                "fitted on"})
    batch_size: int = field(default=16, metadata={"help": "reviews per forward pass"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root holding cebab/ (default: $ITI_DATA_DIR, ../shared/data, hub)"})
    output_dir: str = field(default_factory=lambda: str(results_dir(RESULTS) / "run"), metadata={
        "help": "where the run goes (default: validation/concepts_results/run under the output root, see "
                "iti.paths.output_root)"})
    progress: bool = field(default=True, metadata={"help": "no progress bar", "flag": "quiet", "invert": True})
    force: bool = field(default=False, metadata={
        "help": "replace a run with other settings in output_dir (refused otherwise)"})

    def validate(self) -> None:
        """Refuse impossible settings (one error naming the option) before the model loads or a file is written:
        ks >= 1, alphas finite and >= 0 with at least one above 0 (the steering strength is chosen among those),
        L1 strengths in (0, 1), max_reviews >= 1 and max_pairs >= 1 (None = all), seed >= 0, label_folds >= 2,
        batch_size >= 1 and an existing data_dir."""
        from ..models import resolve_model
        from ..paths import data_search

        resolve_model(self.model)
        if not self.ks or not self.alphas:
            raise EmptyInputError("need at least one k and one alpha")
        check_each(check_positive_int, "ks", self.ks)
        check_each(check_finite_nonneg, "alphas", self.alphas)
        if max(self.alphas) <= 0:
            raise refuse("alphas", "at least one alpha > 0 (0 is the unsteered reference)", list(self.alphas))
        check_each(check_ratio, "l1_strengths", self.l1_strengths,
                   why="a fraction of the penalty that switches every head off")  # GroupLassoHeads' range
        check_positive_int("max_reviews", self.max_reviews, none_ok=True, why="leave it out or None for all")
        check_positive_int("max_pairs", self.max_pairs, none_ok=True, why="0 or None = all")
        check_seed("seed", self.seed)
        check_range("label_folds", self.label_folds, 2, integer=True,
                    why="cross-fitting needs a held-out fold and a fitted one")
        check_positive_int("batch_size", self.batch_size)
        if self.data_dir is not None:
            data_search(self.data_dir)  # the one check of --data_dir (used only after the model loads)


def _sample(split: CebabSplit, n: int | None, seed: int) -> CebabSplit:
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return CebabSplit(split.name, split.origin, tuple(split.reviews[i] for i in idx), split.dropped_no_majority)


def _features(model, tok, model_name: str, split: CebabSplit, out: Path, batch_size: int, progress: bool) -> np.ndarray:
    """Last-token head outputs of every review prompt, collected through the resumable feature writer into
    ``out/features`` (float32): a killed run picks up where it stopped, a finished split is read back."""
    prompts = [review_prompt(r.text) for r in split.reviews]
    ps = PromptSet(f"cebab_{split.name}", prompts, split.ratings, np.arange(len(split)), review_prompt("{review}"))
    ps.name = f"cebab_{split.name}_{ps.fingerprint()[:12]}"  # another sample of the split gets its own directory
    path = write_features(model, tok, ps, out / "features", model_name=model_name, batch_size=batch_size,
                          dtype="float32", layer_wise=False, progress=progress)
    return np.array(load_features(path).head_wise)


def _dense(Xtr, Ctr, ytr, Xte, seed) -> tuple[np.ndarray, np.ndarray]:
    """Every head's output concatenated, one multinomial probe per aspect and one for the rating."""
    A, B = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    concepts = np.stack([LogisticRegression(max_iter=2000, random_state=seed).fit(A, Ctr[:, j]).predict(B)
                         for j in range(len(ASPECTS))], 1)
    ratings = LogisticRegression(max_iter=2000, random_state=seed).fit(A, ytr).predict(B)
    return ratings, concepts


def _l1_sweep(cfg: ConceptConfig, X, C, y, groups: list[str]) -> list[dict[str, Any]]:
    """The L1 variant: heads per aspect chosen by a group lasso on train (no ranking on dev), then the same
    bottleneck on those heads (label head cross-fitted over ``groups``); one row per strength and split."""
    rows = []
    for strength in tqdm(cfg.l1_strengths, desc="group-lasso strengths", unit="strength", disable=not cfg.progress):
        heads = {a: GroupLassoHeads(strength).fit(X["train_exclusive"], C["train_exclusive"][:, j]).heads()
                 for j, a in enumerate(ASPECTS)}
        if not all(heads.values()):  # a penalty that switched every head of an aspect off: nothing to fit
            rows.append({"strength": strength, "heads_per_aspect": {a: len(h) for a, h in heads.items()}, "split": None})
            continue
        bn = SparseConceptBottleneck(seed=cfg.seed, label_folds=cfg.label_folds, heads=heads).fit(
            X["train_exclusive"], C["train_exclusive"], y["train_exclusive"], groups)
        for s in ("dev", "test"):
            m = task_and_concept_metrics(bn.predict(X[s]), y[s], bn.predict_concepts(X[s]), C[s])
            rows.append({"strength": strength, "heads_per_aspect": {a: len(h) for a, h in heads.items()}, "split": s,
                         "heads": {a: [list(h) for h in heads[a]] for a in ASPECTS}, **m})
    return rows


#: ConceptConfig fields that do not change a run's outputs
_NOT_SETTINGS = {"batch_size", "output_dir", "progress", "force", "data_dir"}


def run_settings(cfg: ConceptConfig) -> dict[str, Any]:
    """The settings that determine a run's outputs, as recorded in its ``run.json``."""
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items() if k not in _NOT_SETTINGS}


def run_directory(out: str | Path) -> RunDirectory:
    """The run's output directory: ``run.json`` holds the settings (an older run kept them in summary.json)."""
    return RunDirectory(Path(out), "concept run", outputs=("summary.json", "results.md", "steering_*.jsonl", "*.png"),
                        older_records=(("summary.json", "config"),))


def head_bottleneck_sweep(X: dict[str, np.ndarray], C: dict[str, np.ndarray], y: dict[str, np.ndarray],
                          groups: list[str], ks: Sequence[int], seed: int, label_folds: int, progress: bool = False
                          ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int, SparseConceptBottleneck]:
    """The frozen-head bottleneck over ``ks`` (top-k heads per aspect, ranked by dev accuracy), scored on dev and
    test; k is chosen by dev concept accuracy, then dev task accuracy. Returns (per-aspect head accuracies, the sweep
    rows, the chosen k, its fitted bottleneck)."""
    tr, dv, te = "train_exclusive", "dev", "test"
    head_acc = {a: head_concept_accuracy(X[tr], C[tr][:, j], X[dv], C[dv][:, j]) for j, a in enumerate(ASPECTS)}
    sweep: list[dict[str, Any]] = []
    fitted: dict[int, SparseConceptBottleneck] = {}
    for k in tqdm(ks, desc="bottleneck over k (cross-fitted label head)", unit="k", disable=not progress):
        bn = SparseConceptBottleneck(k=k, seed=seed, label_folds=label_folds, head_accuracy=dict(head_acc))
        bn.heads = {a: _top(head_acc[a], k) for a in ASPECTS}
        fitted[k] = bn.fit(X[tr], C[tr], y[tr], groups)
        for s in (dv, te):
            m = task_and_concept_metrics(bn.predict(X[s]), y[s], bn.predict_concepts(X[s]), C[s])
            sweep.append({"k": k, "split": s, **m})
    dev_rows = [r for r in sweep if r["split"] == dv]
    best_k = max(dev_rows, key=lambda r: (r["concept_accuracy"], r["task_accuracy"]))["k"]
    return head_acc, sweep, best_k, fitted[best_k]


def run_concepts(cfg: ConceptConfig) -> dict[str, Any]:
    """Run the concept experiment, write summary.json, results.md, steering_{dev,test}.jsonl and the plots
    into ``output_dir``, and return the summary. A directory holding a run with other settings is refused before
    the model loads, unless ``force`` (then its outputs are removed before this run writes any)."""
    from ..models import load_model

    cfg.validate()
    directory = run_directory(cfg.output_dir)
    directory.check(run_settings(cfg), force=cfg.force)  # reads only: nothing is written before the model loads
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model)
    with directory.claimed(run_settings(cfg), force=cfg.force):
        return _run_claimed(cfg, model, tok, t0)


def _run_claimed(cfg: ConceptConfig, model, tok, t0: float) -> dict[str, Any]:
    from ..models import resolve_model

    out = Path(cfg.output_dir)
    splits = {s: load_cebab(s, cfg.data_dir) for s in ("train_exclusive", "dev", "test")}
    used = {s: _sample(v, cfg.max_reviews, cfg.seed) for s, v in splits.items()}
    groups = [r.original_id for r in used["train_exclusive"].reviews]  # an edit shares its original's fold
    grouped_folds(groups, cfg.label_folds, cfg.seed)  # too few original reviews for the folds: refused before collecting
    name = resolve_model(cfg.model).name
    X = {s: _features(model, tok, name, v, out, cfg.batch_size, cfg.progress) for s, v in used.items()}
    C = {s: v.concepts for s, v in used.items()}
    y = {s: v.ratings for s, v in used.items()}
    tr, dv, te = "train_exclusive", "dev", "test"

    head_acc, sweep, best_k, bn = head_bottleneck_sweep(X, C, y, groups, cfg.ks, cfg.seed, cfg.label_folds, cfg.progress)
    test_metrics = {k: v for k, v in next(r for r in sweep if r["k"] == best_k and r["split"] == te).items()
                    if k not in ("k", "split")}
    oracle = float((oracle_correction(bn, X[te], C[te]) == y[te]).mean())
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
        "compute_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "label_head": {"inputs": "out-of-fold concept probabilities", "folds": cfg.label_folds,
                       "grouped_by": "original_id", "seed": cfg.seed},
        "sizes": {s: len(v) for s, v in used.items()},
        "majority_baseline_test": majority_baseline(used[tr], used[te]),
        "sweep_k": sweep, "chosen_k": best_k, "test": test_metrics,
        "oracle_correction_test_accuracy": oracle, "heads": {a: [list(h) for h in bn.heads[a]] for a in ASPECTS},
    }
    if cfg.l1_strengths:
        result["sweep_l1"] = _l1_sweep(cfg, X, C, y, groups)
    zs = zero_shot_rating_probabilities(model, tok, [review_prompt(r.text) for r in used[te].reviews], cfg.batch_size,
                                        cfg.progress).argmax(-1)
    result["zero_shot_test"] = {"task_accuracy": float(accuracy_score(y[te], zs)),
                                "task_macro_f1": float(f1_score(y[te], zs, average="macro", labels=list(range(5))))}
    majority_rating = int(np.bincount(y[tr], minlength=5).argmax())
    result["majority_rating_test_accuracy"] = float((y[te] == majority_rating).mean())
    if cfg.dense_baseline:
        dr, dc = _dense(X[tr], C[tr], y[tr], X[te], cfg.seed)
        result["dense_test"] = task_and_concept_metrics(dr, y[te], dc, C[te])

    directions = ConceptDirections.fit(X[tr], C[tr], bn.heads)
    steering: dict[str, dict[str, Any]] = {}
    for s in (dv, te):
        pairs = splits[s].pairs()
        if cfg.max_pairs is not None and cfg.max_pairs < len(pairs):
            pick = np.sort(np.random.default_rng(cfg.seed).choice(len(pairs), size=cfg.max_pairs, replace=False))
            pairs = [pairs[i] for i in pick]
        alphas = cfg.alphas if s == dv else None
        if alphas is None:  # test: the alpha chosen on dev, plus 0 as the reference
            best = max((r for r in steering[dv]["summary"] if r["variant"] == "concept" and r["alpha"] > 0),
                       key=lambda r: np.nan_to_num(r["model_pearson"], nan=-1.0))
            alphas = sorted({0.0, best["alpha"]})
            result["chosen_alpha"] = best["alpha"]
        records = steer_pairs(model, tok, bn, directions, pairs, alphas, VARIANTS, cfg.seed, cfg.progress)
        steering[s] = {"pairs": len(pairs), "summary": summarize_steering(records)}
        atomic_write_text(out / f"steering_{s}.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    result["steering"] = steering
    result["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "summary.json", result)
    atomic_write_text(out / "results.md", results_markdown(result))
    plot_concepts(result, head_acc, out)
    return result


def _top(acc: np.ndarray, k: int) -> list[tuple[int, int]]:
    from ..directions import top_heads

    return top_heads(acc, min(k, acc.size))


def results_markdown(r: dict[str, Any]) -> str:
    """results.md: test metrics of the bottleneck, the dense probes and the majority class, the oracle
    correction, the k sweep and the steering tables."""
    def pct(x):
        return f"{x:.3f}"

    lines = [f"Sizes: {r['sizes']}; chosen k = {r['chosen_k']} (best dev concept accuracy)", "",
             "| model | task acc | task macro-F1 | concept acc | concept macro-F1 | " + " | ".join(f"{a} acc" for a in ASPECTS) + " |",
             "|---|---|---|---|---|" + "---|" * len(ASPECTS)]
    rows = [(f"sparse bottleneck, k = {r['chosen_k']}", r["test"])]
    l1_dev = [s for s in r.get("sweep_l1", []) if s["split"] == "dev"]
    if l1_dev:
        best = max(l1_dev, key=lambda s: (s["concept_accuracy"], s["task_accuracy"]))
        l1_test = next(s for s in r["sweep_l1"] if s["split"] == "test" and s["strength"] == best["strength"])
        n = "/".join(str(v) for v in best["heads_per_aspect"].values())
        rows.append((f"group-lasso bottleneck, strength {best['strength']:g} ({n} heads)", l1_test))
    if "dense_test" in r:
        rows.append(("dense probes, all heads", r["dense_test"]))
    for name, m in rows:
        lines.append(f"| {name} | {pct(m['task_accuracy'])} | {pct(m['task_macro_f1'])} | {pct(m['concept_accuracy'])} | "
                     f"{pct(m['concept_macro_f1'])} | " + " | ".join(pct(m[f'{a}_accuracy']) for a in ASPECTS) + " |")
    if "zero_shot_test" in r:
        zs = r["zero_shot_test"]
        lines.append(f"| the model's own rating (argmax over \"1\"..\"5\") | {pct(zs['task_accuracy'])} | {pct(zs['task_macro_f1'])} | – | – |"
                     + " – |" * len(ASPECTS))
    mb = r["majority_baseline_test"]
    task_mb = pct(r["majority_rating_test_accuracy"]) if "majority_rating_test_accuracy" in r else "–"
    lines.append(f"| majority class | {task_mb} | – | {pct(mb['mean'])} | – | " + " | ".join(pct(mb[a]) for a in ASPECTS) + " |")
    lines += ["", f"Oracle correction (mispredicted concepts set to gold): test task accuracy {pct(r['test']['task_accuracy'])}"
              f" -> {pct(r['oracle_correction_test_accuracy'])}", "", "Sweep over k (top-k heads per aspect, ranked on dev):", "",
              "| k | dev concept acc | test task acc | test concept acc | test concept macro-F1 |", "|---|---|---|---|---|"]
    for s in r["sweep_k"]:
        if s["split"] == "test":
            dev = next(d for d in r["sweep_k"] if d["split"] == "dev" and d["k"] == s["k"])
            lines.append(f"| {s['k']} | {pct(dev['concept_accuracy'])} | {pct(s['task_accuracy'])} | {pct(s['concept_accuracy'])} | "
                         f"{pct(s['concept_macro_f1'])} |")
    if r.get("sweep_l1"):
        lines += ["", "L1 variant: group-lasso head selection per aspect (heads food/service/ambiance/noise):", "",
                  "| strength | heads | dev concept acc | test task acc | test concept acc | test concept macro-F1 |",
                  "|---|---|---|---|---|---|"]
        for s in r["sweep_l1"]:
            n = "/".join(str(v) for v in s["heads_per_aspect"].values())
            if s["split"] is None:
                lines.append(f"| {s['strength']:g} | {n} | – | – | – | – |")
            elif s["split"] == "test":
                dev = next(d for d in r["sweep_l1"] if d["split"] == "dev" and d["strength"] == s["strength"])
                lines.append(f"| {s['strength']:g} | {n} | {pct(dev['concept_accuracy'])} | {pct(s['task_accuracy'])} | "
                             f"{pct(s['concept_accuracy'])} | {pct(s['concept_macro_f1'])} |")
    for split, st in r["steering"].items():
        lines += ["", f"Steering on {split} ({st['pairs']} pairs):", "",
                  "| alpha | variant | model sign agr. | model r | model MAE | bottleneck sign agr. | bottleneck r | "
                  "goal p change | spill-over |", "|---|---|---|---|---|---|---|---|---|"]
        for s in st["summary"]:
            lines.append(f"| {s['alpha']:g} | {s['variant']} | {pct(s['model_sign_agreement'])} | {pct(s['model_pearson'])} | "
                         f"{pct(s['model_mae'])} | {pct(s['bottleneck_sign_agreement'])} | {pct(s['bottleneck_pearson'])} | "
                         f"{s['goal_prob_delta']:+.3f} | {s['spillover']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_concepts(r: dict[str, Any], head_acc: dict[str, np.ndarray], out: Path) -> None:
    """Per-concept head maps (held-out 3-way accuracy) and steering effect against alpha (dev)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ASPECTS), figsize=(4 * len(ASPECTS), 4), squeeze=False)
    for ax, a in zip(axes[0], ASPECTS):
        im = ax.imshow(head_acc[a], aspect="auto", cmap="viridis")
        ax.set_title(f"{a}: dev accuracy per head")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "concept_heads.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    dev = r["steering"]["dev"]["summary"]
    for variant in VARIANTS:
        rows = sorted((s for s in dev if s["variant"] == variant), key=lambda s: s["alpha"])
        xs = [s["alpha"] for s in rows]
        axes[0].plot(xs, [s["model_pearson"] for s in rows], marker="o", label=variant)
        axes[1].plot(xs, [s["model_sign_agreement"] for s in rows], marker="o", label=variant)
    axes[0].set_ylabel("Pearson r (model vs human rating change)")
    axes[1].set_ylabel("sign agreement")
    for ax in axes:
        ax.set_xlabel("alpha")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "steering_vs_alpha.png", dpi=110)
    plt.close(fig)
