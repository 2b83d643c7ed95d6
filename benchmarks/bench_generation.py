"""Faithfulness generation: batched (left padding, length buckets, KV cache) vs one prompt at a time.

The prompts are the protocol's own classification prompts (bAbI-1 and RTE, chat template applied) with its sampling
settings. Our generator draws each prompt's tokens from that prompt's own seeded stream, so batched and sequential
runs must give the same text; the benchmark counts the prompts where they differ (numerical noise from padding can
flip a near-tie, rarely).
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


def faithfulness_prompts(tokenizer, n: int) -> list[str]:
    opts = prompt_options(())
    out = []
    for name in ("babi1", "rte"):
        for s in load_faithfulness_dataset(name, allow_hub=False).samples[: (n + 1) // 2]:
            out.append(render_chat(tokenizer, classify_prompt(s, s.paragraph, opts)))
    return out[:n]


def run(quick: bool = False, num_prompts: int = 48, batch_size: int = 16, max_new_tokens: int = 32) -> BenchResult:
    n = 4 if quick else num_prompts
    new = 4 if quick else max_new_tokens
    model, tok = load_model("smollm2-135m")
    prompts = faithfulness_prompts(tok, n)
    settings = GenerationSettings(max_new_tokens=new)
    batched = LocalGenerator(model, tok, model_id="bench", batch_size=batch_size)
    single = LocalGenerator(model, tok, model_id="bench", batch_size=1)
    batched.generate(prompts[:2], settings, progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as tmp, GenerationCache(Path(tmp) / "cache.sqlite") as cache:
        cached = CachedGenerator(batched, cache)
        t = time.perf_counter()
        a = cached.generate(prompts, settings, progress=False)  # generated and stored
        batched_s = time.perf_counter() - t
        t = time.perf_counter()
        again = CachedGenerator(batched, cache).generate(prompts, settings, progress=False)  # served from the cache
        rerun_s = time.perf_counter() - t
        assert [x.response for x in again] == [x.response for x in a]
    t = time.perf_counter()
    b = single.generate(prompts, settings, progress=False)
    single_s = time.perf_counter() - t
    differ = sum(x.response != y.response for x, y in zip(a, b))
    tokens = sum(len(tok(x.response or "", add_special_tokens=False)["input_ids"]) for x in a)
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    r = BenchResult("generation", f"Faithfulness generation, {n} classify prompts, up to {new} new tokens (SmolLM2-135M, fp32, CPU)",
                    "python -m benchmarks.bench_generation")
    r.rows.append(Row(f"batched (batch {batch_size}) vs one prompt at a time", f"{n / batched_s:.2f} prompts/s",
                      f"{n / single_s:.2f} prompts/s", single_s / batched_s, "> 1 (faster)", single_s > batched_s))
    r.rows.append(Row("fully cached rerun vs generating (same prompts)", f"{rerun_s * 1000:.1f} ms", f"{batched_s:.1f} s",
                      batched_s / rerun_s, "report", None))
    r.rows.append(Row("prompts whose text differs between batched and sequential", str(differ), "0", 1.0, "0 (per-prompt RNG)",
                      differ == 0))
    r.data = {"batched_s": batched_s, "sequential_s": single_s, "cached_rerun_s": rerun_s, "prompts": n, "prompt_tokens": prompt_tokens,
              "generated_tokens": tokens, "batch_size": batch_size, "max_new_tokens": new, "differing_texts": differ}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_prompts=(int, 48), batch_size=(int, 16), max_new_tokens=(int, 32))


if __name__ == "__main__":
    main()
