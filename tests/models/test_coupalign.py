"""CoupAlign at the tiny config: shapes, graph compilation, zero gates, a short training run."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.engine.train_step import TrainStep
from src.models.coupalign import CoupAlign, SentenceMaskAlignment
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
