"""A process's place in a data-parallel job and the few collectives that run outside the training graph:
gathering evaluation shards and checking that every rank holds the same weights.

MindSpore's CPU backend offers sum all-reduce (float32) and all-gather only; both are enough here, and
all-gather of int64 keeps pixel counts exact.
"""
import hashlib

import numpy as np

import mindspore as ms


class RankGroup:
    """rank_id of group_size ranks; with one rank every collective is the identity."""

    def __init__(self, rank_id=0, group_size=1):
        if not 0 <= rank_id < group_size:
            raise ValueError(f"rank_id {rank_id} must be in [0, {group_size})")
        self.rank_id = int(rank_id)
        self.group_size = int(group_size)

    @property
    def is_main(self):
        return self.rank_id == 0

    @property
    def distributed(self):
        return self.group_size > 1

    def all_gather(self, array):
        """int64 (n, K), the same shape on every rank -> (group_size * n, K), rank 0's rows first."""
        if not self.distributed:
            return np.asarray(array, np.int64)
        from mindspore import ops
        return ops.AllGather()(ms.Tensor(np.ascontiguousarray(array, np.int64))).asnumpy()

    def gather_rows(self, rows):
        """Rows (n_r, K) int64 of this rank -> every rank's rows (sum n_r, K), rank 0's first, on every rank.

        Ranks may hold different numbers of rows (evaluation shards by image), so they are padded to the
        longest for the all-gather and the padding is dropped afterwards.
        """
        rows = np.asarray(rows, np.int64).reshape(len(rows), -1)
        if not self.distributed:
            return rows
        counts = self.all_gather(np.array([[len(rows)]], np.int64)).reshape(-1)
        longest = int(counts.max())
        padded = np.zeros((longest, rows.shape[1]), np.int64)
        padded[:len(rows)] = rows
        return unpad_shards(self.all_gather(padded).reshape(self.group_size, longest, rows.shape[1]), counts)

    def same_on_all_ranks(self, digest):
        """True when the int64 `digest` (e.g. `weights_digest`) is identical on every rank."""
        gathered = self.all_gather(np.array([[digest]], np.int64)).reshape(-1)
        return bool((gathered == gathered[0]).all())


def unpad_shards(shards, counts):
    """Padded shards (G, L, K), shard r holding its rows in its first counts[r] slots -> the rows
    (sum(counts), K), shard 0's first."""
    return np.concatenate([shard[:count] for shard, count in zip(shards, np.asarray(counts).tolist())])


def weights_digest(net):
    """A 63-bit fingerprint of the exact bytes of every parameter of `net`, in name order."""
    hasher = hashlib.blake2b(digest_size=8)
    for param in sorted(net.get_parameters(), key=lambda p: p.name):
        hasher.update(param.name.encode())
        hasher.update(np.ascontiguousarray(param.asnumpy()).tobytes())
    return int.from_bytes(hasher.digest(), "little") >> 1
