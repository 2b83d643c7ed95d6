"""TruthfulQA MC1/MC2: our ``--preset lm-eval`` scoring vs lm-evaluation-harness's truthfulqa_mc1 + truthfulqa_mc2.

Both run in this process on the same loaded model and the same questions (the first N of the local
``mc_task.json``, the file the hub's ``truthful_qa/multiple_choice`` is built from). The harness reads them through
task YAMLs that include its own truthfulqa_mc1/mc2 configs and only swap the hub dataset for a local JSONL file, so
its prompt, target delimiter and mc2 scoring are the harness's own.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from iti import load_model, load_truthfulqa
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import mc_questions, shared_prefix

from .common import BenchResult, Row, bench_main

MC_TASKS = ("truthfulqa_mc1", "truthfulqa_mc2")


def write_local_tasks(tqa, num_questions: int, folder: Path) -> list[str]:
    """JSONL in the hub's multiple_choice schema plus one YAML per harness task pointing at it; returns task names."""
    import lm_eval

    data = folder / "truthfulqa_mc.jsonl"
    with data.open("w") as f:
        for item in tqa.mc[:num_questions]:
            f.write(json.dumps({
                "question": item.question,
                "mc1_targets": {"choices": [a for a, _ in item.mc1], "labels": [int(lab) for _, lab in item.mc1]},
                "mc2_targets": {"choices": [a for a, _ in item.mc2], "labels": [int(lab) for _, lab in item.mc2]},
            }) + "\n")
    harness_dir = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    names = []
    for task in MC_TASKS:
        name = f"local_{task}"
        (folder / f"{name}.yaml").write_text(
            f"include: {harness_dir / (task + '.yaml')}\n"
            f"task: {name}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        )
        names.append(name)
    return names


def run_harness(model, tokenizer, tqa, num_questions: int, batch_size: int) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """Harness MC1/MC2 means, per-question mc2 values, and wall time of ``simple_evaluate``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        names = write_local_tasks(tqa, num_questions, Path(tmp))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        t = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=tmp), log_samples=True,
                              num_fewshot=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
        elapsed = time.perf_counter() - t
    metrics = {task: out["results"][f"local_{task}"]["acc,none"] for task in MC_TASKS}
    samples = {task: sorted(out["samples"][f"local_{task}"], key=lambda s: s["doc_id"]) for task in MC_TASKS}
    return metrics, samples, elapsed


def run(quick: bool = False, num_questions: int = 100, batch_size: int = 8) -> BenchResult:
    n = 4 if quick else num_questions
    model, tok = load_model("smollm2-135m")
    tqa = load_truthfulqa()
    qs = mc_questions(tqa, range(n), preset="lm-eval")
    prefix = shared_prefix("lm-eval")
    score_choices(model, tok, qs[:2], prefix=prefix, progress=False)  # warm-up
    t = time.perf_counter()
    ours = mc_metrics(qs, score_choices(model, tok, qs, prefix=prefix, progress=False), preset="lm-eval")
    ours_t = time.perf_counter() - t
    theirs, samples, theirs_t = run_harness(model, tok, tqa, n, batch_size)
    mc1_h = np.array([float(s["acc"]) for s in samples["truthfulqa_mc1"]])
    mc2_h = np.array([float(s["acc"]) for s in samples["truthfulqa_mc2"]])
    d1, d2 = abs(ours.mc1.mean() - theirs["truthfulqa_mc1"]), abs(ours.mc2.mean() - theirs["truthfulqa_mc2"])
    answers = sum(len(q.continuations) for q in qs)
    r = BenchResult("lm_eval_mc", f"TruthfulQA MC1+MC2 vs lm-evaluation-harness ({n} questions, SmolLM2-135M, fp32, CPU)",
                    "python -m benchmarks.bench_lm_eval")
    r.rows.append(Row(f"MC1 + MC2 wall time (harness batch {batch_size})", f"{ours_t:.1f} s", f"{theirs_t:.1f} s",
                      theirs_t / ours_t, ">= 5x", theirs_t / ours_t >= 5))
    r.rows.append(Row("MC1 (ours vs harness)", f"{ours.mc1.mean():.4f}", f"{theirs['truthfulqa_mc1']:.4f}", 1.0,
                      "abs. diff <= 0.005", d1 <= 0.005))
    r.rows.append(Row("MC2 (ours vs harness)", f"{ours.mc2.mean():.4f}", f"{theirs['truthfulqa_mc2']:.4f}", 1.0,
                      "abs. diff <= 0.005", d2 <= 0.005))
    r.data = {
        "ours_s": ours_t, "harness_s": theirs_t, "answers_scored_by_us": answers,
        "ours": {"MC1": float(ours.mc1.mean()), "MC2": float(ours.mc2.mean())},
        "harness": {"MC1": float(theirs["truthfulqa_mc1"]), "MC2": float(theirs["truthfulqa_mc2"])},
        "questions_with_different_mc1": int((ours.mc1 != mc1_h).sum()),
        "max_abs_mc2_diff_per_question": float(np.abs(ours.mc2 - mc2_h).max()),
        "harness_batch_size": batch_size,
        "lm_eval": _lm_eval_version(),
    }
    return r


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_questions=(int, 100), batch_size=(int, 8))


if __name__ == "__main__":
    main()
