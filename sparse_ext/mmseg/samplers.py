"""``GroupedBlockBatchSampler`` (DATA_SAMPLERS): batches made of groups of blocks sharing a label.

The inter-instance LSR losses (Zhao, Hou et al., "Label super resolution with inter-instance
loss", Eq. 9-11) estimate a label's statistics over the blocks of one (class, label) group in the
batch, so a batch must hold several blocks per label: the paper uses 2 groups of 10 (cell
detection) or of 15 (cancer regions) blocks sharing a label. Used from a config like mmdet's
``AspectRatioBatchSampler``::

    train_dataloader = dict(
        batch_size=20,
        sampler=dict(type="InfiniteSampler", shuffle=True),
        batch_sampler=dict(type="GroupedBlockBatchSampler", group_size=10),
        dataset=dict(type="LSRBlockDataset", ...))

The wrapped sampler keeps shuffling, seeding and distributed sharding; the groups are drawn from
the blocks it yields, by ``label_sampling``:

- ``"uniform"`` (default): each group's label is drawn uniformly among the labels (then its
  blocks among the blocks of that label seen so far), the paper's label count sampling ("given
  low resolution label z, we first sample X_k", Sect. 3.3); the groups of a batch have
  different labels where there are enough labels. Rare labels are repeated, common ones
  subsampled. On HeLa 32 px blocks most blocks carry the lowest label (64 %): with ``"data"``
  the LSR UNet under-segmented (intra+inter seed 1: Dice 0.338), with ``"uniform"`` it reached
  0.826 (docs/benchmarks, LSR section).
- ``"data"``: groups in the data's proportions: each bucket of ``group_size`` same-label indices
  in the sampler's order is a group (two groups may share a label; blocks left in unfilled
  buckets at the end of an epoch are dropped).

Distributed training (DDP): ``batch_size`` is per process, as everywhere in mmengine. The groups
are formed on each rank from that rank's share of the data (mmengine's ``InfiniteSampler`` and
``DefaultSampler`` shard by rank), so every rank gets whole groups of its own blocks and its loss
is the paper's estimator over its own groups (per-rank by design, see docs/distributed.md). In a
distributed run the wrapped sampler must shard (a sampler that does not would give every rank
the same blocks: a ValueError), and over a finite sampler (epoch-based training) every rank yields
exactly ``len(self)`` batches, repeating some of its own groups if its share formed fewer (as
``DefaultSampler``'s ``round_up`` repeats samples), because DDP hangs when ranks run different
numbers of iterations.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from typing import Dict, Hashable, Iterator, List, Optional, Tuple

from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_dist_info
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import BatchSampler, Sampler

__all__ = ["GroupedBlockBatchSampler", "LABEL_SAMPLING"]

#: How a group's label is chosen (``GroupedBlockBatchSampler(label_sampling=...)``).
LABEL_SAMPLING = ("uniform", "data")


def _shard_of(sampler: Sampler) -> Tuple[int, int]:
    """(rank, number of shards) of the data ``sampler`` yields: mmengine's samplers carry
    ``rank``/``world_size``, torch's ``DistributedSampler`` ``rank``/``num_replicas``; any other
    sampler yields the whole dataset, (0, 1)."""
    world = getattr(sampler, "world_size", getattr(sampler, "num_replicas", None))
    rank = getattr(sampler, "rank", None)
    if world is None or rank is None:
        return 0, 1
    return int(rank), int(world)


@DATA_SAMPLERS.register_module()
class GroupedBlockBatchSampler(BatchSampler):
    """Batches of ``batch_size // group_size`` groups of ``group_size`` same-label samples.

    Args:
        sampler: the index sampler (its ``dataset`` provides ``get_data_info``); in a distributed
            run a sharding one (mmengine's ``InfiniteSampler``/``DefaultSampler``, torch's
            ``DistributedSampler``).
        batch_size: samples per batch (per process), a multiple of ``group_size``.
        group_size: samples per group (Zhao, Hou et al.: 10 or 15).
        group_key: the data info key the groups share.
        drop_last: drop a last batch with fewer groups at the end of an epoch.
        label_sampling: ``"uniform"`` (a group's label uniformly among the labels) or
            ``"data"`` (groups in the data's label proportions); see the module docstring.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        group_size: int = 10,
        group_key: str = "block_label",
        drop_last: bool = True,
        label_sampling: str = "uniform",
    ) -> None:
        if label_sampling not in LABEL_SAMPLING:
            raise ValueError(
                f"label_sampling must be one of {', '.join(LABEL_SAMPLING)}, got {label_sampling!r}"
            )
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a torch Sampler, got {type(sampler).__name__}")
        if group_size < 1 or batch_size < group_size or batch_size % group_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of group_size "
                f"({group_size})"
            )
        self.rank, self.world_size = _shard_of(sampler)
        _, dist_world_size = get_dist_info()
        if dist_world_size > 1 and self.world_size != dist_world_size:
            raise ValueError(
                f"GroupedBlockBatchSampler in a distributed run of {dist_world_size} processes "
                f"needs a sampler that gives each rank its own share of the data (mmengine's "
                f"InfiniteSampler or DefaultSampler, torch's DistributedSampler); "
                f"{type(sampler).__name__} would give every rank the same blocks"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_size = group_size
        self.groups_per_batch = batch_size // group_size
        self.group_key = group_key
        self.drop_last = drop_last
        self.label_sampling = label_sampling
        self._passes = 0
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
        if self.label_sampling == "uniform":
            return self._uniform_labels()
        return self._data_order()

    def _uniform_labels(self) -> Iterator[List[int]]:
        """Label-uniform groups from the blocks the wrapped sampler has yielded on this rank: a
        finite sampler is read whole, then gives ``len(self)`` batches; an infinite one is read
        for one share of the data first, then ``batch_size`` more indices per batch (a later
        pass of a sharding sampler may give this rank other blocks)."""
        seed = int(getattr(self.sampler, "seed", 0) or 0)
        epoch = int(getattr(self.sampler, "epoch", self._passes))
        self._passes += 1
        rng = random.Random(seed * 1_000_003 + self.rank * 7_919 + epoch)
        pools: Dict[Hashable, List[int]] = defaultdict(list)
        seen: set = set()
        stream = iter(self.sampler)

        def read(n: Optional[int]) -> None:
            for index in itertools.islice(stream, n):
                if index not in seen:
                    seen.add(index)
                    pools[self._key(index)].append(index)

        finite = not isinstance(self.sampler, InfiniteSampler)
        share = math.ceil(len(self.sampler.dataset) / self.world_size)
        read(None if finite else share)
        count, limit = 0, len(self) if finite else None
        while limit is None or count < limit:
            labels = [k for k, v in pools.items() if len(v) >= self.group_size]
            if not labels:
                raise RuntimeError(
                    f"rank {self.rank} of {self.world_size}: its share of the data holds no "
                    f"{self.group_size} samples with the same {self.group_key}; lower group_size"
                )
            labels.sort(key=repr)  # the draw depends on the seed, not on the arrival order
            if len(labels) >= self.groups_per_batch:
                chosen = rng.sample(labels, self.groups_per_batch)
            else:
                chosen = rng.choices(labels, k=self.groups_per_batch)
            yield [i for k in chosen for i in rng.sample(pools[k], self.group_size)]
            count += 1
            if not finite:
                read(self.batch_size)

    def _data_order(self) -> Iterator[List[int]]:
        # the same number of batches on every rank of a finite (epoch) sampler: DDP needs it
        limit: Optional[int] = None
        if self.world_size > 1 and not isinstance(self.sampler, InfiniteSampler):
            limit = len(self)
            if limit == 0:
                return
        buckets: Dict[Hashable, List[int]] = defaultdict(list)
        ready: List[List[int]] = []
        made: List[List[int]] = []  # this rank's groups, for the round-up
        count = 0
        for index in self.sampler:
            key = self._key(index)
            bucket = buckets[key]
            bucket.append(index)
            if len(bucket) == self.group_size:
                ready.append(bucket)
                if limit is not None:
                    made.append(bucket)
                buckets[key] = []
                if len(ready) == self.groups_per_batch:
                    yield [i for group in ready for i in group]
                    ready = []
                    count += 1
                    if count == limit:
                        return
        if limit is None:
            if ready and not self.drop_last:
                yield [i for group in ready for i in group]
            return
        if count < limit and not made:
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: its share of the data holds no "
                f"{self.group_size} samples with the same {self.group_key}; lower group_size"
            )
        repeat = itertools.cycle(made)
        while count < limit:  # round up with this rank's own groups: full batches only
            ready.extend(next(repeat) for _ in range(self.groups_per_batch - len(ready)))
            yield [i for group in ready for i in group]
            ready = []
            count += 1

    def __len__(self) -> int:
        # exact for a sampler over the whole dataset; scaled for a shard of it (the same on
        # every rank of a distributed run: each holds about 1 / world_size of the data)
        total = max(len(self.sampler.dataset), 1)
        n = len(self.sampler) if self.world_size == 1 else math.ceil(total / self.world_size)
        groups = self._groups_per_epoch * n // total
        if self.drop_last:
            return groups // self.groups_per_batch
        return -(-groups // self.groups_per_batch)
