"""TrainStep and ScheduledTrainStep: the learning rates they are given are applied."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

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
