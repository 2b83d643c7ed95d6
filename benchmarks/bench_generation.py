"""Generation at batch: faithfulness sampling and TruthfulQA's greedy answers, batched vs one prompt at a time.

Faithfulness: the protocol's own classification prompts (bAbI-1 and RTE, chat template applied) with its sampling
settings. Our generator draws each prompt's tokens from that prompt's own seeded stream, so batched and sequential
runs must give the same text; the benchmark counts the prompts where they differ (numerical noise from padding can
flip a near-tie, rarely). TruthfulQA: honest_llama's generation prompts (instruction + 6-shot primer + question),
greedy, 50 new tokens, decoded on the shared prefix's cache and, as before, with ``generate()`` on the full prompts. For each, where the time goes (:class:`~benchmarks.step_timer.StepTimer`): the model's
prefill and decode forwards, the sampler, and the rest.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from iti import load_model
from iti.faithfulness.cache import GenerationCache
from iti.faithfulness.datasets import load_faithfulness_dataset
from iti.faithfulness.generate import CachedGenerator, GenerationSettings, LocalGenerator, render_chat
from iti.faithfulness.prompts import classify_prompt, prompt_options

from .common import BenchResult, Row, bench_main
from .step_timer import StepTimer


def faithfulness_prompts(tokenizer, n: int) -> list[str]:
    opts = prompt_options(())
    out = []
    for name in ("babi1", "rte"):
        for s in load_faithfulness_dataset(name, allow_hub=False).samples[: (n + 1) // 2]:
            out.append(render_chat(tokenizer, classify_prompt(s, s.paragraph, opts)))
    return out[:n]


def run(quick: bool = False, num_prompts: int = 48, batch_size: int = 16, max_new_tokens: int = 32, tqa_questions: int = 48) -> BenchResult:
    n = 4 if quick else num_prompts
    new = 4 if quick else max_new_tokens
    questions = 8 if quick else tqa_questions
    model, tok = load_model("smollm2-135m")
    prompts = faithfulness_prompts(tok, n)
    settings = GenerationSettings(max_new_tokens=new)
    batched = LocalGenerator(model, tok, model_id="bench", batch_size=batch_size)
    single = LocalGenerator(model, tok, model_id="bench", batch_size=1)
    batched.generate(prompts[:2], settings, progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as tmp, GenerationCache(Path(tmp) / "cache.sqlite") as cache:
        cached = CachedGenerator(batched, cache)
        t = time.perf_counter()
        with StepTimer(model) as batched_parts:
            a = cached.generate(prompts, settings, progress=False)  # generated and stored
        batched_s = time.perf_counter() - t
        t = time.perf_counter()
        again = CachedGenerator(batched, cache).generate(prompts, settings, progress=False)  # served from the cache
        rerun_s = time.perf_counter() - t
        assert [x.response for x in again] == [x.response for x in a]
    t = time.perf_counter()
    with StepTimer(model) as single_parts:
        b = single.generate(prompts, settings, progress=False)
    single_s = time.perf_counter() - t
    differ = sum(x.response != y.response for x, y in zip(a, b))
    tokens = sum(len(tok(x.response or "", add_special_tokens=False)["input_ids"]) for x in a)
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    r = BenchResult("generation", f"Generation at batch: faithfulness ({n} classify prompts, up to {new} new tokens) and TruthfulQA "
                    f"greedy answers ({questions} questions) (SmolLM2-135M, fp32, CPU)",
                    "python -m benchmarks.bench_generation")
    r.rows.append(Row(f"batched (batch {batch_size}) vs one prompt at a time", f"{n / batched_s:.2f} prompts/s",
                      f"{n / single_s:.2f} prompts/s", single_s / batched_s, ">= 4 (issue 20)", single_s / batched_s >= 4))
    r.rows.append(_forward_share_row(f"faithfulness, batch {batch_size}", batched_parts))
    r.rows.append(_forward_share_row("faithfulness, batch 1", single_parts))
    r.rows.append(Row("fully cached rerun vs generating (same prompts)", f"{rerun_s * 1000:.1f} ms", f"{batched_s:.1f} s",
                      batched_s / rerun_s, "report", None))
    r.rows.append(Row("prompts whose text differs between batched and sequential", str(differ), "0", 1.0, "0 (per-prompt RNG)",
                      differ == 0))
    r.data = {"batched_s": batched_s, "sequential_s": single_s, "cached_rerun_s": rerun_s, "prompts": n, "prompt_tokens": prompt_tokens,
              "generated_tokens": tokens, "batch_size": batch_size, "max_new_tokens": new, "differing_texts": differ,
              "batched_parts": batched_parts.breakdown(), "sequential_parts": single_parts.breakdown()}
    r.data["truthfulqa"] = _truthfulqa_greedy(model, tok, r, questions, batch_size, 4 if quick else 50)
    return r


def _forward_share_row(what: str, timer: StepTimer) -> Row:
    """Where the time went, as a report row: the forward's share (prefill + decode) against the rest."""
    b = timer.breakdown()
    forward = b["prefill_s"] + b["decode_s"]
    return Row(f"{what}: time in the model's forward vs the rest (sampling, cache, Python)",
               f"{forward:.1f} s (prefill {b['prefill_share']:.0%}, decode {b['decode_share']:.0%})",
               f"{b['total_s'] - forward:.1f} s (sampling {b['sampling_share']:.0%}, other {b['other_share']:.0%})",
               forward / max(b["total_s"] - forward, 1e-9), "report (forward / rest)", None)


