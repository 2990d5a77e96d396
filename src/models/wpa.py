"""Word-Pixel Alignment: bidirectional fusion of pixel and word features at one encoder stage."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import Zero

from .kernels import Gelu
from .layers import MultiHeadAttention, broadcast_as, layer_norm, sine_position_encoding


class TanhGate(nn.Cell):
    """Per-channel gate in (-1, 1); its last layer starts at zero so the gate starts closed. (..., C) -> (..., C)"""

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Dense(dim, dim)
        self.fc2 = nn.Dense(dim, dim, weight_init=Zero(), bias_init=Zero())

    def construct(self, x):
        return ops.tanh(self.fc2(ops.relu(self.fc1(x))))


class PixelPosition(nn.Cell):
    """A fixed 2-D sine encoding of each pixel's place in the image, projected to the pixel width.

    (B, HW, C) pixels -> (B, HW, C) their encodings (broadcast over the batch)
    """

    def __init__(self, resolution, position_dim, dim):
        super().__init__()
        height, width = resolution
        self.encoding = Tensor(sine_position_encoding(height, width, position_dim)[None])
        self.proj = nn.Dense(position_dim, dim)

    def construct(self, pixels):
        return broadcast_as(self.proj(self.encoding.astype(pixels.dtype)), pixels)


class PixelWordAttention(nn.Cell):
    """Language to vision: pixels query the words; the attended language multiplies the pixels.

    (B, HW, Cv), (B, T, Cl), (B, T) -> F (B, HW, Cv)

    With `position_dim` > 0 a fixed 2-D sine encoding of each pixel's place in the image is projected
    into the pixel features before the product, so that words such as "left" or "bottom" can select
    pixels by where they are (Swin's relative position bias alone does not say where a window is).
    """

    def __init__(self, vis_dim, lang_dim, num_heads, dropout=0.0, resolution=None, position_dim=0, cpu_kernels=True):
        super().__init__()
        self.vis_proj = nn.Dense(vis_dim, vis_dim)
        self.position = PixelPosition(resolution, position_dim, vis_dim) if position_dim > 0 else None
        self.attn = MultiHeadAttention(vis_dim, lang_dim, vis_dim, num_heads, dropout=dropout)
        self.fuse_proj = nn.Dense(vis_dim, vis_dim)
        self.gelu = Gelu(cpu_kernels)

    def construct(self, pixels, words, word_mask):
        vis = self.vis_proj(pixels)
        if self.position is not None:
            vis = vis + self.position(vis)
        vis = self.gelu(vis)
        lang = self.attn(pixels, words, words, word_mask)
        return self.gelu(self.fuse_proj(vis * lang))


class PixelKeyAttention(MultiHeadAttention):
    """Attention of a few queries over many pixels without projecting the pixels to keys and values.

    (B, T, q_dim), (B, HW, kv_dim) -> (B, T, out_dim); the same parameters and result as
    MultiHeadAttention(words, pixels, pixels) without a key mask.
    Per head h, q_h k_h^T = (q_h W_k[h]) p^T + q_h b_k[h]: the second term is the same for every
    pixel of a row, and softmax ignores it. attn_h v_h = (attn_h p) W_v[h]^T + rowsum(attn_h) b_v[h].
    So the T queries move to the pixel width instead of the HW pixels to the word width: at stage 1
    this saves two (B, 14400, 768) projections and the memory they hold for the backward pass.
    """

    def __init__(self, q_dim, kv_dim, dim, num_heads, out_dim=None, dropout=0.0):
        super().__init__(q_dim, kv_dim, dim, num_heads, out_dim, dropout)
        self.kv_dim = kv_dim
        self.per_head = ops.BatchMatMul()
        self.per_head_transposed = ops.BatchMatMul(transpose_b=True)

    def _head_major(self, x):
        """(B, T, heads * D) -> (heads, B * T, D)"""
        batch, length, _ = x.shape
        x = x.reshape(batch * length, self.num_heads, self.head_dim)
        return x.transpose(1, 0, 2)

    def construct(self, query, pixels):
        batch, length, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self._head_major(self.q_proj(query) * self.scale)
        key_weight = self.k_proj.weight.astype(q.dtype).reshape(heads, head_dim, self.kv_dim)
        q_in_pixel_space = self.per_head(q, key_weight)                       # (heads, B*T, kv_dim)
        q_in_pixel_space = q_in_pixel_space.reshape(heads, batch, length, self.kv_dim).transpose(1, 0, 2, 3)
        q_in_pixel_space = q_in_pixel_space.reshape(batch, heads * length, self.kv_dim)
        scores = self.matmul_qk(q_in_pixel_space, pixels)                      # (B, heads*T, HW)
        attn = self.attn_drop(ops.softmax(scores.astype(ms.float32), axis=-1).astype(pixels.dtype))
        pooled = self.matmul_av(attn, pixels)                                  # (B, heads*T, kv_dim)
        pooled = pooled.reshape(batch, heads, length, self.kv_dim).transpose(1, 0, 2, 3)
        value_weight = self.v_proj.weight.astype(pooled.dtype).reshape(heads, head_dim, self.kv_dim)
        values = self.per_head_transposed(pooled.reshape(heads, batch * length, self.kv_dim), value_weight)
        values = values.reshape(heads, batch, length, head_dim).transpose(1, 2, 0, 3)
        weight_sums = attn.sum(axis=-1).reshape(batch, heads, length).transpose(0, 2, 1)
        value_bias = self.v_proj.bias.astype(values.dtype).reshape(heads, head_dim)
        values = values + weight_sums.reshape(batch, length, heads, 1) * value_bias
        return self.out_proj(values.reshape(batch, length, heads * head_dim))


class WordPixelAttention(nn.Cell):
    """Vision to language: words query the pixels (projected to the word width), then LayerNorm.

    (B, T, Cl), (B, HW, Cv) -> G (B, T, Cl)

    With `position_dim` > 0 the pixels that the words read carry the projected sine encoding of their place,
    so that a word can gather where the objects it names are ("the left circle" needs every circle's place):
    Swin's features hold no absolute position.
    """

    def __init__(self, lang_dim, vis_dim, num_heads, dropout=0.0, cpu_kernels=True, resolution=None, position_dim=0):
        super().__init__()
        self.position = PixelPosition(resolution, position_dim, vis_dim) if position_dim > 0 else None
        self.attn = PixelKeyAttention(lang_dim, vis_dim, lang_dim, num_heads, dropout=dropout)
        self.norm = layer_norm(lang_dim, cpu_kernels=cpu_kernels)

    def construct(self, words, pixels):
        if self.position is not None:
            pixels = pixels + self.position(pixels)
        return self.norm(self.attn(words, pixels))


class WordPixelAlignment(nn.Cell):
    """Gated bidirectional fusion at one stage.

    V (B, HW, Cv), L (B, T, Cl), mask (B, T) -> V' (B, HW, Cv), L' (B, T, Cl), S = F (B, HW, Cv)

    For ablations either direction can be left out: without language to vision the pixels pass unchanged and
    S = V (the decoder then sees the sentence only through SMA); without vision to language the words do.
    """

    def __init__(self, vis_dim, lang_dim, num_heads=1, dropout=0.0, resolution=None, position_dim=0,
                 cpu_kernels=True, lang_to_vis=True, vis_to_lang=True):
        super().__init__()
        self.lang_to_vis = None
        self.vis_to_lang = None
        if lang_to_vis:
            self.lang_to_vis = PixelWordAttention(vis_dim, lang_dim, num_heads, dropout, resolution, position_dim,
                                                  cpu_kernels)
            self.vis_gate = TanhGate(vis_dim)
        if vis_to_lang:
            self.vis_to_lang = WordPixelAttention(lang_dim, vis_dim, num_heads, dropout, cpu_kernels, resolution,
                                                  position_dim)
            self.lang_gate = TanhGate(lang_dim)

    def construct(self, pixels, words, word_mask):
        fused_pixels = pixels
        if self.lang_to_vis is not None:
            fused_pixels = self.lang_to_vis(pixels, words, word_mask)
        if self.vis_to_lang is not None:
            fused_words = self.vis_to_lang(words, pixels)
            words = words + self.lang_gate(fused_words) * fused_words
        if self.lang_to_vis is not None:
            pixels = pixels + self.vis_gate(fused_pixels) * fused_pixels
        return pixels, words, fused_pixels
