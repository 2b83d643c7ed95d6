"""``make gpu-check``, the vLLM part: iti's vLLM plugin (``plugins/vllm``) serving per-request head steering on the
GPU, against stock vLLM on the same GPU in the same run.

The GPU machine has no network, so nothing is installed here: the check needs a Python whose ``vllm`` (0.32.0, the
version the plugin is written for) is a CUDA build, given by ``--vllm-python`` or ``ITI_VLLM_PYTHON``, else the
running Python when it has one. Without one the stage is one row that says so (not a failure). That Python is left
as it is: the plugin is installed with ``pip install --target`` into a temporary folder put on the servers'
``PYTHONPATH`` (vLLM finds its entry point there).

Servers, SmolLM2-135M fp32, on one GPU (``--gpu-memory-utilization`` split between them): the plugin (its library
holding the serve check's 16-head ITI; ``--enforce-eager``, which the plugin needs), stock vLLM in eager mode (the
baseline of the goals) and stock vLLM with its CUDA graphs (what a plain deployment runs: the price of eager mode,
reported). Checks:

- the plugin unused gives stock eager vLLM's greedy tokens, prompt by prompt (the same kernels: equal);
- steered requests (strength 15, ``last``) differ from plain for some prompt (the hooks run on the GPU);
- steered tokens against iti in process on the same GPU in fp32 (reported: prompts equal, tokens before the first
  divergence; vLLM's CUDA kernels and transformers' may part at a near-tie);
- output tokens/s at 1 and 16 concurrent requests: the plugin unused, every request steered and half steered against
  stock eager vLLM (goals as on the CPU: unused within noise, steered > 0.85x), and stock vLLM with CUDA graphs.

``--engine cpu`` runs the same stage with the CPU engine of ``make serve-check`` (no graphs server): how this code is
exercised on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .bench_serving import _agreement, _fit_intervention, _hf_greedy, _prompts
from .bench_vllm_plugin import NAME, _request, _steering, measure_throughput, throughput_rows
from .common import Row, error_row
from .vllm_engine import PLUGIN_DIR, VLLM_VERSION, EngineError, VllmServer, engine_python, install_plugin

PYTHON_ENV = "ITI_VLLM_PYTHON"
STEER_STRENGTH = 15.0


def find_vllm_python(explicit: str | None = None) -> tuple[Path | None, str]:
    """A Python with a CUDA vLLM: ``explicit``, else ``$ITI_VLLM_PYTHON``, else this one; and what was found (or why
    none)."""
    candidates = [c for c in (explicit, os.environ.get(PYTHON_ENV)) if c] or [sys.executable]
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import torch, vllm; print(vllm.__version__, torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            return None, f"{candidate}: cannot import vllm ({' '.join(probe.stderr.split()[-12:])})"
        version, cuda = probe.stdout.split()[-2:]
        if cuda != "True":
            return None, f"{candidate}: vllm {version} sees no CUDA device"
        if version != VLLM_VERSION:
            return None, f"{candidate}: vllm {version}; the plugin is written for {VLLM_VERSION}"
        return Path(candidate), f"vllm {version} (CUDA) in {candidate}"
    return None, "no candidate"


def plugin_target(work: Path) -> Path:
    """The plugin installed into ``work/plugin`` (``pip --target``), for a server's PYTHONPATH."""
    target = work / "plugin"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                           str(target), str(PLUGIN_DIR)], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"pip install --target of the vLLM plugin failed: {' '.join((done.stderr or done.stdout).split()[-40:])}")
    return target


