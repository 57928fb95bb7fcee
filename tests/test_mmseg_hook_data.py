"""MMSeg adapter: datasets, block-label transform, grouped batch sampler, annealing hook.

Real MMSeg datasets, transforms, dataloaders and Runner on tiny generated files (no mocks).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _frameworks import MMSEG_HINT, require

require("mmseg", hint=MMSEG_HINT)

from _mmseg_tiny_data import (  # noqa: E402
    CONFIGS,
    disc_image,
    tiny_training_options,
    tiny_unet_options,
    write_lsr_blocks,
    write_partial_nuclei,
)
from mmengine.dataset import DefaultSampler, InfiniteSampler  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import DATA_SAMPLERS, DATASETS, HOOKS, TRANSFORMS  # noqa: E402
from PIL import Image  # noqa: E402

import sparse_ext.mmseg  # noqa: E402,F401
from sparse_ext.losses.schedules import build_schedule  # noqa: E402
from sparse_ext.mmseg import (  # noqa: E402
    GroupedBlockBatchSampler,
    LoadBlockLabel,
    LSRBlockDataset,
    PartialNucleiDataset,
)
from sparse_ext.mmseg.config import load_config  # noqa: E402
from sparse_ext.mmseg.hooks import set_training_progress  # noqa: E402
from sparse_ext.mmseg.transforms import (  # noqa: E402
    codes_to_labels,
    decode_block_label_map,
    encode_block_label,
)


@pytest.fixture(autouse=True, scope="module")
def _mmseg_scope():
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _one_thread():
    # two intra-op threads on a shared 2-core machine spin-wait badly; restore afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_everything_registered():
    for registry, name in [
        (DATASETS, "PartialNucleiDataset"),
        (DATASETS, "LSRBlockDataset"),
        (TRANSFORMS, "LoadBlockLabel"),
        (DATA_SAMPLERS, "GroupedBlockBatchSampler"),
        (HOOKS, "SparseLossAnnealingHook"),
    ]:
        assert registry.get(name) is not None, name


# -- PartialNucleiDataset


def _partial(root: Path, split="train", labels="labels/frac030/train", **kw):
    prefix = dict(img_path=f"images/{split}", seg_map_path=labels, **kw)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    return PartialNucleiDataset(data_root=str(root), data_prefix=prefix, pipeline=pipeline)


def test_partial_nuclei_layout(tmp_path):
    root = write_partial_nuclei(tmp_path, n_train=3, n_val=2)
    ds = _partial(root)
    assert len(ds) == 3
    assert ds.metainfo["classes"] == ("background", "nucleus")
    sample = ds[0]
    assert sample["img"].shape == (64, 64, 3)  # grayscale png loaded as 3 channels
    sparse = np.asarray(Image.open(root / "labels/frac030/train/train00.png"))
    np.testing.assert_array_equal(sample["gt_seg_map"], sparse)
    full = np.asarray(Image.open(root / "labels/full/train/train00.png"))
    assert 0 < sparse.sum() < full.sum()  # fewer annotated nuclei than exist

    val = _partial(root, "val", "labels/full/val", inst_path="instances/val")
    info = val.get_data_info(1)
    assert info["inst_path"].endswith("instances/val/val01.tif")
    assert Path(info["inst_path"]).is_file()


def test_partial_nuclei_label_outside_classes(tmp_path):
    root = write_partial_nuclei(tmp_path, n_train=2, n_val=1)
    bad = np.zeros((64, 64), np.uint8)
    bad[5, 5] = 7
    Image.fromarray(bad).save(root / "labels/frac030/train/train01.png")
    with pytest.raises(ValueError, match=r"train01\.png holds values \[7\] outside the classes"):
        _partial(root)
    # 255 (ignore) is allowed
    bad[5, 5] = 255
    Image.fromarray(bad).save(root / "labels/frac030/train/train01.png")
    assert len(_partial(root)) == 2


def test_partial_nuclei_size_mismatch_and_missing(tmp_path):
    root = write_partial_nuclei(tmp_path, n_train=2, n_val=1)
    Image.fromarray(np.zeros((64, 60), np.uint8)).save(root / "labels/frac030/train/train00.png")
    with pytest.raises(ValueError, match=r"size mismatch: label map .*train00\.png is \(64, 60\)"):
        _partial(root)
    (root / "labels/frac030/train/train00.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 label maps missing .*train00\.png"):
        _partial(root)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        _partial(root, split="nope")


# -- LSR blocks: dataset, transform, sampler


def _lsr_labels(counts):
    """{name: z} with counts[z] blocks of label z."""
    return {f"img{z}_r{i}_c0": z for z, n in enumerate(counts) for i in range(n)}


def _lsr(root: Path, pipeline=(), **kw):
    return LSRBlockDataset(
        data_root=str(root),
        data_prefix=dict(img_path="blocks", **kw.pop("prefix", {})),
        pipeline=list(pipeline),
        **kw,
    )


def test_lsr_dataset_reads_labels_and_table(tmp_path):
    root = write_lsr_blocks(tmp_path, _lsr_labels([2, 3, 1]))
    ds = _lsr(root)
    assert len(ds) == 6
    assert ds.metainfo["classes"] == ("background", "nucleus")  # from table.json
    assert ds.num_block_labels == 3
    labels = {Path(ds.get_data_info(i)["img_path"]).stem: ds.get_data_info(i) for i in range(6)}
    assert labels["img1_r2_c0"]["block_label"] == (1, 1)  # shared z, one per class
    assert labels["img0_r0_c0"]["num_block_labels"] == 3
    # per-class columns z_<class>, in any order
    per = write_lsr_blocks(tmp_path / "per", {"a": 2, "b": 0}, per_class=True)
    text = (per / "block_labels.csv").read_text().splitlines()
    text[0] = "block,z_nucleus,z_background"
    text[1] = "a.png,2,0"
    (per / "block_labels.csv").write_text("\n".join(text) + "\n")
    ds = _lsr(per)
    assert ds.get_data_info(0)["block_label"] == (0, 2)  # (background, nucleus)


def test_lsr_dataset_bad_input(tmp_path):
    root = write_lsr_blocks(tmp_path, _lsr_labels([2, 2]), num_labels=2)
    csv_path = root / "block_labels.csv"
    good = csv_path.read_text()
    csv_path.write_text(good + "img0_r0_c0x.png,5\n")
    with pytest.raises(KeyError, match=r"label\(s\) \[5\] missing from the table .*labels 0\.\.1"):
        _lsr(root)
    csv_path.write_text(good.replace("block,z", "name,z"))
    with pytest.raises(ValueError, match="header must be"):
        _lsr(root)
    csv_path.write_text(good.replace("block,z", "block,z_tumour"))
    with pytest.raises(ValueError, match="per-class columns"):
        _lsr(root)
    csv_path.write_text(good + "missing_block.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"1 blocks missing .*missing_block\.png"):
        _lsr(root)
    csv_path.write_text(good)
    with pytest.raises(FileNotFoundError, match="LSR table not found"):
        _lsr(root, table_file="nope.json")
    table = json.loads((root / "table.json").read_text())
    with pytest.raises(ValueError, match="differ from the table"):
        _lsr(root, metainfo=dict(classes=("a", "b", "c")))
    assert table["classes"] == ["background", "nucleus"]


def test_block_label_codec_and_transform_survive_augmentation(tmp_path):
    assert encode_block_label([2, 1], 3) == 256 * (2 + 1 * 3 + 1)
    with pytest.raises(ValueError, match="outside 0..2"):
        encode_block_label([3, 0], 3)
    with pytest.raises(ValueError, match="int32"):
        encode_block_label([0] * 12, 10)

    root = write_lsr_blocks(tmp_path, {"a": 2, "b": 1}, num_labels=3, block=32, highres=("a",))
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadBlockLabel"),
        dict(type="RandomResize", scale=(48, 48), ratio_range=(0.8, 1.2), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(24, 24)),
        dict(type="RandomFlip", prob=1.0, direction="vertical"),
        dict(type="Pad", size=(48, 48)),
        dict(type="PackSegInputs"),
    ]
    ds = _lsr(root, pipeline, prefix=dict(highres_path="highres"))
    by_name = {Path(ds.get_data_info(i)["img_path"]).stem: i for i in range(len(ds))}
    out = ds[by_name["b"]]
    label = out["data_samples"].gt_sem_seg.data  # (1, 48, 48)
    assert label.shape == (1, 48, 48)
    valid, codes, pixel = decode_block_label_map(label)
    assert valid.any() and not valid.all()  # padding (255) is not part of the block
    assert torch.unique(codes[valid]).tolist() == [1 + 1 * 3]
    assert codes_to_labels(codes[valid][:1], 2, 3).tolist() == [[1, 1]]
    assert (pixel[valid] == 255).all()  # block b has no high-res labels
    assert (label[~valid] == 255).all()

    a = ds[by_name["a"]]["data_samples"].gt_sem_seg.data
    valid, codes, pixel = decode_block_label_map(a)
    assert torch.unique(codes[valid]).tolist() == [2 + 2 * 3]
    assert set(torch.unique(pixel[valid]).tolist()) <= {0, 1, 255}

    with pytest.raises(KeyError, match="block_label"):
        LoadBlockLabel().transform(dict(img=np.zeros((4, 4, 3), np.uint8)))


def _batches(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_grouped_batch_sampler_groups_by_label(tmp_path):
    root = write_lsr_blocks(tmp_path, _lsr_labels([7, 5, 2]), num_labels=3, block=16)
    ds = _lsr(root)
    sampler = GroupedBlockBatchSampler(DefaultSampler(ds, shuffle=True, seed=0), 6, group_size=3)
    key = [ds.get_data_info(i)["block_label"] for i in range(len(ds))]
    batches = list(sampler)
    # labels 0 (7 blocks) and 1 (5 blocks) give 2 + 1 groups of 3; label 2 (2 blocks) none
    assert len(batches) == len(sampler) == 1
    for batch in batches:
        assert len(batch) == 6
        groups = [batch[:3], batch[3:]]
        for g in groups:
            assert len({key[i] for i in g}) == 1
    assert len(list(GroupedBlockBatchSampler(DefaultSampler(ds), 6, 3, drop_last=False))) == 2

    with pytest.raises(ValueError, match="multiple of group_size"):
        GroupedBlockBatchSampler(DefaultSampler(ds), 7, group_size=3)
    with pytest.raises(ValueError, match="no block_label is shared by 8 samples"):
        GroupedBlockBatchSampler(DefaultSampler(ds), 16, group_size=8)


@pytest.mark.parametrize("drop_last", [True, False])
def test_grouped_batch_sampler_gives_each_rank_whole_groups_of_its_own_blocks(tmp_path, drop_last):
    """Two ranks as torch's DistributedSampler shards an epoch (explicit rank and world size, no
    process group): whole same-label groups on each rank, no block on both, and the same number
    of batches on both (len), a short rank repeating its own groups (DDP would hang otherwise)."""
    from torch.utils.data import DistributedSampler

    root = write_lsr_blocks(tmp_path, _lsr_labels([9, 7, 4]), num_labels=3, block=16)
    ds = _lsr(root)
    key = [ds.get_data_info(i)["block_label"] for i in range(len(ds))]
    per_rank, lengths = [], set()
    for rank in range(2):
        shard = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler = GroupedBlockBatchSampler(shard, 4, group_size=2, drop_last=drop_last)
        assert (sampler.rank, sampler.world_size) == (rank, 2)
        batches = list(sampler)
        lengths.add(len(sampler))
        assert len(batches) == len(sampler)
        for batch in batches:
            assert len(batch) == 4  # full batches only on a distributed epoch
            for group in (batch[:2], batch[2:]):
                assert len({key[i] for i in group}) == 1
            assert set(batch) <= set(shard)  # its own share of the data
        per_rank.append({i for b in batches for i in b})
    # 20 blocks form 4 + 3 + 2 = 9 groups: 9 * 10 // 20 = 4 groups, 2 batches per rank
    assert lengths == {2}
    assert not per_rank[0] & per_rank[1]  # different data on each rank


def test_grouped_batch_sampler_round_up_repeats_the_ranks_own_groups(tmp_path):
    """Each rank's share forms one group of 2 where len asks for 3 (the 6 groups of the whole
    dataset over 2 ranks): the rank repeats its own group; a share without any group fails."""
    from torch.utils.data import DistributedSampler

    # sorted by name, ranks take every other block (shuffle off): both get labels 0 0 1 2 3 4
    order = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    root = write_lsr_blocks(tmp_path, {f"b{i:02d}": z for i, z in enumerate(order)}, 5, 16)
    ds = _lsr(root)
    for rank in range(2):
        shard = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        sampler = GroupedBlockBatchSampler(shard, 2, group_size=2, label_sampling="data")
        assert len(sampler) == 3
        assert list(sampler) == [[rank, rank + 2]] * 3
    lone = [0, 1, 0, 1]  # rank 0 gets labels 0 0, rank 1 labels 1 1: one group, one batch
    root = write_lsr_blocks(tmp_path / "lone", {f"b{i:02d}": z for i, z in enumerate(lone)}, 2)
    ds = _lsr(root)
    sampler = GroupedBlockBatchSampler(
        DistributedSampler(ds, 2, 0, shuffle=False), 2, 2, label_sampling="data"
    )
    assert list(sampler) == [[0, 2]]
    order = [0, 0, 1, 1]  # each rank gets labels 0 1: no group of 2
    root = write_lsr_blocks(tmp_path / "none", {f"b{i:02d}": z for i, z in enumerate(order)}, 2)
    sampler = GroupedBlockBatchSampler(DistributedSampler(_lsr(root), 2, 1, shuffle=False), 2, 2)
    with pytest.raises(RuntimeError, match="rank 1 of 2: its share of the data holds no 2"):
        list(sampler)


def test_grouped_batch_sampler_draws_labels_uniformly(tmp_path):
    """Label 0 holds 40 of 48 blocks: "uniform" gives every label about the same number of
    groups (the paper samples z first), "data" gives label 0 most of them; a batch's groups
    have different labels; the draw repeats with the sampler's seed."""
    root = write_lsr_blocks(tmp_path, _lsr_labels([40, 4, 4]), num_labels=3, block=16)
    ds = _lsr(root)
    key = [str(ds.get_data_info(i)["block_label"]) for i in range(len(ds))]
    common = Counter(key).most_common(1)[0][0]  # label 0's entry

    def group_labels(label_sampling, seed=0, n=300):
        sampler = GroupedBlockBatchSampler(
            InfiniteSampler(ds, shuffle=True, seed=seed), 4, 2, label_sampling=label_sampling
        )
        batches = _batches(sampler, n)
        for batch in batches:
            assert len({key[i] for i in batch[:2]}) == len({key[i] for i in batch[2:]}) == 1
        return [(key[b[0]], key[b[2]]) for b in batches]

    uniform = group_labels("uniform")
    assert all(a != b for a, b in uniform)  # 3 labels, 2 groups: never the same label twice
    counts = Counter(z for pair in uniform for z in pair)
    assert len(counts) == 3 and min(counts.values()) > 0.28 * 600
    assert Counter(z for pair in group_labels("data") for z in pair)[common] > 0.7 * 600
    assert group_labels("uniform", seed=0, n=20) == uniform[:20]
    assert group_labels("uniform", seed=1, n=20) != uniform[:20]
    with pytest.raises(ValueError, match="label_sampling must be one of uniform, data"):
        GroupedBlockBatchSampler(InfiniteSampler(ds), 4, 2, label_sampling="balanced")


