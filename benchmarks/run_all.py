"""``make bench``: run every benchmark, write results/*.json, regenerate README.md."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import (bench_collection, bench_generation, bench_hooks, bench_intervention_generation, bench_lm_eval, bench_mc,
               bench_memory, bench_probes)
from .common import RESULTS_DIR, README, render_readme

BENCHMARKS = {
    "hook_overhead": bench_hooks.run,
    "collection": bench_collection.run,
    "probes": bench_probes.run,
    "mc_scoring": bench_mc.run,
    "lm_eval_mc": bench_lm_eval.run,
    "generation": bench_generation.run,
    "intervention_generation": bench_intervention_generation.run,
    "memory_scaling": bench_memory.run,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a few prompts each (smoke test)")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--readme", default=str(README))
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir)
    for name in args.only or BENCHMARKS:
        t = time.perf_counter()
        result = BENCHMARKS[name](quick=args.quick)
        path = result.save(results_dir)
        print(f"[bench] {name}: {time.perf_counter() - t:.0f} s -> {path}")
        for row in result.rows:
            print(f"  {row.what}: ours {row.ours}, baseline {row.baseline}, ratio {row.ratio:.2f} (goal {row.goal})")
    print(render_readme(results_dir, Path(args.readme)))


if __name__ == "__main__":
    main()
