"""Compiling the hand-written C++ kernels into a per-CPU cache, and choosing them for a Cell.

The sources sit next to this file and are compiled on first use with the machine's g++ into a cache
folder (COUPALIGN_KERNEL_DIR, default ~/.cache/coupalign_mindspore). Without a compiler, on GPU/Ascend,
or for a Cell built with cpu_kernels=False, the Cells of this package run their pure-MindSpore reference.
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import mindspore as ms
import mindspore.ops as ops

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-pthread", "-shared", "-fPIC")


def cpu_description():
    """The CPU model and feature flags, part of the cache key (the build uses -march=native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def cache_dir():
    """Folder of the compiled libraries: COUPALIGN_KERNEL_DIR, else ~/.cache/coupalign_mindspore."""
    configured = os.environ.get("COUPALIGN_KERNEL_DIR")
    if configured:
        return configured
    return os.path.join(os.path.expanduser("~"), ".cache", "coupalign_mindspore")


def _source_digest(source_name):
    """Hash of the source, every header, the flags and the CPU: a change to any of them rebuilds."""
    digest = hashlib.sha256()
    for name in [source_name] + sorted(n for n in os.listdir(SOURCE_DIR) if n.endswith(".h")):
        with open(os.path.join(SOURCE_DIR, name), "rb") as handle:
            digest.update(handle.read())
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(cpu_description().encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def compiled_library(source_name):
    """Path of the shared library built from `source_name` for this CPU, or None if it cannot be built."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        print("warning: no C++ compiler found; using MindSpore's slower CPU kernels", file=sys.stderr)
        return None
    source = os.path.join(SOURCE_DIR, source_name)
    target_dir = cache_dir()
    target = os.path.join(target_dir, f"{os.path.splitext(source_name)[0]}_{_source_digest(source_name)}.so")
    if os.path.isfile(target):
        return target
    try:
        os.makedirs(target_dir, exist_ok=True)
    except OSError:
        target_dir = tempfile.gettempdir()
        target = os.path.join(target_dir, os.path.basename(target))
    # Several ranks may build at once: each writes its own file and renames it into place.
    partial = f"{target}.{os.getpid()}.partial"
    command = [compiler, *COMPILE_FLAGS, source, "-o", partial]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"warning: could not compile {source_name} ({result.stderr.strip()[-500:]}); "
              "using MindSpore's slower CPU kernels", file=sys.stderr)
        if os.path.exists(partial):
            os.remove(partial)
        return None
    os.replace(partial, target)
    return target


def cpu_kernels_active(cpu_kernels):
    """True when a Cell built now with `cpu_kernels` may run the compiled kernels (CPU device only)."""
    return bool(cpu_kernels) and ms.get_context("device_target") == "CPU"


def kernel_for(source_name, build_primitive, cpu_kernels):
    """The Custom primitive built from `source_name` for a Cell constructed now, or None (use the reference)."""
    library = compiled_library(source_name) if cpu_kernels_active(cpu_kernels) else None
    return build_primitive(library) if library else None


def zero_gradients(*constants):
    """Zero gradients of a Custom primitive's constant inputs (indices, shape carriers), for its bprop."""
    return tuple(ops.zeros_like(constant) for constant in constants)
