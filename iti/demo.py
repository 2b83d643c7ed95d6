"""``make demo``: the main job end to end on the embedded model, on a subset of TruthfulQA."""
from __future__ import annotations

import time
from pathlib import Path

from .features import load_features, write_features
from .models import DEFAULT_MODEL, load_model
from .paths import features_dir
from .prompt_sets import build_prompt_set


def demo(max_questions: int = 100, output_dir: str | Path | None = None, batch_size: int = 32) -> dict[str, Path]:
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
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s. Wrote:")
    for dataset, path in written.items():
        for f in sorted(path.iterdir()):
            print(f"  {f}  ({f.stat().st_size / 1e6:.1f} MB)")
    return written
