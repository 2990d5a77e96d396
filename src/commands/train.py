"""Training loop: data, model, optimiser, logging, checkpoints, validation and resume."""
import glob
import json
import os
import time

import mindspore as ms
import mindspore.nn as nn

from ..checkpoint import CheckpointError, load_network_weights, load_pretrained, read_checkpoint, save_checkpoint
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset
from ..engine.amp import apply_mixed_precision
from ..engine.optimizer import build_optimizer
from ..engine.train_step import ScheduledTrainStep, TrainStep
from ..evaluation import evaluate_split, metrics_summary
from ..models.coupalign import CoupAlign
from ..models.losses import CoupAlignWithLoss

class JsonLog:
    """Echoes a line per record to stdout on every rank (prefixed by the rank when there are several) and,
    on rank 0, appends the record as one JSON line to `<output_dir>/train_log.jsonl`."""

    def __init__(self, path, rank_id=0, group_size=1):
        self.path = path if rank_id == 0 else None
        self.prefix = f"[rank {rank_id}] " if group_size > 1 else ""

    def write(self, record, echo):
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        print(self.prefix + echo, flush=True)


def build_network(config):
    """CoupAlign with the pretrained encoders the config names, in the config's precision."""
    net = CoupAlign.from_config(config)
    if config.pretrained_swin:
        load_pretrained(net.swin, config.pretrained_swin, "Swin")
    if config.pretrained_bert:
        load_pretrained(net.bert, config.pretrained_bert, "BERT")
    return apply_mixed_precision(net, config.amp_level)


def restore_training_state(train_step, path):
    """Loads weights and optimiser state from a last/epoch checkpoint -> (epoch to start from, best val oIoU)."""
    param_dict = read_checkpoint(path)
    if "epoch" not in param_dict:
        raise CheckpointError(f"{path} holds no training state (epoch); resume from a checkpoint written by "
                              "train.py, or pass it as --pretrained_* / --ckpt_path instead")
    load_network_weights(train_step, path, param_dict)
    best = param_dict.get("best_oiou")
    return int(param_dict["epoch"].asnumpy()), float(best.asnumpy()) if best is not None else -1.0


def prune_epoch_checkpoints(output_dir, keep):
    paths = sorted(glob.glob(os.path.join(output_dir, "coupalign_epoch*.ckpt")), key=os.path.getmtime)
    for path in paths[:-keep] if keep > 0 else []:
        os.remove(path)


def step_losses(outputs):
    """The TrainStep's outputs -> [total, bce, dice, aux] as floats."""
    return [float(value.asnumpy()) for value in outputs[:4]]


def step_record(outputs, parts, lr, step_time, samples_per_step):
    """Log record of one step from its outputs and their `step_losses`."""
    grad_norm, overflow = outputs[4:]
    return {"loss": parts[0], "bce": parts[1], "dice": parts[2], "aux": parts[3],
            "grad_norm": float(grad_norm.asnumpy()), "overflow": bool(overflow.asnumpy()), "lr": lr,
            "step_time": step_time, "samples_per_s": samples_per_step / max(step_time, 1e-9)}


def losses_text(parts):
    return f"loss {parts[0]:.4f} (bce {parts[1]:.4f} dice {parts[2]:.4f} aux {parts[3]:.4f})"


def sunk_epoch(scheduled, data, steps, global_step):
    """Runs one epoch's steps on the device in one data_sink call (GPU/Ascend).

    -> (the last step's outputs, seconds per step)
    """
    scheduled.step.set_data(ms.Tensor(global_step, ms.int32))
    start = time.time()
    outputs = ms.data_sink(scheduled, data, sink_size=steps)()
    return outputs, (time.time() - start) / steps