def test_grouped_batch_sampler_from_config_through_dataloader(tmp_path):
    """The LSR config's train_dataloader (2 groups per batch) as mmengine builds it."""
    root = write_lsr_blocks(tmp_path / "lsr" / "train", _lsr_labels([6, 6, 3]), block=16)
    assert root.is_dir()
    cfg = load_config(
        str(CONFIGS / "unet_s5-d16_lsr-intra-inter_lsr-blocks.py"),
        {
            "data_root": str(tmp_path / "lsr"),
            "train_dataloader.batch_size": 6,
            "train_dataloader.batch_sampler.group_size": 3,
            "train_dataloader.num_workers": 0,
            "train_dataloader.persistent_workers": False,
        },
    )
    assert cfg.model.decode_head.loss_decode.table == str(tmp_path / "lsr/train/table.json")
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    assert isinstance(loader.batch_sampler, GroupedBlockBatchSampler)
    for batch in _batches(loader, 4):
        codes = [
            decode_block_label_map(s.gt_sem_seg.data)[1].unique().item()
            for s in batch["data_samples"]
        ]
        assert len(codes) == 6
        assert len(set(codes[:3])) == 1 and len(set(codes[3:])) == 1


# -- annealing hook


class _Annealed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def set_progress(self, p):
        self.seen.append(p)


