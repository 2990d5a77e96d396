"""Hand-written CPU kernels for element-wise work that MindSpore's CPU backend does slowly.

The C++ sources sit next to this file and are compiled on first use with the machine's g++ into a
cache folder (COUPALIGN_KERNEL_DIR, default ~/.cache/coupalign_mindspore). Without a compiler, on
GPU/Ascend, or after `set_cpu_kernels(False)`, every Cell here falls back to MindSpore's own op.
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-pthread", "-shared", "-fPIC")
_STATE = {"enabled": True}


def set_cpu_kernels(enabled):
    """Use (True) or bypass (False) the compiled kernels in Cells built from now on."""
    _STATE["enabled"] = bool(enabled)


def _cpu_description():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cache_dir():
    configured = os.environ.get("COUPALIGN_KERNEL_DIR")
    if configured:
        return configured
    return os.path.join(os.path.expanduser("~"), ".cache", "coupalign_mindspore")


@functools.lru_cache(maxsize=None)
def compiled_library(source_name):
    """Path of the shared library built from `source_name` for this CPU, or None if it cannot be built."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        print("warning: no C++ compiler found; using MindSpore's slower CPU kernels", file=sys.stderr)
        return None
    source = os.path.join(SOURCE_DIR, source_name)
    digest = hashlib.sha256()
    for name in [source_name] + sorted(n for n in os.listdir(SOURCE_DIR) if n.endswith(".h")):
        with open(os.path.join(SOURCE_DIR, name), "rb") as handle:
            digest.update(handle.read())
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(_cpu_description().encode())
    target_dir = _cache_dir()
    target = os.path.join(target_dir, f"{os.path.splitext(source_name)[0]}_{digest.hexdigest()[:16]}.so")
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


def cpu_kernels_active():
    """True when Cells built now will run the compiled kernels."""
    return _STATE["enabled"] and ms.get_context("device_target") == "CPU"


def _kernel_for(source_name, build_primitive):
    """The Custom primitive built from `source_name` for a Cell constructed now, or None (fall back)."""
    library = compiled_library(source_name) if cpu_kernels_active() else None
    return build_primitive(library) if library else None


@functools.lru_cache(maxsize=None)
def _gelu_primitive(library):
    backward = ops.Custom(f"{library}:GeluBackward", out_shape=lambda x, dy: x, out_dtype=lambda x, dy: x,
                          func_type="aot")

    def bprop(x, out, dout):
        return (backward(x, dout),)

    return ops.Custom(f"{library}:GeluForward", out_shape=lambda x: x, out_dtype=lambda x: x,
                      func_type="aot", bprop=bprop)


class Gelu(nn.Cell):
    """Exact (erf) GELU, through the compiled CPU kernel when active. (...) -> (...)"""

    def __init__(self):
        super().__init__()
        self.kernel = _kernel_for("gelu_cpu.cc", _gelu_primitive)

    def construct(self, x):
        if self.kernel is None:
            return ops.gelu(x, approximate="none")
        return self.kernel(x.astype(ms.float32)).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _layer_norm_primitive(library):
    backward = ops.Custom(f"{library}:LayerNormBackward", out_shape=lambda x, gamma, eps, dy: (x, gamma, gamma),
                          out_dtype=lambda x, gamma, eps, dy: (x, gamma, gamma), func_type="aot")

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = backward(x, gamma, eps, dout)
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return ops.Custom(f"{library}:LayerNormForward", out_shape=lambda x, gamma, beta, eps: x,
                      out_dtype=lambda x, gamma, beta, eps: x, func_type="aot", bprop=bprop)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (same parameters), through the compiled CPU kernel when active.

    (..., C) -> (..., C)
    """

    def __init__(self, dim, eps=1e-5):
        super().__init__((dim,), epsilon=eps)
        self.kernel = _kernel_for("layer_norm_cpu.cc", _layer_norm_primitive)
        self.eps_tensor = Tensor([eps], ms.float32)

    def construct(self, x):
        if self.kernel is None:
            return super().construct(x)
        out = self.kernel(x.astype(ms.float32), self.gamma.astype(ms.float32), self.beta.astype(ms.float32),
                          self.eps_tensor)
        return out.astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _window_softmax_primitive(library):
    backward = ops.Custom(f"{library}:WindowSoftmaxBackward", out_shape=lambda probs, dprobs: probs,
                          out_dtype=lambda probs, dprobs: probs, func_type="aot")

    def bprop(scores, bias, mask, out, dout):
        dscores = backward(out, dout)
        return dscores, dscores.sum(axis=0), ops.zeros_like(mask)

    return ops.Custom(f"{library}:WindowSoftmaxForward", out_shape=lambda scores, bias, mask: scores,
                      out_dtype=lambda scores, bias, mask: scores, func_type="aot", bprop=bprop)


class WindowSoftmax(nn.Cell):
    """softmax(scores + bias [+ shift mask]) over the keys, in float32.

    (B*nW, heads, N, N), (heads, N, N) [, (nW, N, N)] -> (B*nW, heads, N, N)
    """

    def __init__(self, tokens):
        super().__init__()
        self.kernel = _kernel_for("window_softmax_cpu.cc", _window_softmax_primitive)
        self.no_mask = Tensor(np.zeros((1, tokens, tokens), np.float32))

    def construct(self, scores, bias, mask=None):
        scores = scores.astype(ms.float32)
        bias = bias.astype(ms.float32)
        if self.kernel is not None:
            mask = self.no_mask if mask is None else mask
            return self.kernel(scores, bias, mask.astype(ms.float32))
        scores = scores + bias
        if mask is not None:
            windows, heads, tokens, _ = scores.shape
            num_windows = mask.shape[0]
            scores = scores.reshape(-1, num_windows, heads, tokens, tokens)
            scores = scores + mask.reshape(1, num_windows, 1, tokens, tokens).astype(ms.float32)
            scores = scores.reshape(windows, heads, tokens, tokens)
        return ops.softmax(scores, axis=-1)
