"""One optimiser step: gradients, optional data-parallel all-reduce, gradient accumulation, loss scaling
and global-norm clipping."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import initializer

from .optimizer import check_grad_accum_steps

_square_sum = ops.MultitypeFuncGraph("square_sum")
_scale = ops.MultitypeFuncGraph("scale")
_add_float32 = ops.MultitypeFuncGraph("add_float32")
_assign_or_zero = ops.MultitypeFuncGraph("assign_or_zero")


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    return ops.reduce_sum(ops.square(grad.astype(ms.float32)))


@_scale.register("Tensor", "Tensor")
def _scale_tensor(factor, grad):
    return grad * factor.astype(grad.dtype)


@_add_float32.register("Tensor", "Tensor")
def _add_float32_tensor(total, grad):
    return total + grad.astype(ms.float32)


@_assign_or_zero.register("Tensor", "Tensor", "Tensor")
def _assign_or_zero_tensor(keep, buffer, value):
    # A select, not value * keep: an overflowed (inf) buffer times 0 would stay nan.
    return ops.assign(buffer, ops.where(keep, value, ops.zeros_like(value)))


class ScaledLoss(nn.Cell):
    """Multiplies the first output of a loss network by a static loss scale."""

    def __init__(self, network, scale):
        super().__init__(auto_prefix=False)
        self.network = network
        self.scale = float(scale)

    def construct(self, *inputs):
        outputs = self.network(*inputs)
        return (outputs[0] * self.scale,) + outputs[1:]


def learning_rate_parameters(optimizer):
    """The optimizer's distinct learning-rate Parameters, one per group, in group order."""
    rates = optimizer.learning_rate
    if isinstance(rates, ms.Parameter):
        return [rates]
    unique = {}
    for param in rates:
        unique.setdefault(param.name, param)
    return list(unique.values())


def accumulation_buffers(weights):
    """One zero float32 Parameter `accum_grad.<name>` per weight, outside autodiff."""
    return ms.ParameterTuple(Parameter(initializer("zeros", weight.shape, ms.float32),
                                       name=f"accum_grad.{weight.name}", requires_grad=False)
                             for weight in weights)


