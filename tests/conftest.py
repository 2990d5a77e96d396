"""Shared test setup: repo root importable, MindSpore on CPU in graph mode."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TINY_CONFIG = os.path.join(ROOT, "tiny_config.yaml")


@pytest.fixture(scope="session", autouse=True)
def graph_mode_cpu():
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="session")
def tiny_config():
    from model_utils.config import get_config
    return get_config([], TINY_CONFIG)
