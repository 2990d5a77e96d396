"""train.py refuses option combinations that cannot work before anything is built, and places a resumed run
in its schedule."""
import pytest

from src.checkpoint import CheckpointError
from src.commands.train import check_training_options, resume_global_step
from src.engine.checkpoints import Position


@pytest.mark.parametrize("overrides, reason", [
    ({"device_target": "GPU", "dataset_sink_mode": True, "save_every_steps": 10}, "whole epoch is one data_sink call"),
    ({"device_target": "GPU", "dataset_sink_mode": True, "stop_after_steps": 10}, "whole epoch is one data_sink call"),
    ({"resume_ckpt": "out/last.ckpt", "init_ckpt": "out/best.ckpt"}, "not both"),
])
def test_conflicting_checkpoint_options_are_refused(tiny_config, overrides, reason):
    config = tiny_config.copy()
    config.update(overrides)
    with pytest.raises(ValueError, match=reason):
        check_training_options(config)


def test_step_saves_are_fine_without_sink_mode(tiny_config):
    config = tiny_config.copy()
    config.update(save_every_steps=10, stop_after_steps=10, init_ckpt="out/best.ckpt")
    check_training_options(config)


def test_bad_grad_accum_steps_is_refused_first(tiny_config):
    config = tiny_config.copy()
    config.update(grad_accum_steps=0)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        check_training_options(config)


def test_resume_counts_the_schedule_in_this_runs_steps_per_epoch(capsys):
    # Saved by a run of 10 steps per epoch after epoch 2; resumed where an epoch has 40 steps (4x fewer devices).
    assert resume_global_step(Position(2, 0, 20), 10, "last.ckpt") == 20
    assert resume_global_step(Position(2, 0, 20), 40, "last.ckpt") == 80
    assert "another number of steps per epoch" in capsys.readouterr().out
    assert resume_global_step(Position(2, 3, 23), 10, "last.ckpt") == 23


@pytest.mark.parametrize("position, steps_per_epoch, reason", [
    (Position(1, 12, 22), 10, "stopped after step 12"),
    (Position(1, 3, 13), 40, "in the middle of an epoch"),
])
def test_mid_epoch_resume_with_other_steps_per_epoch_is_refused(position, steps_per_epoch, reason):
    with pytest.raises(CheckpointError, match=reason):
        resume_global_step(position, steps_per_epoch, "last.ckpt")
