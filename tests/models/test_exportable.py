"""Each ONNX-exportable formulation equals the computation it replaces, with the same parameters."""
import math

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from src.models import exportable


def random(shape, seed=0, scale=1.0):
    return ms.Tensor((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32))


def test_erf_gelu_equals_exact_gelu_to_float32_rounding():
    x = np.concatenate([np.linspace(-12, 12, 200001), np.random.default_rng(0).standard_normal(10000) * 3])
    x = x.astype(np.float32)
    ours = exportable.ErfGelu()(ms.Tensor(x)).asnumpy().astype(np.float64)
    reference = ops.gelu(ms.Tensor(x), approximate="none").asnumpy().astype(np.float64)
    exact = 0.5 * x.astype(np.float64) * (1 + np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2)))
    scale = np.maximum(1.0, np.abs(x))
    # float32 keeps 6e-8 relative; each of the two is about 1.1e-7 * max(1, |x|) off the exact value.
    assert (np.abs(ours - exact) / scale).max() < 2e-7
    assert (np.abs(reference - exact) / scale).max() < 2e-7
    assert (np.abs(ours - reference) / scale).max() < 2.5e-7


def test_gelu_cell_built_for_export_uses_the_exportable_formulation():
    from src.models.kernels import Gelu
    from src.models.layers import DenseGelu
    with exportable.exportable_formulations():
        gelu, dense = Gelu(cpu_kernels=True), DenseGelu(4, 6, cpu_kernels=True)
    assert isinstance(gelu.exportable, exportable.ErfGelu) and gelu.kernel is None
    assert isinstance(dense.gelu.exportable, exportable.ErfGelu)
    assert Gelu(cpu_kernels=False).exportable is None and not exportable.exportable_formulations_active()


def test_elementwise_group_norm_equals_group_norm():
    reference = nn.GroupNorm(4, 12)
    ours = exportable.ElementwiseGroupNorm(4, 12)
    assert [p.name for p in ours.get_parameters()] == [p.name for p in reference.get_parameters()]
    for name, value in (("gamma", random((12,), 1)), ("beta", random((12,), 2))):
        getattr(reference, name).set_data(value)
        getattr(ours, name).set_data(value.copy())
    x = random((2, 12, 5, 7), 3, scale=3.0) + 1.5
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size, has_bias", [(1, True), (3, False), (3, True)])
def test_exportable_unfold_conv_equals_the_unfold_conv_with_the_same_weights(kernel_size, has_bias):
    from src.models.layers import UnfoldConv2d
    reference = UnfoldConv2d(6, 5, kernel_size, has_bias=has_bias, cpu_kernels=False)
    with exportable.exportable_formulations():
        ours = UnfoldConv2d(6, 5, kernel_size, has_bias=has_bias, cpu_kernels=False)
    assert [(p.name, p.shape) for p in ours.get_parameters()] == [(p.name, p.shape) for p in reference.get_parameters()]
    for theirs, mine in zip(reference.get_parameters(), ours.get_parameters()):
        mine.set_data(theirs.value().copy())
    x = random((2, 6, 7, 9), 4)
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_size, out_size", [((2, 2), (4, 4)), ((7, 5), (13, 10)), ((4, 4), (4, 4))])
def test_floor_nearest_resize_equals_interpolate_nearest(in_size, out_size):
    x = random((2, 3) + in_size, 5)
    expected = ops.interpolate(x, size=out_size, mode="nearest").asnumpy()
    np.testing.assert_array_equal(exportable.FloorNearestResize()(x, out_size).asnumpy(), expected)


@pytest.mark.parametrize("in_size, out_size", [((16, 16), (64, 64)), ((5, 7), (12, 9)), ((6, 6), (3, 3))])
def test_matmul_bilinear_resize_equals_interpolate_bilinear(in_size, out_size):
    x = random((2, 1) + in_size, 6)
    expected = ops.interpolate(x, size=out_size, mode="bilinear", align_corners=False).asnumpy()
    ours = exportable.MatmulBilinearResize(in_size, out_size)(x).asnumpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_exportable_network_has_the_usual_parameters_and_outputs(tiny_config):
    from src.models.coupalign import CoupAlign
    from tests.conftest import make_batch
    usual = CoupAlign.from_config(tiny_config, cpu_kernels=False)
    ours = CoupAlign.from_config(tiny_config, exportable=True)
    assert [(p.name, p.shape) for p in ours.get_parameters()] == [(p.name, p.shape) for p in usual.get_parameters()]
    ms.load_param_into_net(ours, {p.name: ms.Parameter(p.value().copy(), name=p.name) for p in usual.get_parameters()})
    usual.set_train(False)
    ours.set_train(False)
    image, ids, mask, _ = make_batch(tiny_config)
    np.testing.assert_allclose(ours(image, ids, mask).asnumpy(), usual(image, ids, mask).asnumpy(),
                               rtol=1e-5, atol=1e-5)
