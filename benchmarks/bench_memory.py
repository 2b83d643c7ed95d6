"""Memory and scaling of collection: peak RSS while writing tqa_mc2 features against the size of what is written,
and time against the number of prompts. Each size runs in a fresh process, so its peak RSS is its own."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import BenchResult, Row, bench_main

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from iti import build_prompt_set, load_model, write_features
questions, out = (None if sys.argv[1] == "all" else int(sys.argv[1])), Path(sys.argv[2])
model, tok = load_model("smollm2-135m")
ps = build_prompt_set("tqa_mc2", max_questions=questions)
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
t = time.perf_counter()
path = write_features(model, tok, ps, out, model_name="smollm2-135m", progress=False)
seconds = time.perf_counter() - t
written = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
print(json.dumps({"prompts": len(ps), "seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "output_bytes": written, "model_bytes": model_bytes}))
"""


def measure(questions: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", _CHILD, questions, tmp], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"collection of {questions} questions failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False, sizes: str = "14,139,all") -> BenchResult:
    runs = [measure(q) for q in (["2", "6"] if quick else sizes.split(","))]
    r = BenchResult("memory_scaling", "Collection memory and scaling (tqa_mc2, SmolLM2-135M, fp32 compute, fp16 output, CPU)",
                    "python -m benchmarks.bench_memory")
    big = runs[-1]
    limit = big["model_bytes"] + 1.5 * big["output_bytes"]
    mb = 1e6
    r.rows.append(Row(f"peak RSS collecting {big['prompts']} prompts vs model size + 1.5 x output",
                      f"{big['peak_rss_bytes'] / mb:.0f} MB", f"{limit / mb:.0f} MB ({big['model_bytes'] / mb:.0f} + 1.5 x "
                      f"{big['output_bytes'] / mb:.0f})", limit / big["peak_rss_bytes"], "peak < model + 1.5 x output",
                      big["peak_rss_bytes"] < limit))
    per = [x["seconds"] / x["prompts"] for x in runs]
    for x, p in zip(runs, per):
        r.rows.append(Row(f"{x['prompts']} prompts: time per prompt vs the smallest run's", f"{p * 1000:.1f} ms/prompt",
                          f"{per[0] * 1000:.1f} ms/prompt", per[0] / p, "about 1 (linear growth)", None))
    r.data = {"runs": runs}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv, sizes=(str, "14,139,all"))


if __name__ == "__main__":
    main()
