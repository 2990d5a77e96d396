"""ONNX-exportable formulations of the few computations whose MindSpore ops the ONNX exporter of
MindSpore 2.10 lacks or writes wrongly: Erf (exact GELU), GroupNorm, Im2Col (the unfold convolution),
ResizeNearestNeighborV2, and ResizeBilinearV2 (written without its half-pixel centres).

They are chosen at construction: Cells built inside `exportable_formulations()` use them (see
CoupAlign.from_config(..., exportable=True)); every other network is built as before. Each formulation
has the same parameters as the computation it replaces and equals it to float32 rounding.
"""
import contextlib
import math
import threading

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

_STATE = threading.local()


@contextlib.contextmanager
def exportable_formulations():
    """Cells constructed inside this block use the formulations of this module."""
    previous = exportable_formulations_active()
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = previous


def exportable_formulations_active():
    """True while a Cell is being constructed inside exportable_formulations()."""
    return getattr(_STATE, "active", False)


# erf(a) = 1 - P(t) exp(-a^2) for a >= 0, t = 1 / (1 + ERF_T_SCALE a), P(t) = sum_k ERF_COEFFS[k-1] t^k:
# a least-squares fit on [0, 6] (max error 2.2e-8 in float64), so that in float32 the GELU below differs
# from the exact one by at most 1.6e-7 * max(1, |x|), as ops.gelu's own float32 result does.
ERF_T_SCALE = 0.47047
ERF_COEFFS = (0.2662534350, 0.2506707610, 0.3289855898, -0.1138731498, 0.5963188340, -0.4162461815,
              0.0878907331)
LOG2_E = math.log2(math.e)


class ErfGelu(nn.Cell):
    """Exact GELU x * (1 + erf(x / sqrt 2)) / 2, erf from Abs, Pow, RealDiv and Select. (...) -> (...)"""

    def construct(self, x):
        a = ops.abs(x) * (1.0 / math.sqrt(2.0))
        # ones / (...) rather than 1 / (...): a scalar numerator becomes Reciprocal, which the exporter lacks.
        t = ops.div(ops.ones_like(a), 1.0 + ERF_T_SCALE * a)
        poly = ERF_COEFFS[-1] * t
        for coeff in ERF_COEFFS[-2::-1]:
            poly = (poly + coeff) * t
        # 2^(-a^2 log2 e) rather than Exp: MindSpore's CPU Exp is up to 4e-6 off (relative), its Pow is not.
        erf_of_a = 1.0 - poly * ops.pow(ops.full_like(a, 2.0), a * a * -LOG2_E)
        erf = ops.select(x >= 0, erf_of_a, -erf_of_a)
        return 0.5 * x * (1.0 + erf)


class ElementwiseGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters `gamma`, `beta`) from reshapes, means and a square root.
    (B, C, H, W) -> (B, C, H, W)"""

    def construct(self, x):
        batch, channels, height, width = x.shape
        grouped = x.reshape(batch, self.num_groups, -1)
        centred = grouped - grouped.mean(axis=2, keep_dims=True)
        variance = (centred * centred).mean(axis=2, keep_dims=True)
        normed = (centred / ops.sqrt(variance + self.eps)).reshape(batch, channels, height, width)
        return (normed * self.gamma.astype(x.dtype).reshape(1, channels, 1, 1)
                + self.beta.astype(x.dtype).reshape(1, channels, 1, 1))


class SameConv2d(nn.Cell):
    """Stride-1 'same' convolution with given weights through Conv2D.
    (B, Cin, H, W), weight (Cout, Cin, k, k), bias (Cout,) or None -> (B, Cout, H, W)"""

    def __init__(self, kernel_size):
        super().__init__()
        self.padding = kernel_size // 2

    def construct(self, x, weight, bias=None):
        bias = None if bias is None else bias.astype(x.dtype)
        return ops.conv2d(x, weight.astype(x.dtype), bias, stride=1, pad_mode="pad", padding=self.padding)


class FloorNearestResize(nn.Cell):
    """ops.interpolate(mode="nearest") through ResizeNearestNeighbor, which the exporter writes as ONNX
    Resize (asymmetric, floor): source index floor(i * in / out), as ops.interpolate takes it.
    (B, C, h, w), size (H, W) -> (B, C, H, W)"""

    def construct(self, x, size):
        return ops.ResizeNearestNeighbor(size)(x)


def bilinear_matrix(in_size, out_size):
    """(out_size, in_size) float32 matrix of 1-D linear interpolation with half-pixel centres, as
    ops.interpolate(mode="bilinear", align_corners=False) samples (no antialiasing)."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix.astype(np.float32)


class MatmulBilinearResize(nn.Cell):
    """Bilinear resize (half-pixel centres) between fixed sizes as two matmuls with interpolation matrices.
    (B, C, h, w) -> (B, C, H, W)"""

    def __init__(self, in_size, out_size):
        super().__init__()
        (in_height, in_width), (self.out_height, self.out_width) = in_size, out_size
        self.rows_t = Tensor(bilinear_matrix(in_height, self.out_height).T)   # (h, H)
        self.cols_t = Tensor(bilinear_matrix(in_width, self.out_width).T)     # (w, W)

    def construct(self, x):
        batch, channels, height, width = x.shape
        across = ops.matmul(x.reshape(-1, width), self.cols_t.astype(x.dtype))            # (B*C*h, W)
        across = across.reshape(batch * channels, height, self.out_width).transpose(0, 2, 1)
        down = ops.matmul(across.reshape(-1, height), self.rows_t.astype(x.dtype))        # (B*C*W, H)
        down = down.reshape(batch * channels, self.out_width, self.out_height).transpose(0, 2, 1)
        return down.reshape(batch, channels, self.out_height, self.out_width)
