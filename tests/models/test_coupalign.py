"""CoupAlign at the tiny config: shapes, graph compilation, zero gates, a short training run."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.engine.train_step import TrainStep
from src.models.coupalign import CoupAlign, ProposalGeometry, SentenceMaskAlignment
from src.models.losses import CoupAlignWithLoss
from tests.conftest import make_batch


class AllOutputs(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        outputs = self.net.forward_train(image, input_ids, attention_mask)
        names = ("fused", "words", "sentence", "mask_queries", "proposals", "pixel_embed", "weights", "low_res_mask")
        return tuple(outputs[name] for name in names) + (self.net.upsample(outputs["low_res_mask"]),)


class EarlierLayers(nn.Cell):
    """The first decoder layer's M, weights and proposals, and M upsampled to the input size."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        mask, weights, proposals = self.net.forward_train(image, input_ids, attention_mask, True)["earlier_layers"][0]
        return mask, weights, proposals, self.net.upsample(mask)


class LanguagePath(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        return self.net.encode(image, input_ids, attention_mask)[1]


@pytest.fixture(scope="module")
def tiny_net(tiny_config):
    ms.set_seed(1)
    net = CoupAlign.from_config(tiny_config)
    net.set_train(False)
    return net


@pytest.mark.slow
def test_every_output_has_its_shape_and_is_finite(tiny_config, tiny_net):
    image, input_ids, attention_mask, _ = make_batch(tiny_config)
    outputs = AllOutputs(tiny_net)(image, input_ids, attention_mask)
    fused, words, sentence, queries, proposals, pixel_embed, weights, low_res, logits = outputs
    size, batch, dim = tiny_config.image_size, 2, tiny_config.decoder_dim
    grid = size // tiny_config.swin_patch_size
    for stage, fused_map in enumerate(fused):
        side = grid // 2 ** stage
        assert fused_map.shape == (batch, tiny_config.swin_embed_dim * 2 ** stage, side, side)
    assert words.shape == (batch, tiny_config.max_tokens, tiny_config.bert_hidden_size)
    assert sentence.shape == (batch, dim)
    assert queries.shape == (batch, tiny_config.num_queries, dim)
    assert proposals.shape == (batch, tiny_config.num_queries, grid, grid)
    assert pixel_embed.shape == (batch, dim, grid, grid)
    assert weights.shape == (batch, tiny_config.num_queries)
    np.testing.assert_allclose(weights.asnumpy().sum(axis=1), 1.0, rtol=1e-5)
    assert low_res.shape == (batch, 1, grid, grid)
    assert logits.shape == (batch, 1, size, size)
    for tensor in (low_res, logits, proposals):
        assert np.isfinite(tensor.asnumpy()).all()
    # The prediction is the SMA-weighted sum of the proposals.
    expected = (weights.asnumpy()[:, :, None, None] * proposals.asnumpy()).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(low_res.asnumpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_swin_alone_returns_four_stage_maps(tiny_config, tiny_net):
    image = make_batch(tiny_config)[0]
    maps = tiny_net.swin(image)
    grid = tiny_config.image_size // tiny_config.swin_patch_size
    assert [m.shape for m in maps] == [(2, tiny_config.swin_embed_dim * 2 ** i, grid >> i, grid >> i)
                                       for i in range(4)]


@pytest.mark.slow
def test_zero_gates_leave_the_language_path_equal_to_bert(tiny_config, tiny_net):
    image, input_ids, attention_mask, _ = make_batch(tiny_config)
    coupled = LanguagePath(tiny_net)(image, input_ids, attention_mask).asnumpy()
    alone = tiny_net.bert(input_ids, attention_mask).asnumpy()
    np.testing.assert_array_equal(coupled, alone)


@pytest.mark.slow
def test_forty_steps_halve_the_segmentation_loss(tiny_config):
    ms.set_seed(2)
    net = CoupAlign.from_config(tiny_config)
    loss_net = CoupAlignWithLoss(net, tiny_config)
    optimizer = nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=1e-3, weight_decay=0.01)
    step = TrainStep(loss_net, optimizer, clip_norm=1.0)
    step.set_train(True)
    batch = make_batch(tiny_config, batch=4, seed=3)
    rate = ms.Tensor([1e-3], ms.float32)
    seg_losses = []
    for _ in range(40):
        total, bce, dice, aux, proposal, grad_norm, overflow = step(rate, *batch)
        assert not bool(overflow.asnumpy())
        seg_losses.append(float(bce.asnumpy()) + float(dice.asnumpy()))
    assert np.isfinite(seg_losses).all()
    assert seg_losses[-1] <= 0.5 * seg_losses[0], seg_losses


def test_bert_layers_must_split_evenly_over_stages(tiny_config):
    config = tiny_config.copy()
    config.bert_num_layers = 3
    with pytest.raises(ValueError, match="bert_num_layers=3"):
        CoupAlign.from_config(config)


def test_training_wrappers_keep_the_network_parameter_names(tiny_config):
    net = CoupAlign.from_config(tiny_config)
    names = {param.name for param in net.get_parameters()}
    loss_net = CoupAlignWithLoss(net, tiny_config)
    optimizer = nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=1e-3)
    step = TrainStep(loss_net, optimizer)
    step_names = {param.name for param in step.get_parameters()}
    assert names <= step_names
    assert "swin.patch_embed.proj.weight" in names


