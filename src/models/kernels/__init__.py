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


def add_bias(x, bias):
    """x + bias along the last axis, as BiasAdd on rows: on CPU a broadcasting Add keeps output-sized
    buffers for the life of the graph (see layers.broadcast_as). (..., C), (C,) -> (..., C)"""
    return ops.bias_add(x.reshape(-1, x.shape[-1]), bias.astype(x.dtype)).reshape(x.shape)


def _sum_over_rows(x):
    """(..., C) -> (C,): the gradient of a bias broadcast over the last axis."""
    return x.reshape(-1, x.shape[-1]).sum(axis=0)


@functools.lru_cache(maxsize=None)
def _bias_gelu_primitive(library):
    backward = ops.Custom(f"{library}:BiasGeluBackward", out_shape=lambda x, bias, dy: x,
                          out_dtype=lambda x, bias, dy: x, func_type="aot")

    def bprop(x, bias, out, dout):
        dx = backward(x, bias, dout)
        return dx, _sum_over_rows(dx)

    return ops.Custom(f"{library}:BiasGeluForward", out_shape=lambda x, bias: x, out_dtype=lambda x, bias: x,
                      func_type="aot", bprop=bprop)


class Gelu(nn.Cell):
    """Exact (erf) GELU of x [+ a bias over the last axis], through the compiled CPU kernels when active.

    (..., C) [, (C,)] -> (..., C)
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel_for("gelu_cpu.cc", _gelu_primitive)
        self.bias_kernel = _kernel_for("gelu_cpu.cc", _bias_gelu_primitive)

    def construct(self, x, bias=None):
        if bias is not None and self.bias_kernel is not None:
            return self.bias_kernel(x.astype(ms.float32), bias.astype(ms.float32)).astype(x.dtype)
        if bias is not None:
            x = add_bias(x, bias)
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


def _zero_gradients(*constants):
    return tuple(ops.zeros_like(constant) for constant in constants)


def _window_heads_shape(rows, slot_source, layout, width):
    """Shape (B*nW, heads, N, d) of per-head window tensors for `rows` images of `width` channels."""
    heads, window_tokens = layout
    return [rows * slot_source[0] // window_tokens, heads, window_tokens, width // heads]


@functools.lru_cache(maxsize=None)
def _qkv_heads_primitive(library):
    backward = ops.Custom(
        f"{library}:QkvHeadsBackward",
        out_shape=lambda dq, dk, dv, scale, source, slot, layout: [dq[0] * dq[2] // source[0], slot[0],
                                                                   3 * dq[1] * dq[3]],
        out_dtype=lambda dq, dk, dv, scale, source, slot, layout: dq, func_type="aot")

    def head_sum(d):
        """(W, heads, N, d) -> (heads*d,)"""
        return d.sum(axis=(0, 2)).reshape(-1)

    def bprop(qkv, bias, scale, slot_source, token_slot, layout, out, dout):
        dq, dk, dv = dout
        dqkv = backward(dq, dk, dv, scale, slot_source, token_slot, layout)
        # Padding slots hold the bias too, so its gradient sums over the slots, not the tokens.
        dbias = ops.concat((head_sum(dq) * scale, head_sum(dk), head_sum(dv)))
        return (dqkv, dbias) + _zero_gradients(scale, slot_source, token_slot, layout)

    return ops.Custom(
        f"{library}:QkvHeadsForward",
        out_shape=lambda qkv, bias, scale, source, slot, layout: (
            _window_heads_shape(qkv[0], source, layout, qkv[2] // 3),) * 3,
        out_dtype=lambda qkv, bias, scale, source, slot, layout: (qkv, qkv, qkv), func_type="aot", bprop=bprop)


class QkvHeads(nn.Cell):
    """Bias-free qkv projection of the tokens -> queries (times `scale`), keys and values of every
    window slot, split into heads; padding slots read a zero token (so they hold the bias).

    (B, L, 3C), (3C,), slot_source (S,), token_slot (L,) -> 3 x (B*S/N, heads, N, C/heads)
    """

    def __init__(self, num_heads, window_tokens, scale):
        super().__init__()
        self.num_heads = num_heads
        self.window_tokens = window_tokens
        self.scale = scale
        self.scale_tensor = Tensor([scale], ms.float32)
        self.layout = Tensor(np.zeros((num_heads, window_tokens), np.int32))  # only its shape is read
        self.kernel = _kernel_for("attention_heads_cpu.cc", _qkv_heads_primitive)

    def _heads(self, x):
        """(B, S, C) -> (B*S/N, heads, N, C/heads)"""
        return x.reshape(-1, self.window_tokens, self.num_heads, x.shape[-1] // self.num_heads).transpose(0, 2, 1, 3)

    def construct(self, qkv, bias, slot_source, token_slot):
        if self.kernel is not None:
            # Under mixed precision every float tensor of the Cell arrives in float16: cast back.
            scale = self.scale_tensor.astype(ms.float32)
            q, k, v = self.kernel(qkv.astype(ms.float32), bias.astype(ms.float32), scale, slot_source, token_slot,
                                  self.layout)
            return q.astype(qkv.dtype), k.astype(qkv.dtype), v.astype(qkv.dtype)
        batch, tokens, width = qkv.shape
        if slot_source.shape[0] > tokens:
            qkv = ops.concat((qkv, ops.zeros((batch, 1, width), qkv.dtype)), axis=1)
        slots = ops.gather(qkv, slot_source, 1) + bias.astype(qkv.dtype)
        # Splitting on the channel axis first is several times faster on CPU than indexing a 5-D transpose.
        q, k, v = ops.split(slots, width // 3, axis=-1)
        return self._heads(q * self.scale), self._heads(k), self._heads(v)


@functools.lru_cache(maxsize=None)
def _merge_heads_primitive(library):
    backward = ops.Custom(f"{library}:MergeHeadsBackward",
                          out_shape=lambda dy, source, slot, layout: _window_heads_shape(dy[0], source, layout, dy[2]),
                          out_dtype=lambda dy, source, slot, layout: dy, func_type="aot")

    # The forward input is not passed on: a bprop that takes it keeps it alive until the backward
    # pass, even if the kernel would read only its shape.
    def bprop(x, slot_source, token_slot, layout, out, dout):
        return (backward(dout, slot_source, token_slot, layout),) + _zero_gradients(slot_source, token_slot, layout)

    return ops.Custom(f"{library}:MergeHeadsForward",
                      out_shape=lambda x, source, slot, layout: [x[0] * x[2] // source[0], slot[0], x[1] * x[3]],
                      out_dtype=lambda x, source, slot, layout: x, func_type="aot", bprop=bprop)


class MergeHeads(nn.Cell):
    """Per-head attention output of the window slots back to the tokens (padding slots dropped).

    (B*S/N, heads, N, d), slot_source (S,), token_slot (L,) -> (B, L, heads*d)
    """

    def __init__(self, num_heads, window_tokens):
        super().__init__()
        self.layout = Tensor(np.zeros((num_heads, window_tokens), np.int32))  # only its shape is read
        self.kernel = _kernel_for("attention_heads_cpu.cc", _merge_heads_primitive)

    def construct(self, x, slot_source, token_slot):
        if self.kernel is not None:
            return self.kernel(x.astype(ms.float32), slot_source, token_slot, self.layout).astype(x.dtype)
        windows, heads, tokens, head_dim = x.shape
        slots = x.transpose(0, 2, 1, 3).reshape(-1, slot_source.shape[0], heads * head_dim)
        return ops.gather(slots, token_slot, 1)


def _swapped(shape):
    return list(shape[:-2]) + [shape[-1], shape[-2]]


@functools.lru_cache(maxsize=None)
def _swap_last_axes_primitive(library):
    backward = ops.Custom(f"{library}:SwapLastAxes", out_shape=_swapped, out_dtype=lambda dy: dy, func_type="aot")

    def bprop(x, out, dout):
        return (backward(dout),)

    return ops.Custom(f"{library}:SwapLastAxes", out_shape=_swapped, out_dtype=lambda x: x, func_type="aot",
                      bprop=bprop)


class SwapLastAxes(nn.Cell):
    """Transpose of the last two axes, through the compiled CPU kernel when active. (..., R, C) -> (..., C, R)"""

    def __init__(self):
        super().__init__()
        self.kernel = _kernel_for("swap_axes_cpu.cc", _swap_last_axes_primitive)

    def construct(self, x):
        if self.kernel is None:
            return ops.swapaxes(x, -2, -1)
        return self.kernel(x.astype(ms.float32)).astype(x.dtype)


def _shift_sum_shape(wide, layout):
    return [wide[0], wide[1], wide[2] // (layout[1] * layout[1])]


def _shift_sum_gradient_shape(dout, layout):
    return [dout[0], dout[1], dout[2] * layout[1] * layout[1]]


@functools.lru_cache(maxsize=None)
def _shift_sum_primitive(library):
    backward = ops.Custom(f"{library}:ShiftSumBackward", out_shape=_shift_sum_gradient_shape,
                          out_dtype=lambda dout, layout: dout, func_type="aot")

    def bprop(wide, layout, out, dout):
        return (backward(dout, layout),) + _zero_gradients(layout)

    return ops.Custom(f"{library}:ShiftSum", out_shape=_shift_sum_shape, out_dtype=lambda wide, layout: wide,
                      func_type="aot", bprop=bprop)


class ShiftSum(nn.Cell):
    """Spatial half of a stride-1 'same' k x k convolution: out[h, w] = sum over (i, j) of
    wide[h + i - k//2, w + j - k//2, (i, j)], zero outside the map. (B, H*W, k*k*C), H -> (B, H*W, C)

    Only with the compiled CPU kernels (`kernel` is None without them); callers fall back to unfold + matmul.
    """

    def __init__(self, kernel_size):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel = _kernel_for("conv_shift_cpu.cc", _shift_sum_primitive)

    def construct(self, wide, height):
        layout = ops.zeros((height, self.kernel_size), ms.int32)  # only its shape is read
        return self.kernel(wide.astype(ms.float32), layout).astype(wide.dtype)
