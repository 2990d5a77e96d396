"""Per-step learning rates: linear warm-up, then polynomial decay."""
import numpy as np


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
