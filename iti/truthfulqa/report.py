"""The report of a validation run: folds pooled per row, bootstrap CIs (pooled and per fold) and paired differences
to the baseline, the spread over seeds, summary.md and the plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json
from ..stats import bootstrap_ci, paired_bootstrap_ci
from .config import RowSpec, ValidationConfig, plan_rows
from .cost_matched import cost_matched_markdown, cost_matched_rows, plot_frontier, seed_spread, seed_spread_markdown

#: The per-question metrics of a row, each pooled over the folds with a bootstrap CI (True, Info and True*Info
#: when judged).
PER_QUESTION = ("MC1", "MC2", "MC3", "BLEU-acc", "ROUGE-acc", "True", "Info", "True*Info")


def _with_true_info(row: dict[str, Any]) -> dict[str, Any]:
    """True*Info per answer (True and Info) for rows judged before it was stored."""
    if "True" in row and "Info" in row and "True*Info" not in row:
        row["True*Info"] = [float(t and i) for t, i in zip(row["True"], row["Info"])]
    return row


def summarize(out: Path, rows: list[RowSpec], cfg: ValidationConfig) -> dict[str, Any]:
    """Pool the folds (every question is tested once) and aggregate per row, with CIs and seed spread."""
    pooled: dict[str, dict[str, Any]] = {}
    for spec in rows:
        parts = sorted((out / "rows").glob(f"fold*_{spec.key}.json"))
        data = [_with_true_info(read_json(p, "validation row")) for p in parts]
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
    return {"rows": table, "seed_spread": spread, "num_questions": int(len(base["question_ids"])) if base else 0,
            "evaluation_seconds": float(sum(r["seconds"] for r in table)),
            "cost_matched": matched, "cost_matched_seed_spread": seed_spread(matched)}


def _fmt(cell: Any, digits: int = 3) -> str:
    if isinstance(cell, dict) and "ci" in cell:
        return f"{cell['mean']:.{digits}f} [{cell['ci'][0]:.{digits}f}, {cell['ci'][1]:.{digits}f}]"
    if isinstance(cell, float):
        return f"{cell:.{digits}f}"
    return "" if cell is None else str(cell)


def summary_markdown(summary: dict[str, Any], cfg: ValidationConfig) -> str:
    """summary.md: one table row per evaluated row with 95% CIs and the paired ΔMC2 to the baseline, then the
    spread over seeds."""
    lines = [f"Model {cfg.model_name}, {summary['num_questions']} questions, {cfg.num_fold}-fold, preset {cfg.preset}, "
             f"instruction {cfg.instruction_prompt}; 95% bootstrap CIs over questions; Δ = paired difference to the baseline.", ""]
    has_gen = any("BLEU-acc" in r for r in summary["rows"])
    has_judge = any("True" in r for r in summary["rows"])
    judged = ["True", "Info", "True*Info"] if has_judge else []
    head = ["Intervention", "alpha", "K", "seed"] + judged + ["MC1", "MC2", "ΔMC2", "CE Loss", "KL wrt Original"]
    head += ["BLEU-acc", "ROUGE-acc"] if has_gen else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        alpha = "/".join(f"{a:.3g}" for a in r["alphas"]) if "alphas" in r else f"{r['alpha']:g}"
        name = f"{r['name']} ({r['budget_metric']} {r['budget']:g})" if r.get("budget") is not None else r["name"]
        cells = [name, alpha, str(r["num_heads"]), str(r["seed"])]
        cells += [_fmt(r.get(m)) for m in judged]
        cells += [_fmt(r.get("MC1")), _fmt(r.get("MC2")), _fmt(r.get("dMC2")), _fmt(r["CE"]), _fmt(r["KL"])]
        cells += [_fmt(r.get("BLEU-acc")), _fmt(r.get("ROUGE-acc"))] if has_gen else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += cost_matched_markdown(summary.get("cost_matched", []))
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
                  f"MC2 gain against disruption ({cfg.model_name}, K={cfg.num_heads})")
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
