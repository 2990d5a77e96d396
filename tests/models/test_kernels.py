"""The compiled CPU kernels against their pure-MindSpore references: outputs and gradients, and the fallback."""
import os

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.models import kernels
from src.models.layers import add_bias
from src.models.swin import shifted_window_mask, window_token_indices


@pytest.fixture
def kernel_and_reference():
    """Builds each Cell twice: with the compiled kernel, and with cpu_kernels=False (its reference function)."""
    def build(factory):
        fast = factory(cpu_kernels=True)
        reference = factory(cpu_kernels=False)
        assert fast.kernel is not None, "the kernel did not compile (g++ missing?)"
        assert reference.kernel is None
        for fast_param, reference_param in zip(fast.get_parameters(), reference.get_parameters()):
            reference_param.set_data(fast_param.value().copy())
        return fast, reference
    return build


class GeluOfSum(nn.Cell):
    """The reference of the kernel-only BiasGelu: gelu_reference(add_bias(x, bias))."""

    def construct(self, x, bias):
        return kernels.gelu_reference(add_bias(x, bias))


class SumOfSquares(nn.Cell):
    """Scalar loss with a non-uniform upstream gradient: sum(cell(*inputs) * weight)."""

    def __init__(self, cell, weight):
        super().__init__()
        self.cell = cell
        self.weight = ms.Tensor(weight)

    def construct(self, *inputs):
        return (self.cell(*inputs) * self.weight).sum()


def gradients(cell, inputs, weight, differentiable):
    """(output, gradients of the first `differentiable` inputs, parameter gradients) as numpy."""
    loss = SumOfSquares(cell, weight)
    params = cell.trainable_params()
    grad_fn = ms.value_and_grad(loss, grad_position=tuple(range(differentiable)), weights=params or None)
    _, grads = grad_fn(*inputs)
    input_grads, param_grads = (grads[0], grads[1]) if params else (grads, ())
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    return (cell(*inputs).asnumpy(), [g.asnumpy() for g in input_grads], [g.asnumpy() for g in param_grads])


def assert_same(fast, reference, inputs, rtol, atol, differentiable=None):
    differentiable = len(inputs) if differentiable is None else differentiable
    rng = np.random.default_rng(1)
    weight = rng.standard_normal(fast(*inputs).shape).astype(np.float32)
    fast_out, fast_dx, fast_dp = gradients(fast, inputs, weight, differentiable)
    ref_out, ref_dx, ref_dp = gradients(reference, inputs, weight, differentiable)
    np.testing.assert_allclose(fast_out, ref_out, rtol=rtol, atol=atol)
    for ours, theirs in zip(fast_dx + fast_dp, ref_dx + ref_dp):
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * max(1.0, np.abs(theirs).max()))


def test_gelu_matches_exact_gelu(kernel_and_reference):
    fast, reference = kernel_and_reference(kernels.Gelu)
    values = np.random.default_rng(0).standard_normal((3, 7, 33)).astype(np.float32) * 4
    values[0, 0, :5] = [0.0, -0.0, 12.0, -12.0, 1e-8]
    assert_same(fast, reference, (ms.Tensor(values),), rtol=1e-5, atol=2e-6)


def test_gelu_with_bias_matches_gelu_of_the_sum():
    fast = kernels.BiasGelu(cpu_kernels=True)
    assert fast.kernel is not None, "the kernel did not compile (g++ missing?)"
    reference = GeluOfSum()
    rng = np.random.default_rng(0)
    values = ms.Tensor(rng.standard_normal((2, 5, 33)).astype(np.float32) * 3)
    bias = ms.Tensor(rng.standard_normal(33).astype(np.float32))
    assert_same(fast, reference, (values, bias), rtol=1e-5, atol=2e-6)


def window_indices():
    """A 3x3 token map in 2x2 windows, shifted by 1: four windows, five padding slots."""
    gather, scatter = window_token_indices(3, 3, 2, 1)
    return gather, scatter, ms.Tensor(gather), ms.Tensor(scatter)


