"""``GroupedBlockBatchSampler`` (DATA_SAMPLERS): batches made of groups of blocks sharing a label.

The inter-instance LSR losses (seed 004 Eq. 9-11) estimate a label's statistics over the blocks of
one (class, label) group in the batch, so a batch must hold several blocks per label: the paper
uses 2 groups of 10 (cell detection) or of 15 (cancer regions) blocks sharing a label. Used from
a config like mmdet's ``AspectRatioBatchSampler``::

    train_dataloader = dict(
        batch_size=20,
        sampler=dict(type="InfiniteSampler", shuffle=True),
        batch_sampler=dict(type="GroupedBlockBatchSampler", group_size=10),
        dataset=dict(type="LSRBlockDataset", ...))

It buckets the indices of the wrapped sampler (which keeps shuffling, seeding and distributed
sharding) by the sample's ``block_label``; each full bucket is a group and every
``batch_size // group_size`` groups make a batch (two groups may share a label). Blocks left in
unfilled buckets at the end of an epoch are dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, Hashable, Iterator, List

from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import BatchSampler, Sampler

__all__ = ["GroupedBlockBatchSampler"]


@DATA_SAMPLERS.register_module()
class GroupedBlockBatchSampler(BatchSampler):
    """Batches of ``batch_size // group_size`` groups of ``group_size`` same-label samples.

    Args:
        sampler: the index sampler (its ``dataset`` provides ``get_data_info``).
        batch_size: samples per batch, a multiple of ``group_size``.
        group_size: samples per group (seed 004: 10 or 15).
        group_key: the data info key the groups share.
        drop_last: drop a last batch with fewer groups at the end of an epoch.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        group_size: int = 10,
        group_key: str = "block_label",
        drop_last: bool = True,
    ) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a torch Sampler, got {type(sampler).__name__}")
        if group_size < 1 or batch_size < group_size or batch_size % group_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of group_size "
                f"({group_size})"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_size = group_size
        self.groups_per_batch = batch_size // group_size
        self.group_key = group_key
        self.drop_last = drop_last
        self._keys: Dict[int, Hashable] = {}
        dataset = sampler.dataset
        counts = Counter(self._key(i) for i in range(len(dataset)))
        self._groups_per_epoch = sum(c // group_size for c in counts.values())
        if self._groups_per_epoch == 0:
            raise ValueError(
                f"no {group_key} is shared by {group_size} samples (counts: {dict(counts)}): "
                f"lower group_size"
            )

    def _key(self, index: int) -> Hashable:
        key = self._keys.get(index)
        if key is None:
            info = self.sampler.dataset.get_data_info(index)
            if self.group_key not in info:
                raise KeyError(f"sample {index} has no '{self.group_key}' (keys: {sorted(info)})")
            key = info[self.group_key]
            key = tuple(key) if isinstance(key, list) else key
            self._keys[index] = key
        return key

    def __iter__(self) -> Iterator[List[int]]:
        buckets: Dict[Hashable, List[int]] = defaultdict(list)
        ready: List[List[int]] = []
        for index in self.sampler:
            key = self._key(index)
            bucket = buckets[key]
            bucket.append(index)
            if len(bucket) == self.group_size:
                ready.append(bucket)
                buckets[key] = []
                if len(ready) == self.groups_per_batch:
                    yield [i for group in ready for i in group]
                    ready = []
        if ready and not self.drop_last:
            yield [i for group in ready for i in group]

    def __len__(self) -> int:
        # exact for a sampler over the whole dataset; scaled for a shard of it
        n, total = len(self.sampler), len(self.sampler.dataset)
        groups = self._groups_per_epoch * n // max(total, 1)
        if self.drop_last:
            return groups // self.groups_per_batch
        return -(-groups // self.groups_per_batch)
