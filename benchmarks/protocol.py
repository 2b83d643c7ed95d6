"""honest_llama's protocol end to end, timed by stage: the headline figure.

The stages are the commands a user runs, each in its own process, into a fresh working folder (nothing is taken
from an earlier run): ``get_activations.py`` for ``tqa_mc2`` and ``tqa_gen_end_q`` (817 questions), then
``validate_2fold.py --use_center_of_mass`` with its defaults (2 folds, K = 48, alpha = 15; baseline, ITI, random heads
and random direction; 50-token greedy answers for the baseline and ITI rows). The validation is split further from
its row files: MC scoring, greedy answers, and the rest (probes, CE/KL, loading).

Beside it, the honest_llama way, estimated: the same work done as honest_llama does it (one prompt per forward
when collecting; one full forward per answer when scoring MC; ``generate()`` on one question at a time for all 50
tokens), each measured here on a few items with the same model and scaled by the protocol's counts; the rest of the
validation is taken at our own measured time (not sped up here, so the estimate is a lower bound). The arithmetic is
in the table and in ``protocol.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, BenchResult, Row, quick_results_dir

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("tqa_mc2", "tqa_gen_end_q")
#: the issue's goal for the whole protocol on the project's 2-core CPU machine
GOAL_SECONDS = 30 * 60


def _stage(argv: list[str]) -> float:
    """Run one user-facing command in its own process (its output shown as it goes); its wall time."""
    print("[protocol] $ python " + " ".join(argv), flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=ROOT, check=True)
    return time.perf_counter() - t


def _validation_rows(out: Path) -> tuple[dict[str, float], dict[str, int]]:
    """From the row files, read once: seconds of MC scoring, greedy answers and whole rows, summed; and the rows of
    the table (each run once per fold) and those of them that generated answers."""
    folds = int(json.loads((out / "run.json").read_text())["num_fold"])
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    parts = {"mc": sum(float(r.get("mc_seconds", 0.0)) for r in rows),
             "generation": sum(float(r.get("gen_seconds", 0.0)) for r in rows),
             "rows": sum(float(r.get("seconds", 0.0)) for r in rows)}
    counts = {"folds": folds, "rows": len(rows) // folds, "generating_rows": sum("gen_seconds" in r for r in rows) // folds}
    return parts, counts


def estimate_honest_llama_way(model_name: str, sample: int, max_questions: int | None, dtype: str | None = None) -> dict[str, Any]:
    """Seconds per unit of the honest_llama way, measured on ``sample`` items of each kind, and the protocol's
    unit counts."""
    from iti import build_prompt_set, collect_head_activations, load_model, load_truthfulqa
    from iti.truthfulqa.generation import generate_answers
    from iti.truthfulqa.mc_scoring import score_choices
    from iti.truthfulqa.prompts import generation_prompt, mc_questions

    model, tok = load_model(model_name, dtype=dtype)
    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for dataset in DATASETS:
        ps = build_prompt_set(dataset, max_questions=max_questions)
        counts[f"prompts_{dataset}"] = len(ps.prompts)
        collect_head_activations(model, tok, ps.prompts[:2], batch_size=1, progress=False)  # warm-up
        t = time.perf_counter()
        collect_head_activations(model, tok, ps.prompts[:sample], batch_size=1, progress=False)
        per[f"collect {dataset}_per_prompt"] = (time.perf_counter() - t) / min(sample, len(ps.prompts))
    tqa = load_truthfulqa(allow_hub=False, max_questions=max_questions)
    n_questions = len(tqa.refs[:max_questions] if max_questions else tqa.refs)
    every = mc_questions(tqa, range(n_questions))
    counts["questions"] = n_questions
    counts["answers"] = sum(len(q.continuations) for q in every)
    qs = every[:sample]
    t = time.perf_counter()
    score_choices(model, tok, qs, prefix=None, progress=False)  # one full forward per answer
    per["mc_per_answer"] = (time.perf_counter() - t) / sum(len(q.continuations) for q in qs)
    prompts = [generation_prompt(r.question) for r in tqa.refs[:sample]]
    t = time.perf_counter()
    generate_answers(model, tok, prompts, batch_size=1, share_prefix=False, stop_at_next_question=False, progress=False)
    per["generation_per_question"] = (time.perf_counter() - t) / len(prompts)
    return {"seconds_per_unit": per, "counts": counts, "sample": sample}


def run(model_name: str = "smollm2-135m", max_questions: int | None = None, sample: int = 16,
        work_dir: Path | None = None, dtype: str | None = None) -> BenchResult:
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="iti-protocol-"))
    features, out = work / "features", work / "validation"
    limit = ["--max_questions", str(max_questions)] if max_questions else []
    limit += ["--dtype", dtype] if dtype else []
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for dataset in DATASETS:
        seconds[f"collect {dataset}"] = _stage(["get_activations/get_activations.py", "--model_name", model_name,
                                                 "--dataset_name", dataset, "--output_dir", str(features), *limit])
    seconds["validate"] = _stage(["validation/validate_2fold.py", "--model_name", model_name, "--use_center_of_mass",
                                  "--features_dir", str(features), "--output_dir", str(out), *limit])
    total = time.perf_counter() - start
    parts, rows = _validation_rows(out)
    print("[protocol] estimating the honest_llama way on a sample ...", flush=True)
    est = estimate_honest_llama_way(model_name, sample, max_questions, dtype)
    per, counts = est["seconds_per_unit"], est["counts"]
    theirs = {f"collect {d}": per[f"collect {d}_per_prompt"] * counts[f"prompts_{d}"] for d in DATASETS}
    # every row scores each fold's held-out questions: over the folds, every answer once
    n_rows, n_gen_rows = rows["rows"], rows["generating_rows"]
    theirs_mc = per["mc_per_answer"] * counts["answers"] * n_rows
    theirs_gen = per["generation_per_question"] * counts["questions"] * n_gen_rows
    rest = seconds["validate"] - parts["mc"] - parts["generation"]
    theirs["validate"] = theirs_mc + theirs_gen + rest
    theirs_total = sum(theirs.values())

    r = BenchResult("protocol", f"honest_llama's protocol end to end ({model_name}, {counts['questions']} questions, "
                    f"{dtype or 'fp32'}, CPU)", "make protocol  # python -m benchmarks.protocol" + (f" --dtype {dtype}" if dtype else ""))
    for d in DATASETS:
        n = counts[f"prompts_{d}"]
        r.rows.append(Row(f"collect {d} ({n} prompts): batched vs one prompt per forward "
                          f"({per[f'collect {d}_per_prompt'] * 1000:.0f} ms x {n}, est.)",
                          f"{seconds[f'collect {d}']:.0f} s", f"{theirs[f'collect {d}']:.0f} s", theirs[f"collect {d}"] / seconds[f"collect {d}"],
                          "report", None))
    r.rows.append(Row(f"validate: MC scoring ({n_rows} rows x {counts['answers']} answers) vs one full forward per answer "
                      f"({per['mc_per_answer'] * 1000:.0f} ms each, est.)", f"{parts['mc']:.0f} s", f"{theirs_mc:.0f} s",
                      theirs_mc / max(parts["mc"], 1e-9), "report", None))
    r.rows.append(Row(f"validate: greedy answers ({n_gen_rows} rows x {counts['questions']} questions) vs generate() one "
                      f"question at a time, 50 tokens ({per['generation_per_question']:.2f} s each, est.)",
                      f"{parts['generation']:.0f} s", f"{theirs_gen:.0f} s", theirs_gen / max(parts["generation"], 1e-9), "report", None))
    r.rows.append(Row("validate: the rest (probes, CE/KL, loading), taken as ours in both", f"{rest:.0f} s", f"{rest:.0f} s", 1.0,
                      "report", None))
    r.rows.append(Row("whole protocol: ours vs the honest_llama way (est., a lower bound)", f"{total / 60:.1f} min",
                      f"{theirs_total / 60:.1f} min", theirs_total / total, "report", None))
    r.rows.append(Row("whole protocol, wall time", f"{total / 60:.1f} min", f"{GOAL_SECONDS / 60:.0f} min", GOAL_SECONDS / total,
                      "< 30 min (issue 20)", total < GOAL_SECONDS))
    r.data = {"seconds": seconds, "total_seconds": total, "validation_parts": parts | {"rest": rest}, "rows": rows,
              "honest_llama_way": est | {"seconds": theirs, "total_seconds": theirs_total}, "work_dir": "temporary" if not work_dir else str(work)}
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", default="smollm2-135m")
    p.add_argument("--max-questions", type=int, default=None, help="a smaller protocol (a smoke run; default: all 817)")
    p.add_argument("--dtype", default=None, help="passed to every stage (e.g. auto: bf16 on a CPU with native bf16)")
    p.add_argument("--sample", type=int, default=16, help="items per kind timed for the honest_llama-way estimate")
    p.add_argument("--work-dir", default=None, help="where features and rows go (default: a new temporary folder)")
    p.add_argument("--results-dir", default=None, help=f"default: {RESULTS_DIR} (a temporary folder with --max-questions)")
    args = p.parse_args(argv)
    result = run(args.model_name, args.max_questions, args.sample, Path(args.work_dir) if args.work_dir else None, args.dtype)
    result.quick = args.max_questions is not None  # a smaller protocol never replaces the committed figure
    results_dir = Path(args.results_dir) if args.results_dir else (quick_results_dir() if result.quick else RESULTS_DIR)
    print(result.save(results_dir))
    for row in result.rows:
        print(f"[protocol] {row.what}: {row.ours} (honest_llama way / goal: {row.baseline})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
