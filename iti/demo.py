"""``make demo``: the main job end to end on the embedded model, on a subset of TruthfulQA.

Collect head activations, run a 2-fold ITI validation with its controls, and bake the fold-0 intervention into
a model saved with ``save_pretrained``.
"""
from __future__ import annotations

import time
from pathlib import Path

from .bake import bake, save_baked
from .features import load_features, write_features
from .intervention import Intervention
from .models import DEFAULT_MODEL, load_model
from .paths import features_dir
from .prompt_sets import build_prompt_set
from .validation import ValidationConfig, run_validation


def demo(max_questions: int = 100, output_dir: str | Path | None = None, batch_size: int = 32) -> dict[str, Path]:
    """Collect tqa_mc2 and tqa_gen_end_q features on the embedded model, run a quick 2-fold validation and bake
    the fold-0 intervention; returns what was written, by name."""
    out = Path(output_dir) if output_dir else features_dir() / "demo"
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
    cfg = ValidationConfig(model_name=DEFAULT_MODEL, use_center_of_mass=True, max_questions=min(40, max_questions), features_dir=str(out),
                           ce_samples=20, max_new_tokens=30)
    summary_dir = out / "validation"
    run_validation(model, tokenizer, cfg, summary_dir)
    print(f"[demo] 2-fold ITI validation on {cfg.max_questions} questions (quick preset: 20 CE/KL texts, 30 new tokens) "
          f"in {time.perf_counter() - t:.0f} s:\n")
    print((summary_dir / "summary.md").read_text())
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
