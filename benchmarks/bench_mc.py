"""TruthfulQA MC scoring: shared-prefix cached scoring vs one full forward pass per answer, same questions."""
from __future__ import annotations

import time

import numpy as np

from iti import load_model, load_truthfulqa
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import mc_questions, shared_prefix

from .common import BenchResult, Row, bench_main


def run(quick: bool = False, num_questions: int = 100) -> BenchResult:
    n = 3 if quick else num_questions
    model, tok = load_model("smollm2-135m")
    qs = mc_questions(load_truthfulqa(), range(n))
    score_choices(model, tok, qs[:2], prefix=shared_prefix(), progress=False)  # warm-up
    t = time.perf_counter()
    fast = score_choices(model, tok, qs, prefix=shared_prefix(), progress=False)
    fast_t = time.perf_counter() - t
    t = time.perf_counter()
    slow = score_choices(model, tok, qs, prefix=None, progress=False)
    slow_t = time.perf_counter() - t
    diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, slow))
    mf, ms = mc_metrics(qs, fast).summary(), mc_metrics(qs, slow).summary()
    answers = sum(len(q.continuations) for q in qs)
    r = BenchResult("mc_scoring", f"TruthfulQA MC scoring ({n} questions, {answers} answers, SmolLM2-135M, fp32, CPU)",
                    "python -m benchmarks.bench_mc")
    r.rows.append(Row("shared-prefix KV cache + batched answers vs one full forward per answer", f"{fast_t:.1f} s", f"{slow_t:.1f} s",
                      slow_t / fast_t, ">= 10x", slow_t / fast_t >= 10))
    r.rows.append(Row("largest |score difference| (summed answer log-prob)", f"{diff:.1e}", "0", 1.0, "< 1e-4", diff < 1e-4))
    r.data = {"fast_s": fast_t, "slow_s": slow_t, "max_abs_score_diff": diff, "metrics_fast": mf, "metrics_slow": ms, "answers": answers,
              "projected_full_817_s": fast_t / n * 817}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_questions=(int, 100))


if __name__ == "__main__":
    main()
