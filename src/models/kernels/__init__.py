"""Hand-written CPU kernels for element-wise and data-movement work that MindSpore's CPU backend does slowly.

build: compiling the C++ sources next to this file (on first use, into a per-CPU cache) and choosing a
kernel for a Cell. One module per op family, each op with a pure-MindSpore reference function that its
Cell runs when built with cpu_kernels=False, on GPU/Ascend, or without a compiler.
"""
from .build import COMPILE_FLAGS, SOURCE_DIR, cache_dir, compiled_library, cpu_kernels_active, kernel_for
from .gelu import BiasGelu, Gelu, gelu_reference
from .layer_norm import LayerNorm, layer_norm_reference
from .layout import ShiftSum, SwapLastAxes, swap_last_axes_reference
from .window_attention import (MergeHeads, QkvHeads, WindowSoftmax, merge_heads_reference, qkv_heads_reference,
                               window_softmax_reference)

__all__ = [
    "COMPILE_FLAGS", "SOURCE_DIR", "cache_dir", "compiled_library", "cpu_kernels_active", "kernel_for",
    "BiasGelu", "Gelu", "gelu_reference", "LayerNorm", "layer_norm_reference",
    "ShiftSum", "SwapLastAxes", "swap_last_axes_reference",
    "MergeHeads", "QkvHeads", "WindowSoftmax", "merge_heads_reference", "qkv_heads_reference",
    "window_softmax_reference",
]
