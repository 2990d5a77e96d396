"""verify_export: an exported MINDIR / ONNX file against the checkpoint it came from, on real samples."""
import pytest

import mindspore as ms

from model_utils.config import get_config
from src.checkpoint import save_checkpoint
from src.commands.export import run_export
from src.data.synthetic import generate_synthetic
from src.models.coupalign import CoupAlign
from src.tools.verify_export import verify_export
from tests.conftest import TINY_CONFIG
from tests.data.test_build_mindrecord import convert


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_checkpoint):
    root = str(tmp_path_factory.mktemp("verify_export_data"))
    generate_synthetic(root, num_images=24, seed=6, image_size="80x64")
    records = str(tmp_path_factory.mktemp("verify_export_mindrecord"))
    convert(root, records, "--splits", "val")
    config = get_config([], TINY_CONFIG, overrides={"mindrecord_dir": records, "ckpt_path": tiny_checkpoint[1]})
    return config, tmp_path_factory.mktemp("verify_export_files")


def exported(config, folder, file_format, ckpt_path=None, name="tiny"):
    export_config = config.copy()
    export_config.update(file_format=file_format, file_name=str(folder / name), export_batch_size=3)
    if ckpt_path:
        export_config.ckpt_path = ckpt_path
    return run_export(export_config)


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_an_export_of_the_checkpoint_passes(setting, file_format, capsys):
    config, folder = setting
    path = exported(config, folder, file_format)
    result = verify_export(config, path, "val", num_samples=7)  # 7: a partial last batch for ONNX's fixed 3
    assert result["samples"] == 7 and result["max_abs_diff"] < 1e-4 and result["disagreeing_pixels"] == 0
    assert result["oIoU_exported"] == pytest.approx(result["oIoU_checkpoint"])
    assert "on the first 7 val samples: largest logit difference" in capsys.readouterr().out


@pytest.mark.slow
def test_an_export_of_another_checkpoint_is_refused(setting, tiny_config, tmp_path):
    config, folder = setting
    ms.set_seed(11)
    other = str(tmp_path / "other.ckpt")
    save_checkpoint(CoupAlign.from_config(tiny_config), other)
    path = exported(config, folder, "MINDIR", ckpt_path=other, name="other")
    with pytest.raises(ValueError, match="is not the checkpoint's network: its masks differ on"):
        verify_export(config, path, "val", num_samples=8)


def test_a_file_of_another_kind_is_refused(setting, tmp_path):
    config, _ = setting
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .mindir or .onnx file"):
        verify_export(config, str(path), "val")