def test_sma_weights_and_mask_by_hand():
    rng = np.random.default_rng(0)
    batch, count, dim, side = 2, 3, 4, 5
    queries, sentence = rng.normal(size=(batch, count, dim)), rng.normal(size=(batch, dim))
    proposals = rng.normal(size=(batch, count, side, side))
    sma = SentenceMaskAlignment(dim)
    mask, weights = sma(*(ms.Tensor(value.astype(np.float32)) for value in (queries, sentence, proposals)))
    # softmax over the proposals of <W q_n, L_g> / sqrt(C), then M = sum_n w_n Y_n
    scores = ((queries @ sma.query_proj.weight.asnumpy().T) * sentence[:, None]).sum(axis=2) / np.sqrt(dim)
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(weights.asnumpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mask.asnumpy()[:, 0], (expected[:, :, None, None] * proposals).sum(axis=1),
                               rtol=1e-4, atol=1e-5)


def _geometry_by_hand(proposals):
    """Centroid x, y, spread x, y and area of sigmoid(Y) over a [-1, 1] grid. (B, N, h, w) -> (B, N, 5)"""
    height, width = proposals.shape[2:]
    rows, columns = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    probs = 1.0 / (1.0 + np.exp(-proposals))
    mass = probs.sum(axis=(2, 3))
    centre = [(probs * grid).sum(axis=(2, 3)) / mass for grid in (columns, rows)]
    spread = [np.sqrt((probs * grid ** 2).sum(axis=(2, 3)) / mass - mean ** 2)
              for grid, mean in zip((columns, rows), centre)]
    return np.stack(centre + spread + [mass / (height * width)], axis=2)


