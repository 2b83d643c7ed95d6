"""Memory and scaling of collection: peak RSS while writing tqa_mc2 features against the size of what is written,
and time against the number of prompts. Each size runs in a fresh process. The peak is the kernel's high-water mark
of that process (VmHWM), not getrusage's ru_maxrss, which Linux carries over from the parent across exec and so
reported the benchmark driver's own peak for every size."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import BenchResult, Row, bench_main

_CHILD = r"""
import json, sys, time
from pathlib import Path

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

import torch
from iti import build_prompt_set, load_model, write_features
runtime = status("VmRSS")
questions, out = (None if sys.argv[1] == "all" else int(sys.argv[1])), Path(sys.argv[2])
model, tok = load_model("smollm2-135m")
ps = build_prompt_set("tqa_mc2", max_questions=questions)
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
mapped = status("VmRSS")
# The weights are memory-mapped from safetensors: a page counts in RSS only once read, so right after loading
# about half the model is not resident yet. Read every weight once, so growth below is the collection's own.
with torch.no_grad():
    for p in list(model.parameters()) + list(model.buffers()):
        p.sum()
loaded, load_peak = status("VmRSS"), status("VmHWM")
t = time.perf_counter()
path = write_features(model, tok, ps, out, model_name="smollm2-135m", progress=False)
seconds = time.perf_counter() - t
written = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
print(json.dumps({"prompts": len(ps), "seconds": seconds, "peak_rss_bytes": status("VmHWM"), "load_peak_rss_bytes": load_peak,
                  "rss_after_load_bytes": loaded, "rss_after_load_unread_bytes": mapped, "runtime_rss_bytes": runtime, "output_bytes": written,
                  "model_bytes": model_bytes}))
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
    # What the interpreter and torch hold before any model exists is not the model's or the output's; shown apart.
    runtime = big["runtime_rss_bytes"]
    r.rows.append(Row("same peak less the Python + torch runtime (RSS after `import torch, iti`)",
                      f"{(big['peak_rss_bytes'] - runtime) / mb:.0f} MB", f"{limit / mb:.0f} MB (runtime {runtime / mb:.0f} MB)",
                      limit / (big["peak_rss_bytes"] - runtime), "peak < model + 1.5 x output", big["peak_rss_bytes"] - runtime < limit))
    growth = big["peak_rss_bytes"] - big["rss_after_load_bytes"]
    r.rows.append(Row("growth of RSS during collection (peak - RSS after loading and reading every weight) vs 1.5 x output",
                      f"{growth / mb:.0f} MB", f"{1.5 * big['output_bytes'] / mb:.0f} MB", 1.5 * big["output_bytes"] / max(growth, 1),
                      "< 1.5 x output", growth < 1.5 * big["output_bytes"]))
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
