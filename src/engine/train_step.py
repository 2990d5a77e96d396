"""One optimiser step: gradients, optional data-parallel all-reduce, loss scaling and global-norm clipping."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor

_square_sum = ops.MultitypeFuncGraph("square_sum")
_scale = ops.MultitypeFuncGraph("scale")


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    return ops.reduce_sum(ops.square(grad.astype(ms.float32)))


@_scale.register("Tensor", "Tensor")
def _scale_tensor(factor, grad):
    return grad * factor.astype(grad.dtype)


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


class TrainStep(nn.Cell):
    """(learning rate per optimizer group (G,), *inputs) -> (total loss, *loss parts, grad norm, overflow flag);
    updates the weights.

    The learning rates enter as a graph input and are assigned inside the graph: a Parameter changed
    from Python with set_data is not seen by the optimizer call under `if finite:` (MindSpore 2.10
    keeps the value it had when the graph was compiled).
    With `loss_scale` > 1 (GPU/Ascend float16), an update whose gradients are not finite is skipped.
    Per-parameter work is mapped with HyperMap and summed with one AddN: a Python loop over the ~800
    gradients of the full model would unroll into a graph deeper than MindSpore's call-depth limit.
    """

    def __init__(self, network_with_loss, optimizer, clip_norm=1.0, loss_scale=1.0, grad_reducer=None):
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

    def construct(self, learning_rates, *inputs):
        for index in range(self.num_lr_groups):
            ops.assign(self.lr_params[index], learning_rates[index])
        outputs, grads = self.grad_fn(*inputs)
        grads = self.grad_reducer(grads)
        if self.loss_scale != 1.0:
            grads = self.hyper_map(ops.partial(_scale, self.unscale), grads)
        grad_norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        # Any inf/nan gradient makes the norm non-finite.
        finite = ops.isfinite(grad_norm)
        if self.clip_norm > 0:
            factor = self.clip_norm / ops.maximum(grad_norm, self.clip_norm)
            grads = self.hyper_map(ops.partial(_scale, factor), grads)
        if finite:
            self.optimizer(grads)
        total = outputs[0] / self.loss_scale
        return (total,) + outputs[1:] + (grad_norm, ops.logical_not(finite))


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