def run_stage(engine: str = "cuda", python: str | None = None, prompts: int = 10, new_tokens: int = 32,
              throughput_prompts: int = 32, repeats: int = 3) -> tuple[list[Row], dict[str, Any]]:
    """The rows and data of the stage; a missing CUDA vLLM is one unscored row."""
    from iti.models import embedded_model_dir, load_model

    what = f"vLLM plugin on {engine}"
    data: dict[str, Any] = {"engine": engine}
    if engine == "cuda":
        py, found = find_vllm_python(python)
        data["vllm"] = found
        if py is None:
            return [Row(f"{what}: not run", "-", found, None, f"a CUDA vllm=={VLLM_VERSION} (--vllm-python or ${PYTHON_ENV})",
                        None, skipped=found)], data
        work = Path(tempfile.mkdtemp(prefix="iti-gpu-vllm-"))
        path = [plugin_target(work)]
        memory = ["--gpu-memory-utilization", "0.25"]
    else:
        install_plugin()
        py, path, memory = engine_python(), [], []
        work = Path(tempfile.mkdtemp(prefix="iti-cpu-vllm-"))
    rows: list[Row] = []
    model, tok = load_model("smollm2-135m")
    inter = _fit_intervention(model, tok, pairs=40)
    inter.save(work / "library" / NAME)
    _, ids = _prompts(tok, prompts)
    device = "cuda" if engine == "cuda" else "cpu"
    model = model.to(device)
    plain_local = _hf_greedy(model, ids, new_tokens)
    with inter.with_alpha(STEER_STRENGTH).applied(model, positions="last"):
        steered_local = _hf_greedy(model, ids, new_tokens)
    model.cpu()
    source = embedded_model_dir("smollm2-135m")
    servers = {"plugin": VllmServer(source, "smollm2", work / "logs" / "plugin.log", python=py, python_path=path,
                                    extra_args=memory, steering_library=work / "library"),
               "stock eager": VllmServer(source, "smollm2", work / "logs" / "stock.log", python=py, extra_args=memory)}
    if engine == "cuda":
        servers["stock, CUDA graphs"] = VllmServer(source, "smollm2", work / "logs" / "graphs.log", python=py,
                                                   extra_args=memory, enforce_eager=False)
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait()
        data["startup_s"] = {k: round(s.started_in or 0, 1) for k, s in servers.items()}
        plugin, stock = servers["plugin"].url, servers["stock eager"].url
        unused = [_request(plugin, row, new_tokens, None)["tokens"] for row in ids]
        stock_tokens = [_request(stock, row, new_tokens, None)["tokens"] for row in ids]
        steered = [_request(plugin, row, new_tokens, _steering(STEER_STRENGTH, "last"))["tokens"] for row in ids]
        same = _agreement(unused, stock_tokens)[0]
        rows.append(Row(f"{what}: plugin unused gives stock vLLM's greedy tokens", f"{same}/{len(ids)}", f"{len(ids)}",
                        same / len(ids), "all equal", same == len(ids)))
        differ = sum(a != b for a, b in zip(steered, unused))
        rows.append(Row(f"{what}: steered (strength {STEER_STRENGTH:g}, last) differs from plain", f"{differ}/{len(ids)}",
                        f"{len(ids)}", differ / len(ids), "> 0", differ > 0))
        for label, got, want in (("plain", unused, plain_local), ("steered", steered, steered_local)):
            eq, prefix, total = _agreement(got, want)
            data[f"{label} vs iti in process"] = {"prompts_equal": eq, "tokens_before_divergence": prefix, "tokens": total}
            rows.append(Row(f"{what}: {label} tokens vs iti in process ({device} fp32)",
                            f"{eq}/{len(ids)} prompts, {prefix}/{total} tokens before divergence", f"{len(ids)}",
                            eq / len(ids), "reported (kernels may part at a near-tie)", None))
        graphs = {"stock, CUDA graphs": servers["stock, CUDA graphs"].url} if "stock, CUDA graphs" in servers else {}
        tp = measure_throughput(stock, plugin, ids, new_tokens, STEER_STRENGTH, throughput_prompts, repeats=repeats,
                                more_plain=graphs)  # the graphs server in the same interleaved rounds
        if graphs:
            for concurrency, t in tp["tokens_per_s"].items():
                rows.append(Row(f"{what}: stock eager vs stock with CUDA graphs, {concurrency} concurrent: output tokens/s",
                                f"{t['stock vLLM']:.1f}/s", f"{t['stock, CUDA graphs']:.1f}/s",
                                t["stock vLLM"] / t["stock, CUDA graphs"], "reported (the price of --enforce-eager)", None))
        data.update(tp)
        rows.extend(throughput_rows(tp, where=f" ({engine})"))
    except Exception as e:  # noqa: BLE001 - one failed stage is a failed row, the rest of gpu-check stands
        logs = {k: s.log_tail() for k, s in servers.items()}
        rows.append(error_row(f"{what}: stage runs", e))
        data["server_logs"] = logs
    finally:
        for server in servers.values():
            server.stop()
    return rows, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--vllm-python", default=None, help=f"a Python with a CUDA vllm=={VLLM_VERSION} (default: ${PYTHON_ENV}, "
                   "else this one)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, _ = run_stage(args.engine, args.vllm_python, repeats=args.repeats)
    for row in rows:
        print(f"[vllm-plugin] {'ok  ' if row.met else 'FAIL' if row.met is False else '    '} {row.what}: {row.ours} "
              f"(vs {row.baseline}; {row.goal})", flush=True)
    print(f"[vllm-plugin] {time.perf_counter() - t0:.0f} s")
    return 1 if any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