def test_qkv_heads_match_gather_bias_scale_and_split(kernel_and_reference):
    fast, reference = kernel_and_reference(lambda **kw: kernels.QkvHeads(num_heads=3, window_tokens=4, scale=0.25, **kw))
    gather, _, slot_source, token_slot = window_indices()
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((2, 9, 3 * 12)).astype(np.float32)
    bias = rng.standard_normal(3 * 12).astype(np.float32)
    q, k, v = (part.asnumpy() for part in fast(ms.Tensor(qkv), ms.Tensor(bias), slot_source, token_slot))
    padded = np.concatenate((qkv, np.zeros((2, 1, 36), np.float32)), axis=1)
    by_hand = (padded[:, gather] + bias).reshape(2 * 4, 4, 3, 3, 4).transpose(2, 0, 3, 1, 4)  # part, W, heads, N, d
    np.testing.assert_allclose(q, by_hand[0] * 0.25, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(k, by_hand[1])
    np.testing.assert_array_equal(v, by_hand[2])
    # The loss weighs all three outputs, so that each one's gradient path is checked.
    inputs = (ms.Tensor(qkv), ms.Tensor(bias), slot_source, token_slot)
    assert_same(ConcatOutputs(fast), ConcatOutputs(reference), inputs, rtol=1e-6, atol=1e-6, differentiable=2)


def test_merge_heads_returns_window_slots_to_their_tokens(kernel_and_reference):
    fast, reference = kernel_and_reference(lambda **kw: kernels.MergeHeads(num_heads=3, window_tokens=4, **kw))
    _, scatter, slot_source, token_slot = window_indices()
    heads = np.random.default_rng(0).standard_normal((2 * 4, 3, 4, 5)).astype(np.float32)
    merged = fast(ms.Tensor(heads), slot_source, token_slot).asnumpy()
    slots = heads.transpose(0, 2, 1, 3).reshape(2, 16, 15)
    np.testing.assert_array_equal(merged, slots[:, scatter])
    assert_same(fast, reference, (ms.Tensor(heads), slot_source, token_slot), rtol=0, atol=0, differentiable=1)


def test_swap_last_axes_is_a_transpose(kernel_and_reference):
    fast, reference = kernel_and_reference(kernels.SwapLastAxes)
    values = np.random.default_rng(0).standard_normal((2, 3, 37, 70)).astype(np.float32)  # partial tiles
    np.testing.assert_array_equal(fast(ms.Tensor(values)).asnumpy(), values.swapaxes(-1, -2))
    assert_same(fast, reference, (ms.Tensor(values),), rtol=0, atol=0)


class ConcatOutputs(nn.Cell):
    """A Cell's tuple of outputs concatenated on axis 1, as one tensor to weigh in a loss."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, *inputs):
        return ms.ops.concat(self.cell(*inputs), axis=1)


def test_layer_norm_matches_mindspore(kernel_and_reference):
    fast, reference = kernel_and_reference(lambda **kw: kernels.LayerNorm(48, eps=1e-12, **kw))
    rng = np.random.default_rng(0)
    fast.gamma.set_data(ms.Tensor(rng.standard_normal(48).astype(np.float32)))
    fast.beta.set_data(ms.Tensor(rng.standard_normal(48).astype(np.float32)))
    reference.gamma.set_data(fast.gamma.value().copy())
    reference.beta.set_data(fast.beta.value().copy())
    values = rng.standard_normal((2, 37, 48)).astype(np.float32) * 3 + 5
    assert_same(fast, reference, (ms.Tensor(values),), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_softmax_matches_bias_mask_softmax(kernel_and_reference, shifted):
    fast, reference = kernel_and_reference(lambda **kw: kernels.WindowSoftmax(16, **kw))
    rng = np.random.default_rng(0)
    mask = shifted_window_mask(8, 8, 4, 2)  # 4 windows of 4x4 tokens
    scores = ms.Tensor(rng.standard_normal((2 * mask.shape[0], 3, 16, 16)).astype(np.float32) * 3)
    bias = ms.Tensor(rng.standard_normal((3, 16, 16)).astype(np.float32))
    inputs = (scores, bias, ms.Tensor(mask)) if shifted else (scores, bias)
    # The shift mask is a constant: only scores and bias need gradients.
    assert_same(fast, reference, inputs, rtol=1e-5, atol=1e-6, differentiable=2)
    probs = fast(*inputs).asnumpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_without_a_compiler_cells_fall_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("COUPALIGN_KERNEL_DIR", str(tmp_path))
    kernels.compiled_library.cache_clear()
    try:
        assert kernels.Gelu(cpu_kernels=True).kernel is None
        assert "no C++ compiler" in capsys.readouterr().err
    finally:
        kernels.compiled_library.cache_clear()


def test_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COUPALIGN_KERNEL_DIR", str(tmp_path))
    kernels.compiled_library.cache_clear()
    try:
        first = kernels.compiled_library("gelu_cpu.cc")
        assert first.startswith(str(tmp_path)) and first.endswith(".so")
        built_at = os.path.getmtime(first)
        kernels.compiled_library.cache_clear()
        assert kernels.compiled_library("gelu_cpu.cc") == first
        assert os.path.getmtime(first) == built_at
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]
    finally:
        kernels.compiled_library.cache_clear()


def test_dense_gelu_matches_its_fallback():
    from src.models.layers import DenseGelu
    fast, reference = DenseGelu(5, 33, cpu_kernels=True), DenseGelu(5, 33, cpu_kernels=False)
    assert fast.bias_gelu.kernel is not None and reference.bias_gelu.kernel is None
    assert [p.name for p in fast.get_parameters()] == ["weight", "bias"]
    for fast_param, reference_param in zip(fast.get_parameters(), reference.get_parameters()):
        reference_param.set_data(fast_param.value().copy())
    values = ms.Tensor(np.random.default_rng(0).standard_normal((2, 7, 5)).astype(np.float32))
    assert_same(fast, reference, (values,), rtol=1e-5, atol=2e-6)
