"""ITI beside its controls at equal cost: the cost-matched table and the MC2-gain-per-KL frontier.

Rows run with ``--kl_budget`` (or ``--ce_budget``) carry the alpha their search chose per fold; rows of one budget
and seed are compared on the same held-out questions: ITI minus each control, a paired bootstrap CI and a paired
permutation p-value. The frontier plots MC2 gain over the baseline against the KL reached on the reported
neutral texts, one line per kind, so "does the probed direction buy more truth per nat of disruption than chance"
reads off one picture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..stats import paired_bootstrap_ci, paired_permutation_p

KINDS = ("ITI", "random heads", "random direction", "CAA", "RepE", "random residual direction")
#: the methods on the residual stream, each compared with the random direction at its own site as well as with ITI
RESIDUAL_KINDS = ("CAA", "RepE")
SITE_CONTROL = "random residual direction"


def cost_matched_rows(pooled: dict[str, dict[str, Any]], baseline_key: str | None, seed: int) -> list[dict[str, Any]]:
    """One entry per (budget, seed): for each kind its MC2 gain over the baseline (paired CI), the KL reached and
    the alphas chosen per fold; and ITI minus each control (paired CI and permutation p) on the same questions.
    ``pooled`` maps row keys to folds pooled per question (``question_ids``, ``MC2``, ``KL``, ``alphas``, ``spec``)."""
    base = pooled.get(baseline_key) if baseline_key else None
    groups: dict[tuple[str, float, int], dict[str, dict[str, Any]]] = {}
    for m in pooled.values():
        spec = m["spec"]
        if spec.get("budget") and spec["name"] in KINDS:
            groups.setdefault((spec["budget_metric"], spec["budget"], spec["seed"]), {})[spec["name"]] = m
    out = []
    for (metric, budget, row_seed), kinds in sorted(groups.items()):
        entry: dict[str, Any] = {"metric": metric, "budget": budget, "seed": row_seed, "kinds": {}, "iti_minus": {}}
        for name, m in kinds.items():
            cell: dict[str, Any] = {"MC2": float(np.mean(m["MC2"])), "KL": m["KL"], "CE": m["CE"], "alphas": m.get("alphas", [])}
            if base is not None:
                order = _align(m["question_ids"], base["question_ids"])
                d, lo, hi = paired_bootstrap_ci(m["MC2"], base["MC2"][order], seed=seed)
                cell["dMC2"] = {"mean": d, "ci": [lo, hi]}
            entry["kinds"][name] = cell
        iti = kinds.get("ITI")
        for name in KINDS[1:]:
            if iti is None or name not in kinds:
                continue
            entry["iti_minus"][name] = _paired(iti, kinds[name], seed)
        for name in RESIDUAL_KINDS:  # each residual method against the random direction at its own site
            if name in kinds and SITE_CONTROL in kinds:
                entry.setdefault("minus_site_control", {})[name] = _paired(kinds[name], kinds[SITE_CONTROL], seed)
        out.append(entry)
    return out


def _paired(a: dict[str, Any], b: dict[str, Any], seed: int) -> dict[str, Any]:
    """a minus b in MC2 over the same questions: mean, paired bootstrap CI, paired permutation p."""
    other = b["MC2"][_align(a["question_ids"], b["question_ids"])]
    d, lo, hi = paired_bootstrap_ci(a["MC2"], other, seed=seed)
    return {"mean": d, "ci": [lo, hi], "p": paired_permutation_p(a["MC2"], other, seed=seed)}


def _align(ids: np.ndarray, other_ids: np.ndarray) -> np.ndarray:
    """Indices into ``other_ids`` that put its questions in the order of ``ids`` (both hold the same questions)."""
    where = {int(q): i for i, q in enumerate(other_ids)}
    return np.array([where[int(q)] for q in ids])


def seed_spread(entries: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per budget and kind, mean ± std over seeds of the MC2 gain and the KL reached; for each control also ITI
    minus it, with how many seeds' paired CIs lie above 0 (with two seeds or more): whether ITI's lead over a
    control survives a change of the seed that picks the random heads and directions and the probes' split."""
    spread: dict[str, dict[str, dict[str, Any]]] = {}
    by_budget: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_budget.setdefault(f"{e['metric']}={e['budget']:g}", []).append(e)
    for label, es in by_budget.items():
        if len(es) < 2:
            continue
        spread[label] = {}
        for name in KINDS:
            gains = [e["kinds"][name]["dMC2"]["mean"] for e in es if name in e["kinds"] and "dMC2" in e["kinds"][name]]
            kls = [e["kinds"][name]["KL"] for e in es if name in e["kinds"]]
            if len(gains) < 2:
                continue
            cell: dict[str, Any] = {"dMC2_mean": float(np.mean(gains)), "dMC2_std": float(np.std(gains, ddof=1)),
                                    "KL_mean": float(np.mean(kls)), "KL_std": float(np.std(kls, ddof=1)), "seeds": len(gains)}
            leads = [e["iti_minus"][name] for e in es if name in e["iti_minus"]]
            if len(leads) >= 2:
                lead_means = [d["mean"] for d in leads]
                cell["iti_minus"] = {"mean": float(np.mean(lead_means)), "std": float(np.std(lead_means, ddof=1)),
                                     "seeds_ci_above_0": sum(d["ci"][0] > 0 for d in leads), "seeds": len(leads)}
            spread[label][name] = cell
    return spread


