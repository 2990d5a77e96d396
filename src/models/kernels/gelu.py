"""Exact (erf) GELU, alone or after a bias over the last axis, through the compiled CPU kernels."""
import functools

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from ..exportable import ErfGelu, exportable_formulations_active
from .build import kernel_for

SOURCE = "gelu_cpu.cc"


def gelu_reference(x):
    """Exact GELU with MindSpore's op. (...) -> (...)"""
    return ops.gelu(x, approximate="none")


@functools.lru_cache(maxsize=None)
def _gelu_primitive(library):
    backward = ops.Custom(f"{library}:GeluBackward", out_shape=lambda x, dy: x, out_dtype=lambda x, dy: x,
                          func_type="aot")

    def bprop(x, out, dout):
        return (backward(x, dout),)

    return ops.Custom(f"{library}:GeluForward", out_shape=lambda x: x, out_dtype=lambda x: x,
                      func_type="aot", bprop=bprop)


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
    """Exact GELU, through the compiled CPU kernel when active, else gelu_reference; built inside
    exportable_formulations(), through ErfGelu. (...) -> (...)"""

    def __init__(self, cpu_kernels=True):
        super().__init__()
        self.exportable = ErfGelu() if exportable_formulations_active() else None
        self.kernel = None if self.exportable is not None else kernel_for(SOURCE, _gelu_primitive, cpu_kernels)

    def construct(self, x):
        if self.exportable is not None:
            return self.exportable(x)
        if self.kernel is None:
            return gelu_reference(x)
        return self.kernel(x.astype(ms.float32)).astype(x.dtype)


class BiasGelu(nn.Cell):
    """GELU(x + bias) in one pass of the compiled CPU kernel. (..., C), (C,) -> (..., C)

    Only with the compiled CPU kernels (`kernel` is None without them); callers fall back to
    Gelu(cpu_kernels=False)(layers.add_bias(x, bias)), as layers.DenseGelu does.
    """

    def __init__(self, cpu_kernels=True):
        super().__init__()
        self.kernel = kernel_for(SOURCE, _bias_gelu_primitive, cpu_kernels)

    def construct(self, x, bias):
        return self.kernel(x.astype(ms.float32), bias.astype(ms.float32)).astype(x.dtype)
