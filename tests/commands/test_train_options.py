"""train.py refuses option combinations that cannot work, before anything is built."""
import pytest

from src.commands.train import check_training_options


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
