"""``iti faithfulness-report``: any set of finished runs (models x splits x data sets x tasks x task configs x arms)
gathered into introspect's figures and tables: faithfulness and accuracy with 95% CIs, persona variants side by
side, the (label, prediction, explanation prediction) class tables, and compute (requests, tokens, seconds), as
markdown, LaTeX and PNG. Everything is read from the runs' summary.json and samples/*.jsonl; nothing is generated."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmptyInputError, ItiError
from ..io import atomic_save_figure, atomic_write_text, read_json
from .report import ANSWERABLE_NOTE, format_ci, outcome_indicators, stats_from_indicators


class ReportInputError(ItiError, ValueError):
    """A path given to the report that is not a finished faithfulness run."""


@dataclass
class ReportConfig:
    """Settings of ``iti faithfulness-report``."""
    runs: Sequence[str] = field(default=(), metadata={
        "help": "finished run directories (each holds summary.json and samples/)", "nargs": "+", "flag": "run"})
    output_dir: str = field(default="validation/faithfulness_report", metadata={
        "help": "where report.md, report.tex and the figures go"})
    tokens: bool = field(default=True, metadata={
        "help": "no token counts (they need each run's tokenizer)", "flag": "no_tokens", "invert": True})
    seed: int = field(default=0, metadata={"help": "bootstrap seed of the CIs"})


@dataclass
class ReportRow:
    """One (run, data set, task, arm): its figures and what it cost."""
    model: str
    split: str
    dataset: str
    task: str
    config: str
    arm: str
    n: int
    accuracy: tuple[float, float, float]
    faithfulness: tuple[float, float, float] | None
    invalid: tuple[float, float, float]
    classes: Counter = field(repr=False)
    requests: int
    tokens: int | None
    run_seconds: float | None
    run: str


def _samples(run: Path, dataset: str, task: str, arm: str) -> list[dict[str, Any]]:
    path = run / "samples" / f"{dataset}_{task}_{arm}.jsonl"
    if not path.is_file():
        raise ReportInputError(f"{path} is missing: the run is not finished (or was moved without its samples/)")
    # split on "\n" only: an answer may hold U+2028 or U+0085, which JSON keeps raw and splitlines() would cut at
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _token_counter(model: str):
    from .experiment import load_prompt_tokenizer

    tok = load_prompt_tokenizer(model)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def collect_rows(runs: Sequence[str | Path], *, tokens: bool = True, seed: int = 0) -> list[ReportRow]:
    """Every (data set, task, arm) of every run, in the runs' order."""
    if not runs:
        raise EmptyInputError("no runs given")
    rows = []
    counters: dict[str, Any] = {}  # one tokenizer per model, however many runs use it
    for run in map(Path, runs):
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            raise ReportInputError(f"{run} holds no summary.json: not a finished faithfulness run")
        summary = read_json(summary_path, "faithfulness summary")
        cfg = summary.get("config", {})
        model, split = cfg.get("model", "?"), cfg.get("split", "test")
        if tokens and model not in counters:
            counters[model] = _token_counter(model)
        count = counters.get(model)
        for r in summary["rows"]:
            for arm in r["summaries"]:
                samples = _samples(run, r["dataset"], r["task"], arm)
                stats = stats_from_indicators(outcome_indicators(
                    [s["status"] for s in samples], [s["correct"] for s in samples], [s["faithful"] for s in samples]),
                    explain=r["task"] != "classify", seed=seed)
                steps = [s[k] for s in samples for k in ("classify", "explain", "reclassify") if s.get(k)]
                n_tokens = None
                if count is not None:
                    n_tokens = sum(count(st["rendered_prompt"]) + count(st["response"] or "") for st in steps)
                rows.append(ReportRow(
                    model=model, split=split, dataset=r["dataset"], task=r["task"],
                    config=" ".join(r.get("task_config") or []) or "default", arm=arm, n=len(samples),
                    accuracy=stats.accuracy, faithfulness=stats.faithfulness, invalid=stats.invalid_rate,
                    classes=Counter((s["label"], s["predict"], s.get("explain_predict")) for s in samples),
                    requests=len(steps), tokens=n_tokens, run_seconds=summary.get("seconds"), run=str(run)))
    return rows


_HEAD = ("model", "split", "data set", "task", "task config", "arm", "n", "accuracy [95% CI]", "faithfulness [95% CI]",
         "invalid")


def _figure_cells(r: ReportRow) -> list[str]:
    return [r.model, r.split, r.dataset, r.task, r.config, r.arm, str(r.n), format_ci(r.accuracy), format_ci(r.faithfulness),
            format_ci(r.invalid, 2)]


def _compute(rows: Sequence[ReportRow]) -> list[list[str]]:
    by_run: dict[tuple[str, str], list[ReportRow]] = {}
    for r in rows:
        by_run.setdefault((r.run, r.arm), []).append(r)
    out = []
    for (run, arm), rs in by_run.items():
        tokens = None if any(r.tokens is None for r in rs) else sum(r.tokens or 0 for r in rs)
        seconds = rs[0].run_seconds
        out.append([rs[0].model, Path(run).name, arm, str(sum(r.requests for r in rs)),
                    "–" if tokens is None else f"{tokens:,}", "–" if seconds is None else f"{seconds:,.0f}"])
    return out


_COMPUTE_HEAD = ("model", "run", "arm", "requests", "tokens (prompt + answer)", "run seconds (both arms)")


def _markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("–", "--")):
        text = text.replace(a, b)
    return text


def _latex_table(head: Sequence[str], body: Sequence[Sequence[str]], caption: str) -> list[str]:
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(head) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in b) + r" \\" for b in body]
    return lines + [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(caption)}}}", r"\end{table}", ""]


