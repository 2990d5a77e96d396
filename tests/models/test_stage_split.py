"""BERT layers per Swin stage (bert_stage_layers): the ranges, the errors, a 6-layer encoder in CoupAlign."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from model_utils.config import get_config
from src.models.coupalign import CoupAlign, _stage_split
from tests.conftest import TINY_CONFIG, make_batch


class CoupledWords(nn.Cell):
    """The words CoupAlign.encode returns (after the last stage's WPA)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        return self.net.encode(image, input_ids, attention_mask)[1]


def test_given_counts_become_consecutive_ranges():
    assert _stage_split(6, 4, [2, 2, 1, 1]) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert _stage_split(6, 4, [3, 3, 0, 0]) == [(0, 3), (3, 6), (6, 6), (6, 6)]
    assert _stage_split(6, 4, (0, 0, 0, 6)) == [(0, 0), (0, 0), (0, 0), (0, 6)]


def test_no_counts_split_evenly_as_before():
    assert _stage_split(12, 4) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert _stage_split(4, 4, []) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert _stage_split(12, 4, [3, 3, 3, 3]) == _stage_split(12, 4)


def test_a_count_per_stage_is_required():
    with pytest.raises(ValueError, match=r"bert_stage_layers \[2, 2, 1\] must give one count per Swin stage \(4\)"):
        _stage_split(6, 4, [2, 2, 1])


def test_counts_must_sum_to_the_layers():
    with pytest.raises(ValueError, match=r"sum to bert_num_layers \(6\), got 5"):
        _stage_split(6, 4, [2, 1, 1, 1])


@pytest.mark.parametrize("counts", [[3, 3, 1, -1], [2, 2, 1.5, 0.5], [2, 2, True, True]])
def test_counts_must_be_non_negative_integers(counts):
    with pytest.raises(ValueError, match="non-negative integers"):
        _stage_split(6, 4, counts)


def test_an_uneven_depth_without_counts_suggests_the_key():
    with pytest.raises(ValueError, match="bert_num_layers=6 cannot be split evenly over 4 stages.*bert_stage_layers"):
        _stage_split(6, 4)


def six_layer_config():
    return get_config([], TINY_CONFIG, overrides={"bert_num_layers": 6, "bert_stage_layers": [2, 2, 1, 1]})


def test_from_config_passes_the_counts():
    net = CoupAlign.from_config(six_layer_config())
    assert net.bert_blocks == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert len(net.bert.layers) == 6


def test_from_config_names_counts_that_do_not_fit():
    config = get_config([], TINY_CONFIG, overrides={"bert_stage_layers": [2, 2, 1, 1]})  # 4 layers, not 6
    with pytest.raises(ValueError, match=r"sum to bert_num_layers \(4\), got 6"):
        CoupAlign.from_config(config)


def test_the_counts_do_not_change_the_parameters():
    """A checkpoint written with the even split loads into a net with explicit counts and back."""
    even = {param.name: param.shape for param in CoupAlign.from_config(get_config([], TINY_CONFIG)).get_parameters()}
    explicit_config = get_config([], TINY_CONFIG, overrides={"bert_stage_layers": [2, 0, 1, 1]})
    explicit = {param.name: param.shape for param in CoupAlign.from_config(explicit_config).get_parameters()}
    assert explicit == even


@pytest.fixture(scope="module")
def six_layer_net():
    ms.set_seed(3)
    net = CoupAlign.from_config(six_layer_config())
    net.set_train(False)
    return net


@pytest.mark.slow
def test_six_layer_net_runs_forward(six_layer_net):
    config = six_layer_config()
    image, input_ids, attention_mask, _ = make_batch(config)
    logits = six_layer_net(image, input_ids, attention_mask)
    assert logits.shape == (2, 1, config.image_size, config.image_size)
    assert np.isfinite(logits.asnumpy()).all()


@pytest.mark.slow
def test_zero_gates_leave_the_six_layer_words_equal_to_bert(six_layer_net):
    """Each WPA adds tanh(fc2(...)) * G to the words with fc2 zero-initialised: exactly zero at init, so
    the coupled words are the 6 BERT layers run in sequence."""
    config = six_layer_config()
    image, input_ids, attention_mask, _ = make_batch(config)
    coupled = CoupledWords(six_layer_net)(image, input_ids, attention_mask).asnumpy()
    alone = six_layer_net.bert(input_ids, attention_mask).asnumpy()
    assert six_layer_net.bert.num_hidden_layers == 6
    np.testing.assert_array_equal(coupled, alone)
