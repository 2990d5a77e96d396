"""RankGroup on one process, and the interleaving that puts evaluation shards back into stored order."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from src.parallel import RankGroup, interleave_shards, weights_digest


@pytest.mark.parametrize("total,group_size", [(7, 3), (6, 3), (1, 2), (5, 1), (9, 4)])
def test_interleaved_shards_are_the_stored_rows(total, group_size):
    rows = np.stack([np.arange(total), 10 * np.arange(total)], axis=1)
    shards = [rows[rank::group_size] for rank in range(group_size)]
    longest = max(len(shard) for shard in shards)
    padded = np.full((group_size, longest, 2), -1)
    for rank, shard in enumerate(shards):
        padded[rank, :len(shard)] = shard
    restored = interleave_shards(padded, [len(shard) for shard in shards])
    np.testing.assert_array_equal(restored, rows)


def test_one_rank_is_the_identity():
    ranks = RankGroup()
    rows = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(ranks.gather_shards(rows), rows)
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