def test_set_training_progress_reaches_nested_losses():
    model = torch.nn.Module()
    model.decode_head = torch.nn.Module()
    model.decode_head.loss_decode = torch.nn.ModuleList([_Annealed(), torch.nn.Identity()])
    model.auxiliary_head = torch.nn.ModuleList([torch.nn.Module()])
    model.auxiliary_head[0].loss_decode = _Annealed()
    # a DDP wrapper (without a process group: only its type and .module matter here)
    wrapped = torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel
    )
    torch.nn.Module.__init__(wrapped)
    wrapped.module = model
    assert set_training_progress(wrapped, 0.25) == 2
    assert set_training_progress(model, 1.7) == 2
    assert model.decode_head.loss_decode[0].seen == [0.25, 1.0]  # clamped
    assert model.auxiliary_head[0].loss_decode.seen == [0.25, 1.0]


def test_hook_sets_progress_in_a_real_runner(tmp_path):
    """The ECE config's hook: p = iter / max_iters before each iteration moves the decode head's
    rho along its schedule; epoch-based loops: p = epoch / max_epochs."""
    opts = tiny_training_options(tmp_path, iters=3)
    opts.update(
        {
            "model.decode_head.loss_decode.schedule": dict(
                _delete_=True, type="linear", start=0.2, end=1.0
            ),
        }
    )
    cfg = load_config(str(CONFIGS / "unet_s5-d16_ece_partial-nuclei.py"), opts)
    assert [h["type"] for h in cfg.custom_hooks] == ["SparseLossAnnealingHook"]
    runner = Runner.from_cfg(cfg)
    probe = _Annealed()
    runner.model.decode_head.probe = probe
    decode = runner.model.decode_head.loss_decode.criterion
    aux = runner.model.auxiliary_head.loss_decode.criterion
    assert decode.rho == pytest.approx(0.2)
    runner.train()
    assert probe.seen == [0.0, 1 / 3, 2 / 3]
    assert decode.rho == pytest.approx(0.2 + 0.8 * 2 / 3)  # set before the last iteration
    assert aux.progress == pytest.approx(2 / 3)  # the config's own schedule
    assert aux.rho == pytest.approx(build_schedule("ce_warmup")(2 / 3))

    # epoch-based loop: 2 epochs of one batch each
    cfg.work_dir = str(tmp_path / "wd_epoch")
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=100)
    cfg.train_dataloader.sampler = dict(type="DefaultSampler", shuffle=True)
    cfg.param_scheduler = []
    runner = Runner.from_cfg(cfg)
    probe = _Annealed()
    runner.model.decode_head.probe = probe
    runner.train()
    assert probe.seen == [0.0, 0.5]


