"""AdamW with parameter groups (no weight decay on norms, biases and position tables; a learning-rate
multiplier for the parameters that are new to CoupAlign) and its schedule: linear warm-up, then polynomial decay."""
import numpy as np

import mindspore.nn as nn
from mindspore import Tensor


def poly_lr(base_lr, total_steps, warmup_steps=0, power=0.9, end_lr=0.0):
    """Learning rate of every step, float32 (total_steps,)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    steps = np.arange(total_steps, dtype=np.float64)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = np.clip((steps - warmup_steps) / decay_steps, 0.0, 1.0)
    rates = (base_lr - end_lr) * (1.0 - progress) ** power + end_lr
    if warmup_steps > 0:
        warm = steps < warmup_steps
        rates[warm] = base_lr * (steps[warm] + 1) / warmup_steps
    return rates.astype(np.float32)


def no_weight_decay_names(network):
    """Names of the parameters that take no weight decay.

    Every 1-D parameter (norm scales and shifts, biases), plus those a Cell lists, by its own parameter
    names, in its `no_weight_decay()` (position tables and embeddings, learned queries).
    """
    names = {param.name for param in network.trainable_params() if len(param.shape) <= 1}
    for _, cell in network.cells_and_names():
        if hasattr(cell, "no_weight_decay"):
            own = dict(cell.parameters_and_names())
            unknown = sorted(set(cell.no_weight_decay()) - set(own))
            if unknown:
                raise ValueError(f"{type(cell).__name__}.no_weight_decay() names {unknown}, which it does not hold")
            names.update(own[local].name for local in cell.no_weight_decay())
    return names


def pretrained_names(network):
    """Names of the parameters of the Cells `network.pretrained_encoders()` returns."""
    return {param.name for encoder in network.pretrained_encoders() for param in encoder.get_parameters()}


def check_grad_accum_steps(value):
    """`value` as an int; anything but an integer >= 1 is a ValueError naming grad_accum_steps."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"grad_accum_steps must be an integer >= 1, got {value!r}")
    return int(value)


class LearningRates:
    """Every group's learning rate for a step: base schedule x the group's multiplier.

    `base_rates` has one rate per optimizer step; with `accum_steps` k each optimizer step takes k
    micro steps, and the methods below take micro steps (the step counter of the training loop):
    micro step s gets the rate of optimizer step s // k, the update it contributes to.
    TrainStep takes them as a graph input; a per-group schedule inside the graph would make MindSpore
    select the rate of every one of the ~800 parameters, which exceeds its call-depth limit at full size.
    """

    def __init__(self, base_rates, multipliers, accum_steps=1):
        self.base_rates = base_rates
        self.multipliers = np.asarray(multipliers, np.float32)
        self.accum_steps = check_grad_accum_steps(accum_steps)

    def rate(self, step):
        """Base learning rate of a micro step (the last one after the schedule ends)."""
        return float(self.base_rates[min(step // self.accum_steps, len(self.base_rates) - 1)])

    def for_step(self, step):
        """-> (base rate, Tensor (groups,) float32 of the per-group rates) of a micro step"""
        base = self.rate(step)
        return base, Tensor(np.float32(base) * self.multipliers)

    def table(self):
        """(optimizer steps x accum_steps, groups) float32: every micro step's per-group rates, for a
        schedule inside the graph."""
        per_micro_step = np.repeat(np.asarray(self.base_rates, np.float32), self.accum_steps)
        return per_micro_step[:, None] * self.multipliers[None, :]


def build_optimizer(network, config, steps_per_epoch):
    """AdamWeightDecay over the trainable parameters of `network`, in (pretrained encoder or new) x
    (decay or not) groups -> (optimizer, LearningRates).

    The schedule counts optimizer steps: with grad_accum_steps k, an epoch of `steps_per_epoch` micro
    steps makes steps_per_epoch / k of them.
    """
    accum_steps = check_grad_accum_steps(config.grad_accum_steps)
    if config.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be at least 0, got {config.warmup_epochs}")
    total_steps = max(config.epochs * steps_per_epoch // accum_steps, 1)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch) // accum_steps
    base = poly_lr(config.lr, total_steps, warmup_steps, config.lr_power)
    params = network.trainable_params()
    pretrained, no_decay = pretrained_names(network), no_weight_decay_names(network)
    groups, multipliers = [], []
    for from_checkpoint in (True, False):
        multiplier = 1.0 if from_checkpoint else config.new_param_lr_mult
        for decay in (True, False):
            members = [p for p in params
                       if (p.name in pretrained) == from_checkpoint and (p.name not in no_decay) == decay]
            if members:
                groups.append({"params": members, "weight_decay": config.weight_decay if decay else 0.0,
                               "lr": float(base[0] * multiplier)})
                multipliers.append(multiplier)
    optimizer = nn.AdamWeightDecay(groups, learning_rate=float(base[0]), weight_decay=0.0)
    return optimizer, LearningRates(base, multipliers, accum_steps)
