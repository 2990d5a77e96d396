"""Small building blocks shared by the encoders, the fusion and the decoder."""
import math

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter
from mindspore.common.initializer import HeUniform, Uniform, initializer

from .exportable import SameConv2d, exportable_formulations_active
from .kernels import BiasGelu, Gelu, LayerNorm, ShiftSum, SwapLastAxes


def sine_position_encoding(height, width, dim, temperature=10000.0):
    """Fixed 2-D sine/cosine encoding, half the channels for y, half for x: (H*W, dim) float32."""
    half = dim // 2
    freqs = temperature ** (2 * (np.arange(half) // 2) / half)
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height * 2 * math.pi
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width * 2 * math.pi
    pos_y = ys[:, None] / freqs
    pos_x = xs[:, None] / freqs
    pos_y = np.stack((np.sin(pos_y[:, 0::2]), np.cos(pos_y[:, 1::2])), axis=2).reshape(height, -1)
    pos_x = np.stack((np.sin(pos_x[:, 0::2]), np.cos(pos_x[:, 1::2])), axis=2).reshape(width, -1)
    grid = np.concatenate((np.repeat(pos_y[:, None], width, 1), np.repeat(pos_x[None], height, 0)), axis=2)
    encoding = np.zeros((height, width, dim), np.float32)
    encoding[:, :, :grid.shape[2]] = grid
    return encoding.reshape(height * width, dim)


_MATMUL_TRANSPOSED_WEIGHT = ops.MatMul(transpose_b=True)


def project(x, weight):
    """x @ weight.T as nn.Dense computes it, without the bias. (..., in), (out, in) -> (..., out)

    For layers whose bias is added by the next kernel (GELU, head split) in the same pass.
    """
    out = _MATMUL_TRANSPOSED_WEIGHT(x.reshape(-1, x.shape[-1]), weight.astype(x.dtype))
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def broadcast_as(y, x):
    """y explicitly broadcast to x's shape, for an elementwise op with x. y broadcastable to x -> x.shape

    MindSpore 2.10's CPU Add/Sub/Mul/Div kernels keep about four output-sized buffers per graph node
    when one input broadcasts (a (2, 14400, 512) x + bias held 225 MB for as long as the graph lives);
    a same-shape op after an explicit BroadcastTo holds none.
    """
    return ops.broadcast_to(y, x.shape)


def add_bias(x, bias):
    """x + bias along the last axis, as BiasAdd on rows: on CPU a broadcasting Add keeps output-sized
    buffers for the life of the graph (see broadcast_as). (..., C), (C,) -> (..., C)"""
    return ops.bias_add(x.reshape(-1, x.shape[-1]), bias.astype(x.dtype)).reshape(x.shape)


def dense_parameters(weight_shape, has_bias=True):
    """(weight, bias or None) initialised as nn.Dense / nn.Conv2d do: weight HeUniform(sqrt 5) of
    `weight_shape` (out, in, ...), bias Uniform(1/sqrt(fan_in)) of (out,), created in that order."""
    weight = Parameter(initializer(HeUniform(math.sqrt(5)), weight_shape, ms.float32), name="weight")
    if not has_bias:
        return weight, None
    bound = 1 / math.sqrt(int(np.prod(weight_shape[1:])))
    return weight, Parameter(initializer(Uniform(bound), (weight_shape[0],), ms.float32), name="bias")


def layer_norm(dim, eps=1e-5, cpu_kernels=True):
    """LayerNorm over the last axis; parameters are `gamma` and `beta`."""
    return LayerNorm(dim, eps, cpu_kernels)


class DropPath(nn.Cell):
    """Stochastic depth: drops whole residual branches per sample. (B, ...) -> (B, ...)"""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.dropout = nn.Dropout(p=self.drop_prob) if self.drop_prob > 0 else None

    def construct(self, x):
        if self.dropout is None or not self.training:
            return x
        keep_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        # Dropout of a ones tensor gives the per-sample mask already scaled by 1/keep.
        mask = ops.stop_gradient(self.dropout(ops.ones(keep_shape, x.dtype)))
        return x * broadcast_as(mask, x)


class DenseGelu(nn.Cell):
    """GELU(nn.Dense(x)), with nn.Dense's parameters (`weight`, `bias`). (..., in_dim) -> (..., out_dim)

    With the compiled CPU kernels the bias is added inside the GELU kernel (one pass over the output).
    """

    def __init__(self, in_dim, out_dim, cpu_kernels=True):
        super().__init__()
        self.weight, self.bias = dense_parameters((out_dim, in_dim))
        self.bias_gelu = BiasGelu(cpu_kernels)
        self.gelu = Gelu(cpu_kernels=False)  # without the fused kernel: gelu_reference or its exportable form

    def construct(self, x):
        x = project(x, self.weight)
        if self.bias_gelu.kernel is None:
            return self.gelu(add_bias(x, self.bias))
        return self.bias_gelu(x, self.bias)


class Mlp(nn.Cell):
    """Dense -> GELU -> Dense, the first two fused. (..., in_dim) -> (..., out_dim)"""

    def __init__(self, in_dim, hidden_dim, out_dim=None, drop=0.0, cpu_kernels=True):
        super().__init__()
        out_dim = out_dim or in_dim
        self.fc1 = DenseGelu(in_dim, hidden_dim, cpu_kernels)
        self.fc2 = nn.Dense(hidden_dim, out_dim)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x):
        return self.fc2(self.drop(self.fc1(x)))


class MultiHeadAttention(nn.Cell):
    """Multi-head attention with separate query / key-value inputs.

    (B, Nq, q_dim), (B, Nk, kv_dim), (B, Nk) key mask -> (B, Nq, out_dim)
    """

    def __init__(self, q_dim, kv_dim, dim, num_heads, out_dim=None, dropout=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Dense(q_dim, dim)
        self.k_proj = nn.Dense(kv_dim, dim)
        self.v_proj = nn.Dense(kv_dim, dim)
        self.out_proj = nn.Dense(dim, out_dim or dim)
        self.attn_drop = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        # Primitives with transpose flags: ops.matmul's gradient transposes its inputs in copies.
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_av = ops.BatchMatMul()

    def _heads(self, x):
        """(B, L, heads * D) -> (B, heads, L, D); one head needs no transpose (a full-size copy)."""
        batch, length, _ = x.shape
        if self.num_heads == 1:
            return x.reshape(batch, 1, length, self.head_dim)
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, x):
        """(B, heads, L, D) -> (B, L, heads * D)"""
        batch, _, length, _ = x.shape
        if self.num_heads == 1:
            return x.reshape(batch, length, self.head_dim)
        return x.transpose(0, 2, 1, 3).reshape(batch, length, -1)

    def construct(self, query, key, value, key_mask=None):
        batch, length, _ = query.shape
        q = self._heads(self.q_proj(query) * self.scale)
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        scores = self.matmul_qk(q, k)
        if key_mask is not None:
            bias = (1.0 - key_mask.astype(scores.dtype)) * -10000.0
            scores = scores + broadcast_as(bias.reshape(batch, 1, 1, -1), scores)
        attn = self.attn_drop(ops.softmax(scores.astype(ms.float32), axis=-1).astype(v.dtype))
        return self.out_proj(self._merge(self.matmul_av(attn, v)))


class UnfoldConv2d(nn.Cell):
    """Stride-1 'same' convolution as unfold + matmul (1x1: a plain matmul). (B, Cin, H, W) -> (B, Cout, H, W)

    MindSpore's CPU Conv2d kernel is about 50x slower than this for 3x3 kernels on 256 channels.
    The matmul runs on pixel rows (B*H*W, Cin*k*k) as a 2-D matmul, whose gradients need no
    transposed copy of the columns (a batched matmul against (B, Cin*k*k, H*W) made MindSpore
    transpose them: 0.7 of the 2.8 s of a pixel-decoder training step at batch 2).
    With the compiled CPU kernels a k x k convolution instead multiplies the pixels by all k*k weight
    slices at once and sums the shifted slices (ShiftSum): the backward pass then keeps the input
    pixels instead of the k*k times larger unfolded columns.
    Parameters are shaped and named as nn.Conv2d's (`weight` (Cout, Cin, k, k), `bias`).
    """

    def __init__(self, in_dim, out_dim, kernel_size, has_bias=True, cpu_kernels=True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"UnfoldConv2d needs an odd kernel size, got {kernel_size}")
        self.kernel_size = kernel_size
        self.out_dim = out_dim
        self.weight, self.bias = dense_parameters((out_dim, in_dim, kernel_size, kernel_size), has_bias)
        self.to_rows = SwapLastAxes(cpu_kernels)
        self.to_channels = SwapLastAxes(cpu_kernels)
        self.shift_sum = ShiftSum(kernel_size, cpu_kernels) if kernel_size > 1 else None
        self.shifted = self.shift_sum is not None and self.shift_sum.kernel is not None
        self.exportable = SameConv2d(kernel_size) if exportable_formulations_active() else None

    def construct(self, x):
        if self.exportable is not None:
            return self.exportable(x, self.weight, self.bias)
        batch, in_dim, height, width = x.shape
        if self.kernel_size > 1 and not self.shifted:
            columns = ops.unfold(x, self.kernel_size, 1, self.kernel_size // 2, 1)
            out = project(self.to_rows(columns), self.weight.reshape(self.out_dim, -1))
        else:
            rows = self.to_rows(x.reshape(batch, in_dim, height * width))
            if self.shifted:
                slices = self.weight.transpose(2, 3, 0, 1).reshape(-1, in_dim)  # (k*k*Cout, Cin), (i, j) major
                out = self.shift_sum(project(rows, slices), height)
            else:
                out = project(rows, self.weight.reshape(self.out_dim, -1))
        if self.bias is not None:
            out = add_bias(out, self.bias)
        return self.to_channels(out).reshape(batch, self.out_dim, height, width)