@pytest.mark.parametrize(
    "name",
    [
        "unet_s5-d16_nnpu_partial-nuclei.py",
        "unet_s5-d16_sampled-ce_partial-nuclei.py",
        "unet_s5-d16_ece_partial-nuclei.py",
        "unet_s5-d16_ece-focal_partial-nuclei.py",
    ],
)
def test_shipped_recipes_train_on_the_datas_annotated_fraction(name, tmp_path):
    """Every shipped recipe whose loss takes f gets the data's f (here 0.3) from its hook before
    the first step: no fallback (0.2, with a warning), which at a true 10 % halved nnPU's pi_u
    and collapsed it to background."""
    import warnings

    opts = tiny_training_options(tmp_path, iters=1)
    runner = Runner.from_cfg(load_config(str(CONFIGS / name), opts))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*annotated fraction is unknown")
        runner.train()
    takers = [
        m for m in runner.model.modules() if callable(getattr(m, "set_annotated_fraction", None))
    ]
    assert len(takers) >= 2  # the decode and the auxiliary head (and their criteria)
    assert all(m.annotated_fraction == pytest.approx(0.3) for m in takers)


def _fraction_check_config(tmp_path, iters: int, **hook):
    root = write_partial_nuclei(tmp_path / "data", n_train=2, n_val=1)
    opts = tiny_unet_options(str(tmp_path / "wd"), iters=iters)
    opts.update(
        {
            "data_root": str(root),
            "train_dataloader.batch_size": 2,
            "val_cfg": None,
            "val_dataloader": None,
            "val_evaluator": None,
            "train_cfg.val_interval": 100,
            # told far more than the data's 30 %: every unannotated pixel kept (s = 1)
            "model.decode_head.loss_decode.annotated_fraction": 0.95,
            "model.auxiliary_head.loss_decode.annotated_fraction": 0.95,
        }
    )
    cfg = load_config(str(CONFIGS / "unet_s5-d16_ece_partial-nuclei.py"), opts)
    cfg.custom_hooks = [dict(type="SparseLossAnnealingHook", **hook)]
    return cfg


