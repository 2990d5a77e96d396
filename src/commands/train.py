"""train.py: config -> data, network, train step; the epochs themselves run in src.engine.loop."""
import contextlib
import os
import signal
import sys
import time

import mindspore.nn as nn

from ..checkpoint import CheckpointError, load_pretrained
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset
from ..engine.amp import apply_mixed_precision
from ..engine.checkpoints import StepCheckpoints, TrainingCheckpoints, claim_output_dir
from ..engine.loop import EpochRunner, JsonLog, train_epochs
from ..engine.optimizer import build_optimizer, check_grad_accum_steps
from ..engine.train_step import TrainStep
from ..evaluation import evaluate_split
from ..models.coupalign import CoupAlign
from ..models.losses import CoupAlignWithLoss
from ..parallel import RankGroup, weights_digest


def count_steps(config, rank_id, group_size):
    """Steps per epoch of this device's share of the train split; none is an error."""
    check_token_ids(config, "train")
    steps_per_epoch = create_dataset(config, "train", training=True, rank_id=rank_id,
                                     group_size=group_size).get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(f"the train split has fewer samples per device than batch_size={config.batch_size}")
    return steps_per_epoch


def validation_data(config, ranks):
    """This rank's shard of the val split for validation during training, or None (with a warning) when
    the split was not converted."""
    try:
        return create_dataset(config, "val", training=False, rank_id=ranks.rank_id, group_size=ranks.group_size,
                              with_ids=True, same_class_masks=config.val_diagnostics)
    except FileNotFoundError as err:
        if ranks.is_main:
            print(f"warning: no validation during training ({err}); best.ckpt will not be written", flush=True)
        return None


def check_ranks_agree(net, ranks):
    """Data parallel keeps every rank's weights identical; a difference means the job is broken."""
    if not ranks.distributed:
        return
    if not ranks.same_on_all_ranks(weights_digest(net)):
        raise RuntimeError(f"rank {ranks.rank_id}: the ranks hold different weights after training")
    if ranks.is_main:
        print(f"weights identical on all {ranks.group_size} ranks", flush=True)


def build_network(config):
    """CoupAlign with the pretrained encoders the config names, in the config's precision."""
    net = CoupAlign.from_config(config)
    if config.pretrained_swin:
        load_pretrained(net.swin, config.pretrained_swin, "Swin")
    if config.pretrained_bert:
        load_pretrained(net.bert, config.pretrained_bert, "BERT")
    return apply_mixed_precision(net, config.amp_level)


def check_training_options(config):
    """Refuses option combinations that cannot work, before anything is built."""
    check_grad_accum_steps(config.grad_accum_steps)
    if config.dataset_sink_mode and config.device_target == "CPU":
        raise ValueError("dataset_sink_mode needs device_target GPU or Ascend: MindSpore's data_sink does not run "
                         "on CPU")
    if config.dataset_sink_mode and (config.save_every_steps > 0 or config.stop_after_steps > 0):
        raise ValueError("save_every_steps and stop_after_steps need step-wise training: in dataset_sink_mode the "
                         "whole epoch is one data_sink call")
    if config.resume_ckpt and config.init_ckpt:
        raise ValueError("give either --resume_ckpt (continue a run) or --init_ckpt (a new run from its weights), "
                         "not both")


def resume_global_step(position, steps_per_epoch, path):
    """The global step a run continues from: the saved epoch and step within it, counted in this run's steps
    per epoch (a run resumed on another number of devices then continues the schedule at the right epoch)."""
    if position.step_in_epoch >= steps_per_epoch:
        raise CheckpointError(f"{path} stopped after step {position.step_in_epoch} of an epoch, but an epoch has "
                              f"{steps_per_epoch} steps here (another batch_size, group size or train split?)")
    global_step = position.epoch * steps_per_epoch + position.step_in_epoch
    if global_step != position.global_step:
        if position.step_in_epoch:
            raise CheckpointError(f"{path} was saved in the middle of an epoch by a run with another number of steps "
                                  "per epoch (batch_size, devices or train split changed): resume it with its own "
                                  "settings, or from a last.ckpt written at the end of an epoch")
        print(f"note: {path} was written by a run with another number of steps per epoch; the learning-rate "
              f"schedule continues at epoch {position.epoch} of this run (step {global_step})", flush=True)
    return global_step


