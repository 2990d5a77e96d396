"""What the parts measure: our networks (built here only), their random inputs, and a part's result header."""
import numpy as np

import mindspore as ms
import mindspore.nn as nn

from ..hf_bridge import randomise_mindspore
from .machine import setup_mindspore


def part_result(args, batch=1):
    """A part's result before measuring: its batch and the MindSpore set-up (GRAPH_MODE, threads)."""
    return {"batch": batch, "threads": {"mindspore": setup_mindspore(args.ms_threads)}}


def make_inputs(config, batch, seed=0):
    """Random image (B,3,S,S), ids and mask (B,T) int32 (last quarter of the tokens padded), gt (B,1,S,S)."""
    rng = np.random.default_rng(seed)
    size, tokens = config.image_size, config.max_tokens
    image = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    input_ids = rng.integers(5, config.vocab_size, (batch, tokens)).astype(np.int32)
    attention_mask = np.ones((batch, tokens), np.int32)
    attention_mask[:, tokens - tokens // 4:] = 0
    input_ids[attention_mask == 0] = 0
    input_ids[:, 0] = min(101, config.vocab_size - 1)
    gt_mask = np.zeros((batch, 1, size, size), np.float32)
    gt_mask[:, :, size // 4:size // 2, size // 3:size * 2 // 3] = 1.0
    return {"image": image, "input_ids": input_ids, "attention_mask": attention_mask, "gt_mask": gt_mask}


def mindspore_inputs(inputs, keys):
    """The arrays of `inputs` named by `keys`, as MindSpore tensors."""
    return [ms.Tensor(inputs[key]) for key in keys]


def build_our_encoders(config):
    """Our Swin and BERT with random weights, in inference mode."""
    from src.models.bert import BertModel
    from src.models.swin import SwinTransformer
    swin, bert = SwinTransformer.from_config(config), BertModel.from_config(config)
    randomise_mindspore(swin, seed=1)
    randomise_mindspore(bert, seed=2)
    swin.set_train(False)
    bert.set_train(False)
    return swin, bert


def build_coupalign(config):
    """The whole network, as training and inference build it."""
    from src.models.coupalign import CoupAlign
    return CoupAlign.from_config(config)


class StageBlocks(nn.Cell):
    """The blocks of one of our Swin stages as a graph of its own. (B, H*W, C) -> (B, H*W, C)"""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def construct(self, x):
        return self.stage.forward_blocks(x)
