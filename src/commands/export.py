"""export.py: the inference network (image, input_ids, attention_mask) -> mask logits as MINDIR."""
import numpy as np

import mindspore as ms

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..files import atomic_path, check_output_file
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
    suffix = "." + config.file_format.lower()
    final = config.file_name if config.file_name.endswith(suffix) else config.file_name + suffix
    check_output_file(final, "file_name")
    setup_context(config)
    # A MINDIR must not call into a library compiled for this machine.
    net = CoupAlign.from_config(config, cpu_kernels=False)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    with atomic_path(final, suffix=suffix) as temp:
        ms.export(net, *example_inputs(config, config.export_batch_size), file_name=temp,
                  file_format=config.file_format)
    print(f"exported {final} (inputs: image ({config.export_batch_size}, 3, {config.image_size}, "
          f"{config.image_size}) float32, input_ids and attention_mask ({config.export_batch_size}, "
          f"{config.max_tokens}) int32)")
    return final

