"""The CPU's instruction-set features, read in one place: which backend ``auto`` runs a model on, and what the benchmarks record beside each figure.

Linux only (/proc/cpuinfo: x86's "flags" line, Arm's "Features"); elsewhere the set is empty,
which the callers read as "unknown". Standard library only.
"""
from __future__ import annotations

from functools import lru_cache

# What a speed figure depends on, in the order reported: AVX2; AVX-512; VNNI (int8 dot products,
# AVX-512 or AVX form); BF16 (AVX512-BF16); AMX (int8 and bf16 tiles).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX, Arm's BF16 extension


@lru_cache(maxsize=1)
def _read_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); empty if unknown."""
    return set(_read_flags())


def cpu_isa(flags=None) -> list[str]:
    """The ISA_FLAGS this CPU (or ``flags``) has, in ISA_FLAGS' order."""
    flags = cpu_flags() if flags is None else set(flags)
    return [f for f in ISA_FLAGS if f in flags]


def has_bf16(flags=None) -> bool:
    """Whether this CPU (or ``flags``) computes bfloat16 natively: AVX512-BF16, AMX-BF16 or Arm's BF16."""
    flags = cpu_flags() if flags is None else set(flags)
    return bool(flags & BF16_FLAGS)
