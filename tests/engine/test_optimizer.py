"""AdamW parameter groups and their learning-rate schedule."""
import numpy as np
import pytest

from src.engine.train_step import learning_rate_parameters
from src.models.coupalign import CoupAlign
from src.models.losses import CoupAlignWithLoss


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
