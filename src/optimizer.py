"""AdamW with parameter groups: no weight decay on norms, biases and position tables; a learning-rate
multiplier for the parameters that are new to CoupAlign (fusion, decoder, heads)."""
import mindspore.nn as nn
from mindspore import Tensor

from .lr_schedule import poly_lr

PRETRAINED_PREFIXES = ("swin.", "bert.")
NO_DECAY_MARKERS = ("gamma", "beta", "bias", "relative_position_bias_table", "position_embeddings",
                    "level_embed", "query_feat", "query_pos")


def uses_weight_decay(name):
    return not any(marker in name for marker in NO_DECAY_MARKERS)


def is_pretrained(name):
    return name.startswith(PRETRAINED_PREFIXES)


def build_optimizer(params, config, steps_per_epoch):
    """AdamWeightDecay over (decay or not) x (pretrained encoder or new) groups -> (optimizer, base lr per step)."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    base = poly_lr(config.lr, total_steps, warmup_steps, config.lr_power)
    groups = []
    for pretrained in (True, False):
        multiplier = 1.0 if pretrained else config.new_param_lr_mult
        for decay in (True, False):
            members = [p for p in params if is_pretrained(p.name) == pretrained and uses_weight_decay(p.name) == decay]
            if members:
                groups.append({"params": members, "weight_decay": config.weight_decay if decay else 0.0,
                               "lr": Tensor(base * multiplier)})
    return nn.AdamWeightDecay(groups, learning_rate=Tensor(base), weight_decay=0.0), base
