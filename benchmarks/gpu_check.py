"""``make gpu-check``: the library on a CUDA GPU, every dtype and a model split over two devices, checked against the
CPU fp32 run of the same model, inputs and intervention, in one command (under 6 minutes on one GPU, and about 3
more for the vLLM stage).

Cases, GPU mode (SmolLM2-135M, and Gemma 3 270M when its package is installed):

- ``cuda``: fp32, fp16 and bf16 on cuda:0. Gemma 3 runs fp32 and bf16 only: its activations overflow fp16 (NaN
  logits, seen on the CPU too), which is why it is published in bf16.
- ``split`` (fp32): a ``device_map`` with the first half of the decoder layers on cuda:0 and the rest, the final
  norm and the output head on the CPU (with tied embeddings the input embedding goes with the output head), applied
  with accelerate's ``dispatch_model(main_device="cpu")`` so the CPU half really runs there, as the layers on a
  second GPU would: activations, KV cache layers and logits live on different devices (what multi-GPU users hit).
- ``offload`` (SmolLM2, fp16): the same map given to ``from_pretrained``, which (with a GPU present) *offloads* the
  CPU half: its weights wait on the meta device and are brought to cuda:0 for each pass, as ``device_map="auto"``
  does when a model does not fit. Baking must refuse such a model (``OffloadedWeightsError``).

Checks per case (a row each; any failing row makes the command exit 1, after the results are written):

(a) collection: last-token head outputs of TruthfulQA prompts, ``max |x - ref| / max |ref|`` against CPU fp32, at
    most 1e-3 (fp32), 3e-2 (fp16), 1e-1 (bf16). On the CPU, SmolLM2 measured 0.6% in fp16 (12 prompts) and, in bf16,
    2.6% (12 prompts) and 4.9% over 1,476 prompts (``bench_bf16``); a wrong device or dtype path is off by far more.
(b) intervened greedy generation with the KV cache == without it, token for token; where two runs part, the step must
    be a near-tie: in both runs the two tokens' logits lie within the case's logit noise (below, at least 1e-3),
    since a cached and an uncached pass round differently and may flip a tie.
(c) the baked model (``o_proj.bias += W_o s``) == the runtime intervention at ``positions="all"``, max |logit
    difference| over real tokens at most 1e-2 in fp32 and at most 3x the case's logit noise in fp16/bf16. Why fp16
    allows that much: the runtime hook rounds ``x + s`` to fp16 before the product (10-bit mantissa: a relative error up
    to 2^-11 per element, and ``s`` is small next to ``x``) while the baked model adds ``W_o s``, rounded once, after
    it; those roundings differ at every intervened layer and pass through every later one, so the two models differ
    by about as much as fp16 differs from fp32 altogether (SmolLM2 on the CPU: 0.79 logits apart, fp16 vs fp32 1.10;
    bf16: 10.6 vs 6.1; Gemma 3 bf16: 6.1 vs 4.8).
(d) MC1 and MC2 on 50 questions (plain, and with the intervention) within 0.005 of the CPU fp32 run.
(e) throughput ratios, reported: batched vs batch-1 collection, shared-prefix MC scoring vs one forward per answer,
    batched vs sequential generation, hook overhead vs a plain forward, pyvene and nnsight capturing the same heads vs
    ours; and peak GPU memory (``torch.cuda.max_memory_allocated``) against the weights. On the split and offloaded
    models only collection, hooks and the peers are timed: MC and generation timings would measure the CPU half or PCIe.

The logit noise of a case is the largest |logit difference| between its runtime-intervened forward and CPU fp32's on
the same prompts (a row of its own). A case that fails to run is a failed row with the error, not a crash. Cases
left when ``--budget-s`` is spent are listed as not run (printed; not failures).

Then, in GPU mode, the vLLM stage (``benchmarks/gpu_vllm_plugin.py``; ``--no-vllm`` leaves it out): iti's vLLM plugin
against stock vLLM on the same GPU (the plugin unused gives stock's tokens, steering changes them, output tokens/s at
1 and 16 concurrent requests unused / steered / half steered, and the price of eager mode against CUDA graphs). It
needs a CUDA vllm==0.32.0 (``--vllm-python`` or ``ITI_VLLM_PYTHON``); without one it is a row that says so. About
3 minutes more.

CPU mode (no CUDA, or ``--mode cpu``): the same code on fp32 and bf16 on the CPU with a few prompts and questions, a
smoke run (about a minute) that a default test runs so this script cannot rot; it writes to a temporary directory.
GPU mode writes ``benchmarks/results/gpu_check.json`` and ``gpu_check.md``.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from iti import HeadTrace, Intervention, build_prompt_set, collect_head_activations, load_model, load_truthfulqa, model_layout
from iti.architectures import model_device
from iti.bake import bake
from iti.batching import batch_inputs, encode_prompts, forward_kwargs, pad_batch, pad_token_id
from iti.errors import OffloadedWeightsError, UnsupportedArchitectureError
from iti.models import EMBEDDED
from iti.truthfulqa.mc_scoring import mc_metrics, score_choices
from iti.truthfulqa.prompts import generation_prompt, mc_questions, shared_prefix

from .bench_hooks import _nnsight_capture, _pyvene_capture
from .common import RESULTS_DIR, BenchResult, Row, error_row, machine_info, markdown_table, quick_results_dir, time_interleaved

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: (a): largest |feature difference| as a fraction of the largest |feature|, per dtype
FEATURE_TOL = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 1e-1}
#: (c): baked vs runtime, absolute in fp32; in fp16/bf16 this many times the case's logit noise
BAKE_TOL_FP32 = 1e-2
BAKE_NOISE_FACTOR = 3.0
#: (b): smallest near-tie tolerance (logits)
TIE_TOL_MIN = 1e-3
#: (d)
MC_TOL = 0.005


@dataclass(frozen=True)
class Sizes:
    """How much each check runs on."""

    prompts: int  # (a) collection, and the first ``logit_prompts`` of them for (c) and the noise
    logit_prompts: int
    mc_questions: int  # (d)
    mc_slow_questions: int  # (e) one forward per answer
    check_gen_prompts: int  # (b)
    check_gen_tokens: int
    gen_prompts: int  # (e) batched vs sequential
    gen_tokens: int
    hook_batch: int  # (e) hook overhead
    repeats: int
    warmup: int
    primer: bool  # generation prompts with TruthfulQA's instruction and primer (~400 tokens), else the bare question


GPU_SIZES = Sizes(40, 4, 50, 10, 4, 16, 8, 16, 32, 3, 1, True)
CPU_SIZES = Sizes(6, 2, 3, 1, 2, 4, 2, 4, 4, 1, 0, False)


@dataclass(frozen=True)
class Case:
    """One way of running the model: where (``cuda``, ``cpu``, ``split``, ``offload``) and in which dtype."""

    where: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.dtype} {self.where}"

    @property
    def uses_cuda(self) -> bool:
        return self.where != "cpu"


def cases_for(model_name: str, gpu: bool) -> tuple[list[Case], list[str]]:
    """The cases of one model, and the ones left out on purpose with the reason."""
    if not gpu:
        return [Case("cpu", "fp32"), Case("cpu", "bf16")], []
    if model_name.startswith("gemma3"):
        return ([Case("cuda", "fp32"), Case("cuda", "bf16"), Case("split", "fp32")],
                ["fp16: Gemma 3's activations overflow float16 (NaN logits); it is meant for bf16"])
    return [Case("cuda", "fp32"), Case("cuda", "fp16"), Case("cuda", "bf16"), Case("split", "fp32"), Case("offload", "fp16")], []


@dataclass
class Inputs:
    """What every case of one model runs on: prompts, questions and the intervention."""

    prompts: list[str]
    questions: list[Any]
    gen_prompts: list[str]
    intervention: Intervention
    device_map: dict[str, int | str]


@dataclass
class Reference:
    """The CPU fp32 results every case is held against."""

    features: torch.Tensor  # [N, L, H, D]
    logits: torch.Tensor  # [B, S, V] runtime-intervened, positions="all"
    mask: torch.Tensor  # [B, S] real tokens of ``logits``
    mc: dict[str, dict[str, float]]  # "plain" / "intervened" -> MC1, MC2, MC3


@dataclass
class Report:
    """Rows of every case, the failures among them, and what was not run."""

    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        mark = {True: "ok  ", False: "FAIL", None: "    "}[row.met]
        print(f"[gpu-check] {mark} {row.what}: {row.ours} (vs {row.baseline}; {row.goal})", flush=True)

    def attempt(self, what: str, fn: Callable[[], None], *, ours: bool = True) -> None:
        """Run one check; an exception becomes an error row (a failure when it is our code, a report for a peer's)."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any failure of a check is recorded, never a crash
            self.add(error_row(what, e, met=False if ours else None))
            self.data.setdefault("tracebacks", {})[what] = traceback.format_exc()

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.met is False]


