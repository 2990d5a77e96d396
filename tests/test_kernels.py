"""The compiled CPU kernels against MindSpore's own ops: outputs and gradients, and the fallback."""
import os

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.models import kernels
from src.models.swin import shifted_window_mask


@pytest.fixture
def kernel_and_reference():
    """Builds each Cell twice: with the compiled kernel and with MindSpore's op."""
    def build(factory):
        kernels.set_cpu_kernels(True)
        fast = factory()
        kernels.set_cpu_kernels(False)
        reference = factory()
        kernels.set_cpu_kernels(True)
        assert fast.kernel is not None, "the kernel did not compile (g++ missing?)"
        assert reference.kernel is None
        for fast_param, reference_param in zip(fast.get_parameters(), reference.get_parameters()):
            reference_param.set_data(fast_param.value().copy())
        return fast, reference
    yield build
    kernels.set_cpu_kernels(True)


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


def test_layer_norm_matches_mindspore(kernel_and_reference):
    fast, reference = kernel_and_reference(lambda: kernels.LayerNorm(48, eps=1e-12))
    rng = np.random.default_rng(0)
    fast.gamma.set_data(ms.Tensor(rng.standard_normal(48).astype(np.float32)))
    fast.beta.set_data(ms.Tensor(rng.standard_normal(48).astype(np.float32)))
    reference.gamma.set_data(fast.gamma.value().copy())
    reference.beta.set_data(fast.beta.value().copy())
    values = rng.standard_normal((2, 37, 48)).astype(np.float32) * 3 + 5
    assert_same(fast, reference, (ms.Tensor(values),), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_softmax_matches_bias_mask_softmax(kernel_and_reference, shifted):
    fast, reference = kernel_and_reference(lambda: kernels.WindowSoftmax(16))
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
        assert kernels.Gelu().kernel is None
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
