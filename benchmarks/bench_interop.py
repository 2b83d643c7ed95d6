"""An exported intervention in lm-evaluation-harness: its ``truthfulqa_mc2`` on the steered SmolLM2 vs ours.

The intervention (16 seeded heads and directions, alpha 2: a clear change of MC2 that leaves the model working) is exported with :func:`iti.interop.lm_eval_format.export_lm_eval` to
the ``.pt`` that lm-eval's ``steered`` model reads (``W_o @ shift`` added to each intervened layer's o_proj output,
every position); the harness then runs its own ``truthfulqa_mc2`` on the first N questions of the local
``mc_task.json`` (the task YAML of :mod:`benchmarks.bench_lm_eval`). Ours is ``--preset lm-eval`` MC2 scoring with
the runtime intervention at ``positions="all"``, the same shift at the same positions.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from iti import load_model, load_truthfulqa
from iti.interop.lm_eval_format import export_lm_eval
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import mc_questions, shared_prefix

from .bench_intervention_generation import seeded_intervention
from .bench_lm_eval import write_local_tasks
from .common import BenchResult, Row, bench_main


def steered_harness_mc2(model, tokenizer, steer_path: Path, tqa, num_questions: int, batch_size: int) -> tuple[float, np.ndarray, float]:
    """lm-eval's truthfulqa_mc2 on its ``steered`` model: the mean, per-question values and wall time."""
    from lm_eval import simple_evaluate
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        names = write_local_tasks(tqa, num_questions, Path(tmp))
        task = next(n for n in names if n.endswith("mc2"))
        lm = SteeredModel(pretrained=model, steer_path=str(steer_path), tokenizer=tokenizer, batch_size=batch_size)
        t = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=tmp), log_samples=True,
                              num_fewshot=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
        elapsed = time.perf_counter() - t
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return float(out["results"][task]["acc,none"]), np.array([float(s["acc"]) for s in samples]), elapsed


def run(quick: bool = False, num_questions: int = 100, batch_size: int = 8, num_heads: int = 16, alpha: float = 2.0) -> BenchResult:
    n = 4 if quick else num_questions
    model, tok = load_model("smollm2-135m")
    inter = seeded_intervention(model, num_heads=num_heads, alpha=alpha)
    tqa = load_truthfulqa(allow_hub=False)
    qs = mc_questions(tqa, range(n), preset="lm-eval")
    prefix = shared_prefix("lm-eval")
    t = time.perf_counter()
    with inter.applied(model, positions="all"):
        ours = mc_metrics(qs, score_choices(model, tok, qs, prefix=prefix, progress=False), preset="lm-eval")
    ours_t = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        steer = export_lm_eval(model, inter, Path(tmp) / "steer.pt")
        theirs, per_q, theirs_t = steered_harness_mc2(model, tok, steer, tqa, n, batch_size)
    diff = abs(float(ours.mc2.mean()) - theirs)
    r = BenchResult("interop_lm_eval", f"Exported steering in lm-eval: truthfulqa_mc2 ({n} questions, SmolLM2-135M, "
                    f"{len(inter.heads)} heads, alpha {inter.alpha:g}, fp32, CPU)", "python -m benchmarks.bench_interop")
    r.rows.append(Row("MC2 steered (ours positions='all' vs harness steered .pt)", f"{ours.mc2.mean():.4f}", f"{theirs:.4f}",
                      1.0, "abs. diff <= 0.005", diff <= 0.005))
    r.rows.append(Row(f"MC2 steered wall time (harness batch {batch_size})", f"{ours_t:.1f} s", f"{theirs_t:.1f} s",
                      theirs_t / ours_t, "report", None))
    r.data = {"ours_mc2": float(ours.mc2.mean()), "harness_steered_mc2": theirs,
              "abs_diff": diff, "max_abs_mc2_diff_per_question": float(np.abs(ours.mc2 - per_q).max()),
              "heads": len(inter.heads), "alpha": inter.alpha, "ours_s": ours_t, "harness_s": theirs_t}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_questions=(int, 100), batch_size=(int, 8), num_heads=(int, 16), alpha=(float, 2.0))


if __name__ == "__main__":
    main()