def test_hook_checks_the_annotated_fraction_against_the_labelled_data(tmp_path):
    """At 20 % of training the hook compares the given f with the heads' estimates (gathered
    from 10 to 20 %), and trains on with the largest where f exceeds it more than the
    tolerance; a resumed run keeps the outcome; check_fraction=False leaves f alone."""
    from sparse_ext.losses import background_keep_prob

    cfg = _fraction_check_config(tmp_path, 10, min_estimate_iters=1, fraction_tolerance=1.0)
    runner = Runner.from_cfg(cfg)
    decode = runner.model.decode_head.loss_decode.criterion
    aux = runner.model.auxiliary_head.loss_decode.criterion
    keep_probs = []
    runner.model.decode_head.loss_decode.register_forward_hook(
        lambda *_: keep_probs.append(decode.sample_prob)
    )
    runner.train()
    # f capped at 0.2 until the check, then the estimate
    assert keep_probs[:2] == [pytest.approx(background_keep_prob(0.2))] * 2
    assert not decode.fraction_check_pending and not aux.fraction_check_pending
    # one estimating iteration (progress 0.1), checked before the third (progress 0.2)
    assert decode.fraction_estimate.updates == 1 and aux.fraction_estimate.updates == 1
    estimate = max(decode.fraction_estimate.value, aux.fraction_estimate.value)
    assert 0 < estimate < 0.95
    assert decode.checked_fraction == aux.checked_fraction == pytest.approx(estimate)
    assert decode.checked_estimate == aux.checked_estimate == pytest.approx(estimate)
    assert decode.annotated_fraction == 0.95  # the given value is kept for reference
    assert decode.sample_prob == pytest.approx(background_keep_prob(estimate))

    # resume from the last checkpoint: the outcome comes back with it, no second check
    cfg.train_cfg.max_iters = 12
    cfg.param_scheduler[0]["end"] = 12
    cfg.resume = True
    cfg.load_from = str(tmp_path / "wd" / "iter_10.pth")
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.model.decode_head.loss_decode.criterion.checked_fraction == pytest.approx(
        estimate
    )
    assert resumed.model.auxiliary_head.loss_decode.criterion.fraction_estimate.updates == 0


