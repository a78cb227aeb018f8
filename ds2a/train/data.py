"""Feeding the data engineer's datasets to torch: augmented crops, deterministic per sample,
and an endless sampler that shards across DDP ranks (DistributedSampler) and can resume."""
from __future__ import annotations

import bisect
import itertools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..errors import UserError
from ..preprocess import normalize

Key = Tuple[int, int]  # (epoch, index)


class TrainSet(Dataset):
    """Items are keyed by (epoch, index) so the augmentation of every draw depends only on
    (seed, epoch, index): the same with any number of workers and after a resume."""

    def __init__(self, base: Any, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Key) -> Tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        sample = self.base[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        image, mask = self.transform(sample.image, sample.mask, rng)
        x = torch.from_numpy(normalize(np.ascontiguousarray(image))[0])
        y = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
        return x, y


class MixedSet:
    """Several datasets of the same classes as one (`ds2a train --data A --extra-data B`): the extra sets
    repeated `repeat` times, so a few hundred reviewed frames are drawn often enough beside thousands of
    originals (docs/REVIEW.md). Classes and palette are the first set's; a set with other classes is refused."""

    def __init__(self, sets: Sequence[Any], repeats: Sequence[int]) -> None:
        first = sets[0]
        for other in sets[1:]:
            if list(other.classes) != list(first.classes):
                raise UserError(f"--extra-data '{other.root}' has classes {', '.join(other.classes)} but --data "
                                f"'{first.root}' has {', '.join(first.classes)}; give it the same classes.txt "
                                "(same names, same order)")
        self.sets, self.repeats = list(sets), [int(r) for r in repeats]
        self.classes, self.palette, self.root = list(first.classes), list(first.palette), first.root
        self._ends = list(itertools.accumulate(len(d) * r for d, r in zip(self.sets, self.repeats)))

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> Any:
        k = bisect.bisect_right(self._ends, index)
        start = self._ends[k - 1] if k else 0
        return self.sets[k][(index - start) % len(self.sets[k])]


def open_train_set(data: str, extra: Sequence[str] = (), extra_repeat: int = 1) -> Any:
    """The train split of --data, mixed with the train split of each --extra-data (ds2a/data/datasets.py's
    fixed split: the held-out test names stay out, for `ds2a eval --split test`)."""
    from ..data import open_dataset

    base = open_dataset(data, split="train")
    if not extra:
        return base
    if extra_repeat < 1:
        raise UserError(f"--extra-repeat {extra_repeat}: give a whole number >= 1")
    more = [open_dataset(e, split="train") for e in extra]
    return MixedSet([base] + more, [1] + [extra_repeat] * len(more))


class EndlessSampler(Sampler):
    """Epoch after epoch of a (Distributed)Sampler, yielding (epoch, index); `skip` drops the first
    draws so a resumed run sees exactly the samples an uninterrupted run would have."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, skip: int = 0) -> None:
        self.inner = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed, drop_last=False)
        self.skip = int(skip)

    def __iter__(self) -> Iterator[Key]:
        per_epoch = len(self.inner)
        epoch, offset = divmod(self.skip, per_epoch)
        while True:
            self.inner.set_epoch(epoch)
            for i, index in enumerate(self.inner):
                if i >= offset:
                    yield epoch, int(index)
            offset = 0
            epoch += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


def seed_worker(worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(base: Any, transform: Callable, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1, skip_batches: int = 0, workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    ds = TrainSet(base, transform, seed)
    sampler = EndlessSampler(len(ds), seed, rank, world_size, skip=skip_batches * batch_size)
    # Its own generator: creating the loader's iterator must not draw from the global RNG,
    # or a resumed run would sample different loss points than an uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True, generator=generator,
        worker_init_fn=seed_worker if workers else None, pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


def default_transform(crop_size: Tuple[int, int], ratio_range: Optional[Tuple[float, float]] = None,
                      vflip: float = 0.0) -> Callable:
    """The data engineer's TrainTransform (resize, crop, flips, photometric distortion).

    Without `ratio_range` the official random short edge 256..1024 is used; small images
    (like 256x256 synthetic cells) train better with a ratio range around 1 such as (0.5, 2.0).
    """
    from ..data.transforms import TrainTransform

    if ratio_range is None:
        return TrainTransform(crop_size=crop_size, vflip=vflip)
    return TrainTransform(crop_size=crop_size, ratio_range=ratio_range, vflip=vflip)


