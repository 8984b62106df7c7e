"""Hierarchical batch sampler: batches of related drawings, so every anchor has positives at each LIC level.

A batch of `batch_size` drawings is a fixed template, filled top-down:
    main classes -> `subclasses_per_class` subclasses each -> `patents_per_subclass` patents each
    -> `drawings_per_patent` drawings each,
so it holds batch_size // drawings_per_patent patent slots (the batch_size % drawings_per_patent extra
drawings go to the first patents of the batch, one more each) in ceil(slots / (S * P)) class slots.

How each level is filled (balanced sampling, the hierarchical generalisation of the usual P x K sampler):
- classes: each batch takes distinct classes uniformly at random; when it needs more class slots than there
  are classes, every class is used and some twice (their extra slots draw further subclasses / patents).
- subclasses of a class, patents of a subclass, drawings of a patent: each parent walks through a random
  permutation of its children (reshuffled every epoch), cyclically, continuing where its last request in the
  epoch stopped. So children are distinct within a batch as long as the parent has enough of them, an
  epoch spreads evenly over all of them, and a thin level degrades gracefully instead of failing: a class
  with one subclass gives that subclass all the class's patent slots, a subclass with one patent repeats it
  (with its next drawings).
- Patents with an unknown subclass (label < 0) form one pseudo-subclass per class: they are drawn like a
  subclass and give class and patent positives (the loss never counts -1 as a shared subclass).
- Patents with fewer drawings than `drawings_per_patent` repeat their drawings (sampling with replacement;
  with augmentation the copies are two views of one drawing, SimCLR-style). `drop_patents_with_one=True`
  instead never samples patents that have a single drawing.

Epochs and resume: the epoch is a pure function of (seed, epoch), built vectorised in numpy when iteration
starts (about a second per million drawings). `state_dict()` = {"seed", "epoch"}; start mid-epoch with
`skip_batches` (e.g. load_state_dict({"seed": s, "epoch": e, "skip_batches": k})); the training loop, not
the sampler, knows how many batches were consumed (DataLoader prefetches ahead).

Distributed: all ranks build the same epoch of num_batches * world_size batches; rank r takes batches
r, r + world_size, ... Each rank's batch keeps the full hierarchical composition, the global batch is
world_size * batch_size, and ranks of one step draw consecutive stretches of the same permutations, so
they do not share drawings unless a level is too thin to avoid it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hmpcl_lib.errors import InputError


def _as_label_array(name: str, labels: Sequence[int] | np.ndarray | torch.Tensor, minimum: int) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise InputError(f"must be one-dimensional, got shape {array.shape}", source=name)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"must hold integer labels, got dtype {array.dtype}", source=name)
    array = array.astype(np.int64, copy=False)
    bad = np.flatnonzero(array < minimum)
    if bad.size:
        raise InputError(f"label {array[bad[0]]} is below the minimum {minimum}", source=name, record=f"#{bad[0]}")
    return array


def _groups(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR grouping of items by dense key: (members sorted by key, offsets, sizes)."""
    members = np.argsort(keys, kind="stable")
    sizes = np.bincount(keys, minlength=n_groups)
    offsets = np.cumsum(sizes) - sizes
    return members, offsets, sizes


