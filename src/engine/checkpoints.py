"""Checkpoint policy of a training run: last.ckpt every epoch (per rank), epoch checkpoints every
save_epochs (oldest pruned beyond keep_checkpoint_max), best.ckpt on a new best val oIoU, each with
the training state (epoch, step, best oIoU) that resume reads back."""
import glob
import os

from ..checkpoint import CheckpointError, load_network_weights, read_checkpoint, save_checkpoint


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


class TrainingCheckpoints:
    """Saves `train_step` (weights and optimiser state) as the policy says; only rank 0 writes epoch and
    best checkpoints, every rank its own last.ckpt (rank r > 0 under rank_<r>/, so ranks can be compared)."""

    def __init__(self, train_step, output_dir, rank_id=0, save_epochs=0, keep_max=0):
        self.train_step = train_step
        self.output_dir = output_dir
        self.is_main = rank_id == 0
        self.save_epochs = save_epochs
        self.keep_max = keep_max
        rank_dir = output_dir if self.is_main else os.path.join(output_dir, f"rank_{rank_id}")
        self.last_path = os.path.join(rank_dir, "last.ckpt")
        self.best_path = os.path.join(output_dir, "best.ckpt")
        self.best_oiou = -1.0

    def resume(self, path):
        """Restores weights, optimiser state and the best score from `path` -> the epoch to start from."""
        start_epoch, self.best_oiou = restore_training_state(self.train_step, path)
        print(f"resumed from {path} at epoch {start_epoch}"
              + (f" (best val oIoU so far {self.best_oiou:.4f})" if self.best_oiou >= 0 else ""), flush=True)
        return start_epoch

    def offer_best(self, oiou):
        """True (and remembered) when `oiou` beats the best score so far."""
        if oiou > self.best_oiou:
            self.best_oiou = oiou
            return True
        return False

    def save(self, epoch, step, new_best):
        """Writes the checkpoints due after the 1-based `epoch`."""
        # The best score travels with the checkpoints, so a resumed run does not overwrite best.ckpt
        # with a worse epoch.
        state = {"epoch": epoch, "step": step, "best_oiou": float(self.best_oiou)}
        save_checkpoint(self.train_step, self.last_path, append_dict=state)
        if not self.is_main:
            return
        if self.save_epochs > 0 and epoch % self.save_epochs == 0:
            save_checkpoint(self.train_step, os.path.join(self.output_dir, f"coupalign_epoch{epoch:03d}.ckpt"),
                            append_dict=state)
            prune_epoch_checkpoints(self.output_dir, self.keep_max)
        if new_best:
            save_checkpoint(self.train_step, self.best_path, append_dict=state)

    def summary(self):
        """The closing line: where the last (and the best) checkpoint is."""
        return f"last checkpoint: {self.last_path}" + (f"; best: {self.best_path} (val oIoU {self.best_oiou:.4f})"
                                                        if self.best_oiou >= 0 else "")
