"""The C allocator of a training process: freed memory is kept for the next step, not handed back.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block above its mmap
threshold (128 KiB at first, raised as blocks are freed) with a fresh ``mmap`` and returns free
memory at the top of its heap to the kernel once it passes the trim threshold. A training step
allocates and frees the same activations every step: LeNet-5's conv1 maps at batch 64 are
(64, 6, 28, 28) floats, 1.2 MB, and a ResNet's are tens of MB. Depending on the order of
allocations, memory went back to the kernel and came back as zeroed pages, a page fault per
4 KiB on first touch, every step. Measured here at batch 64, 1 thread, one run each, per step
without and with the settings below: LeNet-5 with average pooling 627 and 3 faults, 6.6 and
5.5 ms; the classic LeNet-5 481 and 6 faults, 9.4 and 8.3 ms; ResNet-18 9,700 and 1,900
faults, 546 and 506 ms. With ReLU and max pooling, which pools first, glibc's own thresholds
already kept up (no faults either way). PyTorch's CPU tuning guide reaches the same end with
jemalloc or tcmalloc; those must be preloaded before the process starts, ``mallopt`` works anytime.

The cost: up to ``TRIM_THRESHOLD_BYTES`` of freed memory stays in the process for reuse instead of
going back to the kernel. That suits a process that trains (the ``study`` command, a Ray worker
running trials); a library import never changes the allocator, only an explicit call does, and
``LENET_STUDY_KEEP_FREED_MEMORY=0`` in the environment turns the call into a no-op.
"""

from __future__ import annotations

import ctypes
import os

OPT_OUT_VARIABLE = "LENET_STUDY_KEEP_FREED_MEMORY"  # "0": leave glibc's defaults alone
# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, where freed ones are reused: 32 MiB, glibc's largest
# dynamic mmap threshold on 64-bit, holds every LeNet-5 activation and a ResNet-18's at batch 64.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory at the top of the heap is handed back only past this: 1 GiB covers a ResNet's
# training step on the CPU, so the heap stops shrinking and regrowing between steps.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def glibc_version() -> str | None:
    """'2.36' when this process runs on glibc, else None (macOS, Windows, musl)."""
    try:
        name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # no confstr, the name unknown, or None returned
        return None
    return version if name == "glibc" else None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (see the module docstring).

    Process-wide (every thread's arena) and idempotent; call it once where a process that trains
    starts. Returns whether glibc accepted the settings: False, with nothing changed, where the C
    library is not glibc or ``LENET_STUDY_KEEP_FREED_MEMORY`` is "0". (An allocator preloaded in
    glibc's place, such as jemalloc, ignores them.)
    """
    if os.environ.get(OPT_OUT_VARIABLE) == "0" or glibc_version() is None:
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: glibc, checked above
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; setting either value also ends glibc's own adjustment of both.
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_set = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_set and trim_set
