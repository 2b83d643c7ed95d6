"""bfloat16 vs float32 on the CPU, SmolLM2-135M, one process, same inputs: is bf16 faster here, and does ITI still
pick the same heads and score MC the same?

Speed: collection, MC scoring and greedy generation, each in both dtypes (ratio = fp32 time / bf16 time). Accuracy:
the largest feature difference, per-head probe accuracies (probes fitted on the fp32 features and on the bf16
features of the same prompts, same question split), the top-48 heads each picks, and MC1/MC2 on 100 questions.
The decision rule (:mod:`iti.hardware`): ``--dtype auto`` may pick bf16 on a CPU with native bf16 only if MC2 moves
by at most 0.005 and the top-48 heads overlap by at least 90%.
"""
from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
import torch

from iti import build_prompt_set, collect_head_activations, load_model, load_truthfulqa
from iti.batching import pad_batch, pad_token_id
from iti.directions import fit_head_probes, top_heads
from iti.hardware import cpu_bf16, cpu_flags
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import generation_prompt, mc_questions, shared_prefix

from .common import BenchResult, Row, bench_main, time_interleaved

#: the decision rule: bf16 may be the CPU's ``auto`` dtype only within these
MC2_TOLERANCE = 0.005
HEAD_OVERLAP_MIN = 0.9
TOP_HEADS = 48


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(quick: bool = False, num_questions: int = 100, probe_questions: int = 200, gen_prompts: int = 8,
        new_tokens: int = 32) -> BenchResult:
    if quick:
        num_questions, probe_questions, gen_prompts, new_tokens = 2, 4, 2, 4
    models = {"fp32": load_model("smollm2-135m", dtype="float32"), "bf16": load_model("smollm2-135m", dtype="bfloat16")}
    tok = models["fp32"][1]
    ps = build_prompt_set("tqa_mc2", max_questions=probe_questions)
    tqa = load_truthfulqa(allow_hub=False)
    qs = mc_questions(tqa, range(num_questions))
    gen = [generation_prompt(tqa.refs[q].question) for q in range(gen_prompts)]
    pad = pad_token_id(tok)
    ids, mask = pad_batch(tok(gen)["input_ids"], pad, padding_side="left")

    features: dict[str, np.ndarray] = {}
    scores: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, dict[str, float]] = {"collection": {}, "mc": {}}
    tokens: dict[str, torch.Tensor] = {}
    for name in ("fp32", "bf16"):  # one after the other, the same inputs, each after a warm-up of its own
        model = models[name][0]
        collect_head_activations(model, tok, ps.prompts[:2], progress=False)
        score_choices(model, tok, qs[:1], prefix=shared_prefix(), progress=False)
        heads, seconds["collection"][name] = _timed(lambda: collect_head_activations(model, tok, ps.prompts, progress=False).heads)
        features[name] = cast(torch.Tensor, heads).float().numpy()
        scores[name], seconds["mc"][name] = _timed(lambda: score_choices(model, tok, qs, prefix=shared_prefix(), progress=False))

    def generate(name: str):
        def fn():
            with torch.inference_mode():
                out = models[name][0].generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                               do_sample=False, pad_token_id=pad)
            tokens[name] = out[:, ids.shape[1]:]
        return fn

    gen_t = time_interleaved({k: generate(k) for k in models}, repeats=1 if quick else 2, warmup=0)
    seconds["generation"] = {k: v["median"] for k, v in gen_t.items()}

    ref, low = features["fp32"], features["bf16"]
    max_diff = float(np.abs(low - ref).max())
    scale = float(np.abs(ref).max())
    probes = {k: fit_head_probes(v, ps.labels, ps.question_ids, seed=42) for k, v in features.items()}
    acc_diff = np.abs(probes["bf16"].accuracies - probes["fp32"].accuracies)
    k = min(TOP_HEADS, ref.shape[1] * ref.shape[2])
    chosen = {name: set(top_heads(p.accuracies, k)) for name, p in probes.items()}
    overlap = len(chosen["fp32"] & chosen["bf16"]) / k
    mc = {name: mc_metrics(qs, s) for name, s in scores.items()}
    summary = {name: m.summary() for name, m in mc.items()}
    d_mc1 = abs(summary["bf16"]["MC1"] - summary["fp32"]["MC1"])
    d_mc2 = abs(summary["bf16"]["MC2"] - summary["fp32"]["MC2"])
    flips = int((mc["bf16"].mc1 != mc["fp32"].mc1).sum())
    score_diff = max(float(np.abs(a - b).max()) for a, b in zip(scores["bf16"], scores["fp32"]))
    same_tokens = float((tokens["bf16"] == tokens["fp32"]).float().mean())
    passes = d_mc2 <= MC2_TOLERANCE and overlap >= HEAD_OVERLAP_MIN
    support = cpu_bf16()

    r = BenchResult("bf16_cpu", f"bfloat16 vs float32 on the CPU (SmolLM2-135M; {support.flag or 'no native bf16'})",
                    "python -m benchmarks.bench_bf16")
    n_prompts, n_answers = len(ps.prompts), sum(len(q.continuations) for q in qs)
    for what, key, unit, n in (("collection", "collection", "prompts/s", n_prompts), ("MC scoring (shared prefix)", "mc", "answers/s", n_answers),
                               ("greedy generation", "generation", "tok/s", gen_prompts * new_tokens)):
        t32, t16 = seconds[key]["fp32"], seconds[key]["bf16"]
        r.rows.append(Row(f"{what}: bf16 vs fp32 ({n} {unit.split('/')[0]})", f"{n / t16:.1f} {unit}", f"{n / t32:.1f} {unit}",
                          t32 / t16, "report (> 1: bf16 faster)", None))
    r.rows.append(Row(f"largest |feature difference| ({n_prompts} prompts, last-token heads)", f"{max_diff:.3g} ({max_diff / scale:.1%} of max |x|)",
                      "0", 1.0, "report", None))
    r.rows.append(Row(f"probe validation accuracy, |bf16 - fp32| per head ({probe_questions} questions)",
                      f"mean {acc_diff.mean() * 100:.2f}, max {acc_diff.max() * 100:.1f} points",
                      f"fp32 mean accuracy {probes['fp32'].accuracies.mean():.3f}", 1.0, "report", None))
    r.rows.append(Row(f"top-{k} heads chosen by both", f"{overlap:.0%} ({len(chosen['fp32'] & chosen['bf16'])} of {k})", "100%", 1.0,
                      f">= {HEAD_OVERLAP_MIN:.0%}", overlap >= HEAD_OVERLAP_MIN))
    r.rows.append(Row(f"MC2, {num_questions} questions", f"{summary['bf16']['MC2']:.4f} (bf16)", f"{summary['fp32']['MC2']:.4f} (fp32)", 1.0,
                      f"|diff| <= {MC2_TOLERANCE}", d_mc2 <= MC2_TOLERANCE))
    r.rows.append(Row(f"MC1, {num_questions} questions ({flips} questions flip)", f"{summary['bf16']['MC1']:.4f} (bf16)",
                      f"{summary['fp32']['MC1']:.4f} (fp32)", 1.0, "report", None))
    verdict = ("yes" if passes else "no (keeps fp32)") + (" (quick run: too few questions to decide)" if quick else "")
    r.rows.append(Row("decision: --dtype auto may pick bf16 on this CPU", verdict,
                      f"MC2 diff {d_mc2:.4f}, overlap {overlap:.0%}", 1.0, "report", None))
    data: dict[str, Any] = {
        "seconds": seconds, "generation_timings_s": gen_t, "num_prompts": n_prompts, "num_answers": n_answers,
        "mc_questions": num_questions, "probe_questions": probe_questions, "gen_prompts": gen_prompts, "new_tokens": new_tokens,
        "max_abs_feature_diff": max_diff, "feature_scale": scale, "max_abs_score_diff": score_diff,
        "probe_acc_abs_diff": {"mean": float(acc_diff.mean()), "max": float(acc_diff.max())},
        "probe_acc_mean": {k: float(p.accuracies.mean()) for k, p in probes.items()},
        "top_heads": {k: sorted(v) for k, v in chosen.items()}, "head_overlap": overlap,
        "mc": summary, "mc1_flips": flips, "mc1_diff": d_mc1, "mc2_diff": d_mc2, "same_generated_tokens": same_tokens,
        "rule": {"mc2_tolerance": MC2_TOLERANCE, "head_overlap_min": HEAD_OVERLAP_MIN, "passes": passes},
        "cpu_bf16_flag": support.flag, "cpu_has_amx": any(f.startswith("amx") for f in cpu_flags()),
    }
    r.data = data
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, num_questions=(int, 100), probe_questions=(int, 200), gen_prompts=(int, 8), new_tokens=(int, 32))


if __name__ == "__main__":
    main()
