"""Swin Transformer image encoder returning the four stage outputs before patch merging.

Parameter names follow the official Swin release (patch_embed.proj, layers.{i}.blocks.{j}.attn.qkv,
...), with MindSpore's LayerNorm `gamma`/`beta` in place of `weight`/`bias`.
"""
import math

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import TruncatedNormal, initializer

from .kernels import MergeHeads, QkvHeads, SwapLastAxes, WindowSoftmax
from .layers import DropPath, Mlp, add_bias, dense_parameters, layer_norm, project

MASK_VALUE = -100.0


def relative_position_index(window_size):
    """Index into the ((2w-1)^2, heads) bias table for every (query, key) pair: (w*w*w*w,) int32."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij"))
    coords = coords.reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :]
    relative = relative.transpose(1, 2, 0) + (window_size - 1)
    index = relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]
    return index.reshape(-1).astype(np.int32)


def shifted_window_mask(height, width, window_size, shift_size):
    """Additive mask keeping attention inside each region of a cyclically shifted map: (nW, N, N)."""
    region = np.zeros((height, width), np.int32)
    bounds = ((0, -window_size), (-window_size, -shift_size), (-shift_size, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            region[slice(*rows), slice(*cols)] = label
            label += 1
    windows = region.reshape(height // window_size, window_size, width // window_size, window_size)
    windows = windows.transpose(0, 2, 1, 3).reshape(-1, window_size * window_size)
    differs = windows[:, :, None] != windows[:, None, :]
    return np.where(differs, MASK_VALUE, 0.0).astype(np.float32)


class WindowQkv(nn.Cell):
    """qkv projection of the tokens straight into per-head window slots, with nn.Dense(dim, 3*dim)'s
    parameters (`weight`, `bias`). (B, L, C), slot_source (S,), token_slot (L,) -> q, k, v (B*S/N, heads, N, C/heads)

    The matmul runs on the L tokens (padding slots cost none); the head split adds the bias, so padding
    slots hold it as the official zero-padded tokens do, and scales the queries.
    """

    def __init__(self, dim, num_heads, window_tokens, scale, cpu_kernels=True):
        super().__init__()
        self.weight, self.bias = dense_parameters((3 * dim, dim))
        self.split_heads = QkvHeads(num_heads, window_tokens, scale, cpu_kernels)

    def construct(self, x, slot_source, token_slot):
        return self.split_heads(project(x, self.weight), self.bias, slot_source, token_slot)


class WindowAttention(nn.Cell):
    """Multi-head self-attention inside (shifted, padded) windows with relative position bias.

    (B, L, C) tokens, slot_source (S,), token_slot (L,) [, shift mask (nW, N, N)] -> (B, L, C)
    The qkv projection runs on the L tokens and the output projection after the windows are merged
    back, so padding slots cost no matmul; window partition, shift and padding happen in the head split.
    """

    def __init__(self, dim, window_size, num_heads, cpu_kernels=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.tokens = window_size * window_size
        self.relative_position_bias_table = Parameter(
            initializer(TruncatedNormal(0.02), ((2 * window_size - 1) ** 2, num_heads), ms.float32),
            name="relative_position_bias_table")
        self.position_index = Tensor(relative_position_index(window_size))
        self.qkv = WindowQkv(dim, num_heads, self.tokens, self.scale, cpu_kernels)
        self.proj = nn.Dense(dim, dim)
        self.merge_heads = MergeHeads(num_heads, self.tokens, cpu_kernels)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_av = ops.BatchMatMul()
        self.softmax = WindowSoftmax(self.tokens, cpu_kernels)

    def position_bias(self):
        """(heads, N, N) bias gathered from the (transposed, small) table."""
        bias = ops.gather(self.relative_position_bias_table.T, self.position_index, 1)
        return bias.reshape(self.num_heads, self.tokens, self.tokens)

    def no_weight_decay(self):
        return {"relative_position_bias_table"}

    def construct(self, x, slot_source, token_slot, mask=None):
        q, k, v = self.qkv(x, slot_source, token_slot)
        attn = self.softmax(self.matmul_qk(q, k), self.position_bias(), mask).astype(v.dtype)
        return self.proj(self.merge_heads(self.matmul_av(attn, v), slot_source, token_slot))


def padded_to_windows(size, window_size):
    """The smallest multiple of the window size that holds `size`."""
    return int(math.ceil(size / window_size)) * window_size


def window_token_indices(height, width, window_size, shift_size):
    """Token order of the shifted, padded windows of an (H, W) map, and its inverse.

    -> (gather (nW*ws*ws,) int32: source token of each window slot, H*W for a padding slot;
        scatter (H*W,) int32: window slot of each source token)
    One gather replaces pad + cyclic shift + window partition, another the reverse; both are
    permutations (plus padding), so the result equals the official roll/partition exactly.
    """
    padded_height, padded_width = padded_to_windows(height, window_size), padded_to_windows(width, window_size)
    rows = (np.arange(padded_height) + shift_size) % padded_height
    cols = (np.arange(padded_width) + shift_size) % padded_width
    source = rows[:, None] * width + cols[None, :]
    source[(rows >= height)[:, None] | (cols >= width)[None, :]] = height * width
    windows_down, windows_across = padded_height // window_size, padded_width // window_size
    gather = source.reshape(windows_down, window_size, windows_across, window_size).transpose(0, 2, 1, 3)
    gather = gather.reshape(-1)
    scatter = np.empty(height * width, np.int64)
    real = gather < height * width
    scatter[gather[real]] = np.nonzero(real)[0]
    return gather.astype(np.int32), scatter.astype(np.int32)


class SwinBlock(nn.Cell):
    """(Shifted) window attention + MLP, each pre-normed and residual. (B, H*W, C) -> (B, H*W, C)"""

    def __init__(self, dim, resolution, num_heads, window_size, shift_size, mlp_ratio, drop_path, cpu_kernels=True):
        super().__init__()
        height, width = resolution
        if min(height, width) <= window_size:
            window_size, shift_size = min(height, width), 0
        self.height, self.width = height, width
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = layer_norm(dim, cpu_kernels=cpu_kernels)
        self.attn = WindowAttention(dim, window_size, num_heads, cpu_kernels)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim, cpu_kernels=cpu_kernels)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), cpu_kernels=cpu_kernels)
        self.attn_mask = None
        gather, scatter = window_token_indices(height, width, window_size, shift_size)
        self.window_gather, self.window_scatter = Tensor(gather), Tensor(scatter)
        if shift_size > 0:
            self.attn_mask = Tensor(shifted_window_mask(
                padded_to_windows(height, window_size), padded_to_windows(width, window_size), window_size,
                shift_size))

    def _attention(self, x):
        return self.attn(x, self.window_gather, self.window_scatter, self.attn_mask)

    def construct(self, x):
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2x2 neighbourhood concat + linear reduction. (B, H*W, C) -> (B, H/2*W/2, 2C)"""

    def __init__(self, resolution, dim, cpu_kernels=True):
        super().__init__()
        self.height, self.width = resolution
        self.norm = layer_norm(4 * dim, cpu_kernels=cpu_kernels)
        self.reduction = nn.Dense(4 * dim, 2 * dim, has_bias=False)

    def construct(self, x):
        batch, _, channels = x.shape
        x = x.reshape(batch, self.height, self.width, channels)
        if self.height % 2 or self.width % 2:
            x = ops.pad(x, (0, 0, 0, self.width % 2, 0, self.height % 2))
        height, width = x.shape[1] // 2, x.shape[2] // 2
        # (row, col) parity order (0,0), (1,0), (0,1), (1,1), as the official concat of strided slices.
        x = x.reshape(batch, height, 2, width, 2, channels).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(batch, height * width, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Cell):
    """Blocks of one stage, then optional patch merging (kept separate for stage-wise fusion)."""

    def __init__(self, dim, resolution, depth, num_heads, window_size, mlp_ratio, drop_paths, merge,
                 cpu_kernels=True):
        super().__init__()
        self.blocks = nn.CellList([
            SwinBlock(dim, resolution, num_heads, window_size,
                      0 if index % 2 == 0 else window_size // 2, mlp_ratio, drop_paths[index], cpu_kernels)
            for index in range(depth)])
        self.downsample = PatchMerging(resolution, dim, cpu_kernels) if merge else None

    def forward_blocks(self, x):
        """(B, H*W, C) -> (B, H*W, C)"""
        for block in self.blocks:
            x = block(x)
        return x

    def forward_downsample(self, x):
        """(B, H*W, C) -> (B, H/2*W/2, 2C); identity on the last stage."""
        if self.downsample is None:
            return x
        return self.downsample(x)


class PatchEmbed(nn.Cell):
    """Non-overlapping patch projection + LayerNorm. (B, 3, H, W) -> (B, H/p*W/p, C)

    `proj` holds a Conv2d-shaped weight (C, 3, p, p); the projection runs as one matmul over patches,
    which on CPU is about 100x faster than MindSpore's strided Conv2d kernel.
    """

    def __init__(self, patch_size, in_chans, embed_dim, cpu_kernels=True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = PatchProjection(patch_size, in_chans, embed_dim)
        self.norm = layer_norm(embed_dim, cpu_kernels=cpu_kernels)

    def construct(self, image):
        return self.norm(self.proj(image))


class PatchProjection(nn.Cell):
    """Conv2d with kernel = stride = p, computed on flattened patches. (B, Cin, H, W) -> (B, H/p*W/p, C)"""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.weight, self.bias = dense_parameters((embed_dim, in_chans, patch_size, patch_size))

    def construct(self, image):
        batch, channels, height, width = image.shape
        p = self.patch_size
        patches = image.reshape(batch, channels, height // p, p, width // p, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, (height // p) * (width // p), channels * p * p)
        return add_bias(project(patches, self.weight.reshape(self.embed_dim, -1)), self.bias)


class SwinTransformer(nn.Cell):
    """Swin backbone. (B, 3, S, S) -> 4 maps (B, C_i, S/(p*2^i), S/(p*2^i)), C_i = embed_dim*2^i"""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, drop_path_rate=0.0, cpu_kernels=True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        self.num_stages = len(depths)
        self.dims = [embed_dim * 2 ** index for index in range(self.num_stages)]
        grid = img_size // patch_size
        self.resolutions = []
        for _ in range(self.num_stages):
            self.resolutions.append((grid, grid))
            grid = (grid + 1) // 2
        rates = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, cpu_kernels)
        stages = []
        for index, depth in enumerate(depths):
            start = sum(depths[:index])
            stages.append(SwinStage(self.dims[index], self.resolutions[index], depth, num_heads[index],
                                    window_size, mlp_ratio, rates[start:start + depth],
                                    merge=index < self.num_stages - 1, cpu_kernels=cpu_kernels))
        self.layers = nn.CellList(stages)
        self.to_channels_first = SwapLastAxes(cpu_kernels)

    @staticmethod
    def config_arguments(config, **overrides):
        """Constructor arguments from the config's image_size / swin_* keys; `overrides` (None = keep) replace them."""
        arguments = {
            "img_size": config.image_size, "patch_size": config.swin_patch_size,
            "embed_dim": config.swin_embed_dim, "depths": tuple(config.swin_depths),
            "num_heads": tuple(config.swin_num_heads), "window_size": config.swin_window_size,
            "mlp_ratio": config.swin_mlp_ratio, "drop_path_rate": config.swin_drop_path_rate,
        }
        arguments.update({key: value for key, value in overrides.items() if value is not None})
        return arguments

    @classmethod
    def from_config(cls, config, cpu_kernels=None, **overrides):
        """The Swin a config describes; `cpu_kernels` None means config.cpu_kernels."""
        cpu_kernels = config.cpu_kernels if cpu_kernels is None else cpu_kernels
        return cls(**cls.config_arguments(config, **overrides), cpu_kernels=cpu_kernels)

    def set_recompute(self, stages):
        """Recompute the blocks of the given 1-based stages in the backward pass instead of keeping their
        activations."""
        for stage in stages:
            if not isinstance(stage, int) or not 1 <= stage <= self.num_stages:
                raise ValueError(f"recompute_swin_stages holds {stage!r}; Swin stages are 1 to {self.num_stages}")
            for block in self.layers[stage - 1].blocks:
                block.recompute()

    def to_map(self, x, stage):
        """(B, H*W, C) tokens of `stage` -> (B, C, H, W)"""
        height, width = self.resolutions[stage]
        return self.to_channels_first(x).reshape(x.shape[0], x.shape[2], height, width)

    def construct(self, image):
        x = self.patch_embed(image)
        outputs = ()
        for index in range(self.num_stages):
            stage = self.layers[index]
            x = stage.forward_blocks(x)
            outputs = outputs + (self.to_map(x, index),)
            x = stage.forward_downsample(x)
        return outputs