def _shuffle_within_groups(rng: np.random.Generator, members: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Members of every group (contiguous in `members`) in a fresh random order, groups left in place."""
    group_of_item = np.repeat(np.arange(sizes.size, dtype=np.float64), sizes)
    return members[np.argsort(group_of_item + rng.random(members.size), kind="stable")]


def _round_robin(
    shuffled: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, requests: np.ndarray
) -> np.ndarray:
    """Answer each request (a group id, in order) with the group's next member, cycling through `shuffled`."""
    order = np.argsort(requests, kind="stable")
    counts = np.bincount(requests, minlength=sizes.size)
    position = np.empty(requests.size, dtype=np.int64)
    position[order] = np.arange(requests.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return shuffled[offsets[requests] + position % sizes[requests]]


class HierarchicalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of dataset indices (one batch each) drawn class -> subclass -> patent -> drawings."""

    def __init__(
        self,
        class_labels: Sequence[int] | np.ndarray | torch.Tensor,
        subclass_labels: Sequence[int] | np.ndarray | torch.Tensor,
        patent_labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        drawings_per_patent: int = 2,
        patents_per_subclass: int = 2,
        subclasses_per_class: int = 2,
        num_batches: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_patents_with_one: bool = False,
    ) -> None:
        for name, value in [("drawings_per_patent", drawings_per_patent), ("patents_per_subclass",
                            patents_per_subclass), ("subclasses_per_class", subclasses_per_class),
                            ("world_size", world_size)]:
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(batch_size) != batch_size or batch_size < drawings_per_patent:
            raise ValueError(f"batch_size must be an integer >= drawings_per_patent ({drawings_per_patent}), "
                             f"got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")

        klass = _as_label_array("class_labels", class_labels, 0)
        subclass = _as_label_array("subclass_labels", subclass_labels, -1)
        patent = _as_label_array("patent_labels", patent_labels, 0)
        if not klass.size == subclass.size == patent.size:
            raise InputError(f"label arrays differ in length: class_labels {klass.size}, subclass_labels "
                             f"{subclass.size}, patent_labels {patent.size}")
        if klass.size == 0:
            raise InputError("no drawings to sample from", source="class_labels")

        self.batch_size, self.drawings_per_patent = int(batch_size), int(drawings_per_patent)
        self.patents_per_subclass, self.subclasses_per_class = int(patents_per_subclass), int(subclasses_per_class)
        self.seed, self.epoch, self.skip_batches = int(seed), 0, 0
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_patents_with_one = drop_patents_with_one
        self._group(klass, subclass, patent)
        if num_batches is None:
            num_batches = max(1, self.num_drawings // (self.batch_size * self.world_size))
        if int(num_batches) != num_batches or num_batches < 1:
            raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
        self.num_batches = int(num_batches)

    def _group(self, klass: np.ndarray, subclass: np.ndarray, patent: np.ndarray) -> None:
        """Index the hierarchy once: drawings by patent, patents by (class, subclass) bucket, buckets by class."""
        patent_ids, patent_of_drawing = np.unique(patent, return_inverse=True)
        drawings, drawing_offsets, drawing_counts = _groups(patent_of_drawing, patent_ids.size)
        for name, labels in [("class_labels", klass), ("subclass_labels", subclass)]:
            sorted_labels = labels[drawings]
            low = np.minimum.reduceat(sorted_labels, drawing_offsets)
            high = np.maximum.reduceat(sorted_labels, drawing_offsets)
            mixed = np.flatnonzero(low != high)
            if mixed.size:
                p = mixed[0]
                raise InputError(f"drawings of one patent carry different labels ({low[p]} and {high[p]})",
                                 source=name, record=f"patent {patent_ids[p]}")

        keep = drawing_counts >= 2 if self.drop_patents_with_one else np.ones(patent_ids.size, dtype=bool)
        if not keep.any():
            raise InputError("no patent has 2 or more drawings (drop_patents_with_one=True)",
                             source="patent_labels")
        if not keep.all():  # regroup the drawings of the kept patents only
            kept_drawings = np.flatnonzero(keep[patent_of_drawing])
            compact = np.cumsum(keep) - 1
            drawings, drawing_offsets, drawing_counts = _groups(
                compact[patent_of_drawing[kept_drawings]], int(keep.sum()))
            drawings = kept_drawings[drawings]
            patent_ids = patent_ids[keep]
        first_drawing = drawings[drawing_offsets]
        patent_class, patent_subclass = klass[first_drawing], subclass[first_drawing]
        bucket_key = np.stack([patent_class, np.maximum(patent_subclass, -1)], axis=1)
        bucket_labels, bucket_of_patent = np.unique(bucket_key, axis=0, return_inverse=True)
        class_ids, class_of_bucket = np.unique(bucket_labels[:, 0], return_inverse=True)

        self._drawing_members, self._drawing_offsets, self._drawing_counts = drawings, drawing_offsets, drawing_counts
        self._patent_members, self._patent_offsets, self._patent_counts = _groups(
            bucket_of_patent.ravel(), bucket_labels.shape[0])
        self._bucket_members, self._bucket_offsets, self._bucket_counts = _groups(
            class_of_bucket.ravel(), class_ids.size)
        self.class_ids, self.bucket_labels, self.patent_ids = class_ids, bucket_labels, patent_ids
        self.num_drawings = int(self._drawing_counts.sum())

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (deterministic in (seed, epoch))."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore (seed, epoch); an optional "skip_batches" resumes mid-epoch (applies to the next iteration)."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.skip_batches = int(state.get("skip_batches", 0))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()[self.rank :: self.world_size]
        skip, self.skip_batches = self.skip_batches, 0  # one-shot: the following epoch starts at its beginning
        for batch in batches[skip:]:
            yield batch.tolist()

    def epoch_batches(self) -> np.ndarray:
        """All ranks' batches of the current epoch, [num_batches * world_size, batch_size] drawing indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.world_size
        patent_slots = self.batch_size // self.drawings_per_patent
        subclass_slots = math.ceil(patent_slots / self.patents_per_subclass)
        class_slots = math.ceil(subclass_slots / self.subclasses_per_class)

        classes = self._draw_classes(rng, total, class_slots)  # [total, class_slots]
        class_of_subclass_slot = classes[:, np.arange(subclass_slots) // self.subclasses_per_class]
        buckets = _round_robin(_shuffle_within_groups(rng, self._bucket_members, self._bucket_counts),
                               self._bucket_offsets, self._bucket_counts, class_of_subclass_slot.ravel())
        bucket_of_patent_slot = buckets.reshape(total, subclass_slots)[
            :, np.arange(patent_slots) // self.patents_per_subclass]
        patents = _round_robin(_shuffle_within_groups(rng, self._patent_members, self._patent_counts),
                               self._patent_offsets, self._patent_counts, bucket_of_patent_slot.ravel())
        per_slot = np.full(patent_slots, self.drawings_per_patent)
        per_slot[: self.batch_size - patent_slots * self.drawings_per_patent] += 1
        drawing_requests = np.repeat(patents.reshape(total, patent_slots), per_slot, axis=1)
        drawings = _round_robin(_shuffle_within_groups(rng, self._drawing_members, self._drawing_counts),
                                self._drawing_offsets, self._drawing_counts, drawing_requests.ravel())
        return drawings.reshape(total, self.batch_size)

    def _draw_classes(self, rng: np.random.Generator, total: int, class_slots: int) -> np.ndarray:
        """Per batch, the first `class_slots` entries of independent random permutations of all classes."""
        n_classes = self.class_ids.size
        rounds = math.ceil(class_slots / n_classes)
        chunk = max(1, 4_000_000 // (rounds * n_classes))
        out = np.empty((total, class_slots), dtype=np.int64)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            keys = rng.random((stop - start, rounds, n_classes))
            out[start:stop] = np.argsort(keys, axis=2).reshape(stop - start, -1)[:, :class_slots]
        return out
