"""CoupAlign at the tiny config: shapes, graph compilation, zero gates, a short training run."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from src.models.bert import BertModel
from src.models.coupalign import CoupAlign
from src.models.losses import CoupAlignWithLoss, bce_with_logits, dice_loss, foreground_contrast_loss
from src.models.swin import SwinBlock, relative_position_index, shifted_window_mask
from src.engine.train_step import ScheduledTrainStep, TrainStep, learning_rate_parameters


def make_batch(config, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    size, tokens = config.image_size, config.max_tokens
    image = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    input_ids = rng.integers(5, config.vocab_size, (batch, tokens)).astype(np.int32)
    attention_mask = np.ones((batch, tokens), np.int32)
    attention_mask[-1, tokens // 2:] = 0
    input_ids[attention_mask == 0] = 0
    gt = np.zeros((batch, 1, size, size), np.float32)
    for index in range(batch):
        top, left = rng.integers(0, size // 2, 2)
        gt[index, 0, top:top + size // 2, left:left + size // 3] = 1
    return [ms.Tensor(array) for array in (image, input_ids, attention_mask, gt)]


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


def test_swin_alone_returns_four_stage_maps(tiny_config, tiny_net):
    image = make_batch(tiny_config)[0]
    maps = tiny_net.swin(image)
    grid = tiny_config.image_size // tiny_config.swin_patch_size
    assert [m.shape for m in maps] == [(2, tiny_config.swin_embed_dim * 2 ** i, grid >> i, grid >> i)
                                       for i in range(4)]


def test_zero_gates_leave_the_language_path_equal_to_bert(tiny_config, tiny_net):
    image, input_ids, attention_mask, _ = make_batch(tiny_config)
    coupled = LanguagePath(tiny_net)(image, input_ids, attention_mask).asnumpy()
    alone = tiny_net.bert(input_ids, attention_mask).asnumpy()
    np.testing.assert_array_equal(coupled, alone)


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
        total, bce, dice, aux, grad_norm, overflow = step(rate, *batch)
        assert not bool(overflow.asnumpy())
        seg_losses.append(float(bce.asnumpy()) + float(dice.asnumpy()))
    assert np.isfinite(seg_losses).all()
    assert seg_losses[-1] <= 0.5 * seg_losses[0], seg_losses


def test_bert_from_config_matches_the_config(tiny_config):
    bert = BertModel.from_config(tiny_config)
    assert len(bert.layers) == tiny_config.bert_num_layers
    assert bert.embeddings.word_embeddings.embedding_table.shape == (tiny_config.vocab_size,
                                                                     tiny_config.bert_hidden_size)


def test_bert_layers_must_split_evenly_over_stages(tiny_config):
    config = tiny_config.copy()
    config.bert_num_layers = 3
    with pytest.raises(ValueError, match="bert_num_layers=3"):
        CoupAlign.from_config(config)


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


def test_mixed_precision_keeps_norms_in_float32_and_returns_float32(tiny_config):
    from src.engine.amp import apply_mixed_precision
    net = apply_mixed_precision(CoupAlign.from_config(tiny_config), "O2")
    net.set_train(False)
    image, input_ids, attention_mask, _ = make_batch(tiny_config)
    logits = net(image, input_ids, attention_mask)
    assert logits.dtype == ms.float32 and np.isfinite(logits.asnumpy()).all()
    with pytest.raises(ValueError, match="amp_level"):
        apply_mixed_precision(net, "O1")


def test_training_wrappers_keep_the_network_parameter_names(tiny_config):
    net = CoupAlign.from_config(tiny_config)
    names = {param.name for param in net.get_parameters()}
    loss_net = CoupAlignWithLoss(net, tiny_config)
    optimizer = nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=1e-3)
    step = TrainStep(loss_net, optimizer)
    step_names = {param.name for param in step.get_parameters()}
    assert names <= step_names
    assert "swin.patch_embed.proj.weight" in names


def test_learning_rates_follow_the_schedule_per_group(tiny_config):
    from src.engine.optimizer import build_optimizer
    config = tiny_config.copy()
    config.new_param_lr_mult = 10.0
    config.warmup_epochs = 1
    net = CoupAlign.from_config(config)
    optimizer, rates = build_optimizer(CoupAlignWithLoss(net, config), config, 5)
    assert len(rates.multipliers) == 4 == len(learning_rate_parameters(optimizer))
    base, group_rates = rates.for_step(7)
    assert base == pytest.approx(rates.rate(7)) and 0 < base < config.lr
    np.testing.assert_allclose(group_rates.asnumpy(), [base, base, 10 * base, 10 * base], rtol=1e-6)
    np.testing.assert_allclose(rates.table()[7], group_rates.asnumpy(), rtol=1e-6)
    assert rates.table().shape == (config.epochs * 5, 4)
    assert rates.rate(0) == pytest.approx(config.lr / 5)  # first warm-up step


def test_train_step_applies_the_learning_rates_it_is_given(tiny_config):
    """A rate of zero for a group freezes that group; changing the rates between calls takes effect."""
    from src.engine.optimizer import build_optimizer
    net = CoupAlign.from_config(tiny_config)
    loss_net = CoupAlignWithLoss(net, tiny_config)
    optimizer, _ = build_optimizer(loss_net, tiny_config, 5)
    step = TrainStep(loss_net, optimizer)
    step.set_train(True)
    batch = make_batch(tiny_config, batch=2, seed=4)
    swin_weight = net.swin.patch_embed.proj.weight
    decoder_params = [p for p in loss_net.trainable_params() if not p.name.startswith(("swin.", "bert."))]

    def changes(rates):
        before = swin_weight.asnumpy().copy(), [p.asnumpy().copy() for p in decoder_params]
        step(ms.Tensor(np.asarray(rates, np.float32)), *batch)
        return (np.abs(swin_weight.asnumpy() - before[0]).max(),
                max(np.abs(p.asnumpy() - old).max() for p, old in zip(decoder_params, before[1])))

    swin_change, decoder_change = changes([1e-3, 1e-3, 1e-3, 1e-3])
    assert swin_change > 0 and decoder_change > 0
    swin_change, decoder_change = changes([0.0, 0.0, 1e-3, 1e-3])
    assert swin_change == 0 and decoder_change > 0
    assert changes([0.0, 0.0, 0.0, 0.0]) == (0, 0)


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


@pytest.mark.parametrize("num_heads", [1, 4])
def test_pixel_key_attention_equals_attention_over_projected_pixels(num_heads):
    from src.models.layers import MultiHeadAttention
    from src.models.wpa import PixelKeyAttention
    reference = MultiHeadAttention(24, 16, 24, num_heads)
    ours = PixelKeyAttention(24, 16, 24, num_heads)
    rng = np.random.default_rng(num_heads)
    for (name, param), (our_name, our_param) in zip(reference.parameters_and_names(), ours.parameters_and_names()):
        assert name == our_name
        values = ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.3)
        param.set_data(values)
        our_param.set_data(values.copy())
    words = ms.Tensor(rng.standard_normal((2, 5, 24)).astype(np.float32))
    pixels = ms.Tensor(rng.standard_normal((2, 30, 16)).astype(np.float32))
    upstream = ms.Tensor(rng.standard_normal((2, 5, 24)).astype(np.float32))

    def attend_reference(query, keys):
        return reference(query, keys, keys)

    def value_and_gradients(cell, attend):
        def loss(query, keys):
            return (attend(query, keys) * upstream).sum()

        grad_fn = ms.value_and_grad(loss, (0, 1), cell.trainable_params())
        _, (d_inputs, d_params) = grad_fn(words, pixels)
        return [attend(words, pixels).asnumpy()] + [grad.asnumpy() for grad in d_inputs + d_params]

    expected = value_and_gradients(reference, attend_reference)
    got = value_and_gradients(ours, ours)
    for index, (ours_value, reference_value) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(ours_value, reference_value, rtol=1e-4, atol=2e-5, err_msg=str(index))


class TwoGroupLoss(nn.Cell):
    """(x (4,)) -> (loss, loss): two weights, one per optimizer group."""

    def __init__(self):
        super().__init__()
        self.first = ms.Parameter(ms.Tensor(np.ones(4, np.float32)), name="first")
        self.second = ms.Parameter(ms.Tensor(np.ones(4, np.float32)), name="second")

    def construct(self, x):
        loss = (self.first * x).sum() + (self.second * x * 2.0).sum()
        return loss, loss


def test_scheduled_train_step_reads_each_steps_rates_from_its_table():
    """The in-graph schedule of dataset sink mode: row k for the k-th call, the last row after the table ends."""
    loss_net = TwoGroupLoss()
    optimizer = nn.AdamWeightDecay([{"params": [loss_net.first], "lr": 0.1}, {"params": [loss_net.second], "lr": 0.1}],
                                   learning_rate=0.1)
    table = np.array([[1e-2, 0.0], [0.0, 1e-2], [1e-2, 1e-2]], np.float32)
    step = ScheduledTrainStep(TrainStep(loss_net, optimizer, clip_norm=0.0), table)
    step.set_train(True)
    x = ms.Tensor(np.arange(1, 5, dtype=np.float32))

    def moved():
        before = loss_net.first.asnumpy().copy(), loss_net.second.asnumpy().copy()
        step(x)
        return (bool(np.abs(loss_net.first.asnumpy() - before[0]).max() > 0),
                bool(np.abs(loss_net.second.asnumpy() - before[1]).max() > 0))

    assert [moved() for _ in range(4)] == [(True, False), (False, True), (True, True), (True, True)]
    assert int(step.step.asnumpy()) == 4
    step.step.set_data(ms.Tensor(1, ms.int32))
    assert moved() == (False, True)
