"""Keep the memory PyTorch frees inside the process while timing eager networks on the CPU (glibc only).

PyTorch's CPU tensors come from `malloc`. glibc serves a large request (an activation map of a few MB) from a
fresh `mmap` and returns it to the system when freed, unless its self-tuning threshold has risen past that size;
it also trims the heap's free top. Whether a network's activations page-fault on every inference therefore
depends on which networks ran earlier in the process, and timings of the same networks did not repeat from one
session to the next. `bench/torch_timing_repeat.py` (60 subnets of mbv3-w1.0 at 4.3-17 ms, three sessions of
each variant alternating, this project's 2-core VM, 2026-12-06): glibc's defaults 78-98% within 10% between
sessions, per-network ratio sd 0.048-0.195, single networks 0.60-1.66x; with the memory kept 100%, sd
0.013-0.019, 0.95-1.03x. Kept is also the state a deployed network reaches after its first
inferences, when the heap already holds its activations. ONNX Runtime has its own arena and needs none of this.

The setting is process-wide and stays for the rest of the process (the memory is reused, not returned).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's largest (HEAP_MAX / 2 on 64-bit): every activation from the heap
TRIM_THRESHOLD = 2 ** 31 - 1        # never hand the heap's free top back
TOP_PAD = 64 * 1024 * 1024          # grow the heap in large steps

_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (see the module doc). True when the setting is in force
    (now or from an earlier call); False where the C library is not glibc (nothing is changed there)."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = all(mallopt(param, value) == 1 for param, value in
                ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _kept


__all__ = ["keep_freed_memory"]
