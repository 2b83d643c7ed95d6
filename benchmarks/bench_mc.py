"""TruthfulQA MC scoring: shared-prefix cached scoring vs one full forward pass per answer, same questions; and, under
the few-shot baseline's long prefix, grouped key/value heads read in place (iti.grouped_attention, what load_model
installs on a CPU model) vs transformers' copies of them."""
from __future__ import annotations

import time

import numpy as np

from iti import load_model, load_truthfulqa
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import few_shot_text, mc_questions, shared_prefix

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
    r.rows += few_shot_rows(model, tok, r.data, 4 if quick else 16)
    return r


def few_shot_rows(model, tok, data: dict, n: int) -> list[Row]:
    """The few-shot baseline's prompts (41 shots, validate's --many_shot 41: a prefix of about 1,500 tokens) scored with
    the grouped key/value heads read in place, then with transformers' copies (the hooks removed), same questions."""
    tqa = load_truthfulqa()
    shots = few_shot_text(tqa, range(400, 817), 41, seed=42)
    qs = mc_questions(tqa, range(n), shots=shots)
    prefix = shared_prefix(shots=shots)
    handle = model.iti_grouped_kv
    assert handle is not None, "load_model installs the in-place read on a CPU SmolLM2"
    timed = {}
    for name in ("in place", "copied"):
        if name == "copied":
            handle.remove()
        t = time.perf_counter()
        timed[name] = (score_choices(model, tok, qs, prefix=prefix, progress=False), time.perf_counter() - t)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(timed["in place"][0], timed["copied"][0]))
    (_, ours), (_, base) = timed["in place"], timed["copied"]
    answers = sum(len(q.continuations) for q in qs)
    data.update({"few_shot_questions": n, "few_shot_answers": answers, "few_shot_prefix_tokens": len(tok(prefix)["input_ids"]),
                 "few_shot_in_place_s": ours, "few_shot_copied_s": base, "few_shot_max_abs_score_diff": diff})
    return [Row(f"41-shot prefix ({answers} answers): grouped K/V heads read in place vs copied per query head", f"{ours:.1f} s",
                f"{base:.1f} s", base / ours, ">= 1.3x", base / ours >= 1.3),
            Row("largest |score difference|, in place vs copied", f"{diff:.1e}", "0", 1.0, "< 1e-5", diff < 1e-5)]


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_questions=(int, 100))


if __name__ == "__main__":
    main()
