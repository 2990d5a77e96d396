"""Swin by hand: relative position index, shifted-window mask, small stages, recomputed stages."""
import numpy as np
import pytest

import mindspore as ms

from src.models.coupalign import CoupAlign
from src.models.losses import CoupAlignWithLoss
from src.models.swin import SwinBlock, relative_position_index, shifted_window_mask
from tests.conftest import make_batch


def test_relative_position_index_by_hand():
    # window 2: coordinates (0,0),(0,1),(1,0),(1,1); index = (dy+1)*3 + (dx+1)
    expected = np.array([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]).reshape(-1)
    np.testing.assert_array_equal(relative_position_index(2), expected)


def test_shifted_window_mask_separates_regions():
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    np.testing.assert_array_equal(mask[0], 0.0)  # the top-left window is one region
    # the bottom-right window holds four regions: every token sees only itself
    np.testing.assert_array_equal(mask[3] == 0, np.eye(4, dtype=bool))


def test_window_shrinks_and_shift_turns_off_on_small_stages():
    small = SwinBlock(8, (3, 3), 1, 7, 3, 4.0, 0.0)
    assert (small.window_size, small.shift_size, small.attn_mask) == (3, 0, None)
    padded = SwinBlock(8, (30, 30), 1, 12, 6, 4.0, 0.0)
    assert (padded.window_size, padded.shift_size) == (12, 6)
    assert padded.attn_mask.shape == (9, 144, 144)  # 30x30 padded to 36x36
    assert padded.window_gather.shape == (36 * 36,) and padded.window_scatter.shape == (30 * 30,)


@pytest.mark.slow
def test_recomputed_swin_stages_give_the_same_gradients(tiny_config):
    batch = make_batch(tiny_config, batch=2, seed=4)

    def swin_gradients(config, weights=None):
        loss_net = CoupAlignWithLoss(CoupAlign.from_config(config), config)
        if weights is not None:
            assert ms.load_param_into_net(loss_net, weights, strict_load=True) == ([], [])
        loss_net.set_train(False)  # no dropout, so that both runs compute the same function
        params = [param for param in loss_net.trainable_params() if "swin." in param.name]
        grad_fn = ms.value_and_grad(loss_net, None, params, has_aux=True)
        _, grads = grad_fn(*batch)
        return loss_net, {param.name: grad.asnumpy() for param, grad in zip(params, grads)}

    plain, expected = swin_gradients(tiny_config)
    config = tiny_config.copy()
    config.recompute_swin_stages = [1, 2, 3, 4]
    _, recomputed = swin_gradients(config, {param.name: param for param in plain.get_parameters()})
    assert expected.keys() == recomputed.keys()
    for name, grad in expected.items():
        np.testing.assert_allclose(recomputed[name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
    config.recompute_swin_stages = [5]
    with pytest.raises(ValueError, match="recompute_swin_stages"):
        CoupAlign.from_config(config)