def test_hook_restores_the_check_before_the_data_hand_over_their_fraction(tmp_path):
    """Resuming: the checkpoint's outcome is loaded before before_train gives the losses the
    data's f; the losses train on with the stored f and do not check again."""
    from sparse_ext.losses import background_keep_prob
    from sparse_ext.mmseg.hooks import _CHECKED_KEY

    cfg = _fraction_check_config(tmp_path, 5, min_estimate_iters=1)
    for head in ("decode_head", "auxiliary_head"):
        del cfg.model[head].loss_decode["annotated_fraction"]  # f from the data: 0.3
    runner = Runner.from_cfg(cfg)
    hook = next(h for h in runner.hooks if type(h).__name__ == "SparseLossAnnealingHook")
    stored = {
        "decode_head.loss_decode.criterion": 0.25,
        "auxiliary_head.loss_decode.criterion": 0.25,
    }
    hook.after_load_checkpoint(runner, {"meta": {_CHECKED_KEY: stored}})
    runner.train()
    decode = runner.model.decode_head.loss_decode.criterion
    assert decode.annotated_fraction == pytest.approx(0.3)  # handed over by before_train
    assert decode.checked_fraction == pytest.approx(0.25)
    assert decode.sample_prob == pytest.approx(background_keep_prob(0.25))
    assert not decode.fraction_check_pending


