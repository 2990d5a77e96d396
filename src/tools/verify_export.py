"""Check an exported model before shipping it: run a MINDIR or ONNX file on real samples of a split and
compare it with the checkpoint it came from.

python -m src.tools.verify_export --config_path C --ckpt_path K --mindrecord_dir M --exported F.mindir|F.onnx
    [--eval_split val] [--num_samples 32]

Prints the largest difference of the logits, the share of mask pixels on which the two disagree and the
oIoU of both on those samples; exits 1 when the masks differ on more than 0.1 % of the pixels.
"""
import argparse
import os
import sys

import numpy as np

import mindspore as ms

from model_utils.config import config_or_exit, run_or_exit
from ..checkpoint import load_network_weights
from ..commands.eval import parse_splits
from ..commands.predict import check_mindir_inputs, mindir_input_shapes, run_padded
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset, raising_decode_errors
from ..evaluation import RefSegMetrics
from ..models.coupalign import CoupAlign

MAX_DISAGREEMENT = 1e-3  # share of mask pixels; float32 rounding flips a pixel whose logit is ~0 now and then


class ExportedModel:
    """A MINDIR (MindSpore GraphCell) or ONNX (onnxruntime) file as a function of numpy inputs, run in
    batches of its own batch size."""

    def __init__(self, path, config):
        if not os.path.isfile(path):
            raise ValueError(f"--exported {path} not found")
        extension = os.path.splitext(path)[1].lower()
        if extension == ".mindir":
            check_mindir_inputs(path, config)
            self.batch = mindir_input_shapes(path)[0][0]
            graph = ms.nn.GraphCell(ms.load(path))
            self.run = lambda *arrays: (graph(*(ms.Tensor(array) for array in arrays)).asnumpy(),)
        elif extension == ".onnx":
            self.batch, self.run = self._onnx(path)
        else:
            raise ValueError(f"--exported {path}: expected a .mindir or .onnx file")

    @staticmethod
    def _onnx(path):
        try:
            import onnxruntime  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ValueError("verifying an ONNX file needs onnxruntime: pip install onnxruntime==1.22.1") from None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [item.name for item in session.get_inputs()]
        batch = session.get_inputs()[0].shape[0]
        return (batch if isinstance(batch, int) else None,
                lambda *arrays: (session.run(None, dict(zip(names, arrays)))[0],))

    def __call__(self, images, input_ids, attention_masks):
        return run_padded(self.run, self.batch, (images, input_ids, attention_masks))[0]


def compare(config, exported_path, split, num_samples):
    """{samples, max_abs_diff, disagreeing_pixels, oIoU_checkpoint, oIoU_exported} over the first samples."""
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    exported = ExportedModel(exported_path, config)
    metrics = {"checkpoint": RefSegMetrics(), "exported": RefSegMetrics()}
    largest, disagreeing, pixels, seen = 0.0, 0, 0, 0
    with raising_decode_errors():
        for batch in create_dataset(config, split, training=False).create_tuple_iterator(output_numpy=True,
                                                                                          num_epochs=1):
            image, input_ids, attention_mask, mask = (array[:num_samples - seen] for array in batch[:4])
            expected = net(ms.Tensor(image), ms.Tensor(input_ids), ms.Tensor(attention_mask)).asnumpy()
            actual = exported(image, input_ids, attention_mask)
            largest = max(largest, float(np.abs(actual - expected).max()))
            disagreeing += int(((actual > 0) != (expected > 0)).sum())
            pixels += expected.size
            metrics["checkpoint"].update(expected[:, 0] > 0, mask[:, 0] > 0.5)
            metrics["exported"].update(actual[:, 0] > 0, mask[:, 0] > 0.5)
            seen += len(image)
            if seen >= num_samples:
                break
    if not seen:
        raise ValueError(f"split {split} has no samples")
    return {"samples": seen, "max_abs_diff": largest, "disagreeing_pixels": disagreeing / pixels,
            "oIoU_checkpoint": metrics["checkpoint"].result()["oIoU"],
            "oIoU_exported": metrics["exported"].result()["oIoU"]}


def verify_export(config, exported_path, split="", num_samples=32):
    if num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {num_samples}")
    split = split or parse_splits(config)[0]
    setup_context(config)
    check_token_ids(config, split)
    result = compare(config, exported_path, split, num_samples)
    print(f"{os.path.basename(exported_path)} on the first {result['samples']} {split} samples: largest logit "
          f"difference {result['max_abs_diff']:.3g}, masks differ on {100 * result['disagreeing_pixels']:.4f} % "
          f"of the pixels; oIoU {result['oIoU_exported']:.4f} (checkpoint {result['oIoU_checkpoint']:.4f})")
    if result["disagreeing_pixels"] > MAX_DISAGREEMENT:
        raise ValueError(f"{exported_path} is not the checkpoint's network: its masks differ on "
                         f"{100 * result['disagreeing_pixels']:.2f} % of the pixels")
    return result


def parse_tool_flags(argv):
    """(--exported, --eval_split, --num_samples, the remaining arguments for the config)."""
    parser = argparse.ArgumentParser(prog="python -m src.tools.verify_export", add_help=False)
    parser.add_argument("--exported", default="")
    parser.add_argument("--eval_split", default="")
    parser.add_argument("--num_samples", type=int, default=32)
    options, rest = parser.parse_known_args(argv)
    return options.exported, options.eval_split, options.num_samples, rest


def main(argv=None):
    exported, split, num_samples, config_argv = parse_tool_flags(sys.argv[1:] if argv is None else argv)
    config = config_or_exit(config_argv)
    if not exported:
        sys.exit("error: give --exported, the .mindir or .onnx file to check")
    return run_or_exit(lambda checked: verify_export(checked, exported, split, num_samples), config)


if __name__ == "__main__":
    main()
