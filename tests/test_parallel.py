"""RankGroup on one process, and the unpadding of gathered evaluation shards."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.parallel import RankGroup, unpad_shards, weights_digest


@pytest.mark.parametrize("counts", [(3, 2, 2), (0, 4), (1,), (5, 0, 2, 1)])
def test_unpadded_shards_are_every_rank_s_rows_in_rank_order(counts):
    rows = np.stack([np.arange(sum(counts)), 10 * np.arange(sum(counts))], axis=1)
    bounds = np.cumsum((0,) + counts)
    padded = np.full((len(counts), max(counts), 2), -1)
    for rank, count in enumerate(counts):
        padded[rank, :count] = rows[bounds[rank]:bounds[rank + 1]]
    np.testing.assert_array_equal(unpad_shards(padded, counts), rows)


def test_one_rank_is_the_identity():
    ranks = RankGroup()
    rows = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(ranks.gather_rows(rows), rows)
    assert ranks.same_on_all_ranks(12345) and ranks.is_main and not ranks.distributed


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank_id 2"):
        RankGroup(2, 2)


def test_weights_digest_sees_one_changed_value():
    net = nn.Dense(3, 2)
    before = weights_digest(net)
    assert weights_digest(net) == before and 0 <= before < 2 ** 63
    weight = net.weight.asnumpy().copy()
    weight[1, 2] = np.nextafter(weight[1, 2], np.float32(np.inf))
    net.weight.set_data(ms.Tensor(weight))
    assert weights_digest(net) != before
