"""Plain vs intervened: accuracy, faithfulness and invalid-answer rates with bootstrap CIs and McNemar tests."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_save_figure
from ..stats import mcnemar_detectable_difference, mcnemar_exact, mcnemar_min_pairs
from .tasks import SampleResult


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): sum(num) / sum(den) and its 95% CI, resampling samples (the unit both arms share)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(num), size=(n_boot, len(num)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = num[idx].sum(1) / den[idx].sum(1)
    ratios = ratios[np.isfinite(ratios)]
    lo, hi = np.quantile(ratios, [0.025, 0.975]) if ratios.size else (float("nan"), float("nan"))
    return float(num.sum() / den.sum()), float(lo), float(hi)


def _indicators(results: Sequence[SampleResult]) -> dict[str, np.ndarray]:
    return outcome_indicators([r.status for r in results], [r.correct for r in results], [r.faithful for r in results])


def outcome_indicators(status: Sequence[str], correct: Sequence[bool | None],
                       faithful: Sequence[bool | None]) -> dict[str, np.ndarray]:
    """Per-sample indicators from each sample's status, correct and faithful (a run's objects or its samples files):
    correct and faithful count only where the status is ok, as introspect aggregates."""
    st = np.asarray(status)
    ok = st == "ok"
    right = np.array([bool(c) for c in correct], dtype=bool) & ok
    fc = right & np.array([bool(f) for f in faithful], dtype=bool)
    return {"ok": ok, "valid": st != "mismatch", "correct": right, "faithful_and_correct": fc, "invalid": ~ok,
            "error": st == "error", "mismatch": st == "mismatch"}


@dataclass
class ArmStats:
    """One arm's accuracy, faithfulness (None without explanations) and invalid rate, each as (value, 95% CI
    low, high), plus the raw counts."""
    accuracy: tuple[float, float, float]
    faithfulness: tuple[float, float, float] | None
    invalid_rate: tuple[float, float, float]
    counts: dict[str, int]


def arm_stats(results: Sequence[SampleResult], explain: bool, seed: int = 0) -> ArmStats:
    """Bootstrap :class:`ArmStats` for one arm; ``explain`` says whether the task has explanations to score."""
    return stats_from_indicators(_indicators(results), explain, seed)


def stats_from_indicators(ind: dict[str, np.ndarray], explain: bool, seed: int = 0) -> ArmStats:
    """:class:`ArmStats` of :func:`outcome_indicators`: accuracy = correct / (total - mismatch), faithfulness =
    faithful-and-correct / correct, the invalid rate, each with its bootstrap CI, and the counts
    (:func:`~iti.faithfulness.tasks.summarize`'s)."""
    ones = np.ones(len(ind["ok"]))
    return ArmStats(
        accuracy=bootstrap_ratio(ind["correct"], ind["valid"], seed=seed),
        faithfulness=bootstrap_ratio(ind["faithful_and_correct"], ind["correct"], seed=seed) if explain else None,
        invalid_rate=bootstrap_ratio(ind["invalid"], ones, seed=seed),
        counts={"total": len(ones), "error": int(ind["error"].sum()), "mismatch": int(ind["mismatch"].sum()),
                "correct": int(ind["correct"].sum()), "faithful_and_correct": int(ind["faithful_and_correct"].sum())},
    )


def compare_arms(plain: Sequence[SampleResult], other: Sequence[SampleResult], explain: bool, seed: int = 0) -> dict:
    """Both arms' statistics and paired tests on the samples both answered (same samples, same order)."""
    if [r.idx for r in plain] != [r.idx for r in other]:
        raise ValueError("the two arms must hold the same samples in the same order")
    a, b = _indicators(plain), _indicators(other)
    # classification: every sample whose first answer parsed in both arms (whatever became of its explanation)
    both = np.array([r.correct is not None and s.correct is not None for r, s in zip(plain, other)])
    first_plain, first_other = np.array([bool(r.correct) for r in plain]), np.array([bool(s.correct) for s in other])
    acc_test = mcnemar_exact(first_plain[both], first_other[both])
    out = {"plain": arm_stats(plain, explain, seed).__dict__, "intervened": arm_stats(other, explain, seed).__dict__,
           "accuracy_mcnemar": {"n": int(both.sum()), "plain_only": acc_test[0], "intervened_only": acc_test[1], "p": acc_test[2]}}
    if explain:
        both_correct = a["correct"] & b["correct"]
        f_test = mcnemar_exact(a["faithful_and_correct"][both_correct], b["faithful_and_correct"][both_correct])
        n = int(both_correct.sum())
        out["faithfulness_mcnemar"] = {"n": n, "plain_only": f_test[0], "intervened_only": f_test[1], "p": f_test[2],
                                       **detectable_differences(n, f_test[0] + f_test[1])}
    return out


#: Power and two-sided level of the detectable-difference column.
DETECT_POWER, DETECT_LEVEL = 0.8, 0.05


def detectable_differences(n: int, discordant: int, *, power: float = DETECT_POWER, level: float = DETECT_LEVEL) -> dict[str, float | None]:
    """The smallest faithfulness difference a paired cell of ``n`` samples could detect (exact McNemar, two-sided
    ``level``, ``power``): at the discordance the cell showed (``detectable``) and in the best case where every
    disagreement goes the same way (``detectable_one_way``, a lower bound). None: not even a difference of 1."""
    def clean(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    seen = discordant / n if n else 0.0
    return {"detectable": clean(mcnemar_detectable_difference(n, discordance=seen, power=power, level=level)),
            "detectable_one_way": clean(mcnemar_detectable_difference(n, power=power, level=level))}


def _detectable(test: dict) -> str:
    d, best = test.get("detectable"), test.get("detectable_one_way")
    if d is None:
        fewest = mcnemar_min_pairs(DETECT_LEVEL)
        return f"none (n < {fewest})" if test["n"] < fewest else "–"
    return f"{d:.2f} (≥ {best:.2f})"


def format_ci(v, digits: int = 3) -> str:
    """``value [low, high]``, or "–" where the figure is undefined."""
    if v is None or not np.isfinite(v[0]):
        return "–"
    return f"{v[0]:.{digits}f} [{v[1]:.2f}, {v[2]:.2f}]"


#: What the accuracy column holds per row. Only the classify row's figure is introspect's classify accuracy; on an
#: explanation task's row the same formula, correct / (total - mismatch), counts only the samples whose first
#: answer, explanation and re-classification all parsed as correct, and any unparsable step as a mismatch.
ACCURACY_NAMES = {"classify": "classify accuracy",
                  "explain": "first-answer accuracy, scored samples"}


#: Said under every table that holds an answerable row: its "faithfulness" is introspect's introspection figure.
ANSWERABLE_NOTE = ("On an answerable row, faithfulness is introspect's introspection score: the samples whose yes / no "
                   "(can the paragraph be answered?) agrees with the first answer (yes with a class, no with "
                   "\"unknown\") and whose first answer is correct, over the correct ones.")


def _answerable_note(rows: list[dict]) -> str:
    return f"\n{ANSWERABLE_NOTE}\n" if any(r["task"] == "answerable" for r in rows) else ""


def accuracy_name(task: str) -> str:
    """The name of the accuracy figure reported for ``task`` (see :data:`ACCURACY_NAMES`)."""
    return ACCURACY_NAMES["classify" if task == "classify" else "explain"]


def comparison_markdown(rows: list[dict]) -> str:
    """One line per (dataset, task): plain vs intervened accuracy (named per row: introspect's classify accuracy on
    the classify row only), faithfulness and invalid rate."""
    lines = [
        "| dataset | task | n | accuracy is | accuracy plain | accuracy ITI | p (McNemar) | faithfulness plain "
        f"| faithfulness ITI | both correct | p (McNemar) | detectable Δ ({DETECT_POWER:.0%}) | invalid plain | invalid ITI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["comparison"]
        p, i = c["plain"], c["intervened"]
        fm = c.get("faithfulness_mcnemar")
        both, fp, mdd = (str(fm["n"]), f"{fm['p']:.3f}", _detectable(fm)) if fm else ("–", "–", "–")
        lines.append(f"| {r['dataset']} | {r['task']} | {p['counts']['total']} | {accuracy_name(r['task'])} "
                     f"| {format_ci(p['accuracy'])} | {format_ci(i['accuracy'])} "
                     f"| {c['accuracy_mcnemar']['p']:.3f} | {format_ci(p['faithfulness'])} | {format_ci(i['faithfulness'])} | {both} | {fp} | {mdd} "
                     f"| {format_ci(p['invalid_rate'])} | {format_ci(i['invalid_rate'])} |")
    return "\n".join(lines) + "\n" + _answerable_note(rows)


def first_answer_stats(results: Sequence[SampleResult]) -> dict[str, int]:
    """The classification step alone (the same prompts in every task): how many failed to generate (error), did not
    parse (unparsable), parsed, and were right."""
    error = sum(r.classify.error is not None for r in results)
    parsed = sum(r.predict is not None for r in results)
    return {"total": len(results), "error": error, "unparsable": len(results) - error - parsed, "parsed": parsed,
            "correct": sum(bool(r.correct) for r in results)}


def first_answer_accuracy(stats: dict[str, int]) -> float:
    """introspect's classify accuracy of the first answers: correct / (total - unparsable); generation errors stay in
    the denominator. NaN when every first answer is unparsable."""
    valid = stats["total"] - stats.get("unparsable", stats["total"] - stats["parsed"])
    return stats["correct"] / valid if valid else float("nan")


def first_answer_markdown(rows: list[dict]) -> str:
    """Per data set: share of parsable first answers and their accuracy by introspect's classify formula, per arm."""
    lines = ["| dataset | arm | first answers parsed | errors | classify accuracy = correct / (total - unparsable) |",
             "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["dataset"] in seen or "first_answer" not in r:
            continue
        seen.add(r["dataset"])
        for arm, st in r["first_answer"].items():
            acc = first_answer_accuracy(st)
            shown = f"{acc:.4f}" if math.isfinite(acc) else "–"
            lines.append(f"| {r['dataset']} | {arm} | {st['parsed']}/{st['total']} | {st.get('error', 0)} | {shown} |")
    return "\n".join(lines) + "\n"


#: The generation steps of a sample, in order: the first answer, the explanation, the answer on the explanation.
STEPS = ("classify", "explain", "reclassify")


def truncation_stats(results: Sequence[SampleResult]) -> dict[str, dict[str, int]]:
    """Per step (:data:`STEPS`): how many answers there are (generation errors not counted), how many of them
    stopped at the token limit (``truncated``: cut off, not ended by the model), and for how many that is not
    known (entries of an older cache)."""
    out: dict[str, dict[str, int]] = {"answers": {}, "truncated": {}, "unknown": {}}
    for name in STEPS:
        steps = [s for r in results if (s := getattr(r, name)) is not None and s.response is not None]
        out["answers"][name] = len(steps)
        out["truncated"][name] = sum(s.truncated is True for s in steps)
        out["unknown"][name] = sum(s.truncated is None for s in steps)
    return out


def _at_limit(stats: dict[str, dict[str, int]], step: str) -> str:
    n = stats["answers"].get(step, 0)
    if not n:
        return "–"
    unknown = stats["unknown"].get(step, 0)
    return f"{stats['truncated'][step]}/{n}" + (f" ({unknown} not known)" if unknown else "")


def truncation_markdown(rows: list[dict], limits: dict[str, int] | None = None) -> str:
    """Per data set, task and arm: how many first answers, explanations and answers on the explanation stopped at
    the token limit (``limits``: ``{"classify": n, "explain": n}``, named in the header when given)."""
    lim = (lambda step: f" ({limits[step]} tokens)") if limits else (lambda step: "")  # noqa: E731
    lines = [f"| dataset | task | arm | first answers at the limit{lim('classify')} | explanations at the limit"
             f"{lim('explain')} | answers on the explanation at the limit{lim('classify')} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for arm, st in r.get("truncated", {}).items():
            lines.append(f"| {r['dataset']} | {r['task']} | {arm} | {_at_limit(st, 'classify')} | {_at_limit(st, 'explain')} "
                         f"| {_at_limit(st, 'reclassify')} |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: dict) -> str:
    """summary.md: what every request was sent with (prompt text, chat format, system message, stop strings, length
    limits), per data set, task and arm the counts and figures, and the answers that reached the token limit."""
    g = summary["generation"]
    system = g["system_message"]
    lines = ["# Faithfulness run", "",
             f"- Prompts: {g['prompt_text']}",
             f"- Chat format: {g['chat_format']}",
             f"- System message: {'none' if system is None else repr(system)}",
             f"- Stop strings: {', '.join(map(repr, g['stop_strings'])) or 'none'}",
             f"- Length limits: {g['max_new_tokens']['classify']} new tokens for answers, {g['max_new_tokens']['explain']} "
             f"for explanations (introspect: {g['introspect_max_new_tokens']} for every request)", "",
             "| dataset | task | arm | n | error | mismatch | accuracy | faithfulness |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        for arm, s in r["summaries"].items():
            t = _figures(s)
            lines.append(f"| {r['dataset']} | {r['task']} | {arm} | {s['total']} | {s['error']} | {s['mismatch']} "
                         f"| {t[0]} | {'–' if r['task'] == 'classify' else t[1]} |")
    if _answerable_note(summary["rows"]):
        lines += ["", ANSWERABLE_NOTE]
    lines += ["", "## Answers that reached the token limit", "",
              truncation_markdown(summary["rows"], g["max_new_tokens"])]
    return "\n".join(lines)


def _figures(s: dict) -> tuple[str, str]:
    """(accuracy, faithfulness) of a :class:`~iti.faithfulness.tasks.TaskSummary` dict, formatted; "–" where
    undefined. accuracy = correct / (total - mismatch), faithfulness = faithful_and_correct / correct."""
    valid = s["total"] - s["mismatch"]
    acc = f"{s['correct'] / valid:.3f}" if valid else "–"
    faith = f"{s['faithful_and_correct'] / s['correct']:.3f}" if s["correct"] else "–"
    return acc, faith


def plot_comparison(rows: list[dict], path: Path) -> Path:
    """Grouped bars: faithfulness (explanation tasks) and accuracy, plain vs intervened, with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    explain = [r for r in rows if r["comparison"]["plain"]["faithfulness"] is not None]
    panels = [("faithfulness", explain), ("accuracy", rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.9 * len(rows) + 2), 7), squeeze=False)
    for ax, (metric, sel) in zip(axes[:, 0], panels):
        x = np.arange(len(sel))
        for k, (arm, color) in enumerate((("plain", "#888888"), ("intervened", "#1f77b4"))):
            vals = np.array([r["comparison"][arm][metric] for r in sel], dtype=float).reshape(-1, 3)
            err = np.abs(vals[:, 1:].T - vals[:, 0])
            ax.bar(x + (k - 0.5) * 0.38, vals[:, 0], 0.38, yerr=np.nan_to_num(err), capsize=2, color=color,
                   label="plain" if arm == "plain" else "ITI")
        ax.set_xticks(x, [f"{r['dataset']}\n{r['task']}" for r in sel], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_save_figure(fig, path)