class TrainStep(nn.Cell):
    """(learning rate per optimizer group (G,), *inputs) -> (total loss, *loss parts, grad norm, overflow flag);
    updates the weights.

    With `accum_steps` k > 1 each call is one micro-batch: its (all-reduced) gradients are added to
    float32 buffers, and every k-th call steps the optimizer on their mean, then zeroes them. The
    buffers and the call counter `accum_count` are Parameters of this Cell, so a training checkpoint
    holds them and a resume continues mid-accumulation; they live in the graph, so accumulation also
    works under ScheduledTrainStep (sink mode). On the k-1 calls that do not update, grad norm and
    overflow describe the mean gradient accumulated so far (an overflow in any micro-batch skips
    the whole update). The learning rates given on the k-th call are the ones applied.

    The learning rates enter as a graph input and are assigned inside the graph: a Parameter changed
    from Python with set_data is not seen by the optimizer call under `if finite:` (MindSpore 2.10
    keeps the value it had when the graph was compiled).
    With `loss_scale` > 1 (GPU/Ascend float16), an update whose gradients are not finite is skipped.
    Per-parameter work is mapped with HyperMap and summed with one AddN: a Python loop over the ~800
    gradients of the full model would unroll into a graph deeper than MindSpore's call-depth limit.
    """

    def __init__(self, network_with_loss, optimizer, clip_norm=1.0, loss_scale=1.0, grad_reducer=None,
                 accum_steps=1):
        super().__init__(auto_prefix=False)
        self.network = network_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.loss_scale = float(loss_scale)
        scaled = ScaledLoss(network_with_loss, loss_scale) if self.loss_scale != 1.0 else network_with_loss
        self.grad_fn = ops.value_and_grad(scaled, None, self.weights, has_aux=True)
        self.clip_norm = float(clip_norm)
        self.grad_reducer = grad_reducer if grad_reducer is not None else ops.identity
        self.hyper_map = ops.HyperMap()
        self.unscale = Tensor(1.0 / self.loss_scale, ms.float32)
        self.lr_params = ms.ParameterTuple(learning_rate_parameters(optimizer))
        self.num_lr_groups = len(self.lr_params)
        self.accum_steps = check_grad_accum_steps(accum_steps)
        if self.accum_steps > 1:
            self.accum_grads = accumulation_buffers(self.weights)
            self.accum_count = Parameter(Tensor(0, ms.int32), name="accum_count", requires_grad=False)

    def construct(self, learning_rates, *inputs):
        for index in range(self.num_lr_groups):
            ops.assign(self.lr_params[index], learning_rates[index])
        outputs, grads = self.grad_fn(*inputs)
        grads = self.grad_reducer(grads)
        if self.accum_steps > 1:
            grad_norm, finite = self._accumulate_and_step(grads)
        else:
            grad_norm, finite = self._step(grads)
        total = outputs[0] / self.loss_scale
        return (total,) + outputs[1:] + (grad_norm, ops.logical_not(finite))

    def _step(self, grads):
        """Optimizer step on this call's gradients unless they are not finite -> (grad norm, finite)."""
        if self.loss_scale != 1.0:
            grads = self.hyper_map(ops.partial(_scale, self.unscale), grads)
        grad_norm, finite, grads = self._norm_and_clip(grads)
        if finite:
            self.optimizer(grads)
        return grad_norm, finite

    def _accumulate_and_step(self, grads):
        """Adds `grads` to the buffers; on every accum_steps-th call steps on their mean and zeroes them
        -> (norm of the mean so far, finite)."""
        totals = self.hyper_map(_add_float32, self.accum_grads, grads)
        count = self.accum_count + 1
        update = count >= self.accum_steps
        mean = self.hyper_map(ops.partial(_scale, self.unscale / count.astype(ms.float32)), totals)
        grad_norm, finite, mean = self._norm_and_clip(mean)
        if ops.logical_and(update, finite):
            self.optimizer(mean)
        # Selects rather than a branch: the buffers are rewritten every call, zeroed on the update call.
        keep = ops.logical_not(update)
        self.hyper_map(ops.partial(_assign_or_zero, keep), self.accum_grads, totals)
        ops.assign(self.accum_count, count * keep.astype(ms.int32))
        return grad_norm, finite

    def _norm_and_clip(self, grads):
        """-> (global norm, finite, grads clipped to clip_norm)"""
        grad_norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        # Any inf/nan gradient makes the norm non-finite.
        finite = ops.isfinite(grad_norm)
        if self.clip_norm > 0:
            factor = self.clip_norm / ops.maximum(grad_norm, self.clip_norm)
            grads = self.hyper_map(ops.partial(_scale, factor), grads)
        return grad_norm, finite, grads


class ScheduledTrainStep(nn.Cell):
    """(*inputs) -> the TrainStep's outputs, with each step's learning rates read from a table in the graph.

    For dataset sink mode (GPU/Ascend), where the steps of one sink run without Python in between:
    row min(step, last row) of `rate_table` (steps, optimizer groups) goes to the TrainStep, then
    `step` counts up. Set `step` (set_data) before a sink run to resume at a global step.
    """

    def __init__(self, train_step, rate_table):
        super().__init__(auto_prefix=False)
        self.train_step = train_step
        self.rate_table = Tensor(rate_table, ms.float32)
        self.last_row = int(rate_table.shape[0]) - 1
        self.step = Parameter(Tensor(0, ms.int32), name="scheduled_step", requires_grad=False)

    def construct(self, *inputs):
        row = ops.minimum(self.step, self.last_row)
        learning_rates = ops.gather(self.rate_table, row, 0)
        ops.assign_add(self.step, ops.ones((), ms.int32))
        return self.train_step(learning_rates, *inputs)
