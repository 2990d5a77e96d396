"""Checkpoints of another config and missing checkpoints are refused, naming the problem."""
import pytest

from src.checkpoint import CheckpointError, load_network_weights
from src.models.coupalign import CoupAlign


def test_checkpoint_of_another_config_is_refused(tiny_config, tiny_checkpoint):
    _, path = tiny_checkpoint
    other = tiny_config.copy()
    other.decoder_dim = 16
    with pytest.raises(CheckpointError, match="does not fit.*mask_generator"):
        load_network_weights(CoupAlign.from_config(other), path)


def test_missing_checkpoint_is_named(tiny_config):
    with pytest.raises(CheckpointError, match="not_there.ckpt"):
        load_network_weights(CoupAlign.from_config(tiny_config), "not_there.ckpt")
