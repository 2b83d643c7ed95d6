"""``make bench``: run every benchmark, write results/*.json, regenerate README.md."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import (
    bench_bf16,
    bench_collection,
    bench_generation,
    bench_hooks,
    bench_interop,
    bench_intervention_generation,
    bench_judge,
    bench_lm_eval,
    bench_mc,
    bench_memory,
    bench_probes,
)
from .common import README, RESULTS_DIR, quick_results_dir, render_readme

BENCHMARKS = {
    "hook_overhead": bench_hooks.run,
    "collection": bench_collection.run,
    "probes": bench_probes.run,
    "mc_scoring": bench_mc.run,
    "lm_eval_mc": bench_lm_eval.run,
    "interop_lm_eval": bench_interop.run,
    "generation": bench_generation.run,
    "intervention_generation": bench_intervention_generation.run,
    "memory_scaling": bench_memory.run,
    "judge": bench_judge.run,
    "bf16_cpu": bench_bf16.run,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a few prompts each (smoke test)")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    p.add_argument("--results-dir", default=None, help=f"default: {RESULTS_DIR} (a new temporary directory with --quick)")
    p.add_argument("--readme", default=None, help=f"default: {README} (README.md in the results directory with --quick)")
    args = p.parse_args(argv)
    # A quick run never writes where committed results live: its figures are smoke, not measurements.
    results_dir = Path(args.results_dir) if args.results_dir else (quick_results_dir() if args.quick else RESULTS_DIR)
    readme = Path(args.readme) if args.readme else (results_dir / "README.md" if args.quick else README)
    for name in args.only or BENCHMARKS:
        t = time.perf_counter()
        result = BENCHMARKS[name](quick=args.quick)
        result.quick = args.quick
        path = result.save(results_dir)
        print(f"[bench] {name}: {time.perf_counter() - t:.0f} s -> {path}")
        for row in result.rows:
            ratio = row.skipped or row.error or f"ratio {row.ratio:.2f}"
            print(f"  {row.what}: ours {row.ours}, baseline {row.baseline}, {ratio} (goal {row.goal})")
    print(render_readme(results_dir, readme))


if __name__ == "__main__":
    main()
