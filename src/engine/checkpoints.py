"""Checkpoint policy of a training run.

last.ckpt holds the whole training state (weights, AdamW moments, epoch, global step, step within the
epoch, best val oIoU) and is what --resume_ckpt reads; best.ckpt and coupalign_epochNNN.ckpt hold the
training network's weights only (plus epoch, step and best val oIoU), for eval, export, predict and
--init_ckpt. Only rank 0 writes, unless save_all_ranks lets rank r > 0 keep its own rank_<r>/last.ckpt.
"""
import collections
import glob
import os

import numpy as np

import mindspore as ms

from ..checkpoint import CheckpointError, load_network_weights, read_checkpoint, save_checkpoint
from ..files import check_output_folder

TRAINING_STATE = "training_state"

# Where a run starts: the 0-based epoch, the steps of that epoch already trained, the global step.
Position = collections.namedtuple("Position", ["epoch", "step_in_epoch", "global_step"])


def holds_training_state(param_dict):
    """True for a last.ckpt (weights, optimiser state and position), False for a weights-only checkpoint.

    Checkpoints written before the `training_state` marker all carried the AdamW moments and their epoch
    (0-based next epoch) and global step mean what they mean now, so they count as training state.
    """
    return TRAINING_STATE in param_dict or any(name.startswith("adam_m.") for name in param_dict)


def add_missing_accumulation_state(train_step, param_dict, path):
    """Empty gradient-accumulation buffers for a run resumed with grad_accum_steps > 1 from a checkpoint
    written without accumulation (another device count keeping the global batch, say)."""
    buffers = list(getattr(train_step, "accum_grads", ())) + ([train_step.accum_count]
                                                             if hasattr(train_step, "accum_count") else [])
    missing = [param for param in buffers if param.name not in param_dict]
    for param in missing:
        param_dict[param.name] = ms.Parameter(ms.Tensor(np.zeros(param.shape, ms.dtype_to_nptype(param.dtype))),
                                              name=param.name)
    if missing:
        print(f"{path} holds no gradient-accumulation state: the accumulation starts empty", flush=True)


def _entry(param_dict, name, default):
    value = param_dict.get(name)
    return default if value is None else value.asnumpy().item()


def weights_only_error(path):
    """The error for resuming from a weights-only checkpoint: which file to resume from instead."""
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "last.ckpt")
    resume_from = sibling if os.path.isfile(sibling) else "a last.ckpt written by train.py"
    return CheckpointError(f"{path} holds network weights only (no optimiser state or training position): resume "
                           f"from {resume_from}, or start a new run from these weights with --init_ckpt {path}")


def restore_training_state(train_step, path):
    """Loads weights and optimiser state from a last.ckpt -> (Position to continue from, best val oIoU)."""
    param_dict = read_checkpoint(path)
    if not holds_training_state(param_dict):
        raise weights_only_error(path)
    add_missing_accumulation_state(train_step, param_dict, path)
    load_network_weights(train_step, path, param_dict)
    position = Position(int(_entry(param_dict, "epoch", 0)), int(_entry(param_dict, "step_in_epoch", 0)),
                        int(_entry(param_dict, "step", 0)))
    return position, float(_entry(param_dict, "best_oiou", -1.0))


def load_initial_weights(network_with_loss, path):
    """Loads every parameter of the training network from any checkpoint train.py wrote, for a new run."""
    load_network_weights(network_with_loss, path)
    print(f"initialised the weights from {path}; training starts at epoch 0 with a fresh optimiser", flush=True)


def prune_epoch_checkpoints(output_dir, keep):
    paths = sorted(glob.glob(os.path.join(output_dir, "coupalign_epoch*.ckpt")), key=os.path.getmtime)
    for path in paths[:-keep] if keep > 0 else []:
        os.remove(path)


def last_checkpoint_path(output_dir, rank_id, save_all_ranks):
    """Where this rank writes last.ckpt, or None when it writes no checkpoint."""
    if rank_id == 0:
        return os.path.join(output_dir, "last.ckpt")
    return os.path.join(output_dir, f"rank_{rank_id}", "last.ckpt") if save_all_ranks else None


