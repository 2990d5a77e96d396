"""TrainStep and ScheduledTrainStep: the learning rates they are given are applied."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.engine.loop import LOSS_PARTS
from src.engine.train_step import ScheduledTrainStep, TrainStep
from src.models.coupalign import CoupAlign
from src.models.losses import CoupAlignWithLoss
from tests.conftest import make_batch


@pytest.mark.slow
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


def test_accumulating_train_step_steps_on_every_kth_call_in_sink_mode():
    """k = 3 under the in-graph schedule: weights move on calls 3 and 6 only, by the mean gradient."""
    from src.engine.optimizer import LearningRates
    loss_net = TwoGroupLoss()
    optimizer = nn.SGD([{"params": [loss_net.first]}, {"params": [loss_net.second]}], learning_rate=0.1)
    rates = LearningRates(np.array([0.1, 0.01], np.float32), [1.0, 1.0], accum_steps=3)
    step = ScheduledTrainStep(TrainStep(loss_net, optimizer, clip_norm=0.0, accum_steps=3), rates.table())
    step.set_train(True)
    inputs = [np.full(4, value, np.float32) for value in (1.0, 2.0, 6.0, 3.0, 3.0, 3.0)]
    firsts = []
    for x in inputs:
        step(ms.Tensor(x))
        firsts.append(float(loss_net.first.asnumpy()[0]))
    # SGD: 1 - 0.1 * mean(1, 2, 6) = 0.7, then 0.7 - 0.01 * 3 = 0.67.
    np.testing.assert_allclose(firsts, [1.0, 1.0, 0.7, 0.7, 0.7, 0.67], rtol=1e-6)
    assert int(step.train_step.accum_count.asnumpy()) == 0


def test_an_overflow_in_one_micro_batch_skips_the_whole_update_and_resets():
    loss_net = TwoGroupLoss()
    optimizer = nn.SGD(loss_net.trainable_params(), learning_rate=0.1)
    step = TrainStep(loss_net, optimizer, clip_norm=0.0, accum_steps=2)
    step.set_train(True)
    rate = ms.Tensor([0.1], ms.float32)
    overflows = [bool(step(rate, ms.Tensor(np.asarray(x, np.float32)))[-1].asnumpy())
                 for x in ([np.inf, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1])]
    assert overflows == [True, True, False]
    np.testing.assert_array_equal(loss_net.first.asnumpy(), np.ones(4, np.float32))
    np.testing.assert_array_equal(step.accum_grads[0].asnumpy(), np.ones(4, np.float32))


def test_a_resumed_train_step_continues_mid_accumulation(tmp_path):
    """Buffers and counter are in the checkpoint: 2 calls, save, 1 call in a fresh step = 3 calls in one."""
    from src.checkpoint import load_network_weights, save_checkpoint

    def accumulating_step():
        loss_net = TwoGroupLoss()
        optimizer = nn.SGD(loss_net.trainable_params(), learning_rate=0.1)
        step = TrainStep(loss_net, optimizer, clip_norm=0.0, accum_steps=3)
        step.set_train(True)
        return step, loss_net

    rate = ms.Tensor([0.1], ms.float32)
    xs = [ms.Tensor(np.full(4, value, np.float32)) for value in (1.0, 2.0, 6.0)]
    whole, whole_net = accumulating_step()
    for x in xs:
        whole(rate, x)
    first_half, _ = accumulating_step()
    for x in xs[:2]:
        first_half(rate, x)
    path = str(tmp_path / "mid.ckpt")
    save_checkpoint(first_half, path)
    resumed, resumed_net = accumulating_step()
    load_network_weights(resumed, path)
    assert int(resumed.accum_count.asnumpy()) == 2
    resumed(rate, xs[2])
    np.testing.assert_allclose(resumed_net.first.asnumpy(), whole_net.first.asnumpy(), rtol=1e-6)
    np.testing.assert_allclose(whole_net.first.asnumpy(), np.full(4, 0.7, np.float32), rtol=1e-6)


def test_only_an_accumulating_train_step_holds_buffers():
    def names(accum_steps):
        loss_net = TwoGroupLoss()
        optimizer = nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=0.1)
        return {param.name for param in TrainStep(loss_net, optimizer, accum_steps=accum_steps).get_parameters()}

    assert {"accum_grad.first", "accum_grad.second", "accum_count"} <= names(2)
    assert not {name for name in names(1) if name.startswith("accum_")}


def tiny_loss_nets(config, seed):
    """Two CoupAlignWithLoss with the same initial weights, the second's copied from the first."""
    ms.set_seed(seed)
    first = CoupAlignWithLoss(CoupAlign.from_config(config), config)
    second = CoupAlignWithLoss(CoupAlign.from_config(config), config)
    weights = {param.name: param.asnumpy() for param in first.get_parameters()}
    for param in second.get_parameters():
        param.set_data(ms.Tensor(weights[param.name]))
    return first, second


@pytest.mark.slow
def test_two_accumulated_micro_batches_train_like_one_batch_of_both(tiny_config):
    """Batch 2 with k = 1 and the same samples as 2 micro-batches of 1 with k = 2 give the same clipped
    AdamW update. Aux loss off: it is normalised by the batch's foreground pixel count, not a per-sample mean."""
    config = tiny_config.copy()
    config.swin_drop_path_rate = 0.0
    config.bert_dropout = 0.0
    config.loss_aux = 0.0
    clip_norm = 0.05
    whole_net, accum_net = tiny_loss_nets(config, seed=11)
    initial = [param.asnumpy().copy() for param in accum_net.trainable_params()]

    def train_step(loss_net, accum_steps):
        # eps 1 makes the first AdamW step about lr * 0.1 * gradient, so a wrongly scaled or clipped
        # accumulated gradient shows in the weights (with the usual eps the first step is nearly lr * sign).
        optimizer = nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=1.0, eps=1.0, weight_decay=0.0)
        step = TrainStep(loss_net, optimizer, clip_norm=clip_norm, accum_steps=accum_steps)
        step.set_train(True)
        return step

    rate = ms.Tensor([1.0], ms.float32)
    batch = make_batch(config, batch=2, seed=6)
    grad_norm = len(LOSS_PARTS)  # TrainStep outputs: the losses, then the gradient norm
    whole_norm = float(train_step(whole_net, 1)(rate, *batch)[grad_norm].asnumpy())
    accum_step = train_step(accum_net, 2)
    accum_step(rate, *[tensor[0:1] for tensor in batch])
    for param, before in zip(accum_net.trainable_params(), initial):
        np.testing.assert_array_equal(param.asnumpy(), before, err_msg=param.name)
    accum_norm = float(accum_step(rate, *[tensor[1:2] for tensor in batch])[grad_norm].asnumpy())

    assert whole_norm > clip_norm  # the update is clipped
    assert accum_norm == pytest.approx(whole_norm, rel=1e-4)
    moved = max(np.abs(param.asnumpy() - before).max() for param, before in zip(whole_net.trainable_params(), initial))
    differences = [np.abs(a.asnumpy() - b.asnumpy()).max()
                   for a, b in zip(whole_net.trainable_params(), accum_net.trainable_params())]
    print(f"largest weight change {moved:.3e}, largest difference k=1 vs k=2 {max(differences):.3e}")
    assert moved > 1e-4
    for a, b in zip(whole_net.trainable_params(), accum_net.trainable_params()):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)
