"""Window attention pieces through the compiled CPU kernels: the biased, masked softmax over the keys,
the split of the qkv projection into per-head window slots, and the merge of the heads back to the tokens."""
import functools

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from .build import kernel_for, zero_gradients

HEADS_SOURCE = "attention_heads_cpu.cc"


def window_softmax_reference(scores, bias, mask=None):
    """softmax(scores + bias [+ shift mask]) over the keys, in float32.

    (B*nW, heads, N, N), (heads, N, N) [, (nW, N, N)] -> (B*nW, heads, N, N)
    """
    scores = scores.astype(ms.float32) + bias.astype(ms.float32)
    if mask is not None:
        windows, heads, tokens, _ = scores.shape
        num_windows = mask.shape[0]
        scores = scores.reshape(-1, num_windows, heads, tokens, tokens)
        scores = scores + mask.reshape(1, num_windows, 1, tokens, tokens).astype(ms.float32)
        scores = scores.reshape(windows, heads, tokens, tokens)
    return ops.softmax(scores, axis=-1)


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
    """window_softmax_reference through the compiled CPU kernel when active.

    (B*nW, heads, N, N), (heads, N, N) [, (nW, N, N)] -> (B*nW, heads, N, N) float32
    """

    def __init__(self, tokens, cpu_kernels=True):
        super().__init__()
        self.kernel = kernel_for("window_softmax_cpu.cc", _window_softmax_primitive, cpu_kernels)
        self.no_mask = Tensor(np.zeros((1, tokens, tokens), np.float32))

    def construct(self, scores, bias, mask=None):
        if self.kernel is None:
            return window_softmax_reference(scores, bias, mask)
        mask = self.no_mask if mask is None else mask
        return self.kernel(scores.astype(ms.float32), bias.astype(ms.float32), mask.astype(ms.float32))


def _window_heads_shape(rows, slot_source, layout, width):
    """Shape (B*nW, heads, N, d) of per-head window tensors for `rows` images of `width` channels."""
    heads, window_tokens = layout
    return [rows * slot_source[0] // window_tokens, heads, window_tokens, width // heads]


def _heads(x, num_heads, window_tokens):
    """(B, S, C) -> (B*S/N, heads, N, C/heads)"""
    return x.reshape(-1, window_tokens, num_heads, x.shape[-1] // num_heads).transpose(0, 2, 1, 3)


def qkv_heads_reference(qkv, bias, slot_source, token_slot, num_heads, window_tokens, scale):
    """Queries (times `scale`), keys and values of every window slot from the bias-free qkv projection
    of the tokens, split into heads; padding slots (slot_source = L) read a zero token, so they hold the bias.

    (B, L, 3C), (3C,), slot_source (S,), token_slot (L,) -> 3 x (B*S/N, heads, N, C/heads)
    """
    batch, tokens, width = qkv.shape
    if slot_source.shape[0] > tokens:
        qkv = ops.concat((qkv, ops.zeros((batch, 1, width), qkv.dtype)), axis=1)
    slots = ops.gather(qkv, slot_source, 1) + bias.astype(qkv.dtype)
    # Splitting on the channel axis first is several times faster on CPU than indexing a 5-D transpose.
    q, k, v = ops.split(slots, width // 3, axis=-1)
    return (_heads(q * scale, num_heads, window_tokens), _heads(k, num_heads, window_tokens),
            _heads(v, num_heads, window_tokens))


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
        return (dqkv, dbias) + zero_gradients(scale, slot_source, token_slot, layout)

    return ops.Custom(
        f"{library}:QkvHeadsForward",
        out_shape=lambda qkv, bias, scale, source, slot, layout: (
            _window_heads_shape(qkv[0], source, layout, qkv[2] // 3),) * 3,
        out_dtype=lambda qkv, bias, scale, source, slot, layout: (qkv, qkv, qkv), func_type="aot", bprop=bprop)


class QkvHeads(nn.Cell):
    """qkv_heads_reference through the compiled CPU kernel when active.

    (B, L, 3C), (3C,), slot_source (S,), token_slot (L,) -> 3 x (B*S/N, heads, N, C/heads)
    """

    def __init__(self, num_heads, window_tokens, scale, cpu_kernels=True):
        super().__init__()
        self.num_heads = num_heads
        self.window_tokens = window_tokens
        self.scale = scale
        self.scale_tensor = Tensor([scale], ms.float32)
        self.layout = Tensor(np.zeros((num_heads, window_tokens), np.int32))  # only its shape is read
        self.kernel = kernel_for(HEADS_SOURCE, _qkv_heads_primitive, cpu_kernels)

    def construct(self, qkv, bias, slot_source, token_slot):
        if self.kernel is None:
            return qkv_heads_reference(qkv, bias, slot_source, token_slot, self.num_heads, self.window_tokens,
                                       self.scale)
        # Under mixed precision every float tensor of the Cell arrives in float16: cast back.
        scale = self.scale_tensor.astype(ms.float32)
        q, k, v = self.kernel(qkv.astype(ms.float32), bias.astype(ms.float32), scale, slot_source, token_slot,
                              self.layout)
        return q.astype(qkv.dtype), k.astype(qkv.dtype), v.astype(qkv.dtype)


def merge_heads_reference(x, slot_source, token_slot):
    """Per-head attention output of the window slots back to the tokens (padding slots dropped).

    (B*S/N, heads, N, d), slot_source (S,), token_slot (L,) -> (B, L, heads*d)
    """
    _, heads, _, head_dim = x.shape
    slots = x.transpose(0, 2, 1, 3).reshape(-1, slot_source.shape[0], heads * head_dim)
    return ops.gather(slots, token_slot, 1)


@functools.lru_cache(maxsize=None)
def _merge_heads_primitive(library):
    backward = ops.Custom(f"{library}:MergeHeadsBackward",
                          out_shape=lambda dy, source, slot, layout: _window_heads_shape(dy[0], source, layout, dy[2]),
                          out_dtype=lambda dy, source, slot, layout: dy, func_type="aot")

    # The forward input is not passed on: a bprop that takes it keeps it alive until the backward
    # pass, even if the kernel would read only its shape.
    def bprop(x, slot_source, token_slot, layout, out, dout):
        return (backward(dout, slot_source, token_slot, layout),) + zero_gradients(slot_source, token_slot, layout)

    return ops.Custom(f"{library}:MergeHeadsForward",
                      out_shape=lambda x, source, slot, layout: [x[0] * x[2] // source[0], slot[0], x[1] * x[3]],
                      out_dtype=lambda x, source, slot, layout: x, func_type="aot", bprop=bprop)


class MergeHeads(nn.Cell):
    """merge_heads_reference through the compiled CPU kernel when active.

    (B*S/N, heads, N, d), slot_source (S,), token_slot (L,) -> (B, L, heads*d)
    """

    def __init__(self, num_heads, window_tokens, cpu_kernels=True):
        super().__init__()
        self.layout = Tensor(np.zeros((num_heads, window_tokens), np.int32))  # only its shape is read
        self.kernel = kernel_for(HEADS_SOURCE, _merge_heads_primitive, cpu_kernels)

    def construct(self, x, slot_source, token_slot):
        if self.kernel is None:
            return merge_heads_reference(x, slot_source, token_slot)
        return self.kernel(x.astype(ms.float32), slot_source, token_slot, self.layout).astype(x.dtype)