def test_hook_without_the_check_or_enough_estimates_keeps_the_given_fraction(tmp_path):
    # off: never checked; on, with one estimating batch against the two asked for: checked
    # without an estimate, the given f kept
    for hook, checked in (
        (dict(check_fraction=False, fraction_tolerance=1.0), None),
        (dict(min_estimate_iters=2, fraction_tolerance=1.0), 0.95),
    ):
        cfg = _fraction_check_config(tmp_path, 10, **hook)
        runner = Runner.from_cfg(cfg)
        runner.train()
        decode = runner.model.decode_head.loss_decode.criterion
        assert decode.fraction_estimate.updates == 1
        assert decode.checked_fraction == checked and decode.checked_estimate is None
        assert decode.sample_prob == 1.0 and not decode.fraction_check_pending
    with pytest.raises(ValueError, match="fraction_tolerance"):
        HOOKS.build(dict(type="SparseLossAnnealingHook", fraction_tolerance=0.5))


def test_disc_image_has_nuclei():
    img, inst = disc_image(np.random.default_rng(0))
    assert inst.max() >= 3 and img[inst > 0].mean() > img[inst == 0].mean() + 100


def test_lsr_dataset_reads_the_lsr_blocks_converter_output(tmp_path):
    """`sparse-ext convert lsr-blocks` output (sparse_ext.data.make_lsr_blocks) as the LSR config's
    train and evaluation datasets read it: labels, table and masks line up."""
    from sparse_ext.data import make_lsr_blocks

    rng = np.random.default_rng(1)
    for i in range(2):
        img, inst = disc_image(rng, 64, n=8)
        for sub, arr in (("images", img), ("masks", (inst > 0).astype(np.uint8))):
            (tmp_path / sub).mkdir(exist_ok=True)
            Image.fromarray(arr).save(tmp_path / sub / f"img{i}.png")
    out = tmp_path / "lsr" / "train"
    make_lsr_blocks(tmp_path / "images", tmp_path / "masks", out, block=32, bins=4, verbose=False)
    table = json.loads((out / "table.json").read_text())
    cfg = load_config(
        str(CONFIGS / "unet_s5-d16_lsr-intra-inter_lsr-blocks.py"),
        {"data_root": str(tmp_path / "lsr")},
    )
    train = dict(cfg.train_dataloader.dataset)
    ds = DATASETS.build(train)
    assert len(ds) == 8  # 2 images x 2 x 2 blocks
    assert ds.metainfo["classes"] == tuple(table["classes"])
    assert ds.num_block_labels == 4
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        mask = np.asarray(Image.open(out / "masks" / Path(info["img_path"]).name))
        z = min(int(mask.mean() * 4), 3)  # the converter's quantised nucleus fraction
        assert info["block_label"] == (z, z)
        label = ds[i]["data_samples"].gt_sem_seg.data
        _, codes, _ = decode_block_label_map(label)
        assert codes.unique().tolist() == [z + 4 * z]
    evaluation = dict(cfg.val_dataloader.dataset)
    evaluation["data_prefix"] = dict(img_path="train/blocks", seg_map_path="train/masks")
    ev = DATASETS.build(evaluation)
    sample = ev[0]
    mask = np.asarray(Image.open(out / "masks" / Path(ev.get_data_info(0)["img_path"]).name))
    np.testing.assert_array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), mask)
