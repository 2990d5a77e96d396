"""export.py: the inference network (image, input_ids, attention_mask) -> mask logits as MINDIR."""
import os

import numpy as np

import mindspore as ms

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..models.coupalign import CoupAlign

FORMATS = ("MINDIR", "AIR", "ONNX")


def example_inputs(config, batch):
    """Zero inputs of the exported shapes: image (B, 3, S, S), ids and mask (B, T)."""
    size, tokens = config.image_size, config.max_tokens
    return (ms.Tensor(np.zeros((batch, 3, size, size), np.float32)),
            ms.Tensor(np.zeros((batch, tokens), np.int32)),
            ms.Tensor(np.ones((batch, tokens), np.int32)))


def run_export(config):
    if config.file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS}, got '{config.file_format}'")
    setup_context(config)
    # A MINDIR must not call into a library compiled for this machine.
    net = CoupAlign.from_config(config, cpu_kernels=False)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    file_name = config.file_name
    directory = os.path.dirname(os.path.abspath(file_name))
    os.makedirs(directory, exist_ok=True)
    suffix = "." + config.file_format.lower()
    temp_name = os.path.join(directory, f".{os.path.basename(file_name)}.tmp")
    ms.export(net, *example_inputs(config, config.export_batch_size), file_name=temp_name,
              file_format=config.file_format)
    final = file_name if file_name.endswith(suffix) else file_name + suffix
    os.replace(temp_name + suffix, final)
    print(f"exported {final} (inputs: image ({config.export_batch_size}, 3, {config.image_size}, "
          f"{config.image_size}) float32, input_ids and attention_mask ({config.export_batch_size}, "
          f"{config.max_tokens}) int32)")
    return final

