"""export.py: the inference network (image, input_ids, attention_mask) -> mask logits as MINDIR, ONNX or AIR.

The exported network is built from the ONNX-exportable formulations (models.exportable): the same
parameters, equal to the trained network to float32 rounding. A MINDIR keeps its batch axis free;
ONNX and AIR files take --export_batch_size images.
"""
import numpy as np

import mindspore as ms

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..files import atomic_path, check_output_file
from ..models.coupalign import CoupAlign

FORMATS = ("MINDIR", "AIR", "ONNX")
FREE_BATCH_FORMATS = ("MINDIR",)


def example_inputs(config, batch):
    """Zero inputs of the exported shapes: image (B, 3, S, S), ids and mask (B, T)."""
    size, tokens = config.image_size, config.max_tokens
    return (ms.Tensor(np.zeros((batch, 3, size, size), np.float32)),
            ms.Tensor(np.zeros((batch, tokens), np.int32)),
            ms.Tensor(np.ones((batch, tokens), np.int32)))


def free_batch_inputs(config):
    """Shape-only inputs whose batch axis is left free: image (None, 3, S, S), ids and mask (None, T)."""
    size, tokens = config.image_size, config.max_tokens
    return (ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32),
            ms.Tensor(shape=[None, tokens], dtype=ms.int32),
            ms.Tensor(shape=[None, tokens], dtype=ms.int32))


def check_format(config):
    """Before any work: a format this machine cannot write is refused with the reason."""
    if config.file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS}, got '{config.file_format}'")
    if config.file_format == "AIR" and config.device_target != "Ascend":
        raise ValueError("--file_format AIR needs --device_target Ascend (the AIR format is written by the "
                         f"Ascend toolkit); --device_target is {config.device_target}")


def export_network(net, inputs, file_name, file_format):
    """ms.export; a failure is one line naming the format and MindSpore's reason."""
    try:
        ms.export(net, *inputs, file_name=file_name, file_format=file_format)
    except Exception as err:  # pylint: disable=broad-except
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        raise ValueError(f"--file_format {file_format}: MindSpore could not export the network: {reason}") from None


def run_export(config):
    check_format(config)
    suffix = "." + config.file_format.lower()
    final = config.file_name if config.file_name.endswith(suffix) else config.file_name + suffix
    check_output_file(final, "file_name")
    setup_context(config)
    net = CoupAlign.from_config(config, exportable=True)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    free_batch = config.file_format in FREE_BATCH_FORMATS
    inputs = free_batch_inputs(config) if free_batch else example_inputs(config, config.export_batch_size)
    with atomic_path(final, suffix=suffix) as temp:
        export_network(net, inputs, temp, config.file_format)
    batch = "B" if free_batch else config.export_batch_size
    print(f"exported {final} (inputs: image ({batch}, 3, {config.image_size}, {config.image_size}) float32, "
          f"input_ids and attention_mask ({batch}, {config.max_tokens}) int32"
          + ("; any batch size B)" if free_batch else ")"))
    return final
