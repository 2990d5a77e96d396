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


def test_accumulated_micro_steps_take_the_rate_of_their_optimizer_step():
    """With k = 2, micro steps 2i and 2i + 1 share optimizer step i's rate; the table has a row per micro step."""
    from src.engine.optimizer import LearningRates
    rates = LearningRates(np.array([0.3, 0.2, 0.1], np.float32), [1.0, 10.0], accum_steps=2)
    assert [rates.rate(step) for step in range(8)] == pytest.approx([0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1])
    base, group_rates = rates.for_step(3)
    assert base == pytest.approx(0.2)
    np.testing.assert_allclose(group_rates.asnumpy(), [0.2, 2.0], rtol=1e-6)
    expected = np.array([[0.3, 3.0], [0.3, 3.0], [0.2, 2.0], [0.2, 2.0], [0.1, 1.0], [0.1, 1.0]], np.float32)
    np.testing.assert_allclose(rates.table(), expected, rtol=1e-6)


def test_schedule_counts_optimizer_steps_when_accumulating(tiny_config):
    """16 epochs x 5 micro steps with k = 4: 20 optimizer steps, one of them warm-up (5 // 4)."""
    from src.engine.optimizer import build_optimizer, poly_lr
    config = tiny_config.copy()
    config.epochs = 16
    config.warmup_epochs = 1
    config.grad_accum_steps = 4
    _, rates = build_optimizer(CoupAlignWithLoss(CoupAlign.from_config(config), config), config, 5)
    expected = poly_lr(config.lr, 20, 1, config.lr_power)
    np.testing.assert_allclose(rates.base_rates, expected, rtol=1e-6)
    assert rates.table().shape == (80, 4)
    assert [rates.rate(step) for step in (0, 3, 4, 79)] == pytest.approx(
        [expected[0], expected[0], expected[1], expected[19]])


@pytest.mark.parametrize("value", [0, -2, 2.5, "4", True])
def test_grad_accum_steps_must_be_a_positive_integer(value):
    from src.engine.optimizer import check_grad_accum_steps
    with pytest.raises(ValueError, match="grad_accum_steps must be an integer >= 1"):
        check_grad_accum_steps(value)


def test_fractional_warmup_epochs_warm_up_that_share_of_the_steps(tiny_config):
    """warmup_epochs 0.5 of 10 steps per epoch: 5 warm-up steps at lr/5, 2 lr/5, ... then the decay."""
    from src.engine.optimizer import build_optimizer, poly_lr
    config = tiny_config.copy()
    config.warmup_epochs = 0.5
    _, rates = build_optimizer(CoupAlignWithLoss(CoupAlign.from_config(config), config), config, 10)
    np.testing.assert_allclose(rates.base_rates, poly_lr(config.lr, config.epochs * 10, 5, config.lr_power), rtol=1e-6)
    assert [rates.rate(step) for step in range(5)] == pytest.approx([config.lr * k / 5 for k in range(1, 6)])
    assert rates.rate(5) == pytest.approx(config.lr)


def test_negative_warmup_is_refused(tiny_config):
    from src.engine.optimizer import build_optimizer
    config = tiny_config.copy()
    config.warmup_epochs = -1.0
    with pytest.raises(ValueError, match="warmup_epochs must be at least 0"):
        build_optimizer(CoupAlignWithLoss(CoupAlign.from_config(config), config), config, 10)
