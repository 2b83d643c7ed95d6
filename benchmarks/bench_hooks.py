"""Hook overhead: a forward pass that captures every head (last token) vs a plain forward, same batch; beside it
the same capture (every layer's o_proj input, then each row's last token) with pyvene and with nnsight."""
from __future__ import annotations

import torch

from iti import HeadTrace, build_prompt_set, load_model, model_layout
from iti.batching import batch_inputs, encode_prompts, forward_kwargs, pad_token_id, plan_batches

from .common import BenchResult, Row, bench_main, pyvene_component, skipped_row, time_interleaved


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

    last = inputs["attention_mask"].sum(1) - 1
    rows = torch.arange(len(last))
    paths = model_layout(model).head_out_paths
    with torch.inference_mode(), HeadTrace(model, attention_mask=inputs["attention_mask"]) as trace:
        model(**inputs, **kwargs)
        reference = trace.stacked_heads().flatten(2)  # [batch, layers, heads * head_dim]
    fns = {"plain": plain, "heads": hooked(False), "heads+residual": hooked(True)}
    peers, checks = {}, {}
    for name, make in (("pyvene", _pyvene_capture), ("nnsight", _nnsight_capture)):
        try:
            fn = make(model, tok, paths, inputs, rows, last)
        except ImportError as e:  # the peer is not installed: its row says so instead of a number
            peers[name] = e.name or name
            continue
        with torch.inference_mode():
            checks[name] = float((fn() - reference).abs().max())
        fns[name] = fn
    t = time_interleaved(fns, repeats)
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
    for name in ("pyvene", "nnsight"):
        if name in t:
            theirs = t[name]["median"]
            result.rows.append(Row(
                f"{name}: the same capture (max abs diff vs ours {checks[name]:.1e})", f"{t['heads']['median'] * 1000:.1f} ms (ours)",
                f"{theirs * 1000:.1f} ms ({name}, overhead {theirs / base - 1:+.1%})", theirs / t["heads"]["median"],
                "report", None))
        else:
            result.rows.append(skipped_row(f"{name}: the same capture", peers[name]))
    result.data = {"timings_s": t, "batch_size": len(idx), "tokens": tokens, "overhead": {k: t[k]["median"] / base - 1 for k in t},
                   "max_abs_diff_vs_ours": checks, "peers": peers}
    return result


def _pyvene_capture(model, tok, paths, inputs, rows, last):
    """pyvene's IntervenableModel with one collecting intervention per layer on the o_proj input."""
    import pyvene as pv

    store: dict[int, torch.Tensor] = {}

    def collector(layer: int):
        def collect(base, source=None, subspaces=None):
            store[layer] = base
            return base
        return collect

    components = [pyvene_component(p) for p in paths]
    wrapped = pv.IntervenableModel([{"component": c, "intervention": collector(l)} for l, c in enumerate(components)], model)

    def fn():
        with torch.inference_mode():
            wrapped({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
            return torch.stack([store[l][rows, last].cpu() for l in range(len(paths))], 1)  # on the CPU, as ours
    return fn


def _nnsight_capture(model, tok, paths, inputs, rows, last):
    """nnsight's trace, saving every layer's o_proj input."""
    try:  # nnsight >= 0.6 deprecates LanguageModel in favour of TransformersModel
        from nnsight.modeling.transformers import TransformersModel

        wrapped = TransformersModel(model, task="text-generation", tokenizer=tok)
    except ImportError:
        import nnsight

        wrapped = nnsight.LanguageModel(model, tokenizer=tok)

    def module(path: str):
        m = wrapped
        for part in path.split("."):
            m = m[int(part)] if part.isdigit() else getattr(m, part)
        return m

    def fn():
        saved = []
        with torch.inference_mode(), wrapped.trace({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}):
            for p in paths:
                saved.append(module(p).input.save())
        return torch.stack([x[rows, last].cpu() for x in saved], 1)  # on the CPU, as ours
    return fn


def main(argv=None) -> None:
    bench_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
