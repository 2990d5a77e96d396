"""Config: YAML + --key value overrides, typed, unknown keys named."""
import pytest

from model_utils.config import DEFAULT_CONFIG, ConfigError, get_config, load_yaml
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


@pytest.mark.parametrize("key", ["batch_size", "epochs", "image_size", "log_interval", "num_parallel_workers"])
def test_sizes_below_one_name_the_flag(key):
    with pytest.raises(ConfigError, match=f"^--{key} must be at least 1, got 0$"):
        get_config([f"--{key}", "0"])


def test_help_lists_every_key_with_the_given_files_values(capsys):
    with pytest.raises(SystemExit) as info:
        get_config(["--config_path", TINY_CONFIG, "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    defaults = load_yaml(DEFAULT_CONFIG)
    tiny = load_yaml(TINY_CONFIG)
    assert set(defaults) - set(tiny)  # keys only default_config.yaml has are listed too
    for key, value in {**defaults, **tiny}.items():
        assert f"  --{key} (default: {value!r})" in shown
