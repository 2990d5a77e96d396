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


PRETRAINED_PREFIXES = ("swin.", "bert.")
NO_DECAY_MARKERS = ("gamma", "beta", "bias", "relative_position_bias_table", "position_embeddings",
                    "level_embed", "query_feat", "query_pos")


def uses_weight_decay(name):
    return not any(marker in name for marker in NO_DECAY_MARKERS)


def is_pretrained(name):
    return name.startswith(PRETRAINED_PREFIXES)


class LearningRates:
    """Every group's learning rate for a step: base schedule x the group's multiplier.

    TrainStep takes them as a graph input; a per-group schedule inside the graph would make MindSpore
    select the rate of every one of the ~800 parameters, which exceeds its call-depth limit at full size.
    """

    def __init__(self, base_rates, multipliers):
        self.base_rates = base_rates
        self.multipliers = np.asarray(multipliers, np.float32)

    def rate(self, step):
        """Base learning rate of a step (the last one after the schedule ends)."""
        return float(self.base_rates[min(step, len(self.base_rates) - 1)])

    def for_step(self, step):
        """-> (base rate, Tensor (groups,) float32 of the per-group rates)"""
        base = self.rate(step)
        return base, Tensor(np.float32(base) * self.multipliers)

    def table(self):
        """(steps, groups) float32: every step's per-group rates, for a schedule inside the graph."""
        return np.asarray(self.base_rates, np.float32)[:, None] * self.multipliers[None, :]


def build_optimizer(params, config, steps_per_epoch):
    """AdamWeightDecay over (decay or not) x (pretrained encoder or new) groups -> (optimizer, LearningRates)."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    base = poly_lr(config.lr, total_steps, warmup_steps, config.lr_power)
    groups, multipliers = [], []
    for pretrained in (True, False):
        multiplier = 1.0 if pretrained else config.new_param_lr_mult
        for decay in (True, False):
            members = [p for p in params if is_pretrained(p.name) == pretrained and uses_weight_decay(p.name) == decay]
            if members:
                groups.append({"params": members, "weight_decay": config.weight_decay if decay else 0.0,
                               "lr": float(base[0] * multiplier)})
                multipliers.append(multiplier)
    optimizer = nn.AdamWeightDecay(groups, learning_rate=float(base[0]), weight_decay=0.0)
    return optimizer, LearningRates(base, multipliers)
