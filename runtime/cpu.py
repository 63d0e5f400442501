"""What this CPU offers int8 inference, read from /proc/cpuinfo (lean: no dependencies).

Why the runtime cares: onnxruntime's int8 kernels are several times faster with dot-product
instructions (x86 VNNI, ARM dot product) than without, more than clock or core count moves them.
The same 7-bit default took 4.8-6.7 ms on 2-core AMD EPYCs with AVX-512 VNNI and 15-24 ms on two with
AVX2 alone (2026-12-02 and 12-08), so `edgecut models` says which kind of CPU it runs on and the benchmarks
record it beside every figure.
"""
from __future__ import annotations

from pathlib import Path

_DOT = (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("asimddp", "ARM dot product"),
        ("i8mm", "ARM i8mm"))


def cpuinfo_field(*keys: str) -> str:
    """The value of the first /proc/cpuinfo line that starts with one of `keys`; '' where there is
    none (or no /proc/cpuinfo: macOS, Windows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set:
    """The CPU's feature flags (x86 `flags`, ARM `Features`); empty where /proc/cpuinfo is absent."""
    return set(cpuinfo_field("flags", "Features").split())


def int8_dot(flags=None) -> str:
    """Which int8 dot-product instructions onnxruntime's int8 kernels can use here: 'AVX-512 VNNI',
    'ARM dot product', ..., 'none (AVX2 only)', 'none', or 'unknown' (no /proc/cpuinfo)."""
    flags = cpu_flags() if flags is None else set(flags)
    if not flags:
        return "unknown"
    found = [name for flag, name in _DOT if flag in flags]
    if found:
        return ", ".join(found)
    return "none (AVX2 only)" if "avx2" in flags else "none"
