"""What the CPU can do in bfloat16, read from ``/proc/cpuinfo``, and the dtype ``--dtype auto`` picks on the CPU.

bfloat16 matmuls are only fast on CPUs with native bf16 instructions (Intel AMX, AVX512-BF16 on Intel and AMD);
elsewhere torch emulates them and bf16 is slower than fp32. Whether bf16 is *accurate enough* for ITI is a separate
question, answered by ``benchmarks/bench_bf16.py`` on SmolLM2 (MC2 within 0.005 of fp32, top-48 heads overlapping
by at least 90%); :data:`CPU_BF16_PASSES` records that measurement, and ``auto`` picks bf16 on the CPU only when it
is true and the CPU has the instructions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

#: cpuinfo flags of native bf16 matmul instructions, best first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")

#: The decision rule's outcome on SmolLM2-135M (``python -m benchmarks.bench_bf16``, AMD EPYC with avx512_bf16, no
#: AMX): bf16 against fp32 on the same inputs moved MC2 on 100 questions by 3.3e-5 (MC1 unchanged, no question
#: flipped), and the top-48 heads of probes on 1,476 tqa_mc2 prompts (200 questions) overlapped by 96% (46 of 48;
#: per-head validation accuracy 0.41 points apart on average, 2.0 at most; features at most 4.9% of their largest
#: magnitude apart). Both within the rule, so ``auto`` picks bf16 on a CPU with native bf16.
CPU_BF16_PASSES = True


@dataclass(frozen=True)
class CpuBf16:
    """The CPU's native bf16 instructions: the best flag found (None: none, bf16 would be emulated)."""

    flag: str | None

    @property
    def native(self) -> bool:
        return self.flag is not None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first processor in a cpuinfo file (empty where there is none, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            return frozenset(value.split())
    return frozenset()


def cpu_bf16(flags: frozenset[str] | None = None) -> CpuBf16:
    """Which native bf16 instructions the CPU has (``amx_bf16`` before ``avx512_bf16``)."""
    flags = cpu_flags() if flags is None else flags
    return CpuBf16(next((f for f in BF16_FLAGS if f in flags), None))


def auto_cpu_dtype(flags: frozenset[str] | None = None, *, passes: bool | None = None) -> torch.dtype:
    """The dtype ``auto`` means on the CPU: bfloat16 where the CPU has native bf16 and the measured accuracy rule
    passed (:data:`CPU_BF16_PASSES`), else float32. The bf16 choice is printed once per process."""
    passes = CPU_BF16_PASSES if passes is None else passes
    support = cpu_bf16(flags)
    if passes and support.native:
        _announce(f"[iti] dtype auto: bfloat16 (CPU has {support.flag})")
        return torch.bfloat16
    return torch.float32


@functools.cache
def _announce(message: str) -> None:
    print(message, flush=True)