class TrainingCheckpoints:
    """Saves the training state of `train_step` to last.ckpt and the weights of its network to the epoch
    and best checkpoints, as the policy in this module's docstring says."""

    def __init__(self, train_step, output_dir, rank_id=0, save_epochs=0, keep_max=0, save_all_ranks=False):
        self.train_step = train_step
        self.output_dir = output_dir
        self.is_main = rank_id == 0
        self.save_epochs = save_epochs
        self.keep_max = keep_max
        self.last_path = last_checkpoint_path(output_dir, rank_id, save_all_ranks)
        self.best_path = os.path.join(output_dir, "best.ckpt")
        self.best_oiou = -1.0

    def start(self, resume_ckpt="", init_ckpt=""):
        """Where training starts: the position saved in `resume_ckpt`, else the beginning (with the weights of
        `init_ckpt` when given) -> Position."""
        if resume_ckpt:
            return self.resume(resume_ckpt)
        if init_ckpt:
            load_initial_weights(self.train_step.network, init_ckpt)
        return Position(0, 0, 0)

    def resume(self, path):
        """Restores weights, optimiser state and the best score from `path` -> the Position to continue from."""
        position, self.best_oiou = restore_training_state(self.train_step, path)
        within = f" step {position.step_in_epoch}" if position.step_in_epoch else ""
        print(f"resumed from {path} at epoch {position.epoch}{within}"
              + (f" (best val oIoU so far {self.best_oiou:.4f})" if self.best_oiou >= 0 else ""), flush=True)
        return position

    def offer_best(self, oiou):
        """True (and remembered) when `oiou` beats the best score so far."""
        if oiou > self.best_oiou:
            self.best_oiou = oiou
            return True
        return False

    def save_position(self, epoch, step_in_epoch, global_step):
        """Writes last.ckpt (if this rank keeps one) with the 0-based `epoch` and the steps of it trained."""
        if self.last_path is None:
            return
        # The best score travels with the state, so a resumed run does not overwrite best.ckpt with a worse epoch.
        state = {TRAINING_STATE: 1, "epoch": epoch, "step_in_epoch": step_in_epoch, "step": global_step,
                 "best_oiou": float(self.best_oiou)}
        save_checkpoint(self.train_step, self.last_path, append_dict=state)

    def save(self, epoch, step, new_best):
        """Writes the checkpoints due after the 1-based `epoch`."""
        self.save_position(epoch, 0, step)
        if not self.is_main:
            return
        metadata = {"epoch": epoch, "step": step, "best_oiou": float(self.best_oiou)}
        if self.save_epochs > 0 and epoch % self.save_epochs == 0:
            save_checkpoint(self.train_step.network, os.path.join(self.output_dir, f"coupalign_epoch{epoch:03d}.ckpt"),
                            append_dict=metadata)
            prune_epoch_checkpoints(self.output_dir, self.keep_max)
        if new_best:
            save_checkpoint(self.train_step.network, self.best_path, append_dict=metadata)

    def resume_hint(self):
        """What an interrupted run can be continued from."""
        if self.last_path and os.path.isfile(self.last_path):
            return f"continue it with --resume_ckpt {self.last_path}"
        return "no training state was saved yet (last.ckpt is written after each epoch, or every save_every_steps)"

    def summary(self):
        """The closing line: where the last (and the best) checkpoint is."""
        return f"last checkpoint: {self.last_path}" + (f"; best: {self.best_path} (val oIoU {self.best_oiou:.4f})"
                                                        if self.best_oiou >= 0 else "")


class StepCheckpoints:
    """After each step of EpochRunner: rewrites last.ckpt every `save_every_steps` steps of an epoch and asks to
    stop after `stop_after_steps` steps of this run (writing last.ckpt there); 0 turns either off."""

    def __init__(self, checkpoints, steps_per_epoch, save_every_steps=0, stop_after_steps=0):
        self.checkpoints = checkpoints
        self.steps_per_epoch = steps_per_epoch
        self.save_every_steps = save_every_steps
        self.stop_after_steps = stop_after_steps
        self.steps_run = 0

    def __call__(self, epoch, step_in_epoch, global_step):
        """Saves if due -> True to stop the run."""
        self.steps_run += 1
        stop = 0 < self.stop_after_steps <= self.steps_run
        due = self.save_every_steps > 0 and step_in_epoch % self.save_every_steps == 0
        # At the end of an epoch train_epochs writes last.ckpt itself, after validation.
        if (due or stop) and step_in_epoch < self.steps_per_epoch:
            self.checkpoints.save_position(epoch, step_in_epoch, global_step)
        return stop


def previous_run_files(output_dir):
    """Names of the files and folders a training run leaves in output_dir (checkpoints, its log)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if name.endswith(".ckpt") or name in ("train_log.jsonl", "train_log.superseded.jsonl")
                  or (name.startswith("rank_") and os.path.isdir(os.path.join(output_dir, name))))


def claim_output_dir(output_dir, resume_ckpt, overwrite, is_main, stamp):
    """Makes output_dir this run's: refuses one that holds another run (unless resume_ckpt lies in it, or
    overwrite is set: then rank 0 moves the old run's files into output_dir/replaced_<stamp>/, deleting
    nothing). Returns the folder the old files went to, or None."""
    check_output_folder(output_dir, "output_dir")
    found = previous_run_files(output_dir)
    resuming = bool(resume_ckpt) and os.path.dirname(os.path.abspath(resume_ckpt)) in (
        os.path.abspath(output_dir), *(os.path.abspath(os.path.join(output_dir, name)) for name in found))
    if not found or resuming:
        os.makedirs(output_dir, exist_ok=True)
        return None
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(f"--output_dir {output_dir} holds another run ({shown}): continue it with --resume_ckpt "
                         f"{os.path.join(output_dir, 'last.ckpt')}, choose another --output_dir, or give "
                         "--overwrite true to move its files aside into a replaced_<time> folder there")
    if not is_main:
        return None
    aside = os.path.join(output_dir, f"replaced_{stamp}")
    os.makedirs(aside)
    for name in found:
        os.replace(os.path.join(output_dir, name), os.path.join(aside, name))
    return aside