def seeded_intervention(model: torch.nn.Module, name: str, num_heads: int = 48, alpha: float = 5.0, seed: int = 0) -> Intervention:
    """Random heads and unit directions, seeded: equality checks need a shift, not a good one."""
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    flat = rng.choice(g.num_total_heads, size=min(num_heads, g.num_total_heads), replace=False)
    heads = [(int(i) // g.num_heads, int(i) % g.num_heads) for i in flat]
    d = rng.normal(size=(len(heads), g.head_dim))
    return Intervention(heads, d / np.linalg.norm(d, axis=1, keepdims=True), np.ones(len(heads)), alpha, name, g)


def split_device_map(model: torch.nn.Module, gpu: int | str = 0) -> dict[str, int | str]:
    """First half of the decoder layers on ``gpu``; the rest, the final norm and the output head on the CPU, and the
    input embedding with the output head when the two are tied (accelerate re-ties them onto one device)."""
    layout = model_layout(model)
    layers_path = layout.layer_paths[0].rsplit(".", 1)[0]
    base_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    base = model.get_submodule(base_path)
    mapping: dict[str, int | str] = {}
    for name, _ in base.named_children():
        full = f"{base_path}.{name}" if base_path else name
        if full != layers_path:
            mapping[full] = "cpu" if "norm" in name else gpu
    half = layout.geometry.num_layers // 2
    for i, path in enumerate(layout.layer_paths):
        mapping[path] = gpu if i < half else "cpu"
    named = {id(m): n for n, m in model.named_modules()}
    m = cast(Any, model)
    head, embed = m.get_output_embeddings(), m.get_input_embeddings()
    for name, _ in model.named_children() if base_path else ():  # anything beside the base model (the output head)
        if name != base_path.split(".")[0]:
            mapping[name] = "cpu"
    if head is not None and head.weight is embed.weight:
        mapping[named[id(embed)]] = "cpu"
    missing = [n for n, _ in model.named_parameters() if not any(n == k or n.startswith(k + ".") for k in mapping)]
    if missing:
        raise UnsupportedArchitectureError(f"the split device map places no module holding {missing[:3]}")
    return mapping


def load_case(name: str, case: Case, device_map: dict[str, int | str]) -> tuple[torch.nn.Module, Any]:
    dtype = DTYPES[case.dtype]
    if case.where == "cuda":
        return load_model(name, device_map={"": "cuda:0"}, dtype=dtype)
    if case.where == "cpu":
        return load_model(name, device_map="cpu", dtype=dtype)
    if case.where == "offload":
        return load_model(name, device_map=device_map, dtype=dtype)
    from accelerate import dispatch_model

    model, tok = load_model(name, device_map="cpu", dtype=dtype)
    model = dispatch_model(model, device_map=device_map, main_device="cpu")
    cast(Any, model).hf_device_map = dict(device_map)
    return model, tok


def runtime_logits(model, tok, prompts: list[str], inter: Intervention) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, S, V] (float32, CPU) of right-padded prompts with the intervention at every position, and the mask."""
    ids, mask = pad_batch(tok(prompts)["input_ids"], pad_token_id(tok))
    dev = model_device(model)
    with torch.inference_mode(), inter.applied(model, positions="all"):
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
    return logits.float().cpu(), mask.bool()


def max_logit_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[mask].abs().max())


def reference(name: str, sizes: Sizes, gpu: bool) -> tuple[Inputs, Reference]:
    model, tok = load_model(name, device_map="cpu" if gpu else None, dtype=torch.float32)
    prompts = build_prompt_set("tqa_mc2", max_questions=max(2, sizes.prompts // 5)).prompts[: sizes.prompts]
    tqa = load_truthfulqa(allow_hub=False)
    qs = mc_questions(tqa, range(sizes.mc_questions))
    n_gen = max(sizes.gen_prompts, sizes.check_gen_prompts)
    questions = [tqa.refs[q].question for q in range(n_gen)]
    gen = [generation_prompt(q) if sizes.primer else f"Q: {q}\nA:" for q in questions]
    inputs = Inputs(prompts, qs, gen,
                    seeded_intervention(model, name), split_device_map(model) if gpu else {})
    features = cast(torch.Tensor, collect_head_activations(model, tok, prompts, progress=False).heads)
    logits, mask = runtime_logits(model, tok, prompts[: sizes.logit_prompts], inputs.intervention)
    mc = {"plain": mc_metrics(qs, score_choices(model, tok, qs, prefix=shared_prefix(), progress=False)).summary(),
          "intervened": mc_metrics(qs, score_choices(model, tok, qs, prefix=shared_prefix(), intervention=inputs.intervention,
                                                     progress=False)).summary()}
    del model
    gc.collect()
    return inputs, Reference(features, logits, mask, mc)


class CaseRun:
    """The checks of one case, in an order that leaves the model unchanged until (c) bakes it in place."""

    def __init__(self, report: Report, name: str, case: Case, sizes: Sizes, inputs: Inputs, ref: Reference):
        self.report, self.name, self.case, self.sizes, self.inputs, self.ref = report, name, case, sizes, inputs, ref
        self.prefix = f"{name} {case.label}"
        self.sync: Callable[[], None] = torch.cuda.synchronize if case.uses_cuda else (lambda: None)
        self.noise = float("nan")
        self.runtime: torch.Tensor | None = None

    def row(self, check: str, ours: str, baseline: str, goal: str, met: bool | None, ratio: float = 1.0) -> None:
        self.report.add(Row(f"{self.prefix}: {check}", ours, baseline, ratio, goal, met))

    def timed(self, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
        """Median seconds of each, interleaved, with the GPU synchronised around every call."""
        def synced(fn):
            def run():
                self.sync()
                out = fn()
                self.sync()
                return out
            return run

        t = time_interleaved({k: synced(f) for k, f in fns.items()}, self.sizes.repeats, warmup=self.sizes.warmup)
        return {k: v["median"] for k, v in t.items()}

    def run(self) -> None:
        if self.case.uses_cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        self.model, self.tok = load_case(self.name, self.case, self.inputs.device_map)
        self.report.data.setdefault("load_s", {})[self.prefix] = time.perf_counter() - t
        a = self.report.attempt
        a(f"{self.prefix}: (a) collection vs CPU fp32", self.collection)
        a(f"{self.prefix}: logit noise vs CPU fp32", self.logit_noise)
        a(f"{self.prefix}: (b) cached == uncached intervened generation", self.cached_generation)
        a(f"{self.prefix}: (d) MC vs CPU fp32", self.mc)
        a(f"{self.prefix}: (e) collection batched vs batch 1", self.collection_speed)
        if self.case.where in ("cuda", "cpu"):  # on a split or offloaded model these would time the CPU half or PCIe
            a(f"{self.prefix}: (e) MC shared prefix vs one forward per answer", self.mc_speed)
            a(f"{self.prefix}: (e) generation batched vs sequential", self.generation_speed)
        a(f"{self.prefix}: (e) hook overhead", self.hook_overhead)
        a(f"{self.prefix}: (c) baked == runtime", self.baked)
        # after baking: the peers capture the baked model, compared with our capture of the same model
        a(f"{self.prefix}: (e) peer captures", self.peers)
        a(f"{self.prefix}: peak memory", self.memory)

    # --- correctness -----------------------------------------------------------------------------------------
    def collection(self) -> None:
        heads = cast(torch.Tensor, collect_head_activations(self.model, self.tok, self.inputs.prompts, progress=False).heads)
        ref = self.ref.features
        err = float((heads.float() - ref).abs().max() / ref.abs().max())
        tol = FEATURE_TOL[self.case.dtype]
        self.row("(a) collection vs CPU fp32", f"max |diff| / max |ref| = {err:.2e} ({len(heads)} prompts)", f"tolerance {tol:.0e}",
                 f"<= {tol:.0e} ({self.case.dtype})", err <= tol)

    def logit_noise(self) -> None:
        self.runtime, mask = runtime_logits(self.model, self.tok, self.inputs.prompts[: self.sizes.logit_prompts], self.inputs.intervention)
        self.noise = max_logit_diff(self.runtime, self.ref.logits, mask)
        agree = float((self.runtime.argmax(-1) == self.ref.logits.argmax(-1))[mask].float().mean())
        self.row("logit noise: runtime intervention vs CPU fp32", f"max |diff| {self.noise:.3g} logits, argmax agrees {agree:.1%}",
                 "CPU fp32", "report (sets (b) and (c))", None if np.isfinite(self.noise) else False)

    def cached_generation(self) -> None:
        tok, model, sizes = self.tok, self.model, self.sizes
        pad = pad_token_id(tok)
        ids, mask = pad_batch(tok(self.inputs.gen_prompts[: sizes.check_gen_prompts])["input_ids"], pad, padding_side="left")
        dev = model_device(model)
        kw = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=sizes.check_gen_tokens,
                  min_new_tokens=sizes.check_gen_tokens, do_sample=False, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
        runs = {}
        for use_cache in (True, False):
            with torch.inference_mode(), self.inputs.intervention.applied(model, positions="last"):
                out = model.generate(**kw, use_cache=use_cache)
            runs[use_cache] = (out.sequences[:, ids.shape[1]:].cpu(), torch.stack(out.logits, 1).float().cpu())
        (ta, la), (tb, lb) = runs[True], runs[False]
        tie_tol = max(self.noise if np.isfinite(self.noise) else TIE_TOL_MIN, TIE_TOL_MIN)
        notes, ok = [], True
        for r in range(len(ta)):
            differ = (ta[r] != tb[r]).nonzero().reshape(-1)
            if len(differ) == 0:
                continue
            k = int(differ[0])
            x, y = int(ta[r, k]), int(tb[r, k])
            gap = max(float(la[r, k, x] - la[r, k, y]), float(lb[r, k, y] - lb[r, k, x]))
            ok &= gap <= tie_tol
            notes.append(f"row {r} parts at step {k}, top-2 gap {gap:.2g}")
        same = sum(bool(torch.equal(ta[r], tb[r])) for r in range(len(ta)))
        ours = f"{same}/{len(ta)} rows equal ({sizes.check_gen_tokens} tokens)" + (f"; {'; '.join(notes)}" if notes else "")
        self.row("(b) cached == uncached intervened greedy generation", ours, "uncached", f"equal, or parts at a near-tie (<= {tie_tol:.2g})", ok)

    def mc(self) -> None:
        qs = self.inputs.questions
        for kind in ("plain", "intervened"):
            inter = self.inputs.intervention if kind == "intervened" else None
            got = mc_metrics(qs, score_choices(self.model, self.tok, qs, prefix=shared_prefix(), intervention=inter, progress=False)).summary()
            ref = self.ref.mc[kind]
            d1, d2 = abs(got["MC1"] - ref["MC1"]), abs(got["MC2"] - ref["MC2"])
            self.row(f"(d) MC1/MC2 vs CPU fp32, {kind}, {len(qs)} questions", f"MC1 {got['MC1']:.4f}, MC2 {got['MC2']:.4f}",
                     f"MC1 {ref['MC1']:.4f}, MC2 {ref['MC2']:.4f}", f"both within {MC_TOL}", d1 <= MC_TOL and d2 <= MC_TOL)

    def baked(self) -> None:
        if self.case.where == "offload":  # the weights are not there to change: baking must say so
            try:
                bake(self.model, self.inputs.intervention)
            except OffloadedWeightsError as e:
                self.row("(c) bake refuses offloaded weights", f"OffloadedWeightsError: {str(e)[:80]}...", "-", "refused", True)
                return
            self.row("(c) bake refuses offloaded weights", "baked without a word", "-", "refused", False)
            return
        assert self.runtime is not None, "the logit noise check did not run"
        bake(self.model, self.inputs.intervention)
        prompts = self.inputs.prompts[: self.sizes.logit_prompts]
        ids, mask = pad_batch(self.tok(prompts)["input_ids"], pad_token_id(self.tok))
        dev = model_device(self.model)
        with torch.inference_mode():
            baked = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float().cpu()
        diff = max_logit_diff(baked, self.runtime, mask.bool())
        tol = BAKE_TOL_FP32 if self.case.dtype == "fp32" else BAKE_NOISE_FACTOR * self.noise
        rule = f"{BAKE_TOL_FP32}" if self.case.dtype == "fp32" else f"{BAKE_NOISE_FACTOR:g} x noise = {tol:.3g}"
        self.row("(c) baked == runtime (positions='all')", f"max |logit diff| {diff:.3g}", f"noise {self.noise:.3g}", f"<= {rule}", diff <= tol)

    # --- throughput ------------------------------------------------------------------------------------------
    def collection_speed(self) -> None:
        p = self.inputs.prompts
        t = self.timed({f"batch {b}": (lambda b=b: collect_head_activations(self.model, self.tok, p, batch_size=b, progress=False))
                        for b in (16, 1)})
        n = len(p)
        self.row("(e) collection, batch 16 vs batch 1", f"{n / t['batch 16']:.1f} prompts/s", f"{n / t['batch 1']:.1f} prompts/s",
                 "report", None, t["batch 1"] / t["batch 16"])

    def mc_speed(self) -> None:
        qs = self.inputs.questions[: self.sizes.mc_slow_questions]
        t = self.timed({"shared": lambda: score_choices(self.model, self.tok, qs, prefix=shared_prefix(), progress=False),
                        "one per answer": lambda: score_choices(self.model, self.tok, qs, prefix=None, progress=False)})
        n = sum(len(q.continuations) for q in qs)
        self.row(f"(e) MC scoring, shared prefix vs one forward per answer ({n} answers)", f"{n / t['shared']:.1f} answers/s",
                 f"{n / t['one per answer']:.1f} answers/s", "report", None, t["one per answer"] / t["shared"])

    def generation_speed(self) -> None:
        tok, model, sizes = self.tok, self.model, self.sizes
        pad = pad_token_id(tok)
        prompts = self.inputs.gen_prompts[: sizes.gen_prompts]
        dev = model_device(model)

        def gen(batch: list[str]) -> None:
            ids, mask = pad_batch(tok(batch)["input_ids"], pad, padding_side="left")
            with torch.inference_mode():
                model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=sizes.gen_tokens,
                               min_new_tokens=sizes.gen_tokens, do_sample=False, pad_token_id=pad)

        def sequential() -> None:
            for p in prompts:
                gen([p])

        t = self.timed({"batched": lambda: gen(prompts), "sequential": sequential})
        n = len(prompts) * sizes.gen_tokens
        self.row(f"(e) greedy generation, batch {len(prompts)} vs one prompt at a time", f"{n / t['batched']:.1f} tok/s",
                 f"{n / t['sequential']:.1f} tok/s", "report", None, t["sequential"] / t["batched"])

    def _hook_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        encoded = encode_prompts(self.tok, self.inputs.prompts[: self.sizes.hook_batch])
        inputs = batch_inputs(encoded, pad_token_id(self.tok), model_device(self.model))
        last = inputs["attention_mask"].sum(1).cpu() - 1
        return inputs, torch.arange(len(last)), last

    def _our_capture(self, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
        kwargs = forward_kwargs(self.model)

        def fn() -> torch.Tensor:
            with torch.inference_mode(), HeadTrace(self.model, attention_mask=inputs["attention_mask"]) as trace:
                self.model(**inputs, **kwargs)
                return trace.stacked_heads().flatten(2)
        return fn

    def hook_overhead(self) -> None:
        inputs, _, _ = self._hook_batch()
        kwargs = forward_kwargs(self.model)

        def plain() -> None:
            with torch.inference_mode():
                self.model(**inputs, **kwargs)

        t = self.timed({"plain": plain, "heads": self._our_capture(inputs)})
        self.row(f"(e) forward capturing every head vs plain forward, batch {len(inputs['input_ids'])}",
                 f"{t['heads'] * 1000:.1f} ms (overhead {t['heads'] / t['plain'] - 1:+.1%})", f"{t['plain'] * 1000:.1f} ms", "report", None,
                 t["plain"] / t["heads"])

    def peers(self) -> None:
        """pyvene and nnsight capturing the same o_proj inputs (last token) vs ours; a peer that fails is reported."""
        inputs, rows, last = self._hook_batch()
        ours = self._our_capture(inputs)
        reference = ours().cpu()
        paths = model_layout(self.model).head_out_paths
        for peer, make in (("pyvene", _pyvene_capture), ("nnsight", _nnsight_capture)):
            what = f"{self.prefix}: (e) {peer} capture vs ours"
            if importlib.util.find_spec(peer) is None:
                self.report.add(Row(what, "-", f"skipped: {peer} not installed", None, "report", None, skipped=f"{peer} not installed"))
                continue

            def compare(peer=peer, make=make) -> None:
                fn = make(self.model, self.tok, paths, inputs, rows, last)
                with torch.inference_mode():
                    diff = float((fn().float().cpu() - reference.float()).abs().max())
                t = self.timed({"ours": ours, peer: fn})
                self.row(f"(e) {peer} capture vs ours (max abs diff {diff:.1e})", f"{t['ours'] * 1000:.1f} ms (ours)",
                         f"{t[peer] * 1000:.1f} ms ({peer})", "report", None, t[peer] / t["ours"])

            self.report.attempt(what, compare, ours=False)

    def memory(self) -> None:
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20
        if self.case.uses_cuda:
            peak, what = torch.cuda.max_memory_allocated() / 2**20, "peak GPU memory (max_memory_allocated)"
        else:
            peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of the process"
        self.row(f"{what} (ratio: peak / weights)", f"{peak:.0f} MiB", f"weights {weights:.0f} MiB", "report", None, peak / weights)


def models_to_check(requested: list[str] | None) -> list[str]:
    if requested:
        return requested
    names = ["smollm2-135m"]
    if importlib.util.find_spec(EMBEDDED["gemma3-270m"].package) is not None:
        names.append("gemma3-270m")
    return names


def run(gpu: bool, models: list[str] | None = None, budget_s: float | None = 270.0, vllm: bool = True,
        vllm_python: str | None = None) -> tuple[BenchResult, Report]:
    """Every case of every model; ``budget_s``: start no new case after this many seconds (None: no limit); then, on
    a GPU and with ``vllm``, the vLLM plugin stage (:mod:`benchmarks.gpu_vllm_plugin`)."""
    sizes = GPU_SIZES if gpu else CPU_SIZES
    budget = float("inf") if budget_s is None else budget_s
    report = Report()
    start = time.perf_counter()
    names = models_to_check(models) if gpu else (models or ["smollm2-135m"])
    for name in names:
        cases, left_out = cases_for(name, gpu)
        report.data.setdefault("left_out", {})[name] = left_out
        if time.perf_counter() - start > budget:
            report.not_run += [f"{name} {c.label}" for c in cases]
            continue
        try:
            inputs, ref = reference(name, sizes, gpu)
        except Exception as e:  # noqa: BLE001 - recorded, the next model still runs
            report.add(error_row(f"{name}: CPU fp32 reference", e))
            report.data.setdefault("tracebacks", {})[f"{name} reference"] = traceback.format_exc()
            continue
        report.data.setdefault("reference_mc", {})[name] = ref.mc
        for case in cases:
            if time.perf_counter() - start > budget:
                report.not_run.append(f"{name} {case.label}")
                continue
            check = CaseRun(report, name, case, sizes, inputs, ref)
            report.attempt(f"{name} {case.label}: case runs", check.run)
            del check
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
    for item in report.not_run:
        print(f"[gpu-check] not run (time budget of {budget:.0f} s spent): {item}", flush=True)
    if gpu and vllm:
        from .gpu_vllm_plugin import run_stage

        t0 = time.perf_counter()
        vllm_rows, report.data["vllm_plugin"] = run_stage("cuda", vllm_python)
        report.data["vllm_plugin"]["seconds"] = round(time.perf_counter() - t0, 1)
        for row in vllm_rows:
            report.add(row)
    where = torch.cuda.get_device_name(0) if gpu else "CPU only (smoke mode)"
    result = BenchResult("gpu_check", f"GPU check: dtypes and device maps against CPU fp32 ({where})", "make gpu-check  # python -m benchmarks.gpu_check",
                         report.rows, quick=not gpu)
    result.data = {**report.data, "mode": "gpu" if gpu else "cpu", "device": where, "sizes": sizes.__dict__, "not_run": report.not_run,
                   "seconds": time.perf_counter() - start, "cuda": torch.version.cuda,
                   "tolerances": {"feature_rel": FEATURE_TOL, "bake_fp32": BAKE_TOL_FP32, "bake_noise_factor": BAKE_NOISE_FACTOR,
                                  "tie_min": TIE_TOL_MIN, "mc": MC_TOL}}
    return result, report


def write(result: BenchResult, results_dir: Path) -> Path:
    """``gpu_check.json`` (BenchResult) and ``gpu_check.md`` (the table and the tolerances) in ``results_dir``."""
    path = result.save(results_dir)
    m = machine_info()
    lines = [f"# {result.title}", "", f"`{result.command}`: {time.strftime('%Y-%m-%d')}, {m['cpus']} CPUs, torch {m['torch']}, "
             f"transformers {m['transformers']}, {result.data['seconds']:.0f} s", "",
             "Tolerances: (a) max |diff| / max |ref| <= 1e-3 fp32, 3e-2 fp16, 1e-1 bf16; (b) tokens equal or parting at a near-tie "
             "within the logit noise; (c) baked vs runtime <= 1e-2 logits in fp32, <= 3 x the logit noise in fp16/bf16; "
             "(d) MC1 and MC2 within 0.005. See the docstring of benchmarks/gpu_check.py for why.", ""]
    lines += markdown_table([r.__dict__ for r in result.rows])
    if result.data["not_run"]:
        lines += ["", "Not run (time budget): " + ", ".join(result.data["not_run"])]
    for name, left in result.data.get("left_out", {}).items():
        lines += ["", f"Left out for {name}: {'; '.join(left)}"] if left else []
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto", help="auto: gpu where CUDA is available, else the CPU smoke run")
    p.add_argument("--results-dir", default=None, help=f"default: {RESULTS_DIR} on a GPU, a new temporary directory in CPU mode")
    p.add_argument("--models", nargs="*", default=None, help="default: smollm2-135m, and gemma3-270m when installed (GPU mode)")
    p.add_argument("--budget-s", type=float, default=270.0, help="GPU mode: start no new case after this many seconds")
    p.add_argument("--no-vllm", action="store_true", help="GPU mode: leave out the vLLM plugin stage")
    p.add_argument("--vllm-python", default=None, help="GPU mode: a Python with a CUDA vllm==0.32.0 for the plugin stage "
                   "(default: $ITI_VLLM_PYTHON, else this one; without one the stage is a row saying so)")
    args = p.parse_args(argv)
    gpu = args.mode == "gpu" or (args.mode == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        print("[gpu-check] --mode gpu but torch sees no CUDA device", file=sys.stderr)
        return 2
    if not gpu:
        print("[gpu-check] no CUDA device: CPU smoke mode (fp32 and bf16 on the CPU, a few prompts)", flush=True)
    result, report = run(gpu, args.models, args.budget_s if gpu else None, vllm=not args.no_vllm, vllm_python=args.vllm_python)
    results_dir = Path(args.results_dir) if args.results_dir else (RESULTS_DIR if gpu else quick_results_dir())
    path = write(result, results_dir)
    print(f"[gpu-check] {len(report.rows)} rows in {result.data['seconds']:.0f} s -> {path} and {path.with_suffix('.md')}")
    if not any(r.met is True for r in report.rows):
        print("[gpu-check] FAILED: no check ran", file=sys.stderr)
        return 1
    if report.failures:
        print(f"[gpu-check] FAILED: {len(report.failures)} check(s):", file=sys.stderr)
        for row in report.failures:
            print(f"  - {row.what}: {row.ours} (goal {row.goal})", file=sys.stderr)
        return 1
    print("[gpu-check] all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
