"""Collection throughput: batched, length-sorted collection vs one prompt per forward pass.

The baseline re-creates honest_llama's get_activations loop: one prompt per forward, the full model with
``output_hidden_states=True`` and logits at every position, the o_proj inputs of all positions retained by hooks
(as baukit's TraceDict does) and the last position taken afterwards. Our own pipeline at batch size 1 is shown
too, so the gain from batching alone is visible.
"""
from __future__ import annotations

import time

import torch

from iti import build_prompt_set, collect_head_activations, load_model, model_layout, module_hooks

from .common import BenchResult, Row, bench_main, stats


def honest_llama_style(model, tok, prompts) -> torch.Tensor:
    layout = model_layout(model)
    rows = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        captured: dict[int, torch.Tensor] = {}
        hooks = {path: (lambda m, a, i=i: captured.__setitem__(i, a[0].detach())) for i, path in enumerate(layout.head_out_paths)}
        with torch.no_grad(), module_hooks(model, pre=hooks):
            out = model(ids, output_hidden_states=True)
        torch.stack(out.hidden_states)[:, 0, -1].cpu().numpy()  # the layer-wise features it also saved
        heads = torch.stack([captured[i][0, -1] for i in range(len(captured))]).cpu()
        rows.append(heads.reshape(len(captured), layout.geometry.num_heads, layout.geometry.head_dim))
    return torch.stack(rows)


def run(num_prompts: int = 500, batch_sizes=(1, 4, 16, 64), repeats: int = 1, quick: bool = False) -> BenchResult:
    if quick:
        num_prompts, batch_sizes = 12, (1, 4)
    model, tok = load_model("smollm2-135m")
    prompts = build_prompt_set("tqa_mc2").prompts[:num_prompts]
    variants = {f"batch {b}": (lambda b=b: collect_head_activations(model, tok, prompts, batch_size=b, progress=False).heads) for b in batch_sizes}
    variants["honest_llama"] = lambda: honest_llama_style(model, tok, prompts)
    timings: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    for r in range(repeats):
        order = list(variants)
        for name in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            outputs[name] = variants[name]()
            timings[name].append(time.perf_counter() - t)
    ref = outputs["honest_llama"]
    max_diff = {k: float((v - ref).abs().max()) for k, v in outputs.items()}
    s = {k: stats(v) for k, v in timings.items()}
    rate = {k: num_prompts / s[k]["median"] for k in variants}
    result = BenchResult("collection", f"Collection throughput (SmolLM2-135M, {num_prompts} tqa_mc2 prompts, fp32, CPU)",
                         "python -m benchmarks.bench_collection")
    best = max((k for k in variants if k.startswith("batch") and k != "batch 1"), key=lambda k: rate[k])
    base = rate["honest_llama"]
    result.rows.append(Row(f"ours, {best}, vs honest_llama's loop (one prompt per forward)", f"{rate[best]:.1f} prompts/s",
                           f"{base:.1f} prompts/s", rate[best] / base, ">= 4x", rate[best] / base >= 4))
    for k in variants:
        if k.startswith("batch"):
            result.rows.append(Row(f"ours, {k}", f"{rate[k]:.1f} prompts/s", f"{base:.1f} prompts/s (honest_llama loop)", rate[k] / base,
                                   f"same activations (max abs diff {max_diff[k]:.1e} < 1e-4)", max_diff[k] < 1e-4))
    result.data = {"num_prompts": num_prompts, "timings_s": s, "prompts_per_s": rate, "max_abs_diff_vs_honest_llama": max_diff}
    return result


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_prompts=(int, 500))


if __name__ == "__main__":
    main()
