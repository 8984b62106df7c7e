"""The hierarchical batch sampler: batch template, thin levels, determinism, resume, ranks, bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.samplers import HierarchicalBatchSampler


def make_corpus(classes=6, subclasses_per_class=4, patents_per_subclass=5, drawings=(3, 6), seed=0):
    """Labels of a rich corpus: every level has more children than a batch asks for."""
    rng = np.random.default_rng(seed)
    klass, subclass, patent = [], [], []
    next_patent = 0
    for c in range(classes):
        for s in range(subclasses_per_class):
            for _ in range(patents_per_subclass):
                n = int(rng.integers(drawings[0], drawings[1] + 1))
                klass += [c] * n
                subclass += [c * 100 + s] * n
                patent += [next_patent] * n
                next_patent += 1
    order = rng.permutation(len(patent))  # the dataset order must not matter
    return np.array(klass)[order], np.array(subclass)[order], np.array(patent)[order]


def levels_of(batch, klass, subclass, patent):
    """{class: {subclass: {patent: [drawing indices]}}} of one batch."""
    tree: dict = {}
    for index in batch:
        tree.setdefault(klass[index], {}).setdefault(subclass[index], {}).setdefault(patent[index], []).append(index)
    return tree


def test_batches_follow_the_hierarchical_template():
    klass, subclass, patent = make_corpus()
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=24, num_batches=30)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    for batch in batches:
        assert len(batch) == 24 and len(set(batch)) == 24
        tree = levels_of(batch, klass, subclass, patent)
        assert len(tree) == 3  # 12 patent slots / (2 subclasses * 2 patents)
        for subclasses in tree.values():
            assert len(subclasses) == 2
            for patents in subclasses.values():
                assert len(patents) == 2
                assert all(len(drawings) == 2 for drawings in patents.values())


def test_other_template_sizes_and_remainder():
    klass, subclass, patent = make_corpus(drawings=(4, 6))
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=29, drawings_per_patent=3,
                                       patents_per_subclass=3, subclasses_per_class=1, num_batches=10)
    for batch in sampler:
        assert len(batch) == 29 and len(set(batch)) == 29
        tree = levels_of(batch, klass, subclass, patent)
        per_patent = sorted(len(d) for subs in tree.values() for pats in subs.values() for d in pats.values())
        assert per_patent == [3] * 7 + [4] * 2  # 9 slots of 3, the 2 left-over drawings go to two patents
        assert sorted(len(p) for subs in tree.values() for p in subs.values()) == [3, 3, 3]


def test_every_patent_with_two_drawings_appears_at_least_twice():
    klass, subclass, patent = make_corpus(drawings=(1, 4), seed=3)
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=32, num_batches=20)
    sizes = Counter(patent.tolist())
    for batch in sampler:
        assert len(batch) == 32
        counts = Counter(patent[batch].tolist())
        for p, n in counts.items():
            assert n >= 2
            assert len(set(batch) & set(np.flatnonzero(patent == p).tolist())) == min(sizes[p], n)


def test_single_drawing_patents_repeat_or_are_dropped():
    klass = np.array([0, 0, 0, 0, 0])
    subclass = np.array([5, 5, 5, 5, 5])
    patent = np.array([0, 1, 1, 2, 2])
    repeated = HierarchicalBatchSampler(klass, subclass, patent, batch_size=6, num_batches=6, seed=1)
    assert any(Counter(batch)[0] == 2 for batch in repeated), "the one-drawing patent comes as two copies"
    dropped = HierarchicalBatchSampler(klass, subclass, patent, batch_size=4, num_batches=6,
                                       drop_patents_with_one=True)
    for batch in dropped:
        assert 0 not in batch and sorted(batch) == [1, 2, 3, 4]
    with pytest.raises(InputError, match="no patent has 2 or more drawings"):
        HierarchicalBatchSampler([0, 0], [1, 1], [0, 1], batch_size=2, drop_patents_with_one=True)


def test_thin_levels_fill_the_batch():
    # class 0 has a single subclass; class 1 only unknown subclasses; one class in all, fewer than asked
    klass = np.array([0] * 12 + [1] * 6)
    subclass = np.array([3] * 12 + [-1] * 6)
    patent = np.repeat(np.arange(9), 2)
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=24, num_batches=8)
    for batch in sampler:
        assert len(batch) == 24
        tree = levels_of(batch, klass, subclass, patent)
        assert set(tree) == {0, 1}, "3 class slots but 2 classes: both used"
        counts = Counter(patent[batch].tolist())
        assert all(n % 2 == 0 for n in counts.values())
        # a class's patent slots go to distinct patents until the class runs out (6 in class 0, 3 in class 1)
        for c, available in [(0, 6), (1, 3)]:
            slots = int((klass[batch] == c).sum()) // 2
            assert slots in (4, 8)
            assert len({p for p in counts if klass[patent == p][0] == c}) == min(slots, available)


def test_unknown_subclasses_pool_per_class():
    klass = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    subclass = np.array([-1, -1, -1, -1, -1, -1, -1, -1])
    patent = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=4, subclasses_per_class=1,
                                       num_batches=10)
    assert sampler.bucket_labels.tolist() == [[0, -1], [1, -1]]
    for batch in sampler:
        assert len(set(klass[batch])) == 1 and len(set(patent[batch])) == 2


def test_deterministic_per_seed_and_epoch():
    klass, subclass, patent = make_corpus()
    a = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, seed=7)
    b = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first
    other_seed = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, seed=8)
    assert list(other_seed) != first


def test_default_epoch_length_and_coverage():
    klass, subclass, patent = make_corpus()
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16)
    assert len(sampler) == len(patent) // 16
    seen = {i for batch in sampler for i in batch}
    # balanced round-robin: one epoch of n // 16 batches visits most drawings
    assert len(seen) > 0.5 * len(patent)
    assert len(HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, world_size=2)) == len(patent) // 32


def test_resume_mid_epoch_with_state_dict():
    klass, subclass, patent = make_corpus()
    sampler = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, num_batches=12, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    state = sampler.state_dict()
    assert state == {"seed": 3, "epoch": 4}

    resumed = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, num_batches=12)
    resumed.load_state_dict({**state, "skip_batches": 5})
    assert len(resumed) == 7
    assert list(resumed) == full[5:]
    assert len(resumed) == 12 and list(resumed) == full, "skipping applies to one iteration only"


def test_ranks_draw_disjoint_batches_with_full_composition():
    klass, subclass, patent = make_corpus(classes=8, subclasses_per_class=4, patents_per_subclass=6)
    ranks = [
        HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, num_batches=10, seed=2, rank=r,
                                 world_size=2)
        for r in range(2)
    ]
    for r in ranks:
        r.set_epoch(3)
    for batch0, batch1 in zip(*(list(r) for r in ranks)):
        assert len(batch0) == len(batch1) == 16
        assert not set(batch0) & set(batch1)
        for batch in (batch0, batch1):
            tree = levels_of(batch, klass, subclass, patent)
            assert len(tree) == 2 and all(len(s) == 2 for s in tree.values())
    single = HierarchicalBatchSampler(klass, subclass, patent, batch_size=16, num_batches=20, seed=2)
    single.set_epoch(3)
    assert list(single)[::2] == list(ranks[0])


def test_accepts_tensors_and_works_with_a_dataloader():
    klass, subclass, patent = make_corpus()
    sampler = HierarchicalBatchSampler(torch.from_numpy(klass), torch.from_numpy(subclass),
                                       torch.from_numpy(patent), batch_size=8, num_batches=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(patent)),
                                         batch_sampler=sampler)
    batches = [b[0] for b in loader]
    assert len(batches) == 3 and all(b.shape == (8,) for b in batches)


def test_bad_input_names_the_array_and_record():
    with pytest.raises(InputError, match=r"class_labels, record #2: label -1 is below the minimum 0"):
        HierarchicalBatchSampler([0, 0, -1], [0, 0, 0], [0, 0, 1], batch_size=2)
    with pytest.raises(InputError, match=r"subclass_labels, record #0: label -2"):
        HierarchicalBatchSampler([0], [-2], [0], batch_size=2)
    with pytest.raises(InputError, match="label arrays differ in length"):
        HierarchicalBatchSampler([0, 0], [0], [0, 0], batch_size=2)
    with pytest.raises(InputError, match=r"class_labels, record patent 7: .*different labels \(1 and 2\)"):
        HierarchicalBatchSampler([1, 2, 1], [0, 0, 0], [7, 7, 8], batch_size=2)
    with pytest.raises(InputError, match="patent_labels.*integer"):
        HierarchicalBatchSampler([0, 0], [0, 0], [0.5, 1.5], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        HierarchicalBatchSampler([0, 0], [0, 0], [0, 0], batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        HierarchicalBatchSampler([0, 0], [0, 0], [0, 0], batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="drawings_per_patent"):
        HierarchicalBatchSampler([0, 0], [0, 0], [0, 0], batch_size=2, drawings_per_patent=0)


def test_large_corpus_epoch_is_vectorised():
    rng = np.random.default_rng(0)
    patents = 50_000
    patent_class = rng.integers(0, 32, patents)
    patent_subclass = patent_class * 10 + rng.integers(-1, 8, patents)
    patent_subclass[patent_subclass % 10 == 9] = -1
    patent = rng.integers(0, patents, 300_000)
    sampler = HierarchicalBatchSampler(patent_class[patent], patent_subclass[patent], patent, batch_size=256)
    batches = sampler.epoch_batches()
    assert batches.shape == (300_000 // 256, 256)
    assert np.unique(patent_class[patent[batches[0]]]).size == 32
