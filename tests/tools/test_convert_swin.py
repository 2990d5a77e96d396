"""Swin converter: parity with Hugging Face transformers' SwinModel, and relative-position table resizing."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.models.swin import SwinTransformer
from src.checkpoint import load_checkpoint_into
from src.tools import hf_bridge
from src.tools.convert_swin import convert_swin_state_dict, resize_relative_position_table, source_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-4


def hf_swin(image_size, embed_dim, depths, num_heads, window_size, seed=0):
    """Randomly weighted transformers.SwinModel in eval mode, and its config."""
    pytest.importorskip("transformers", reason="transformers is needed for the Swin reference")
    model = hf_bridge.hf_swin(image_size, embed_dim, depths, num_heads, window_size)
    hf_bridge.randomise_torch(model, seed)
    return model.eval(), model.config


def hf_stage_maps(model, image):
    """The four (B, C_i, H_i, W_i) stage outputs before patch merging, as numpy."""
    import torch
    with torch.no_grad():
        return [state.numpy() for state in hf_bridge.hf_swin_stage_maps(model, torch.from_numpy(image))]


def our_swin(image_size, embed_dim, depths, num_heads, window_size):
    net = SwinTransformer(img_size=image_size, patch_size=4, embed_dim=embed_dim, depths=tuple(depths),
                          num_heads=tuple(num_heads), window_size=window_size)
    net.set_train(False)
    return net


def load_params(net, params):
    for name, param in net.parameters_and_names():
        param.set_data(ms.Tensor(params[name]))


def assert_stage_parity(ours, reference):
    diffs = [float(np.abs(mine.asnumpy() - ref).max()) for mine, ref in zip(ours, reference)]
    print("max abs diff per stage:", ["%.2e" % diff for diff in diffs])
    for stage, (mine, ref) in enumerate(zip(ours, reference)):
        assert mine.shape == ref.shape, f"stage {stage}: {mine.shape} vs {ref.shape}"
    assert max(diffs) <= TOLERANCE, f"max abs diff per stage {diffs}"


@pytest.mark.slow
def test_swin_cli_parity_with_padding_and_shrunk_windows(tmp_path):
    """96 px, window 7: stages 24 and 12 are padded, 6 and 3 shrink the window; converted by the CLI."""
    torch = pytest.importorskip("torch", reason="torch is needed to write the .pth")
    arch = dict(image_size=96, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
    model, _ = hf_swin(**arch)
    official = hf_bridge.hf_swin_to_official(model.state_dict())
    assert "norm.weight" in official and "layers.0.blocks.1.attn.qkv.weight" in official
    extras = {"head.weight": np.zeros((10, 128), np.float32), "head.bias": np.zeros(10, np.float32),
              "layers.0.blocks.1.attn_mask": np.zeros((16, 49, 49), np.float32),
              "layers.0.blocks.0.attn.relative_position_index": np.zeros((49, 49), np.int64)}
    src, dst = tmp_path / "swin.pth", tmp_path / "swin.ckpt"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in {**official, **extras}.items()}, "epoch": 3}, src)
    command = [sys.executable, "-m", "src.tools.convert_swin", "--src", str(src), "--dst", str(dst),
               "--config_path", os.path.join(ROOT, "tiny_config.yaml"), "--img_size", "96", "--window_size", "7",
               "--embed_dim", "16", "--depths", "2,2,2,2", "--num_heads", "1,2,2,4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "head.weight" in result.stdout and "norm.weight" in result.stdout  # skipped and reported
    assert not list(tmp_path.glob(".*partial*"))

    net = our_swin(**arch)
    missing, unexpected = load_checkpoint_into(net, str(dst), strict=True)
    assert not missing and not unexpected
    image = np.random.RandomState(1).randn(2, 3, 96, 96).astype(np.float32)
    assert_stage_parity(net(ms.Tensor(image)), hf_stage_maps(model, image))


def test_swin_parity_odd_stage_merging():
    """176 px, window 4: stages 44, 22, 11, 6 (padded windows at three stages, an odd-sized patch merging)."""
    pytest.importorskip("torch", reason="torch is needed for the Swin reference")
    arch = dict(image_size=176, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    model, _ = hf_swin(**arch, seed=1)
    net = our_swin(**arch)
    load_params(net, convert_swin_state_dict(hf_bridge.hf_swin_to_official(model.state_dict()), net))
    image = np.random.RandomState(2).randn(1, 3, 176, 176).astype(np.float32)
    assert_stage_parity(net(ms.Tensor(image)), hf_stage_maps(model, image))


@pytest.mark.slow
def test_swin_base_parity_at_480():
    """The real Swin-B structure (window 12 at 480: stages 30 and 15 padded), random weights, batch 1."""
    pytest.importorskip("torch", reason="torch is needed for the Swin reference")
    arch = dict(image_size=480, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)
    model, _ = hf_swin(**arch, seed=2)
    net = our_swin(**arch)
    load_params(net, convert_swin_state_dict(hf_bridge.hf_swin_to_official(model.state_dict()), net))
    image = np.random.RandomState(3).randn(1, 3, 480, 480).astype(np.float32)
    reference = hf_stage_maps(model, image)
    del model
    assert_stage_parity(net(ms.Tensor(image)), reference)


def official_state_dict(net, seed=0):
    """Random official-named Swin state dict with the shapes of our `net` (numpy)."""
    rng = np.random.RandomState(seed)
    return {source_name(name): rng.randn(*param.shape).astype(np.float32)
            for name, param in net.parameters_and_names()}


def test_resize_table_window7_to_window4():
    """A window-7 checkpoint converts to a window-4 target: every table resized, other weights untouched."""
    pytest.importorskip("torch", reason="torch does the bicubic resize")
    arch = dict(image_size=96, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    source = official_state_dict(our_swin(**arch, window_size=7))
    target = our_swin(**arch, window_size=4)
    params = convert_swin_state_dict(source, target)
    for name, param in target.parameters_and_names():
        assert params[name].shape == tuple(param.shape), name
        if not name.endswith("relative_position_bias_table"):
            np.testing.assert_array_equal(params[name], source[source_name(name)])
    assert source["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 1)
    assert params["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (49, 1)


def test_resize_table_same_window_unchanged_and_heads_kept_apart():
    pytest.importorskip("torch", reason="torch does the bicubic resize")
    table = np.random.RandomState(0).randn(169, 3).astype(np.float32)
    np.testing.assert_array_equal(resize_relative_position_table(table, (169, 3)), table)
    # A head whose grid is constant stays that constant: rows and heads are not mixed up.
    constant = np.tile(np.array([[1.0, -2.0, 5.0]], np.float32), (529, 1))
    resized = resize_relative_position_table(constant, (169, 3))
    assert resized.shape == (169, 3)
    np.testing.assert_allclose(resized, constant[:169], atol=1e-5)
