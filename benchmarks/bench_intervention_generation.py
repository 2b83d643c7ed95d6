"""Cost of steering during generation: tokens/s of the plain model, our runtime intervention, pyvene's additive
intervention on the same heads, and the baked model; greedy, exactly ``new_tokens`` new tokens, batch 1 and 8.

Correctness beside speed: the baked model, our intervention with ``positions="all"`` and pyvene's (which shifts the
prompt too) must produce the same tokens.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from iti import Intervention, load_model, load_truthfulqa, model_layout
from iti.bake import bake
from iti.batching import pad_batch, pad_token_id
from iti.truthfulqa.prompts import generation_prompt

from .common import BenchResult, Row, bench_main, pyvene_component, skipped_row, time_interleaved


def seeded_intervention(model, num_heads: int = 48, alpha: float = 5.0, seed: int = 0) -> Intervention:
    """K random heads and directions: the cost of a shift does not depend on which heads or which direction."""
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    flat = rng.choice(g.num_layers * g.num_heads, size=num_heads, replace=False)
    heads = [(int(i) // g.num_heads, int(i) % g.num_heads) for i in flat]
    d = rng.normal(size=(num_heads, g.head_dim))
    return Intervention(heads, d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(num_heads), alpha, "smollm2-135m", g)


def _pyvene_model(model, inter: Intervention):
    import pyvene as pv

    paths = model_layout(model).head_out_paths
    config = []
    for layer, vec in inter.layer_shifts().items():
        shift = torch.from_numpy(vec)

        def add(base, source=None, subspaces=None, shift=shift):
            return base + shift.to(base.dtype)
        config.append({"component": pyvene_component(paths[layer]), "intervention": add})
    return pv.IntervenableModel(config, model)


def run(quick: bool = False, new_tokens: int = 64, repeats: int = 3, batch_sizes: str = "1,8") -> BenchResult:
    if quick:  # the TruthfulQA primer makes each prompt ~400 tokens: the prefill dominates, so keep batches small
        new_tokens, repeats, batch_sizes = 4, 1, "1,2"
    model, tok = load_model("smollm2-135m")
    inter = seeded_intervention(model)
    baked = copy.deepcopy(model)
    bake(baked, inter)
    try:
        pyvene_model = _pyvene_model(model, inter)
        missing = None
    except ImportError as e:  # the peer is not installed: its rows say so instead of a number
        pyvene_model, missing = None, e.name or "pyvene"
    tqa = load_truthfulqa(allow_hub=False)
    pad = pad_token_id(tok)
    r = BenchResult("intervention_generation", f"Steering cost in generation ({new_tokens} new tokens, SmolLM2-135M, fp32, CPU)",
                    "python -m benchmarks.bench_intervention_generation")
    data: dict = {"new_tokens": new_tokens, "heads": len(inter.heads), "alpha": inter.alpha}
    for bs in [int(b) for b in batch_sizes.split(",")]:
        prompts = [generation_prompt(tqa.refs[q].question) for q in range(bs)]
        ids, mask = pad_batch(tok(prompts)["input_ids"], pad, padding_side="left")
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=pad)

        def gen(m=model):
            with torch.inference_mode():
                return m.generate(**kw)[:, ids.shape[1]:]

        def ours(positions="last"):
            with torch.inference_mode(), inter.applied(model, positions=positions):
                return model.generate(**kw)[:, ids.shape[1]:]

        def pyvene():
            with torch.inference_mode():
                return pyvene_model.generate({"input_ids": ids, "attention_mask": mask}, intervene_on_prompt=True,
                                             **{k: v for k, v in kw.items() if k not in ("input_ids", "attention_mask")})[1][:, ids.shape[1]:]

        fns = {"plain": gen, "ours": ours, "baked": lambda: gen(baked)}
        if pyvene_model is not None:
            fns["pyvene"] = pyvene
        reference = gen(baked)
        same = {"ours_all_equals_baked": bool(torch.equal(ours("all"), reference))}
        if pyvene_model is not None:
            same["pyvene_equals_baked"] = bool(torch.equal(pyvene(), reference))
        t = time_interleaved(fns, repeats)
        tokens = bs * new_tokens
        tps = {k: tokens / v["median"] for k, v in t.items()}
        base = t["plain"]["median"]
        slow = t["ours"]["median"] / base - 1
        r.rows.append(Row(f"batch {bs}: runtime intervention ({len(inter.heads)} heads) vs plain", f"{tps['ours']:.1f} tok/s",
                          f"{tps['plain']:.1f} tok/s", base / t["ours"]["median"], "<= 3% slower", slow <= 0.03))
        spread = (t["plain"]["max"] - t["plain"]["min"]) / base
        r.rows.append(Row(f"batch {bs}: baked model vs plain (plain's own min-max spread {spread:.1%})",
                          f"{tps['baked']:.1f} tok/s", f"{tps['plain']:.1f} tok/s", base / t["baked"]["median"],
                          "within noise", abs(t["baked"]["median"] / base - 1) <= max(spread, 0.03)))
        if "pyvene" in t:
            r.rows.append(Row(f"batch {bs}: ours vs pyvene's additive intervention", f"{tps['ours']:.1f} tok/s",
                              f"{tps['pyvene']:.1f} tok/s (pyvene)", t["pyvene"]["median"] / t["ours"]["median"], "report", None))
        else:
            r.rows.append(skipped_row(f"batch {bs}: ours vs pyvene's additive intervention", missing))
        data[f"batch_{bs}"] = {"timings_s": t, "tokens_per_s": tps, "same_tokens": same}
    r.data = data
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, new_tokens=(int, 64), repeats=(int, 3), batch_sizes=(str, "1,8"))


if __name__ == "__main__":
    main()