def report_markdown(rows: Sequence[ReportRow], figures: Sequence[str]) -> str:
    lines = ["# Faithfulness report", "", f"{len({r.run for r in rows})} run(s). Accuracy = correct / (total - "
             "unparsable); faithfulness = faithful-and-correct / correct (introspect's formulas); 95% bootstrap CIs "
             "over samples.", ""]
    lines += _markdown_table(_HEAD, [_figure_cells(r) for r in rows])
    if any(r.task == "answerable" for r in rows):
        lines += ["", ANSWERABLE_NOTE]
    lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    lines += ["", "## Classes: (label, prediction, explanation prediction)", ""]
    for r in rows:
        body = [[str(k[0]), "–" if k[1] is None else str(k[1]), "–" if k[2] is None else str(k[2]), str(v)]
                for k, v in sorted(r.classes.items(), key=lambda kv: (-kv[1], str(kv[0])))]
        lines += [f"**{r.model} / {r.split} / {r.dataset} / {r.task} / {r.config} / {r.arm}**", ""]
        lines += _markdown_table(("label", "prediction", "explanation prediction", "samples"), body) + [""]
    lines += ["## Compute", ""] + _markdown_table(_COMPUTE_HEAD, _compute(rows))
    return "\n".join(lines) + "\n"


def report_latex(rows: Sequence[ReportRow]) -> str:
    lines = [r"% iti faithfulness-report (needs \usepackage{booktabs})", ""]
    lines += _latex_table(_HEAD, [_figure_cells(r) for r in rows], "Accuracy and faithfulness, 95\\% bootstrap CIs.")
    lines += _latex_table(_COMPUTE_HEAD, _compute(rows), "Compute per run and arm.")
    return "\n".join(lines)


def _bars(ax, groups: list[str], series: dict[str, list[tuple[float, float, float] | None]]) -> None:
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        v = np.array([(np.nan,) * 3 if c is None else c for c in values], dtype=float)
        err = np.nan_to_num(np.abs(v[:, 1:].T - v[:, 0]))
        pos = x + (k - (len(series) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(v[:, 0]), width, yerr=err, capsize=2, label=name)
        for xi, vi in zip(pos, v[:, 0]):  # a value of 0 and an undefined one (no correct sample) look alike as bars
            ax.text(xi + width * 0.08, (0 if np.isnan(vi) else vi) + 0.02, "n/a" if np.isnan(vi) else f"{vi:.2f}",
                    ha="left", fontsize=6)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylim(0, 1)


def plot_report(rows: Sequence[ReportRow], out: Path) -> list[Path]:
    """faithfulness.png (default task config: per task, data sets side by side, one bar per model and arm),
    accuracy.png (the same for accuracy) and, where runs differ only in their task config, persona.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    default = [r for r in rows if r.config == "default"]
    for metric in ("faithfulness", "accuracy"):
        tasks = [t for t in dict.fromkeys(r.task for r in default) if metric == "accuracy" or t != "classify"]
        if not tasks:
            continue
        fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 2.6 * len(tasks) + 0.6), squeeze=False)
        for ax, task in zip(axes[:, 0], tasks):
            sel = [r for r in default if r.task == task]
            datasets = list(dict.fromkeys(r.dataset for r in sel))
            keys = list(dict.fromkeys(f"{r.model} {r.arm}" for r in sel))
            series = {k: [next((getattr(r, metric) for r in sel if r.dataset == d and f"{r.model} {r.arm}" == k), None)
                          for d in datasets] for k in keys}
            _bars(ax, datasets, series)
            ax.set_title(f"{task}", fontsize=9)
            ax.set_ylabel(metric if task != "answerable" or metric == "accuracy" else "introspection", fontsize=8)
            ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"{metric} with 95% bootstrap CIs (default task config)", fontsize=10)
        fig.tight_layout()
        written.append(atomic_save_figure(fig, out / f"{metric}.png"))
    variants = [r for r in rows if r.task != "classify"]
    cells = {(r.model, r.arm, r.dataset, r.task) for r in variants}
    persona = [c for c in sorted(cells) if len({r.config for r in variants if (r.model, r.arm, r.dataset, r.task) == c}) > 1]
    if persona:
        fig, axes = plt.subplots(len(persona), 1, figsize=(8, 2.6 * len(persona) + 0.6), squeeze=False)
        for ax, c in zip(axes[:, 0], persona):
            sel = [r for r in variants if (r.model, r.arm, r.dataset, r.task) == c]
            _bars(ax, [r.config.replace(" ", "\n") for r in sel], {"faithfulness": [r.faithfulness for r in sel]})
            ax.set_title(" / ".join(c), fontsize=9)
            ax.set_ylabel("faithfulness", fontsize=8)
        fig.suptitle("task config (persona) variants side by side, 95% bootstrap CIs", fontsize=10)
        fig.tight_layout()
        written.append(atomic_save_figure(fig, out / "persona.png"))
    return written


def write_report(cfg: ReportConfig) -> dict[str, Any]:
    """Gather the runs, write report.md, report.tex and the figures into ``cfg.output_dir``; return what was written."""
    rows = collect_rows(cfg.runs, tokens=cfg.tokens, seed=cfg.seed)
    out = Path(cfg.output_dir)
    figures = plot_report(rows, out)
    atomic_write_text(out / "report.md", report_markdown(rows, [str(f) for f in figures]))
    atomic_write_text(out / "report.tex", report_latex(rows))
    print(f"[faithfulness-report] {len(rows)} rows from {len(cfg.runs)} run(s) -> {out}", flush=True)
    return {"rows": len(rows), "files": ["report.md", "report.tex", *(f.name for f in figures)]}
