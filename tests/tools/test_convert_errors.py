"""Converter CLIs fail cleanly on foreign or misfitting files; converted weights load into CoupAlign's encoders."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.checkpoint import CheckpointError
from src.models.swin import SwinTransformer
from src.checkpoint import load_checkpoint_into, load_pretrained
from src.tools.common import ConversionError, save_params
from src.tools.convert_swin import convert_swin_state_dict
from tests.tools.test_convert_swin import official_state_dict as official_swin_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(ROOT, "tiny_config.yaml")
TINY_SWIN = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files of the error cases: random bytes, a tiny Swin .pth, a tiny BERT .bin, a dict of other keys."""
    torch = pytest.importorskip("torch", reason="torch is needed to write .pth files")
    transformers = pytest.importorskip("transformers", reason="transformers builds the BERT file")
    folder = tmp_path_factory.mktemp("convert_inputs")
    paths = {name: str(folder / name) for name in ("random.pth", "swin.pth", "bert.bin", "other.pth")}
    with open(paths["random.pth"], "wb") as handle:
        handle.write(np.random.RandomState(0).bytes(4096))
    swin = official_swin_state_dict(SwinTransformer(**TINY_SWIN))
    torch.save({"model": {key: torch.from_numpy(value) for key, value in swin.items()}}, paths["swin.pth"])
    bert_config = transformers.BertConfig(vocab_size=128, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=32)
    torch.save(transformers.BertModel(bert_config).state_dict(), paths["bert.bin"])
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, paths["other.pth"])
    return paths


ERROR_CASES = [
    ("convert_swin", "random.pth", [], "cannot read"),
    ("convert_swin", "bert.bin", [], "BERT checkpoint"),
    ("convert_swin", "other.pth", [], "not an official Swin checkpoint"),
    ("convert_swin", "swin.pth", ["--config_path", TINY_CONFIG, "--embed_dim", "32"], "patch_embed.proj.weight"),
    ("convert_bert", "random.pth", [], "cannot read"),
    ("convert_bert", "swin.pth", [], "Swin checkpoint"),
    ("convert_bert", "bert.bin", ["--config_path", TINY_CONFIG], "embeddings.word_embeddings.embedding_table"),
]


@pytest.mark.parametrize("tool, source, extra, message", ERROR_CASES,
                         ids=[f"{tool}-{source}-{'args' if extra else 'plain'}" for tool, source, extra, _ in ERROR_CASES])
def test_cli_error_is_clean(files, tmp_path, tool, source, extra, message):
    dst = tmp_path / "out.ckpt"
    command = [sys.executable, "-m", f"src.tools.{tool}", "--src", files[source], "--dst", str(dst)] + extra
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary file


def test_swin_depth_mismatch_names_the_parameter():
    source = official_swin_state_dict(SwinTransformer(**TINY_SWIN))
    deeper = SwinTransformer(**{**TINY_SWIN, "depths": (2, 2, 4, 2)})
    with pytest.raises(ConversionError, match=r"layers\.2\.blocks\.2\.norm1\.weight"):
        convert_swin_state_dict(source, deeper)
    shallower = SwinTransformer(**{**TINY_SWIN, "depths": (2, 2, 1, 2)})
    with pytest.raises(ConversionError, match=r"no place for: layers\.2\.blocks\.1\."):
        convert_swin_state_dict(source, shallower)


@pytest.fixture(scope="module")
def tiny_swin_ckpt(tmp_path_factory):
    """A converted checkpoint of the tiny config's Swin, and its {name: array}."""
    pytest.importorskip("torch", reason="the converter resizes tables with torch")
    params = convert_swin_state_dict(official_swin_state_dict(SwinTransformer(**TINY_SWIN), seed=1),
                                     SwinTransformer(**TINY_SWIN))
    path = str(tmp_path_factory.mktemp("converted") / "swin.ckpt")
    save_params(params, path)
    return path, params


def test_load_pretrained_into_coupalign_swin(tiny_config, tiny_swin_ckpt):
    from src.models.coupalign import CoupAlign
    path, params = tiny_swin_ckpt
    net = CoupAlign.from_config(tiny_config)
    assert net.swin.patch_embed.proj.weight.name == "swin.patch_embed.proj.weight"
    assert load_pretrained(net.swin, path, "Swin") == len(params)
    for name, param in net.swin.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), params[name])

    # The same weights read back out of a whole-network checkpoint through the "swin." prefix.
    whole = os.path.join(os.path.dirname(path), "whole.ckpt")
    ms.save_checkpoint(net, whole)
    fresh = SwinTransformer(**TINY_SWIN)
    missing, unexpected = load_checkpoint_into(fresh, whole, prefix="swin.")
    assert not missing and not unexpected
    np.testing.assert_array_equal(fresh.layers[3].blocks[1].mlp.fc2.weight.asnumpy(),
                                  params["layers.3.blocks.1.mlp.fc2.weight"])


def test_load_errors_name_the_parameter(tiny_swin_ckpt, tmp_path):
    path, _ = tiny_swin_ckpt
    wider = SwinTransformer(**{**TINY_SWIN, "embed_dim": 32, "num_heads": (2, 2, 2, 4)})
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight: checkpoint \(16, 3, 4, 4\)"):
        load_pretrained(wider, path, "Swin")
    deeper = SwinTransformer(**{**TINY_SWIN, "depths": (2, 2, 4, 2)})
    with pytest.raises(CheckpointError, match=r"layers\.2\.blocks\.2\."):
        load_pretrained(deeper, path, "Swin")
    missing, _ = load_checkpoint_into(deeper, path)
    assert missing and all(name.startswith(("layers.2.blocks.2.", "layers.2.blocks.3.")) for name in missing)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(deeper, str(tmp_path / "absent.ckpt"), "Swin")