def _truthfulqa_greedy(model, tok, r: BenchResult, n: int, batch_size: int, new: int) -> dict:
    """honest_llama's greedy answers, now (on the shared prefix's cache) and before (``generate()`` on the full
    prompts), each batched and one at a time, all stopping at the next "Q:"; plus ``generate()`` for all ``new``
    tokens, the reference every answer must equal."""
    from iti.truthfulqa.data import load_truthfulqa
    from iti.truthfulqa.generation import generate_answers
    from iti.truthfulqa.prompts import generation_prompt

    prompts = [generation_prompt(ref.question) for ref in load_truthfulqa(allow_hub=False).refs[:n]]
    runs = {}
    for name, size, stop, share in (("batched", batch_size, True, True), ("sequential", 1, True, True),
                                    ("generate_batched", batch_size, True, False), ("generate_sequential", 1, True, False),
                                    ("reference_full_length", batch_size, False, False)):
        t = time.perf_counter()
        with StepTimer(model) as parts:
            answers = generate_answers(model, tok, prompts, batch_size=size, max_new_tokens=new, progress=False,
                                       stop_at_next_question=stop, share_prefix=share)
        runs[name] = {"seconds": time.perf_counter() - t, "answers": answers, "parts": parts}
    sec = {k: v["seconds"] for k, v in runs.items()}
    now, before = sec["sequential"] / sec["batched"], sec["generate_sequential"] / sec["generate_batched"]
    r.rows.append(Row(f"TruthfulQA greedy answers, {n} questions, on the shared prefix's cache: batched (batch {batch_size}) "
                      "vs one at a time", f"{n / sec['batched']:.2f} answers/s", f"{n / sec['sequential']:.2f} answers/s", now,
                      ">= 4 (issue 20)", now >= 4))
    r.rows.append(Row("... the same before, with generate() on the full prompts: batched vs one at a time",
                      f"{n / sec['generate_batched']:.2f} answers/s", f"{n / sec['generate_sequential']:.2f} answers/s", before,
                      "report (before)", None))
    r.rows.append(Row(f"TruthfulQA batched (batch {batch_size}): shared prefix's cache vs generate() on the full prompts",
                      f"{sec['batched']:.1f} s", f"{sec['generate_batched']:.1f} s", sec["generate_batched"] / sec["batched"],
                      "> 1 (faster)", sec["generate_batched"] > sec["batched"]))
    r.rows.append(Row(f"TruthfulQA one at a time, honest_llama's way (generate() per question, all {new} tokens) vs batched now",
                      f"{sec['batched']:.1f} s", f"{sec['generate_sequential'] * sec['reference_full_length'] / sec['generate_batched']:.1f} s (est.)",
                      sec["generate_sequential"] * sec["reference_full_length"] / sec["generate_batched"] / sec["batched"],
                      "report (estimate: one-at-a-time x full-length/stopped)", None))
    reference = runs["reference_full_length"]["answers"]
    same = sum(all(v["answers"][i] == reference[i] for v in runs.values()) for i in range(n))
    r.rows.append(Row("TruthfulQA answers equal in all five runs", f"{same} of {n}", f"{n} of {n}", max(same, 1) / n,
                      "all", same == n))
    r.rows.append(_forward_share_row(f"TruthfulQA, batch {batch_size}", runs["batched"]["parts"]))
    r.rows.append(_forward_share_row("TruthfulQA, batch 1", runs["sequential"]["parts"]))
    return {k: {"seconds": v["seconds"], "parts": v["parts"].breakdown()} for k, v in runs.items()} | {"questions": n, "max_new_tokens": new}


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_prompts=(int, 48), batch_size=(int, 16), max_new_tokens=(int, 32), tqa_questions=(int, 48))


if __name__ == "__main__":
    main()
