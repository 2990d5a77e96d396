"""Mask generator: FPN pixel decoder + query transformer decoder -> N mask embeddings and proposals."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import Normal, initializer

from .exportable import ElementwiseGroupNorm, FloorNearestResize, exportable_formulations_active
from .kernels import SwapLastAxes
from .layers import Mlp, MultiHeadAttention, UnfoldConv2d, broadcast_as, layer_norm, sine_position_encoding


class ConvNormAct(nn.Cell):
    """Conv2d + GroupNorm (+ ReLU). (B, Cin, H, W) -> (B, Cout, H, W)"""

    def __init__(self, in_dim, out_dim, kernel_size, groups, act=True, cpu_kernels=True):
        super().__init__()
        self.conv = UnfoldConv2d(in_dim, out_dim, kernel_size, has_bias=False, cpu_kernels=cpu_kernels)
        group_norm = ElementwiseGroupNorm if exportable_formulations_active() else nn.GroupNorm
        self.norm = group_norm(groups, out_dim)
        self.act = nn.ReLU() if act else nn.Identity()

    def construct(self, x):
        return self.act(self.norm(self.conv(x)))


class PixelDecoder(nn.Cell):
    """Top-down FPN over the fused stage maps.

    4 maps (B, C_i, H_i, W_i) -> P (B, C, H_1, W_1), memory maps at 1/32, 1/16, 1/8 (B, C, H_j, W_j)
    """

    def __init__(self, in_dims, dim, groups, cpu_kernels=True):
        super().__init__()
        self.num_levels = len(in_dims)
        self.lateral = nn.CellList([ConvNormAct(in_dim, dim, 1, groups, act=False, cpu_kernels=cpu_kernels)
                                    for in_dim in in_dims])
        self.smooth = nn.CellList([ConvNormAct(dim, dim, 3, groups, cpu_kernels=cpu_kernels) for _ in in_dims])
        self.mask_features = UnfoldConv2d(dim, dim, 1, has_bias=True, cpu_kernels=cpu_kernels)
        self.exportable_resize = FloorNearestResize() if exportable_formulations_active() else None

    def upsample_nearest(self, y, size):
        """(B, C, h, w) -> (B, C, H, W), nearest neighbour."""
        if self.exportable_resize is not None:
            return self.exportable_resize(y, size)
        return ops.interpolate(y, size=size, mode="nearest")

    def construct(self, features):
        top = self.num_levels - 1
        y = self.smooth[top](self.lateral[top](features[top]))
        memory = (y,)
        for level in range(top - 1, -1, -1):
            lateral = self.lateral[level](features[level])
            y = lateral + self.upsample_nearest(y, lateral.shape[2:])
            y = self.smooth[level](y)
            if level > 0:
                memory = memory + (y,)
        return self.mask_features(y), memory


class QueryDecoderLayer(nn.Cell):
    """Cross-attention to one memory scale, self-attention, FFN; post-norm. (B, N, C) -> (B, N, C)"""

    def __init__(self, dim, num_heads, ffn_dim, dropout, cpu_kernels=True):
        super().__init__()
        self.cross_attn = MultiHeadAttention(dim, dim, dim, num_heads, dropout=dropout)
        self.cross_norm = layer_norm(dim, cpu_kernels=cpu_kernels)
        self.self_attn = MultiHeadAttention(dim, dim, dim, num_heads, dropout=dropout)
        self.self_norm = layer_norm(dim, cpu_kernels=cpu_kernels)
        self.ffn = Mlp(dim, ffn_dim, drop=dropout, cpu_kernels=cpu_kernels)
        self.ffn_norm = layer_norm(dim, cpu_kernels=cpu_kernels)

    def construct(self, queries, query_pos, memory, memory_pos):
        attended = self.cross_attn(queries + query_pos, memory + broadcast_as(memory_pos, memory), memory)
        queries = self.cross_norm(queries + attended)
        with_pos = queries + query_pos
        queries = self.self_norm(queries + self.self_attn(with_pos, with_pos, queries))
        return self.ffn_norm(queries + self.ffn(queries))


class MaskGenerator(nn.Cell):
    """Fused maps -> mask embeddings Q_o (B, N, C), proposals Y_N (B, N, H_1, W_1), pixel embeddings P, and the
    (Q_o, Y_N) of the earlier decoder layers when asked for."""

    def __init__(self, in_dims, resolutions, dim, num_queries, num_layers, num_heads, ffn_dim,
                 groups, dropout=0.0, cpu_kernels=True):
        super().__init__()
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.pixel_decoder = PixelDecoder(in_dims, dim, groups, cpu_kernels)
        # Memory scales, coarsest first, as the pixel decoder returns them.
        scales = [resolutions[level] for level in range(len(in_dims) - 1, 0, -1)]
        self.num_scales = len(scales)
        self.memory_pos = tuple(Tensor(sine_position_encoding(h, w, dim)[None]) for h, w in scales)
        self.level_embed = Parameter(initializer(Normal(0.02), (self.num_scales, dim), ms.float32),
                                     name="level_embed")
        self.query_feat = Parameter(initializer(Normal(1.0), (num_queries, dim), ms.float32), name="query_feat")
        self.query_pos = Parameter(initializer(Normal(1.0), (num_queries, dim), ms.float32), name="query_pos")
        self.layers = nn.CellList([QueryDecoderLayer(dim, num_heads, ffn_dim, dropout, cpu_kernels)
                                   for _ in range(num_layers)])
        self.norm = layer_norm(dim, cpu_kernels=cpu_kernels)
        self.to_tokens = SwapLastAxes(cpu_kernels)
        self.mask_embed = nn.SequentialCell([nn.Dense(dim, dim), nn.ReLU(), nn.Dense(dim, dim), nn.ReLU(),
                                             nn.Dense(dim, dim)])
        self.matmul = ops.BatchMatMul()

    def proposals_of(self, queries, pixel_embed):
        """Queries after a decoder layer (B, N, C), P (B, C, h, w) -> Q_o (B, N, C), Y_N (B, N, h, w)"""
        batch, dim, height, width = pixel_embed.shape
        mask_queries = self.norm(queries)
        proposals = self.matmul(self.mask_embed(mask_queries), pixel_embed.reshape(batch, dim, height * width))
        return mask_queries, proposals.reshape(batch, self.num_queries, height, width)

    def construct(self, features, intermediate=False):
        """With `intermediate` (a constant), also (Q_o, Y_N) after every decoder layer but the last, for deep
        supervision; else that tuple is empty."""
        pixel_embed, memory_maps = self.pixel_decoder(features)
        batch, dim = pixel_embed.shape[0], pixel_embed.shape[1]
        memory = ()
        for index in range(self.num_scales):
            flat = self.to_tokens(memory_maps[index].reshape(batch, dim, -1))
            memory = memory + (flat + broadcast_as(self.level_embed[index], flat),)
        queries = ops.broadcast_to(self.query_feat[None], (batch, self.num_queries, dim))
        query_pos = ops.broadcast_to(self.query_pos[None], (batch, self.num_queries, dim))
        earlier = ()
        for index in range(self.num_layers):
            scale = index % self.num_scales
            queries = self.layers[index](queries, query_pos, memory[scale], self.memory_pos[scale])
            if intermediate and index < self.num_layers - 1:
                earlier = earlier + (self.proposals_of(queries, pixel_embed),)
        mask_queries, proposals = self.proposals_of(queries, pixel_embed)
        return mask_queries, proposals, pixel_embed, earlier

    def no_weight_decay(self):
        return {"level_embed", "query_feat", "query_pos"}