def test_proposal_geometry_by_hand():
    proposals = np.full((1, 2, 4, 6), -30.0)
    proposals[0, 0, :2, :3] = 30.0  # the top-left quarter
    proposals[0, 1, 1:, 4] = 30.0  # a vertical bar on the right
    rng = np.random.default_rng(1)
    proposals = np.concatenate([proposals, rng.normal(size=(1, 2, 4, 6))])
    geometry = ProposalGeometry((4, 6))(ms.Tensor(proposals.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(geometry, _geometry_by_hand(proposals), rtol=1e-4, atol=1e-4)
    # the top-left quarter: x in {-1, -0.6, -0.2}, y in {-1, -1/3}, 6 of 24 cells
    np.testing.assert_allclose(geometry[0, 0], [-0.6, -2 / 3, np.sqrt(0.32 / 3), 1 / 3, 0.25], atol=1e-4)


def test_sma_geometry_lets_the_weights_depend_on_where_the_masks_lie():
    rng = np.random.default_rng(2)
    batch, count, dim, side = 2, 3, 4, 5
    queries, sentence = rng.normal(size=(batch, count, dim)), rng.normal(size=(batch, dim))
    proposals = rng.normal(size=(batch, count, side, side)) * 4.0
    tensors = [ms.Tensor(value.astype(np.float32)) for value in (queries, sentence, proposals)]
    sma = SentenceMaskAlignment(dim, (side, side))
    # The zero-initialised last layer: the same weights as without geometry.
    plain = SentenceMaskAlignment(dim)
    plain.query_proj.weight.set_data(sma.query_proj.weight.value())
    np.testing.assert_allclose(sma(*tensors)[1].asnumpy(), plain(*tensors)[1].asnumpy(), rtol=1e-5, atol=1e-6)
    last = sma.geometry_embed[2]
    last.weight.set_data(ms.Tensor(rng.normal(size=(dim, dim)).astype(np.float32)))
    mask, weights = sma(*tensors)
    first = sma.geometry_embed[0]
    hidden = np.maximum(_geometry_by_hand(proposals) @ first.weight.asnumpy().T + first.bias.asnumpy(), 0.0)
    described = queries + hidden @ last.weight.asnumpy().T
    scores = ((described @ sma.query_proj.weight.asnumpy().T) * sentence[:, None]).sum(axis=2) / np.sqrt(dim)
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(weights.asnumpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mask.asnumpy()[:, 0], (expected[:, :, None, None] * proposals).sum(axis=1),
                               rtol=1e-4, atol=1e-4)


def _mask_losses_by_hand(logits, weights, proposals, gt, coverage):
    """BCE + Dice of the upsampled M, the cheapest proposal's BCE + Dice against the coverage, and -log of the
    SMA weight of that proposal, each averaged over the batch, in NumPy."""
    total = []
    for sample in range(len(gt)):
        prob = 1 / (1 + np.exp(-logits[sample]))
        bce = np.mean(np.maximum(logits[sample], 0) - logits[sample] * gt[sample] +
                      np.log1p(np.exp(-np.abs(logits[sample]))))
        dice = 1 - (2 * (prob * gt[sample]).sum() + 1) / (prob.sum() + gt[sample].sum() + 1)
        costs = [np.mean(np.maximum(p, 0) - p * coverage[sample] + np.log1p(np.exp(-np.abs(p)))) +
                 1 - (2 * (coverage[sample] / (1 + np.exp(-p))).sum() + 1) /
                 ((1 / (1 + np.exp(-p))).sum() + coverage[sample].sum() + 1) for p in proposals[sample]]
        best = int(np.argmin(costs))
        total.append(bce + dice + costs[best] - np.log(weights[sample, best]))
    return np.mean(total)


def test_deep_supervision_adds_the_mask_losses_of_the_earlier_layer(tiny_config):
    ms.set_seed(4)
    net = CoupAlign.from_config(tiny_config)
    net.set_train(False)
    plain_config, deep_config = tiny_config.copy(), tiny_config.copy()
    plain_config.loss_deep_supervision = 0.0
    deep_config.loss_deep_supervision = 0.5
    plain_loss, deep_loss = CoupAlignWithLoss(net, plain_config), CoupAlignWithLoss(net, deep_config)
    for plain_param, deep_param in zip(plain_loss.aux_proj.get_parameters(), deep_loss.aux_proj.get_parameters()):
        deep_param.set_data(plain_param.value())
    image, input_ids, attention_mask, gt = make_batch(tiny_config, batch=2, seed=5)
    plain = plain_loss(image, input_ids, attention_mask, gt)
    deep = deep_loss(image, input_ids, attention_mask, gt)
    # the parts of the last layer are the same; only the total gains the earlier layer's losses
    for plain_part, deep_part in zip(plain[1:], deep[1:]):
        np.testing.assert_allclose(deep_part.asnumpy(), plain_part.asnumpy(), rtol=1e-5)
    mask, weights, proposals, logits = (value.asnumpy() for value in EarlierLayers(net)(image, input_ids,
                                                                                         attention_mask))
    assert mask.shape == (2, 1) + proposals.shape[2:] and weights.shape == (2, tiny_config.num_queries)
    gt = gt.asnumpy()[:, 0]
    side = proposals.shape[2]
    coverage = gt.reshape(2, side, gt.shape[1] // side, side, gt.shape[2] // side).mean(axis=(2, 4))
    expected = 0.5 * _mask_losses_by_hand(logits[:, 0], weights, proposals, gt, coverage)
    np.testing.assert_allclose(float(deep[0].asnumpy() - plain[0].asnumpy()), expected, rtol=1e-3, atol=1e-5)
