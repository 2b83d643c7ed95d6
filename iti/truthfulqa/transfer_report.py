"""The transfer table of a validation run (``--eval_dataset``): per row and transfer set, the accuracy of the first
gold answer against the false one, with a bootstrap CI over questions and the paired difference to the plain row.

Every fold's steering is scored on the same transfer questions, so the folds are not pooled as on TruthfulQA: a
question's score is its mean over the folds (0, 0.5 or 1 with two folds), and the CI resamples questions. The headline
leaves out the questions whose false answer is a gold answer (said with their count, and scored apart)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json
from ..stats import bootstrap_ci, paired_bootstrap_ci, paired_permutation_p
from .config import RowSpec, ValidationConfig, plan_rows, row_label
from .cost_matched import KINDS
from .transfer import LENGTH_CLASSES, TRANSFER_SETS


def _row_scores(out: Path, spec: RowSpec, name: str, num_fold: int) -> tuple[np.ndarray, np.ndarray, list[float], list[float]] | None:
    """(per-question mean over folds, false-is-gold mask, seconds per fold, alphas the budget search chose per fold) of
    one row, or None unless every fold holds the set's result on the same questions."""
    parts = [out / "rows" / f"fold{i}_{spec.key}.json" for i in range(num_fold)]
    if not all(p.is_file() for p in parts):
        return None
    stored = [read_json(p, "validation row") for p in parts]
    done = [r.get("transfer", {}).get(name) for r in stored]
    if any(d is None for d in done) or len({(d["data_sha256"], d["questions"]) for d in done}) != 1:  # type: ignore[index]
        return None
    correct = np.mean([np.asarray(d["correct"], dtype=np.float64) for d in done], axis=0)  # type: ignore[index]
    alphas = [float(r["alpha_found"]) for r in stored if "alpha_found" in r]
    return correct, np.asarray(done[0]["false_is_gold"], dtype=bool), [float(d["seconds"]) for d in done], alphas  # type: ignore[index]


def _cell(values: np.ndarray, seed: int) -> dict[str, Any]:
    if values.size == 0:
        return {"mean": None, "n": 0}
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": mean, "ci": [lo, hi], "n": int(values.size)}


def transfer_summary(out: Path, rows: list[RowSpec], cfg: ValidationConfig,
                     length_orders: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per transfer set: one entry per row with the headline accuracy (false answers that are gold left out), the
    accuracy on all questions and on the left-out ones, and the paired difference to the plain row on the headline
    questions (bootstrap CI and permutation p). With ``length_orders`` (per set, :func:`.transfer.length_order` of its
    scored questions), also the headline accuracy for each token-count class."""
    result: dict[str, Any] = {}
    base_spec = plan_rows(cfg)[0]
    for name in cfg.eval_dataset:
        base = _row_scores(out, base_spec, name, cfg.num_fold)
        table, gold_mask = [], None
        scores: dict[tuple, np.ndarray] = {}
        for spec in rows:
            scored = _row_scores(out, spec, name, cfg.num_fold)
            if scored is None:
                continue
            correct, gold, seconds, alphas = scored
            gold_mask = gold
            entry: dict[str, Any] = {"key": spec.key, "name": spec.name, "budget": spec.budget, "budget_metric": spec.budget_metric,
                                     "alpha": spec.alpha, "num_heads": spec.num_heads, "seed": spec.seed, "site": spec.site,
                                     "headline": _cell(correct[~gold], cfg.seed), "all": _cell(correct, cfg.seed),
                                     "false_is_gold": _cell(correct[gold], cfg.seed), "seconds": float(sum(seconds)),
                                     "alphas": alphas}
            if base is not None and spec.key != base_spec.key and len(base[0]) == len(correct):
                b = base[0][~gold]
                d, lo, hi = paired_bootstrap_ci(correct[~gold], b, seed=cfg.seed)
                entry["delta"] = {"mean": d, "ci": [lo, hi], "p": paired_permutation_p(correct[~gold], b, seed=cfg.seed)}
            order = (length_orders or {}).get(name)
            if order is not None and len(order) == len(correct):
                entry["by_length"] = {cls: _cell(correct[~gold & (order == sign)], cfg.seed) for cls, sign in LENGTH_CLASSES.items()}
            table.append(entry)
            scores[(spec.name, spec.budget, spec.seed, spec.alpha, spec.num_heads)] = correct[~gold]
        for entry in table:  # ITI minus each control steered at the same cost (or strength) and seed, same questions
            iti = scores.get(("ITI", entry["budget"], entry["seed"], entry["alpha"], entry["num_heads"]))
            if entry["name"] in KINDS[1:] and iti is not None:
                mine = scores[(entry["name"], entry["budget"], entry["seed"], entry["alpha"], entry["num_heads"])]
                if len(mine) == len(iti):
                    d, lo, hi = paired_bootstrap_ci(iti, mine, seed=cfg.seed)
                    entry["iti_minus"] = {"mean": d, "ci": [lo, hi], "p": paired_permutation_p(iti, mine, seed=cfg.seed)}
        if gold_mask is not None:
            result[name] = {"title": TRANSFER_SETS[name].title, "questions": int(len(gold_mask)),
                            "false_is_gold": int(gold_mask.sum()), "rows": table}
    return result


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return ""
    return f"{cell['mean']:.3f} [{cell['ci'][0]:.3f}, {cell['ci'][1]:.3f}]"


def transfer_markdown(transfer: dict[str, Any]) -> list[str]:
    """summary.md's transfer section: one table per set."""
    lines: list[str] = []
    for name, t in transfer.items():
        kept = t["questions"] - t["false_is_gold"]
        lines += ["", f"Transfer: {t['title']} ({name}), {t['questions']} questions; accuracy = the first gold answer outscores "
                      f"the false one (summed log-probabilities), each question's mean over the folds' steerings; headline on "
                      f"the {kept} questions whose false answer is not a gold answer ({t['false_is_gold']} left out, scored "
                      "apart); Δ = paired difference to the plain row (95% bootstrap CI, permutation p).", "",
                  "| Row | alpha | accuracy | Δ | p | ITI − this row | p | all questions | false answer is gold |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            delta, lead = r.get("delta"), r.get("iti_minus")
            p = lambda c: "" if not c else f"{c['p']:.3g}"  # noqa: E731
            alpha = "/".join(f"{a:.3g}" for a in r["alphas"]) if r.get("alphas") else f"{r['alpha']:g}"
            lines.append(f"| {row_label(r)} | {alpha} | {_fmt(r['headline'])} | {_fmt(delta)} | {p(delta)} | {_fmt(lead)} | {p(lead)} | "
                         f"{_fmt(r['all'])} | {_fmt(r['false_is_gold'])} |")
        lines += _length_markdown(t["rows"])
    return lines


def _length_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The headline accuracy of each row split by the candidates' token counts (when the summary has it)."""
    split = [r for r in rows if "by_length" in r]
    if not split:
        return []
    n = {cls: split[0]["by_length"][cls]["n"] for cls in LENGTH_CLASSES}
    lines = ["", "By token count (headline questions; a summed log-probability favours the candidate with fewer tokens): "
                 "accuracy where the gold answer has more tokens than the false one, as many, fewer.", "",
             f"| Row | gold more (n = {n['more']}) | equal (n = {n['equal']}) | gold fewer (n = {n['fewer']}) |", "|---|---|---|---|"]
    for r in split:
        lines.append(f"| {row_label(r)} | " + " | ".join(_fmt(r["by_length"][cls]) for cls in LENGTH_CLASSES) + " |")
    return lines