def train(config):
    """Trains CoupAlign as the config says; leaves last.ckpt (and best.ckpt once validation ran)."""
    if config.dataset_sink_mode and config.device_target == "CPU":
        raise ValueError("dataset_sink_mode needs device_target GPU or Ascend: MindSpore's data_sink does not run "
                         "on CPU")
    rank_id, group_size = setup_context(config, allow_parallel=True)
    is_main = rank_id == 0
    os.makedirs(config.output_dir, exist_ok=True)
    log = JsonLog(os.path.join(config.output_dir, "train_log.jsonl"), rank_id, group_size)

    check_token_ids(config, "train")
    train_data = create_dataset(config, "train", training=True, rank_id=rank_id, group_size=group_size)
    steps_per_epoch = train_data.get_dataset_size()
    del train_data
    if steps_per_epoch == 0:
        raise ValueError(f"the train split has fewer samples per device than batch_size={config.batch_size}")
    val_data = None
    if is_main and config.eval_interval > 0:
        try:
            val_data = create_dataset(config, "val", training=False)
        except FileNotFoundError as err:
            print(f"warning: no validation during training ({err}); best.ckpt will not be written", flush=True)

    net = build_network(config)
    loss_net = CoupAlignWithLoss(net, config)
    optimizer, learning_rates = build_optimizer(loss_net, config, steps_per_epoch)
    reducer = None
    if group_size > 1:
        reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size)
    loss_scale = config.loss_scale if config.device_target != "CPU" else 1.0
    train_step = TrainStep(loss_net, optimizer, config.grad_clip_norm, loss_scale, reducer)
    train_step.set_train(True)
    scheduled = ScheduledTrainStep(train_step, learning_rates.table()) if config.dataset_sink_mode else None

    start_epoch, best_oiou = 0, -1.0
    if config.resume_ckpt:
        start_epoch, best_oiou = restore_training_state(train_step, config.resume_ckpt)
        print(f"resumed from {config.resume_ckpt} at epoch {start_epoch}"
              + (f" (best val oIoU so far {best_oiou:.4f})" if best_oiou >= 0 else ""), flush=True)
    best_path = os.path.join(config.output_dir, "best.ckpt")
    # Every rank keeps its own last.ckpt (rank r > 0 under rank_<r>/), so ranks can be compared.
    rank_dir = config.output_dir if is_main else os.path.join(config.output_dir, f"rank_{rank_id}")
    last_path = os.path.join(rank_dir, "last.ckpt")
    end_epoch = config.epochs
    if config.stop_after_epochs > 0:
        end_epoch = min(config.epochs, start_epoch + config.stop_after_epochs)
    global_step = start_epoch * steps_per_epoch
    samples_per_step = config.batch_size * group_size
    if is_main:
        print(f"training: {steps_per_epoch} steps/epoch x {config.epochs} epochs, batch {config.batch_size} x "
              f"{group_size} device(s), from epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, end_epoch):
        epoch_start = time.time()
        data = create_dataset(config, "train", training=True, rank_id=rank_id, group_size=group_size, epoch=epoch)
        totals = [0.0, 0.0, 0.0, 0.0]
        if scheduled is not None:
            outputs, step_time = sunk_epoch(scheduled, data, steps_per_epoch, global_step)
            global_step += steps_per_epoch
            parts = step_losses(outputs)
            record = step_record(outputs, parts, learning_rates.rate(global_step - 1), step_time, samples_per_step)
            record.update(epoch=epoch + 1, step=global_step, sunk_steps=steps_per_epoch)
            log.write(record, f"epoch {epoch + 1}/{config.epochs}: {steps_per_epoch} steps on the device, last step "
                              f"{losses_text(parts)} {step_time:.2f}s/step")
            # Sink mode returns the last step's losses only; they stand in for the epoch mean.
            totals = [value * steps_per_epoch for value in parts]
        else:
            for index, batch in enumerate(data.create_tuple_iterator(num_epochs=1)):
                step_start = time.time()
                lr, group_rates = learning_rates.for_step(global_step)
                outputs = train_step(group_rates, *batch)
                parts = step_losses(outputs)
                step_time = time.time() - step_start
                totals = [a + b for a, b in zip(totals, parts)]
                global_step += 1
                if index % config.log_interval == 0 or index == steps_per_epoch - 1:
                    record = {"epoch": epoch + 1, "step": global_step,
                              **step_record(outputs, parts, lr, step_time, samples_per_step)}
                    log.write(record, f"epoch {epoch + 1}/{config.epochs} step {index + 1}/{steps_per_epoch} "
                                      f"{losses_text(parts)} lr {lr:.3e} {step_time:.2f}s/step "
                                      f"{record['samples_per_s']:.1f} samples/s")
        means = [value / steps_per_epoch for value in totals]
        record = {"epoch": epoch + 1, "mean_loss": means[0], "epoch_time": time.time() - epoch_start}
        message = f"epoch {epoch + 1}/{config.epochs} done: mean loss {means[0]:.4f} in {record['epoch_time']:.1f}s"
        new_best = False
        if val_data is not None and (epoch + 1) % config.eval_interval == 0:
            metrics = evaluate_split(net, val_data, description="val")
            record["val"] = metrics
            message += f"; val {metrics_summary(metrics)}"
            if metrics["oIoU"] > best_oiou:
                best_oiou, new_best = metrics["oIoU"], True
                message += " (best)"
        # The best score travels with the checkpoints, so a resumed run does not overwrite best.ckpt
        # with a worse epoch.
        state = {"epoch": epoch + 1, "step": global_step, "best_oiou": float(best_oiou)}
        save_checkpoint(train_step, last_path, append_dict=state)
        if is_main:
            if config.save_epochs > 0 and (epoch + 1) % config.save_epochs == 0:
                save_checkpoint(train_step, os.path.join(config.output_dir, f"coupalign_epoch{epoch + 1:03d}.ckpt"),
                                append_dict=state)
                prune_epoch_checkpoints(config.output_dir, config.keep_checkpoint_max)
            if new_best:
                save_checkpoint(train_step, best_path, append_dict=state)
        log.write(record, message)
    if is_main:
        print(f"last checkpoint: {last_path}" + (f"; best: {best_path} (val oIoU {best_oiou:.4f})"
                                                  if best_oiou >= 0 else ""), flush=True)
    return last_path

