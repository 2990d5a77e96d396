"""Shared layers against MindSpore's own ops."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn


@pytest.mark.parametrize("kernel_size, cpu_kernels", [(1, True), (3, True), (5, True), (3, False)])
def test_unfold_conv_matches_mindspore_conv2d(kernel_size, cpu_kernels):
    from src.models.layers import UnfoldConv2d
    ours = UnfoldConv2d(6, 5, kernel_size, has_bias=True, cpu_kernels=cpu_kernels)
    assert ours.shifted == (cpu_kernels and kernel_size > 1)
    reference = nn.Conv2d(6, 5, kernel_size, pad_mode="same", has_bias=True)
    reference.weight.set_data(ours.weight.value().copy())
    reference.bias.set_data(ours.bias.value().copy())
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 6, 7, 9)).astype(np.float32))
    upstream = ms.Tensor(np.random.default_rng(1).standard_normal((2, 5, 7, 9)).astype(np.float32))

    def value_and_gradients(cell):
        loss = lambda inputs: (cell(inputs) * upstream).sum()
        grad_fn = ms.value_and_grad(loss, 0, cell.trainable_params())
        _, (d_input, d_params) = grad_fn(x)
        return [cell(x).asnumpy(), d_input.asnumpy()] + [grad.asnumpy() for grad in d_params]

    for got, expected in zip(value_and_gradients(ours), value_and_gradients(reference)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