@contextlib.contextmanager
def interruptible(enabled):
    """Ctrl-C and SIGTERM (a scheduler's stop) become KeyboardInterrupt in the training loop; a second one
    ends the process at once. MindSpore's graph runtime installs its own SIGINT handler, which raises
    SIGTERM, so SIGTERM is the signal to catch. Not in a distributed run: msrun stops its workers with
    SIGTERM, and a worker waiting in a collective must die at once rather than when the wait returns."""
    if not enabled:
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(config):
    """Trains CoupAlign as the config says; leaves last.ckpt (and best.ckpt once validation ran)."""
    check_training_options(config)
    rank_id, group_size = setup_context(config, allow_parallel=True)
    ranks = RankGroup(rank_id, group_size)
    is_main = ranks.is_main
    aside = claim_output_dir(config.output_dir, config.resume_ckpt, config.overwrite, is_main,
                             time.strftime("%Y%m%d-%H%M%S"))
    if aside:
        print(f"note: the previous run's files in {config.output_dir} were moved to {aside}", flush=True)
    log = JsonLog(os.path.join(config.output_dir, "train_log.jsonl"), rank_id, group_size)

    steps_per_epoch = count_steps(config, rank_id, group_size)
    # Every rank validates its shard: ranks left waiting in the next all-reduce while one rank validates
    # would hit the collective timeout (about 30 s on CPU).
    val_data = validation_data(config, ranks) if config.eval_interval > 0 else None

    net = build_network(config)
    loss_net = CoupAlignWithLoss(net, config)
    optimizer, learning_rates = build_optimizer(loss_net, config, steps_per_epoch)
    reducer = None
    if group_size > 1:
        reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size)
    loss_scale = config.loss_scale if config.device_target != "CPU" else 1.0
    train_step = TrainStep(loss_net, optimizer, config.grad_clip_norm, loss_scale, reducer, config.grad_accum_steps)
    train_step.set_train(True)

    runner = EpochRunner(train_step, learning_rates, log, steps_per_epoch, config.epochs,
                         config.batch_size * group_size, config.log_interval, config.dataset_sink_mode)
    checkpoints = TrainingCheckpoints(train_step, config.output_dir, rank_id, config.save_epochs,
                                      config.keep_checkpoint_max, config.save_all_ranks)
    runner.after_step = StepCheckpoints(checkpoints, steps_per_epoch, config.save_every_steps, config.stop_after_steps)
    start = checkpoints.start(config.resume_ckpt, config.init_ckpt)
    end_epoch = config.epochs
    if config.stop_after_epochs > 0:
        end_epoch = min(config.epochs, start.epoch + config.stop_after_epochs)
    runner.global_step = resume_global_step(start, steps_per_epoch, config.resume_ckpt)
    if config.resume_ckpt:
        moved = log.continue_from(start, config.resume_ckpt)
        if moved and is_main:
            print(f"note: {moved} log record(s) written after {config.resume_ckpt} by the stopped run were moved "
                  f"to train_log.superseded.jsonl", flush=True)
    if is_main:
        batch = f"batch {config.batch_size} x {group_size} device(s)"
        if config.grad_accum_steps > 1:
            batch += (f" x {config.grad_accum_steps} accumulation steps = "
                      f"{config.batch_size * group_size * config.grad_accum_steps} per update")
        print(f"training: {steps_per_epoch} steps/epoch x {config.epochs} epochs, {batch}, from epoch {start.epoch} "
              f"step {start.step_in_epoch}", flush=True)

    def make_data(epoch, skip_batches):
        return create_dataset(config, "train", training=True, rank_id=rank_id, group_size=group_size, epoch=epoch,
                              skip_batches=skip_batches)

    def validate(epoch):
        if val_data is None or (epoch + 1) % config.eval_interval != 0:
            return None
        return evaluate_split(net, val_data, description="val", ranks=ranks, diagnostics=config.val_diagnostics)

    try:
        with interruptible(not ranks.distributed):
            train_epochs(runner, make_data, range(start.epoch, end_epoch), validate, checkpoints, start.step_in_epoch)
    except KeyboardInterrupt:
        print(f"interrupted at step {runner.global_step}: {checkpoints.resume_hint()}", file=sys.stderr, flush=True)
        sys.exit(130)
    check_ranks_agree(loss_net, ranks)
    if is_main:
        print(checkpoints.summary(), flush=True)
    return checkpoints.last_path
