"""Segmentation and contrastive losses by hand; the differentiable L2 normalisation."""
import numpy as np

import mindspore as ms
import mindspore.ops as ops

import pytest

from src.models.losses import (bce_with_logits, dice_loss, foreground_contrast_loss, mask_coverage,
                               matched_proposal_loss, proposal_costs, selection_loss)


def test_losses_by_hand():
    logits = ms.Tensor(np.array([[[[0.0, 2.0]]]], np.float32))
    target = ms.Tensor(np.array([[[[1.0, 0.0]]]], np.float32))
    expected_bce = (np.log(2.0) + np.log1p(np.exp(2.0))) / 2
    np.testing.assert_allclose(float(bce_with_logits(logits, target).asnumpy()), expected_bce, rtol=1e-5)
    prob = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
    expected_dice = 1 - (2 * prob[0] + 1) / (prob.sum() + 1 + 1)
    np.testing.assert_allclose(float(dice_loss(logits, target).asnumpy()), expected_dice, rtol=1e-5)


def test_contrast_loss_by_hand():
    # two pixels: one foreground, one background; anchor along the first axis.
    pixels = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32).T.reshape(1, 2, 1, 2)
    anchor = np.array([[1.0, 0.0]], np.float32)
    fg = np.array([1.0, 0.0], np.float32).reshape(1, 1, 1, 2)
    tau = 0.5
    loss = foreground_contrast_loss(ms.Tensor(pixels), ms.Tensor(anchor), ms.Tensor(fg), tau)
    expected = -np.log(np.exp(1 / tau) / (np.exp(1 / tau) + np.exp(0.0)))
    np.testing.assert_allclose(float(loss.asnumpy()), expected, rtol=1e-5)


def test_l2_normalize_matches_mindspore_forward_and_gradient():
    from src.models.losses import l2_normalize
    values = ms.Tensor(np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32))
    weight = ms.Tensor(np.random.default_rng(1).standard_normal((2, 5, 7)).astype(np.float32))
    reference = ops.L2Normalize(axis=1, epsilon=1e-12)

    def ours(x):
        return (l2_normalize(x, axis=1) * weight).sum()

    def theirs(x):
        return (reference(x) * weight).sum()

    ours_out, ours_grad = ms.value_and_grad(ours)(values)
    ref_out, ref_grad = ms.value_and_grad(theirs)(values)
    np.testing.assert_allclose(ours_out.asnumpy(), ref_out.asnumpy(), rtol=1e-5)
    np.testing.assert_allclose(ours_grad.asnumpy(), ref_grad.asnumpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(values, axis=1).asnumpy(), axis=1), 1.0, rtol=1e-5)


def numpy_cost(logits, target):
    """BCE (mean over pixels) + Dice (smooth 1) of one proposal, by hand."""
    bce = np.mean(np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits))))
    prob = 1 / (1 + np.exp(-logits))
    return bce + 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)


def test_matched_proposal_loss_takes_the_cheapest_proposal_by_hand():
    rng = np.random.default_rng(0)
    target = np.zeros((2, 1, 4, 4), np.float32)
    target[0, 0, :2] = 1
    target[1, 0, :, 1:3] = 1
    proposals = rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
    proposals[0, 2] = np.where(target[0, 0] > 0, 4.0, -4.0)  # sample 0: proposal 2 fits
    proposals[1, 0] = np.where(target[1, 0] > 0, 3.0, -3.0)  # sample 1: proposal 0 fits
    costs = np.array([[numpy_cost(proposals[b, n], target[b, 0]) for n in range(3)] for b in range(2)])
    np.testing.assert_allclose(proposal_costs(ms.Tensor(proposals), ms.Tensor(target)).asnumpy(), costs, rtol=1e-5)
    assert costs.argmin(axis=1).tolist() == [2, 0]
    loss = matched_proposal_loss(ms.Tensor(proposals), ms.Tensor(target))
    np.testing.assert_allclose(float(loss.asnumpy()), (costs[0, 2] + costs[1, 0]) / 2, rtol=1e-5)
    # the gradient reaches the matched proposals only
    grads = ms.grad(matched_proposal_loss)(ms.Tensor(proposals), ms.Tensor(target)).asnumpy()
    assert np.abs(grads[0, 2]).sum() > 0 and np.abs(grads[1, 0]).sum() > 0
    assert np.abs(grads[0, :2]).sum() == 0 and np.abs(grads[1, 1:]).sum() == 0


def test_selection_loss_is_the_cross_entropy_towards_the_matched_proposal():
    target = np.zeros((1, 1, 2, 2), np.float32)
    target[0, 0, 0] = 1
    proposals = np.stack([np.where(target[0, 0] > 0, -3.0, 3.0), np.where(target[0, 0] > 0, 3.0, -3.0)])[None]
    weights = np.array([[0.7, 0.3]], np.float32)  # SMA favours proposal 0, but proposal 1 is the target
    loss = selection_loss(ms.Tensor(weights), ms.Tensor(proposals.astype(np.float32)), ms.Tensor(target))
    np.testing.assert_allclose(float(loss.asnumpy()), -np.log(0.3), rtol=1e-5)


def test_mask_coverage_is_the_share_of_each_cell_by_hand():
    mask = np.zeros((1, 1, 8, 8), np.float32)
    mask[0, 0, 1:4, 2:7] = 1.0  # rows 1-3, columns 2-6
    coverage = mask_coverage(ms.Tensor(mask), (2, 2)).asnumpy()
    # 4x4 cells: top-left holds rows 1-3 x columns 2-3 (6 pixels), top-right rows 1-3 x columns 4-6 (9)
    np.testing.assert_allclose(coverage[0, 0], [[6 / 16, 9 / 16], [0.0, 0.0]])
    # nearest-neighbour sampling would read the cells' top-left pixels (0, 0) and (0, 4): both background
    assert float(ops.interpolate(ms.Tensor(mask), size=(2, 2), mode="nearest").asnumpy().sum()) == 0.0


def test_mask_coverage_refuses_a_size_that_does_not_divide_the_mask():
    with pytest.raises(ValueError, match="not a multiple"):
        mask_coverage(ms.Tensor(np.zeros((1, 1, 8, 8), np.float32)), (3, 3))
