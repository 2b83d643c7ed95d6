"""In-process TruthfulQA judge (``--judge hf``): batched forwards vs one forward per prompt (batch 1), same prompts.

SmolLM2-135M stands in for the judge (AllenAI's Llama-2-7B judges are not reachable offline): the figures measure
the judging path, and its True/Info verdicts mean nothing. Each answer is judged twice (True and Info prompts);
times are medians of 5 interleaved repeats (1 with --quick).
"""
from __future__ import annotations

from iti import load_model, load_truthfulqa
from iti.truthfulqa.hf_judge import HFJudge, HFJudges, judge_answers_hf

from .common import BenchResult, Row, bench_main, time_interleaved


def run(quick: bool = False, num_answers: int = 64, batch_size: int = 16) -> BenchResult:
    n = 8 if quick else num_answers
    model, tok = load_model("smollm2-135m")
    items = load_truthfulqa().gen[:n]
    questions, answers = [g.question for g in items], [g.best_answer for g in items]
    batched_judge, single_judge = HFJudge(model, tok, batch_size), HFJudge(model, tok, 1)
    batched, single = HFJudges(batched_judge, batched_judge), HFJudges(single_judge, single_judge)
    fast = judge_answers_hf(batched, questions, answers)  # the results compared; also the warm-up
    slow = judge_answers_hf(single, questions, answers)
    times = time_interleaved({"batched": lambda: judge_answers_hf(batched, questions, answers),
                              "single": lambda: judge_answers_hf(single, questions, answers)}, repeats=1 if quick else 5, warmup=0)
    fast_t, slow_t = times["batched"]["median"], times["single"]["median"]
    diff = max(abs(a - b) for key in ("True_p_raw", "Info_p_raw") for a, b in zip(fast[key], slow[key]))
    same = all(fast[k] == slow[k] for k in ("True", "Info", "True&Info"))
    prompts = 2 * n
    r = BenchResult("judge", f"In-process TruthfulQA judge ({n} answers, {prompts} prompts, SmolLM2-135M as a stand-in judge, fp32, CPU)",
                    "python -m benchmarks.bench_judge")
    r.rows.append(Row(f"batched judge (batch {batch_size}, left padding) vs one forward per prompt (batch 1)",
                      f"{prompts / fast_t:.1f} prompts/s", f"{prompts / slow_t:.1f} prompts/s", slow_t / fast_t, "report"))
    r.rows.append(Row("largest |P(' yes') difference|, batched vs batch 1", f"{diff:.1e}", "0", 1.0, "< 1e-5", diff < 1e-5))
    r.data = {"answers": n, "prompts": prompts, "batch_size": batch_size, "batched_s": times["batched"], "single_s": times["single"],
              "max_abs_p_diff": diff, "same_verdicts": same, "projected_817_answers_batched_s": fast_t / n * 817,
              "true_rate": sum(fast["True"]) / n, "info_rate": sum(fast["Info"]) / n,
              "note": "SmolLM2 as a stand-in judge: the path runs, its judgements mean nothing"}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_answers=(int, 64), batch_size=(int, 16))


if __name__ == "__main__":
    main()
