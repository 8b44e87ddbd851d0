"""Which memory allocator the process uses, and where a faster one is, for CPU training and inference on Linux.

PyTorch allocates every feature map with the C library's ``malloc``. glibc hands allocations above 32 MB back to the
system when they are freed (and its aligned allocations rarely reuse a freed block of the same size), so each new
feature map of the paper's size (64 x 256 x 256 x batch 4: 64 MB) is fresh memory whose pages the kernel must fault
in and zero, which takes longer than the arithmetic of the element-wise layers that write it (15 vs 4 ms for one
multiplication). tcmalloc keeps freed memory for reuse. It cannot be switched on from inside a running Python
process; it is loaded before the process starts:

    export LD_PRELOAD=$(python -m scripts.allocator)   # the path of tcmalloc, or nothing (and why, on stderr)
    python -m monai.bundle run ...

Debian and Ubuntu ship it as ``libtcmalloc-minimal4`` (``apt install libtcmalloc-minimal4``); the model card gives the
measured effect (docs/README.md, "Speed").
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys

__all__ = ["find_tcmalloc", "loaded_allocator"]

# where Debian/Ubuntu, Fedora and conda put the library when ldconfig does not list it
_SEARCH = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so*",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so*",
    "/usr/lib64/libtcmalloc_minimal.so*",
    "/usr/lib/libtcmalloc_minimal.so*",
    os.path.join(sys.prefix, "lib", "libtcmalloc_minimal.so*"),
)


def find_tcmalloc() -> str | None:
    """The path of tcmalloc's shared library on this machine, or None."""
    for pattern in _SEARCH:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    name = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return name if name and os.path.isabs(name) else None


def loaded_allocator(maps: str = "/proc/self/maps") -> str:
    """``"tcmalloc"`` or ``"jemalloc"`` when one is loaded into this process, else ``"the C library's malloc"``."""
    try:
        with open(maps) as f:
            text = f.read()
    except OSError:
        return "the C library's malloc"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in text:
            return name
    return "the C library's malloc"


if __name__ == "__main__":
    path = find_tcmalloc()
    if path is None:
        sys.exit("tcmalloc not found; on Debian/Ubuntu: apt install libtcmalloc-minimal4 (the bundle runs without it)")
    print(path)
