"""The report of a validation run: folds pooled per row, bootstrap CIs (pooled and per fold) and paired differences
to the baseline, the spread over seeds, summary.md and the plots."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFileError, EmptyInputError
from ..io import read_json
from ..stats import bootstrap_ci, paired_bootstrap_ci, paired_permutation_p
from .config import RowSpec, ValidationConfig, plan_rows, row_label
from .cost_matched import (
    RESIDUAL_KINDS,
    cost_matched_markdown,
    cost_matched_rows,
    plot_frontier,
    seed_spread,
    seed_spread_markdown,
)
from .lm_cost import IMDB_FILE, OWT_HUB_ID
from .text_metrics import SIMILARITY_KEYS
from .transfer_report import transfer_markdown, transfer_summary

#: The per-question metrics of a row, each pooled over the folds with a bootstrap CI: MC, the similarity
#: accuracies and, when judged, True, Info and True&Info (the answer is both true and informative).
PER_QUESTION = ("MC1", "MC2", "MC3", *SIMILARITY_KEYS, "True", "Info", "True&Info")
#: What each reported name means, written into summary.json: two pairs of names are easily confused with the paper's.
METRIC_NOTES = {
    "True*Info": "honest_llama's True*Info: mean(True) x mean(Info), each mean averaged over the folds, then "
                 "multiplied (validate_2fold.py); CI: bootstrap over questions within each fold",
    "True&Info": "fraction of answers both true and informative (per answer, then averaged); not the paper's "
                 "True*Info: it adds cov(True, Info), usually negative (a non-answer is true and uninformative)",
    "rouge1 acc": "honest_llama's ROUGE column: per answer, max ROUGE-1 F over true refs > max over false refs",
    "ROUGE-L acc": "the same with ROUGE-Lsum (reported as ROUGE-acc by iti before it was renamed); not a column of "
                   "honest_llama's summary",
}


def ce_corpus_note(cfg: ValidationConfig) -> str:
    """Which texts CE and KL were measured on, in words, so that an IMDB number is not read as the paper's."""
    if cfg.ce_corpus == "owt":
        return f"CE/KL on {cfg.ce_samples} OpenWebText texts ({OWT_HUB_ID}, first 128 tokens), the corpus honest_llama uses"
    return (f"CE/KL on {cfg.ce_samples} texts of the offline IMDB sample ({IMDB_FILE}, first 128 tokens), not "
            f"honest_llama's OpenWebText ({OWT_HUB_ID}): not comparable to the paper's CE/KL")


def _upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row under today's names: an older iti stored the rougeLsum accuracy as "ROUGE-acc" (now "ROUGE-L
    acc") and the per-answer both-verdict as "True*Info" (now "True&Info", recomputed from True and Info, also for
    rows judged before it was stored); "True*Info" is now only the product of means, never per answer."""
    if "ROUGE-acc" in row and "ROUGE-L acc" not in row:
        row["ROUGE-L acc"] = row.pop("ROUGE-acc")
    row.pop("True*Info", None)
    if "True" in row and "Info" in row and "True&Info" not in row:
        row["True&Info"] = [float(t and i) for t, i in zip(row["True"], row["Info"])]
    return row


def true_times_info(true_folds: Sequence[Sequence[float]], info_folds: Sequence[Sequence[float]], *,
                    minus: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]] | None = None,
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high) of honest_llama's True*Info: per fold mean(True) and mean(Info), each averaged over the
    folds, then multiplied (validate_2fold.py multiplies the fold-averaged scores). Why not per answer: that is the
    paper's number, and the per-answer "both" fraction is usually lower. The CI resamples questions within each fold (the
    folds keep their sizes), as :func:`iti.stats.bootstrap_ci` does over all of them. ``minus``: the baseline's
    (true_folds, info_folds) on the same questions in the same order; then the paired difference, both resampled
    with the same questions."""
    groups = [(true_folds, info_folds)] + ([minus] if minus is not None else [])
    arrays = [[[np.asarray(f, dtype=np.float64) for f in folds] for folds in g] for g in groups]
    sizes = [len(f) for f in arrays[0][0]]
    if not sizes or 0 in sizes:
        raise EmptyInputError("True*Info needs at least one fold with at least one judged answer")
    for t, i in arrays:
        if [len(f) for f in t] != sizes or [len(f) for f in i] != sizes:
            raise DataFileError(f"True*Info needs True and Info for the same answers per fold (and the baseline's for "
                                f"the same questions): got {[len(f) for f in t]} True and {[len(f) for f in i]} Info "
                                f"answers per fold against {sizes}")
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, n, size=(n_boot, n)) for n in sizes]

    def product(t: list[np.ndarray], i: list[np.ndarray]) -> tuple[float, np.ndarray]:
        value = np.mean([f.mean() for f in t]) * np.mean([f.mean() for f in i])
        boot = np.mean([f[p].mean(axis=1) for f, p in zip(t, picks)], axis=0) * np.mean([f[p].mean(axis=1) for f, p in zip(i, picks)], axis=0)
        return float(value), boot

    value, boot = product(*arrays[0])
    if minus is not None:
        base_value, base_boot = product(*arrays[1])
        value, boot = value - base_value, boot - base_boot
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    return value, float(lo), float(hi)


