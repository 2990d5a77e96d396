"""Training epochs: the step-wise epoch, the sink-mode epoch (whole epoch on the device), their log
records, and the loop over epochs with validation and checkpoints."""
import json
import os
import time

import mindspore as ms

from ..data.dataset import raising_decode_errors
from ..evaluation import metrics_summary
from ..files import atomic_path
from .train_step import ScheduledTrainStep


class JsonLog:
    """Echoes a line per record to stdout on every rank (prefixed by the rank when there are several) and,
    on rank 0, appends the record as one JSON line to `<output_dir>/train_log.jsonl`."""

    def __init__(self, path, rank_id=0, group_size=1):
        self.path = path if rank_id == 0 else None
        self.prefix = f"[rank {rank_id}] " if group_size > 1 else ""

    def continue_from(self, position, checkpoint):
        """Before a resumed run writes: the records written after `checkpoint` (Position `position`) by the
        run that was stopped, and a torn last line, move to train_log.superseded.jsonl (appended), so that
        the log reads as one run; a record of the resume takes their place. Returns how many moved."""
        if self.path is None or not os.path.isfile(self.path):
            return 0
        with open(self.path, "r", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        kept, superseded = [], []
        for line in lines:
            (superseded if _written_after(line, position) else kept).append(line)
        resumed = {"resumed_from": checkpoint, "epochs_done": position.epoch, "step": position.global_step,
                   "superseded_records": len(superseded)}
        if superseded:
            side_file = os.path.splitext(self.path)[0] + ".superseded.jsonl"
            with open(side_file, "a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in superseded))
        with atomic_path(self.path, suffix=".jsonl") as temp, open(temp, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in kept) + json.dumps(resumed) + "\n")
        return len(superseded)

    def write(self, record, echo):
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        print(self.prefix + echo, flush=True)


def _written_after(line, position):
    """True for a log line that a run resumed at `position` supersedes: a step record past its global
    step, an epoch record past its epoch, or a line that is not a whole record (torn by a kill)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return True
    if not isinstance(record, dict):
        return True
    if "step" in record:
        return record["step"] > position.global_step
    return record.get("epoch", 0) > position.epoch


LOSS_PARTS = ("loss", "bce", "dice", "aux", "proposal")  # CoupAlignWithLoss's outputs, in order


def step_losses(outputs):
    """The TrainStep's outputs -> [total, bce, dice, aux, proposal] as floats."""
    return [float(value.asnumpy()) for value in outputs[:len(LOSS_PARTS)]]


def step_record(outputs, parts, lr, step_time, samples_per_step):
    """Log record of one step from its outputs and their `step_losses`."""
    grad_norm, overflow = outputs[len(LOSS_PARTS):]
    return {**dict(zip(LOSS_PARTS, parts)),
            "grad_norm": float(grad_norm.asnumpy()), "overflow": bool(overflow.asnumpy()), "lr": lr,
            "step_time": step_time, "samples_per_s": samples_per_step / max(step_time, 1e-9)}


def losses_text(parts):
    return (f"loss {parts[0]:.4f} (bce {parts[1]:.4f} dice {parts[2]:.4f} aux {parts[3]:.4f} "
            f"proposal {parts[4]:.4f})")


class EpochRunner:
    """Runs one epoch of a TrainStep over a dataset, step by step from Python or, with `sink_mode`
    (GPU/Ascend), as one data_sink call whose steps read their learning rates from a table in the graph.

    `global_step` counts the steps run so far (set it before the first epoch when resuming).
    `after_step(epoch, step_in_epoch, global_step)`, when set, runs after every step-wise step and returns
    True to stop the run there (`stop_requested`).
    """

    def __init__(self, train_step, learning_rates, log, steps_per_epoch, epochs, samples_per_step,
                 log_interval, sink_mode=False):
        self.train_step = train_step
        self.learning_rates = learning_rates
        self.log = log
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.samples_per_step = samples_per_step
        self.log_interval = log_interval
        self.scheduled = ScheduledTrainStep(train_step, learning_rates.table()) if sink_mode else None
        self.after_step = None
        self.global_step = 0
        self.stop_requested = False

    def run(self, data, epoch, first_step=0):
        """Trains on `data`, the 0-based `epoch` from its step `first_step` on -> (mean losses of the steps run
        in LOSS_PARTS order, whether the epoch ran to its end)."""
        with raising_decode_errors():
            if self.scheduled is not None:
                totals, steps = self._sunk_epoch(data, epoch, self.steps_per_epoch - first_step)
            else:
                totals, steps = self._stepwise_epoch(data, epoch, first_step)
        # A resumed partial epoch averages the steps of this run only.
        return [value / steps for value in totals], first_step + steps == self.steps_per_epoch

    def _stepwise_epoch(self, data, epoch, first_step):
        totals, steps = [0.0] * len(LOSS_PARTS), 0
        for index, batch in enumerate(data.create_tuple_iterator(num_epochs=1), start=first_step):
            step_start = time.time()
            lr, group_rates = self.learning_rates.for_step(self.global_step)
            outputs = self.train_step(group_rates, *batch)
            parts = step_losses(outputs)
            step_time = time.time() - step_start
            totals = [a + b for a, b in zip(totals, parts)]
            self.global_step += 1
            if index % self.log_interval == 0 or index == self.steps_per_epoch - 1:
                record = {"epoch": epoch + 1, "step": self.global_step,
                          **step_record(outputs, parts, lr, step_time, self.samples_per_step)}
                self.log.write(record, f"epoch {epoch + 1}/{self.epochs} step {index + 1}/{self.steps_per_epoch} "
                                       f"{losses_text(parts)} lr {lr:.3e} {step_time:.2f}s/step "
                                       f"{record['samples_per_s']:.1f} samples/s")
            steps += 1
            if self.after_step is not None and self.after_step(epoch, index + 1, self.global_step):
                self.stop_requested = True
                break
        return totals, steps

    def _sunk_epoch(self, data, epoch, steps):
        self.scheduled.step.set_data(ms.Tensor(self.global_step, ms.int32))
        start = time.time()
        outputs = ms.data_sink(self.scheduled, data, sink_size=steps)()
        step_time = (time.time() - start) / steps
        self.global_step += steps
        parts = step_losses(outputs)
        record = step_record(outputs, parts, self.learning_rates.rate(self.global_step - 1), step_time,
                             self.samples_per_step)
        record.update(epoch=epoch + 1, step=self.global_step, sunk_steps=steps)
        self.log.write(record, f"epoch {epoch + 1}/{self.epochs}: {steps} steps on the device, last step "
                               f"{losses_text(parts)} {step_time:.2f}s/step")
        # Sink mode returns the last step's losses only; they stand in for the epoch mean.
        return [value * steps for value in parts], steps


def train_epochs(runner, make_data, epochs, validate, checkpoints, first_step=0):
    """Runs `runner` over the 0-based `epochs`; after each: validation (`validate(epoch)` -> metrics or None),
    then the checkpoints, then the epoch's record in the runner's log. Ends early when the runner's
    `after_step` asks to stop.

    `make_data(epoch, skip_batches)` gives the epoch's (reshuffled) training data from batch `skip_batches` on;
    `first_step` is the number of steps of the first epoch trained before (a resume from the middle of it).
    """
    for epoch in epochs:
        epoch_start = time.time()
        means, finished = runner.run(make_data(epoch, first_step), epoch, first_step)
        if not finished:
            return
        first_step = 0
        record = {"epoch": epoch + 1, "mean_loss": means[0], "epoch_time": time.time() - epoch_start}
        message = f"epoch {epoch + 1}/{runner.epochs} done: mean loss {means[0]:.4f} in {record['epoch_time']:.1f}s"
        new_best = False
        metrics = validate(epoch)
        if metrics is not None:
            record["val"] = metrics
            message += f"; val {metrics_summary(metrics)}"
            new_best = checkpoints.offer_best(metrics["oIoU"])
            if new_best:
                message += " (best)"
        checkpoints.save(epoch + 1, runner.global_step, new_best)
        runner.log.write(record, message)
        if runner.stop_requested:
            return
