"""The CPU's bf16 instructions from cpuinfo, and what ``--dtype auto`` picks on the CPU."""
import pytest
import torch

from iti import hardware
from iti.hardware import auto_cpu_dtype, cpu_bf16, cpu_flags
from iti.models import _dtype_from

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 avx512_vnni
bogomips\t: 4800.00

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_flags_are_read_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert {"avx512_bf16", "avx2"} <= cpu_flags(path) and "amx_bf16" not in cpu_flags(path)
    assert cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: no flags, no error
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "bf16" in cpu_flags(tmp_path / "arm")


def test_amx_is_preferred_and_no_flag_means_emulated():
    assert cpu_bf16(frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})).flag == "amx_bf16"
    assert cpu_bf16(frozenset({"avx512_bf16"})).flag == "avx512_bf16"
    none = cpu_bf16(frozenset({"avx2", "fma"}))
    assert none.flag is None and not none.native


@pytest.fixture
def fresh_announce(monkeypatch):
    """A new "printed once" memory, so a test sees the message whatever ran before it."""
    monkeypatch.setattr(hardware, "_announce", hardware.functools.cache(hardware._announce.__wrapped__))


def test_auto_picks_bf16_only_with_the_instructions_and_a_passing_rule(capsys, fresh_announce):
    assert auto_cpu_dtype(frozenset({"avx2"}), passes=True) is torch.float32
    assert auto_cpu_dtype(frozenset({"avx512_bf16"}), passes=False) is torch.float32
    assert capsys.readouterr().out == ""
    assert auto_cpu_dtype(frozenset({"avx512_bf16"}), passes=True) is torch.bfloat16
    assert auto_cpu_dtype(frozenset({"avx512_bf16"}), passes=True) is torch.bfloat16
    assert capsys.readouterr().out == "[iti] dtype auto: bfloat16 (CPU has avx512_bf16)\n"  # printed once


def test_only_an_explicit_auto_asks_the_hardware(monkeypatch):
    """No --dtype keeps float32 on the CPU (every CPU figure was measured so); "auto" follows the rule."""
    monkeypatch.setattr("iti.models.auto_cpu_dtype", lambda: torch.bfloat16)
    assert _dtype_from(None, None) is torch.float32
    assert _dtype_from("auto", None) is torch.bfloat16
    monkeypatch.setattr("iti.models.auto_cpu_dtype", lambda: torch.float32)
    assert _dtype_from("auto", None) is torch.float32


def test_the_committed_rule_matches_this_machine_honestly():
    """``CPU_BF16_PASSES`` is a measured outcome, a bool; auto on this machine is bf16 only if it passed."""
    assert isinstance(hardware.CPU_BF16_PASSES, bool)
    expect = torch.bfloat16 if hardware.CPU_BF16_PASSES and cpu_bf16().native else torch.float32
    assert auto_cpu_dtype() is expect


@pytest.mark.real
def test_load_model_with_auto_uses_the_rule_on_this_cpu(capsys, fresh_announce):
    from iti import load_model

    model, _ = load_model("smollm2-135m", dtype="auto")
    assert next(model.parameters()).dtype is auto_cpu_dtype()
    if auto_cpu_dtype() is torch.bfloat16:
        assert f"[iti] dtype auto: bfloat16 (CPU has {cpu_bf16().flag})" in capsys.readouterr().out
