"""Data-movement kernels: the transpose of the last two axes, and the shift-sum of a k x k convolution."""
import functools

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .build import kernel_for, zero_gradients


def swap_last_axes_reference(x):
    """Transpose of the last two axes. (..., R, C) -> (..., C, R)"""
    return ops.swapaxes(x, -2, -1)


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
    """swap_last_axes_reference through the compiled CPU kernel when active. (..., R, C) -> (..., C, R)"""

    def __init__(self, cpu_kernels=True):
        super().__init__()
        self.kernel = kernel_for("swap_axes_cpu.cc", _swap_last_axes_primitive, cpu_kernels)

    def construct(self, x):
        if self.kernel is None:
            return swap_last_axes_reference(x)
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
        return (backward(dout, layout),) + zero_gradients(layout)

    return ops.Custom(f"{library}:ShiftSum", out_shape=_shift_sum_shape, out_dtype=lambda wide, layout: wide,
                      func_type="aot", bprop=bprop)


class ShiftSum(nn.Cell):
    """Spatial half of a stride-1 'same' k x k convolution: out[h, w] = sum over (i, j) of
    wide[h + i - k//2, w + j - k//2, (i, j)], zero outside the map. (B, H*W, k*k*C), H -> (B, H*W, C)

    Only with the compiled CPU kernels (`kernel` is None without them); callers fall back to unfold + matmul
    (layers.UnfoldConv2d).
    """

    def __init__(self, kernel_size, cpu_kernels=True):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel = kernel_for("conv_shift_cpu.cc", _shift_sum_primitive, cpu_kernels)

    def construct(self, wide, height):
        layout = ops.zeros((height, self.kernel_size), ms.int32)  # only its shape is read
        return self.kernel(wide.astype(ms.float32), layout).astype(wide.dtype)