def summarize(out: Path, rows: list[RowSpec], cfg: ValidationConfig,
              transfer_lengths: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Pool the folds (every question is tested once) and aggregate per row, with CIs and seed spread
    (``transfer_lengths``: see :func:`.transfer_report.transfer_summary`)."""
    pooled: dict[str, dict[str, Any]] = {}
    for spec in rows:
        parts = sorted((out / "rows").glob(f"fold*_{spec.key}.json"))
        data = [_upgrade_row(read_json(p, "validation row")) for p in parts]
        if len(data) != cfg.num_fold:
            continue
        merged: dict[str, Any] = {"spec": spec.__dict__}
        data.sort(key=lambda d: d.get("fold", 0))
        merged["per_fold"] = {}
        for metric in PER_QUESTION:
            if all(metric in d for d in data):
                merged[metric] = np.concatenate([d[metric] for d in data])
                merged["per_fold"][metric] = [np.asarray(d[metric], dtype=np.float64) for d in data]
        merged["question_ids"] = np.concatenate([d["question_ids"] for d in data])
        for metric in ("CE", "KL", "CE_base"):
            merged[metric] = float(np.mean([d[metric] for d in data]))
        merged["seconds"] = float(sum(d.get("seconds", 0.0) for d in data))
        if spec.budget is not None:
            merged["alphas"] = [float(d["alpha_found"]) for d in data]
            merged["budget_reached"] = [float(d["budget_search"]["reached"]) for d in data]
        pooled[spec.key] = merged
    base = pooled.get(plan_rows(cfg)[0].key)
    table = []
    for key, m in pooled.items():
        row: dict[str, Any] = {"key": key, **m["spec"], "CE": m["CE"], "KL": m["KL"], "seconds": m["seconds"]}
        if "alphas" in m:
            row.update({"alphas": m["alphas"], "budget_reached": m["budget_reached"]})
        for metric in PER_QUESTION:
            if metric in m:
                mean, lo, hi = bootstrap_ci(m[metric], seed=cfg.seed)
                row[metric] = {"mean": mean, "ci": [lo, hi]}
                folds = [bootstrap_ci(v, seed=cfg.seed) for v in m["per_fold"][metric]]
                row.setdefault("per_fold", {})[metric] = [{"mean": f[0], "ci": [f[1], f[2]]} for f in folds]
                if base is not None and metric in base and key != plan_rows(cfg)[0].key:
                    d, dlo, dhi = paired_bootstrap_ci(m[metric], base[metric], seed=cfg.seed)
                    row[f"d{metric}"] = {"mean": d, "ci": [dlo, dhi]}
        if "True" in m and "Info" in m:  # honest_llama's True*Info: a product of means, not a per-question metric
            ti = (m["per_fold"]["True"], m["per_fold"]["Info"])
            v, lo, hi = true_times_info(*ti, seed=cfg.seed)
            row["True*Info"] = {"mean": v, "ci": [lo, hi]}  # "mean": the point estimate, as for every cell
            folds = [true_times_info([t], [i], seed=cfg.seed) for t, i in zip(*ti)]
            row["per_fold"]["True*Info"] = [{"mean": f[0], "ci": [f[1], f[2]]} for f in folds]
            if (base is not None and "True" in base and "Info" in base and key != plan_rows(cfg)[0].key
                    and np.array_equal(m["question_ids"], base["question_ids"])):
                d, dlo, dhi = true_times_info(*ti, minus=(base["per_fold"]["True"], base["per_fold"]["Info"]), seed=cfg.seed)
                row["dTrue*Info"] = {"mean": d, "ci": [dlo, dhi]}
        table.append(row)
    # spread over seeds for the rows run with several seeds
    spread: dict[str, Any] = {}
    for name in ("ITI", "random heads", "random direction"):
        same = [r for r in table if r["name"] == name and r["alpha"] == cfg.alpha and r["num_heads"] == cfg.num_heads
                and r.get("budget") is None]
        if len(same) > 1:
            spread[name] = {m: {"mean": float(np.mean([r[m]["mean"] for r in same])), "std": float(np.std([r[m]["mean"] for r in same], ddof=1))}
                            for m in ("MC1", "MC2") if all(m in r for r in same)}
            spread[name]["seeds"] = [r["seed"] for r in same]
            spread[name]["KL"] = {"mean": float(np.mean([r["KL"] for r in same])), "std": float(np.std([r["KL"] for r in same], ddof=1))}
    matched = cost_matched_rows(pooled, plan_rows(cfg)[0].key, cfg.seed)
    few_shot = _few_shot_lead(pooled, rows, cfg.seed)
    transfer = transfer_summary(out, rows, cfg, transfer_lengths) if cfg.eval_dataset else {}
    return {"rows": table, "transfer": transfer, "seed_spread": spread, "num_questions": int(len(base["question_ids"])) if base else 0,
            "evaluation_seconds": float(sum(r["seconds"] for r in table)),
            "cost_matched": matched, "cost_matched_seed_spread": seed_spread(matched), "few_shot_lead": few_shot,
            "ce_corpus": cfg.ce_corpus, "ce_kl_texts": ce_corpus_note(cfg), "metric_notes": METRIC_NOTES}


def _few_shot_lead(pooled: dict[str, dict[str, Any]], rows: list[RowSpec], seed: int) -> dict[str, Any]:
    """few-shot + ITI minus few-shot, paired over the same questions under the same shots (MC1 and MC2: bootstrap CI and
    permutation p): what ITI adds on top of the paper's few-shot baseline, which the ΔMC2 column (to the zero-shot
    baseline) does not say. Empty unless both rows finished."""
    keys = {spec.name: spec.key for spec in rows if spec.shots}
    plain, steered = pooled.get(keys.get("few-shot", "")), pooled.get(keys.get("few-shot + ITI", ""))
    if plain is None or steered is None or not np.array_equal(plain["question_ids"], steered["question_ids"]):
        return {}
    lead: dict[str, Any] = {}
    for metric in ("MC1", "MC2"):
        d, lo, hi = paired_bootstrap_ci(steered[metric], plain[metric], seed=seed)
        lead[metric] = {"mean": d, "ci": [lo, hi], "p": paired_permutation_p(steered[metric], plain[metric], seed=seed)}
    return lead


def _fmt(cell: Any, digits: int = 3) -> str:
    if isinstance(cell, dict) and "ci" in cell:
        return f"{cell['mean']:.{digits}f} [{cell['ci'][0]:.{digits}f}, {cell['ci'][1]:.{digits}f}]"
    if isinstance(cell, float):
        return f"{cell:.{digits}f}"
    return "" if cell is None else str(cell)


def summary_markdown(summary: dict[str, Any], cfg: ValidationConfig) -> str:
    """summary.md: one table row per evaluated row with 95% CIs and the paired ΔMC2 to the baseline, then the
    spread over seeds; the header says which texts CE/KL come from and, when judged, which True*Info is the paper's."""
    lines = [f"Model {cfg.model_name}, {summary['num_questions']} questions, {cfg.num_fold}-fold, preset {cfg.preset}, "
             f"instruction {cfg.instruction_prompt}; 95% bootstrap CIs over questions; Δ = paired difference to the baseline.",
             "", f"{ce_corpus_note(cfg)}.", ""]
    has_gen = any("BLEU-acc" in r for r in summary["rows"])
    has_judge = any("True" in r for r in summary["rows"])
    judged = ["True", "Info", "True*Info", "True&Info"] if has_judge else []
    if has_judge:
        lines[-1:-1] = ["True*Info = mean(True) × mean(Info), each averaged over the folds (honest_llama's number); "
                        "True&Info = fraction of answers both true and informative (per answer; usually lower)."]
    if has_gen:
        lines[-1:-1] = ["rouge1 acc is honest_llama's ROUGE column (ROUGE-1); ROUGE-L acc is ROUGE-Lsum."]
    head = ["Intervention", "alpha", "K", "seed"] + judged + ["MC1", "MC2", "ΔMC2", "CE Loss", "KL wrt Original"]
    head += list(SIMILARITY_KEYS) if has_gen else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        alpha = "/".join(f"{a:.3g}" for a in r["alphas"]) if "alphas" in r else f"{r['alpha']:g}"
        cells = [row_label(r), alpha, str(r["num_heads"]), str(r["seed"])]
        cells += [_fmt(r.get(m)) for m in judged]
        cells += [_fmt(r.get("MC1")), _fmt(r.get("MC2")), _fmt(r.get("dMC2")), _fmt(r["CE"]), _fmt(r["KL"])]
        cells += [_fmt(r.get(m)) for m in SIMILARITY_KEYS] if has_gen else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += cost_matched_markdown(summary.get("cost_matched", []), texts=ce_corpus_note(cfg))
    if summary.get("few_shot_lead"):
        lead = summary["few_shot_lead"]
        lines += ["", "- few-shot + ITI − few-shot (paired over the same questions and shots; 95% bootstrap CI, permutation p): "
                  + ", ".join(f"Δ{m} {_fmt(lead[m])} (p {lead[m]['p']:.3g})" for m in ("MC1", "MC2"))]
    lines += transfer_markdown(summary.get("transfer", {}))
    if summary.get("cost_matched_seed_spread"):
        lines += ["", "Cost-matched, spread over seeds (mean ± std of the per-seed values):", ""]
        lines += seed_spread_markdown(summary["cost_matched_seed_spread"])
    if summary["seed_spread"]:
        lines += ["", "Spread over seeds (mean ± std of the per-seed means):", ""]
        for name, s in summary["seed_spread"].items():
            parts = [f"{m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in s.items() if isinstance(v, dict)]
            lines.append(f"- {name} (seeds {s['seeds']}): " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def plot_results(out: Path, accuracy: np.ndarray, summary: dict[str, Any], cfg: ValidationConfig) -> None:
    """Write probe_accuracy.png (probe accuracy per head) and alpha_sweep.png (MC2 and KL against alpha for
    the baseline and the ITI rows of the main K and seed, when there are at least two such rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 8))
    im = ax.imshow(accuracy, aspect="auto", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Probe validation accuracy ({cfg.model_name}, mean over folds)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "probe_accuracy.png", dpi=120)
    plt.close(fig)
    plot_frontier(out / "frontier.png", summary.get("cost_matched", []),
                  f"MC2 gain against disruption ({cfg.model_name}, K={cfg.num_heads}"
                  + (", CAA/RepE: 1 layer)" if set(RESIDUAL_KINDS) & set(cfg.methods) else ")"),
                  "reported texts, OpenWebText" if cfg.ce_corpus == "owt" else "reported texts, offline IMDB sample")
    rows = sorted([r for r in summary["rows"] if r["name"] in ("ITI", "baseline") and (r["num_heads"] == cfg.num_heads or r["name"] == "baseline")
                   and r["seed"] == cfg.seed and r.get("budget") is None], key=lambda r: r["alpha"])
    if len(rows) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        alphas = [r["alpha"] for r in rows]
        ax.plot(alphas, [r["MC2"]["mean"] for r in rows], "o-", color="tab:blue", label="MC2")
        ax.fill_between(alphas, [r["MC2"]["ci"][0] for r in rows], [r["MC2"]["ci"][1] for r in rows], color="tab:blue", alpha=0.2)
        ax.set_xlabel("alpha")
        ax.set_ylabel("MC2", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(alphas, [r["KL"] for r in rows], "s--", color="tab:red", label="KL")
        ax2.set_ylabel("KL wrt original", color="tab:red")
        ax.set_title(f"ITI strength sweep (K={cfg.num_heads})")
        fig.tight_layout()
        fig.savefig(out / "alpha_sweep.png", dpi=120)
        plt.close(fig)