def seed_spread_markdown(spread: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per budget: each kind's ΔMC2 and KL as mean ± std over seeds, and ITI minus each control."""
    lines = []
    for label, kinds in spread.items():
        parts = []
        for name, v in kinds.items():
            part = (f"{name} ΔMC2 {v['dMC2_mean']:.3f} ± {v['dMC2_std']:.3f}, KL {v['KL_mean']:.3f} ± {v['KL_std']:.3f} "
                    f"({v['seeds']} seeds)")
            lead = v.get("iti_minus")
            if lead:
                part += (f", ITI − {name} {lead['mean']:.3f} ± {lead['std']:.3f} (CI above 0 for "
                         f"{lead['seeds_ci_above_0']} of {lead['seeds']} seeds)")
            parts.append(part)
        lines.append(f"- {label}: " + "; ".join(parts))
    return lines


def cost_matched_markdown(entries: list[dict[str, Any]], texts: str | None = None) -> list[str]:
    """The cost-matched table: per budget and seed, each kind's ΔMC2 [CI], KL reached and alphas; then ITI minus
    each control with its CI and p. ``texts``: which corpus CE/KL come from, in words (said above the table, so a
    KL on the offline stand-in is not read as the paper's)."""
    if not entries:
        return []
    lines = ["", "Cost-matched: alpha chosen per row and fold so that KL (or the CE increase) on the search texts meets the",
             "budget; KL here is measured on the reported texts. ITI − control: paired over the same questions.",
             *([f"Texts: {texts}."] if texts else []), "",
             "| budget | seed | kind | alpha (per fold) | KL | ΔMC2 | ITI − this control | p |", "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        for name in KINDS:
            cell = e["kinds"].get(name)
            if cell is None:
                continue
            d = cell.get("dMC2")
            diff = e["iti_minus"].get(name)
            lines.append(f"| {e['metric']} {e['budget']:g} | {e['seed']} | {name} | {', '.join(f'{a:.2f}' for a in cell['alphas'])} | "
                         f"{cell['KL']:.3f} | " + (f"{d['mean']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]" if d else "") + " | "
                         + (f"{diff['mean']:.3f} [{diff['ci'][0]:.3f}, {diff['ci'][1]:.3f}] | {diff['p']:.4f}" if diff else " | ") + " |")
    site = [(e, name, d) for e in entries for name, d in e.get("minus_site_control", {}).items()]
    if site:
        lines += ["", "For CAA and RepE the column is ITI minus that method. Each residual-stream method minus the random "
                  f"direction at its own site ({SITE_CONTROL}, same layer, same budget):", "",
                  "| budget | seed | method | method − random residual direction | p |", "|---|---|---|---|---|"]
        lines += [f"| {e['metric']} {e['budget']:g} | {e['seed']} | {name} | {d['mean']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}] | "
                  f"{d['p']:.4f} |" for e, name, d in site]
    return lines


def plot_frontier(path: Path, entries: list[dict[str, Any]], title: str, corpus: str = "reported texts") -> bool:
    """frontier.png: MC2 gain over the baseline (95% CI bars) against KL reached, one line per kind (the main seed's
    rows; other seeds as faint points); ``corpus`` names the KL texts on the axis. Returns False (no file) with
    fewer than two budgets."""
    budgets = sorted({e["budget"] for e in entries})
    if len(budgets) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_seed = entries[0]["seed"]
    wide = any(name in (*RESIDUAL_KINDS, SITE_CONTROL) for e in entries for name in e["kinds"])  # legend beside the axes
    fig, ax = plt.subplots(figsize=(8.6 if wide else 6.5, 4.2))
    for name, color in zip(KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray")):
        pts = sorted((e["kinds"][name]["KL"], e["kinds"][name]["dMC2"]) for e in entries
                     if e["seed"] == main_seed and name in e["kinds"] and "dMC2" in e["kinds"][name])
        if pts:
            x = [p[0] for p in pts]
            y = [p[1]["mean"] for p in pts]
            err = [[p[1]["mean"] - p[1]["ci"][0] for p in pts], [p[1]["ci"][1] - p[1]["mean"] for p in pts]]
            ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, label=name)
        extra = [(e["kinds"][name]["KL"], e["kinds"][name]["dMC2"]["mean"]) for e in entries
                 if e["seed"] != main_seed and name in e["kinds"] and "dMC2" in e["kinds"][name]]
        if extra:
            ax.scatter([p[0] for p in extra], [p[1] for p in extra], color=color, alpha=0.35, s=14)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"KL(original || intervened), nats per token ({corpus})")
    ax.set_ylabel("MC2 gain over the baseline")
    ax.set_title(title)
    if wide:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
