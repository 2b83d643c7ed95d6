"""Shared helpers: timing with repeats, machine info, result files and the README table."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"


def pyvene_component(module_path: str) -> str:
    """pyvene's name for a module's input: "model.layers.3.self_attn.o_proj" -> "model.layers[3].self_attn.o_proj.input"."""
    return re.sub(r"\.(\d+)\.", r"[\1].", module_path) + ".input"


def stats(samples: list[float]) -> dict[str, float]:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": len(samples)}


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time several functions in alternation, rotating the order each round, so machine noise and position in
    the round hit each alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t)
    return {k: stats(v) for k, v in samples.items()}


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    import iti

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "iti": iti.__version__,
    }


class QuickResultError(RuntimeError):
    """A quick (smoke) run asked to write into the committed results folder."""


@dataclass
class Row:
    """One line of a benchmark table: our figure, the baseline's, their ratio and the goal.

    A row whose peer package is not installed is a *skipped* row: ``ratio`` is None and ``skipped`` names the
    package (see :func:`skipped_row`), never a NaN that reads as a number. A row whose measurement raised is an
    *error* row: ``ratio`` is None and ``error`` holds the exception (see :func:`error_row`)."""

    what: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None = None
    skipped: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:  # numpy scalars are not JSON
        if self.skipped is None and self.error is None:
            self.ratio = float(self.ratio)  # type: ignore[arg-type]
            if not math.isfinite(self.ratio) or self.ratio <= 0:
                raise ValueError(f"benchmark row {self.what!r}: ratio {self.ratio} is not a positive number")
        else:
            self.ratio = None
        self.met = None if self.met is None else bool(self.met)


def peer_missing(package: str) -> str:
    """The one wording of a skipped row's reason: which package to install."""
    return f"skipped: {package} not installed (make bench installs it)"


def skipped_row(what: str, package: str, goal: str = "report") -> Row:
    """A row for a comparison whose peer package is not installed: says so instead of a number."""
    return Row(what, "-", peer_missing(package), None, goal, None, skipped=peer_missing(package))


def error_row(what: str, error: BaseException, goal: str = "runs", met: bool | None = False) -> Row:
    """A row for a measurement that raised: the exception instead of a number. ``met`` False counts it as a failure
    (our own code), None only reports it (a peer package's)."""
    text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
    return Row(what, f"error: {text}", "-", None, goal, met, error=text)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of a results table from rows as saved (``Row.__dict__``)."""
    def cell(text: str) -> str:  # a "|" inside a cell (|x - y|) would start a new column
        return str(text).replace("|", "\\|")

    lines = ["| what | ours | baseline | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
        ratio = "skipped" if row.get("skipped") else "error" if row.get("error") else f"{row['ratio']:.2f}"
        lines.append(f"| {cell(row['what'])} | {cell(row['ours'])} | {cell(row['baseline'])} | {ratio} | {cell(row['goal'])} | {met} |")
    return lines


@dataclass
class BenchResult:
    name: str
    title: str
    command: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    quick: bool = False

    def save(self, results_dir: Path = RESULTS_DIR) -> Path:
        """Write ``<name>.json``. A quick run is refused in the committed results folder: smoke figures must
        never replace a full run's."""
        from iti.io import atomic_write_json

        if self.quick and _is_committed_results(results_dir):
            raise QuickResultError(f"{self.name}: a quick run does not write into {RESULTS_DIR}; pass another results directory")
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.name}.json"
        payload = {
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "quick": self.quick,
            "rows": [r.__dict__ for r in self.rows],
            "data": self.data,
        }
        atomic_write_json(path, payload)
        return path


def _is_committed_results(path: Path) -> bool:
    return Path(path).resolve() == RESULTS_DIR.resolve()


def quick_results_dir() -> Path:
    """Where a quick run writes when no folder is given: a new temporary directory, never results/."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="iti-bench-quick-"))


def render_readme(results_dir: Path = RESULTS_DIR, readme: Path = README) -> str:
    """Regenerate benchmarks/README.md from every results/*.json."""
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.run_all`) from `benchmarks/results/*.json`; do not edit by hand.",
        "Each comparison runs both sides in one process on the same inputs; times are medians over repeats",
        "(min/median/max are in the JSON). Ratios > 1 mean ours is faster unless the row says otherwise.",
        "On a shared 2-core machine medians move by about 5% between runs of the same benchmark, so a goal of a few",
        "percent missed by a few percent is within that noise: rerun the one benchmark (its command is under its",
        "heading) before reading it as a slowdown.",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        parts += [f"## {r['title']}", "", f"`{r['command']}` — {r['created']}, {m['cpus']} CPUs, torch {m['torch']}, transformers {m['transformers']}", ""]
        parts += markdown_table(r["rows"])
        parts.append("")
    text = "\n".join(parts)
    readme.write_text(text)
    return text


def bench_main(run: Callable[..., BenchResult], description: str | None, argv=None, **extra: tuple[type, Any]) -> None:
    """Command line of one benchmark: ``--quick``, ``--results-dir`` and the benchmark's own sizes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few prompts (smoke test)")
    p.add_argument("--results-dir", default=None)
    for name, (typ, default) in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=default)
    args = p.parse_args(argv)
    result = run(quick=args.quick, **{k: getattr(args, k) for k in extra})
    result.quick = args.quick
    results_dir = Path(args.results_dir) if args.results_dir else (quick_results_dir() if args.quick else RESULTS_DIR)
    print(result.save(results_dir))
    for row in result.rows:
        print(row)
