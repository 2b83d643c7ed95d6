"""Hook overhead: a forward pass that captures every head (last token) vs a plain forward, same batch."""
from __future__ import annotations


import torch

from iti import HeadTrace, build_prompt_set, load_model
from iti.collect import batch_inputs, encode_prompts, forward_kwargs, pad_token_id, plan_batches

from .common import BenchResult, Row, bench_main, time_interleaved


def run(batch_size: int = 32, repeats: int = 30, quick: bool = False) -> BenchResult:
    if quick:
        batch_size, repeats = 4, 2
    model, tok = load_model("smollm2-135m")
    ps = build_prompt_set("tqa_mc2", max_questions=60)
    encoded = encode_prompts(tok, ps.prompts)
    # A typical batch of the collection: the median-length batch of the length-sorted plan.
    plan = plan_batches([len(e) for e in encoded], batch_size)
    idx = plan[len(plan) // 2]
    inputs = batch_inputs([encoded[i] for i in idx], pad_token_id(tok), torch.device("cpu"))
    kwargs = forward_kwargs(model)

    def plain():
        with torch.inference_mode():
            model(**inputs, **kwargs)

    def hooked(residual: bool):
        def fn():
            with torch.inference_mode(), HeadTrace(model, attention_mask=inputs["attention_mask"], residual=residual) as trace:
                model(**inputs, **kwargs)
                trace.stacked_heads()
        return fn

    t = time_interleaved({"plain": plain, "heads": hooked(False), "heads+residual": hooked(True)}, repeats)
    tokens = int(inputs["attention_mask"].sum())
    result = BenchResult("hook_overhead", "Hook overhead (SmolLM2-135M, fp32, CPU)", "python -m benchmarks.bench_hooks")
    base = t["plain"]["median"]
    for name in ("heads", "heads+residual"):
        ours = t[name]["median"]
        overhead = ours / base - 1
        result.rows.append(Row(
            f"forward capturing {name} of all 270 heads, batch {len(idx)} ({tokens} tokens)",
            f"{ours * 1000:.1f} ms", f"{base * 1000:.1f} ms (plain forward)", base / ours,
            "overhead <= 5%", overhead <= 0.05,
        ))
    result.data = {"timings_s": t, "batch_size": len(idx), "tokens": tokens, "overhead": {k: t[k]["median"] / base - 1 for k in t}}
    return result


def main(argv=None) -> None:
    bench_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
