"""``make demo``: the main job end to end on the embedded model, on a subset of TruthfulQA.

Collect head activations, run a 2-fold ITI validation with its controls, and bake the fold-0 intervention into
a model saved with ``save_pretrained``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..bake import bake, save_baked
from ..features import load_features, write_features
from ..intervention import Intervention
from ..models import DEFAULT_MODEL, load_model
from ..options import check_positive_int, check_range, min_questions
from ..paths import features_dir
from .experiment import ValidationConfig, run_validation
from .prompt_sets import build_prompt_set


def read_table(summary: dict[str, Any], full_results: str = "validation/results.md") -> str:
    """One honest sentence about a validation summary's ΔMC2 rows, computed from their CIs: how wide the
    intervals are, which exclude 0, and whether ITI's interval separates from each control's."""
    rows = [r for r in summary["rows"] if r["name"] != "baseline" and "dMC2" in r]
    iti = next((r for r in rows if r["name"] == "ITI"), None)
    if iti is None:
        return "no ITI row finished: nothing to read."
    controls = [r for r in rows if r["name"] != "ITI" and r["alpha"] == iti["alpha"] and r["num_heads"] == iti["num_heads"]
                and r["seed"] == iti["seed"]]

    def cell(r: dict[str, Any]) -> str:
        d = r["dMC2"]
        return f"{r['name']} {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"

    half = max((r["dMC2"]["ci"][1] - r["dMC2"]["ci"][0]) / 2 for r in [iti, *controls])
    lo, hi = iti["dMC2"]["ci"]
    if lo > 0:
        verdict = "ITI's interval lies above 0"
    elif hi < 0:
        verdict = "ITI's interval lies below 0"
    else:
        verdict = "ITI's interval includes 0"
    separated = [c["name"] for c in controls if lo > c["dMC2"]["ci"][1] or hi < c["dMC2"]["ci"][0]]
    overlapping = [c["name"] for c in controls if c["name"] not in separated]
    parts = [verdict]
    if overlapping:
        parts.append(f"it overlaps the {' and '.join(overlapping)} control{'s' if len(overlapping) > 1 else ''}")
    if separated:
        above = [n for n in separated if lo > next(c for c in controls if c["name"] == n)["dMC2"]["ci"][1]]
        parts.append(f"it is {'above' if above == separated else 'apart from'} the {' and '.join(separated)} control"
                     f"{'s' if len(separated) > 1 else ''}")
    conclusion = ("so this subset cannot tell ITI from its controls" if overlapping else
                  "so on this subset ITI separates from its controls")
    return (f"{summary['num_questions']} questions give 95% CIs of about ±{half:.2f} on ΔMC2 ({'; '.join(cell(r) for r in [iti, *controls])}): "
            f"{', '.join(parts)}, {conclusion}. Effects smaller than about {half:.2f} need more questions: "
            f"the full 817-question run with seeds and sweeps is in {full_results}.")


def demo(max_questions: int = 100, output_dir: str | Path | None = None, batch_size: int = 32) -> dict[str, Path]:
    """Collect tqa_mc2 and tqa_gen_end_q features on the embedded model, run a quick 2-fold validation and bake
    the fold-0 intervention; returns what was written, by name."""
    out = Path(output_dir) if output_dir else features_dir() / "demo"
    cfg = ValidationConfig(model_name=DEFAULT_MODEL, use_center_of_mass=True, max_questions=min(40, max_questions), features_dir=str(out),
                           ce_samples=20, max_new_tokens=30)
    check_positive_int("batch_size", batch_size)
    check_range("max_questions", max_questions, min_questions(cfg.num_fold, cfg.val_ratio), integer=True,
                why=f"the demo's {cfg.num_fold}-fold validation needs a test, a training and a validation question in each fold")
    t0 = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL)
    print(f"[demo] loaded {DEFAULT_MODEL} in {time.perf_counter() - t0:.1f} s")
    written: dict[str, Path] = {}
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        ps = build_prompt_set(dataset, max_questions=max_questions)
        t = time.perf_counter()
        path = write_features(model, tokenizer, ps, out, model_name=DEFAULT_MODEL, batch_size=batch_size)
        fs = load_features(path)
        print(f"[demo] {dataset}: {len(ps)} prompts, {max_questions} questions, {time.perf_counter() - t:.1f} s "
              f"-> head_wise {tuple(fs.head_wise.shape)} {fs.head_wise.dtype}, labels {int(fs.labels.sum())} true / {len(fs)}")
        written[dataset] = path

    t = time.perf_counter()
    summary_dir = out / "validation"
    summary = run_validation(model, tokenizer, cfg, summary_dir)
    print(f"[demo] 2-fold ITI validation on {cfg.max_questions} questions (quick preset: 20 CE/KL texts, 30 new tokens) "
          f"in {time.perf_counter() - t:.0f} s:\n")
    print((summary_dir / "summary.md").read_text())
    print(f"[demo] reading: {read_table(summary)}\n")
    written["validation"] = summary_dir

    t = time.perf_counter()
    baked_model, baked_tok = load_model(DEFAULT_MODEL)
    inter = Intervention.load(summary_dir / "intervention_fold0", baked_model)
    written["baked"] = save_baked(bake(baked_model, inter), baked_tok, out / "baked", inter)
    print(f"[demo] baked {len(inter.heads)} heads (alpha {inter.alpha:g}) into o_proj biases in {time.perf_counter() - t:.1f} s")

    print(f"[demo] done in {time.perf_counter() - t0:.1f} s. Wrote:")
    for name, path in written.items():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files) / 1e6
        print(f"  {name:14s} {path}  ({len(files)} files, {size:.1f} MB)")
    return written
