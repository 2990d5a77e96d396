"""Config: YAML + --key value overrides, typed, unknown keys named."""
import pytest

from model_utils.config import ConfigError, get_config
from tests.conftest import TINY_CONFIG


def test_tiny_config_overrides_default_values():
    config = get_config([], TINY_CONFIG)
    assert config.image_size == 64
    assert config.dataset == "refcoco"  # inherited from default_config.yaml


def test_command_line_overrides_are_typed():
    config = get_config(["--config_path", TINY_CONFIG, "--lr", "0.5", "--epochs=3", "--swin_depths", "2,2,6,2",
                         "--skip_bad", "--ckpt", "model.ckpt"])
    assert config.lr == 0.5 and config.epochs == 3
    assert config.swin_depths == [2, 2, 6, 2]
    assert config.skip_bad is True
    assert config.ckpt_path == "model.ckpt"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="no_such_key"):
        get_config(["--no_such_key", "1"])


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("image_size: 32\nimage_sise: 32\n")
    with pytest.raises(ConfigError, match="image_sise"):
        get_config([], str(path))


def test_bad_value_type_is_named():
    with pytest.raises(ConfigError, match="--epochs expects an integer"):
        get_config(["--epochs", "many"])


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="not_here.yaml"):
        get_config(["--config_path", "not_here.yaml"])
