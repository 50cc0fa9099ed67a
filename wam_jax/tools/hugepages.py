"""Transparent huge pages for malloc's large blocks: XLA:CPU's per-step temporary buffer.

XLA:CPU takes each execution's temporaries from malloc in one block (about 250 MB for the demo's training step).
Above glibc's mmap threshold (at most 32 MB) every such block is a fresh mmap, and its 4 KB pages are faulted in
one by one: about 45 000 page faults a training step, about a quarter of the CPU time spent in the kernel.
glibc's tunable `glibc.malloc.hugetlb=1` (glibc ≥ 2.35) madvises those blocks for transparent huge pages, so
they fault in 2 MB at a time: the demo's 2000 training steps took 421 s instead of 611 s (docs/PERFORMANCE.md).
Results do not change: only where the memory comes from does.

glibc reads tunables once, at process start, so `python -m wam_jax` re-executes itself with the tunable set when
it would help (Linux with glibc ≥ 2.35, the kernel's THP mode `madvise`) and it is not set yet. Child processes
(dataset builders, closed-loop workers) inherit it. `WAM_JAX_HUGEPAGES=0` turns this off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _thp_mode() -> str | None:
    """The bracketed entry of the kernel's THP setting ('always', 'madvise' or 'never'), None if unreadable."""
    try:
        with open(THP_MODE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def tunables_with_hugepages(environ) -> str | None:
    """The GLIBC_TUNABLES value to re-execute with, or None when there is nothing to gain (already set, turned
    off, not glibc ≥ 2.35, or a kernel whose THP mode is not `madvise`: `always` needs no advice, `never`
    ignores it)."""
    current = environ.get("GLIBC_TUNABLES", "")
    if environ.get("WAM_JAX_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in current:
        return None
    if not sys.platform.startswith("linux") or (_glibc_version() or (0, 0)) < (2, 35) or _thp_mode() != "madvise":
        return None
    return f"{current}:{TUNABLE}" if current else TUNABLE


def reexec_with_hugepages() -> None:
    """Replaces this process by the same command line with the tunable set, when `tunables_with_hugepages` says
    so; returns otherwise. Call it first thing in a `__main__`, before anything allocates or starts a thread."""
    value = tunables_with_hugepages(os.environ)
    argv = getattr(sys, "orig_argv", None)
    if value is None or not argv or not sys.executable:
        return
    os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, "GLIBC_TUNABLES": value})
