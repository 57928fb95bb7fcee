"""Distributed data-parallel training with the sparse losses: 2 CPU processes, gloo, localhost.

- MMSeg: ``tools/mmseg_train.py CONFIG --launcher pytorch`` under ``torch.distributed.run`` (the
  ECE config; the LSR config with ``GroupedBlockBatchSampler`` is marked slow).
- Detectron2: ``detectron2.engine.launch`` with a tiny Faster R-CNN, nnPU ROI loss and ECE RPN
  loss, Detectron2's own data loader (``TrainingSampler`` shards by rank).
- Per loss, DDP's averaged loss and gradient over 2 ranks against the single-process ones on the
  joined batch: equal where the loss is a mean of per-sample terms over equal per-rank counts,
  and, for the per-rank-by-design losses (nnPU's counts, LSR's groups, a per-rank normaliser of
  ignored pixels), equal to the mean of the per-rank losses instead.

Decisions and reasons: docs/distributed.md.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_ext.losses import (
    bde_weights,
    class_agnostic_activation,
    exclusive_cross_entropy,
    localizer_mask,
    lsr_loss,
    maxmin_objective,
    nnpu_loss,
    wildcat_pool,
)

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
Batch = Dict[str, Tensor]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(*paths: Path) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env


# -- DDP against the joined batch, per loss ------------------------------------------------------
#
# Each case is a module whose forward(batch) is the loss of a tiny float64 model on a batch whose
# first dimension is images (or blocks); rank r trains on the r-th half. DDP averages gradients,
# so its gradient is that of the mean of the per-rank losses; where the loss is "joined", that
# mean also equals the loss of the whole batch in one process.


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _PixelHead(nn.Module):
    """1x1 convolution: (N, 3, H, W) images -> (N, C, H, W) logits."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)


class EceMean(_PixelHead):
    """ECE (Panteli et al. Eq. 7), mean over the non-ignored pixels, as ExclusiveCrossEntropyLoss."""

    def forward(self, batch: Batch) -> Tensor:
        return exclusive_cross_entropy(self.conv(batch["x"]), batch["target"], rho=0.5)


class EceRpnSum(nn.Module):
    """ECE on sigmoid objectness of sampled anchors, summed and divided by a fixed number per
    image, as SparseRPN (Detectron2's RPN normaliser)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, batch: Batch) -> Tensor:
        labels = batch["labels"]
        logits = self.fc(batch["x"]).squeeze(-1)
        valid = labels >= 0
        total = exclusive_cross_entropy(
            logits[valid], labels[valid], rho=0.5, use_sigmoid=True, reduction="sum"
        )
        return total / labels.numel()  # BATCH_SIZE_PER_IMAGE x images


class BdeRoi(nn.Module):
    """Cross-entropy with box-density weights of each image's unannotated proposals (Li et al.),
    summed over the proposals and divided by their number, as SparseFastRCNNOutputLayers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)  # 2 classes + background last (Detectron2's order)

    def forward(self, batch: Batch) -> Tensor:
        scores = self.fc(batch["feats"])  # (images, P, 3)
        gt = batch["gt"]
        weights = torch.ones_like(gt, dtype=scores.dtype)
        for i in range(len(gt)):
            unannotated = gt[i] == 2
            weights[i, unannotated] = bde_weights(
                batch["proposals"][i][unannotated],
                batch["pred_boxes"][i],
                batch["pred_scores"][i],
                iou_threshold=0.3,
            ).to(scores.dtype)
        ce = F.cross_entropy(scores.flatten(0, 1), gt.flatten(), reduction="none")
        return (weights.flatten() * ce).sum() / gt.numel()


class NnpuPixels(nn.Module):
    """nnPU (Zhao et al. Eq. 10-12, clamp) on (images, samples, features), background class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, batch: Batch) -> Tensor:
        logits = self.fc(batch["x"]).flatten(0, 1)
        return nnpu_loss(logits, batch["labels"].flatten(), 0.3, background_index=0)


class Lsr(_PixelHead):
    """LSR statistics matching (Zhao, Hou et al. Eq. 11 / Eq. 9) over blocks with labels z."""

    mode = "intra_inter"

    def forward(self, batch: Batch) -> Tensor:
        return lsr_loss(
            self.conv(batch["x"]), batch["z"], batch["eta"][0], batch["rho"][0], mode=self.mode
        )


class LsrInter(Lsr):
    mode = "inter"


class MaxMin(nn.Module):
    """Max-min objective (Belharbi et al. Eq. 7): WILDCAT localizer, soft mask, classifier on x+
    and x-, size barrier, localizer CE; the sum of the terms."""

    def __init__(self) -> None:
        super().__init__()
        self.localizer = nn.Conv2d(3, 2, 3, padding=1)
        self.classifier = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        )

    def forward(self, batch: Batch) -> Tensor:
        x = batch["x"]
        cams = self.localizer(x)
        loc_logits = wildcat_pool(cams)
        mask = localizer_mask(class_agnostic_activation(cams, loc_logits), x.shape[-2:])
        terms = maxmin_objective(
            x, mask, batch["labels"], self.classifier, 5.0, lam=0.1, localizer_logits=loc_logits
        )
        return sum(terms.values())


def _pixels(ignore_last_rows: bool = False) -> Batch:
    g = _gen(1)
    target = (torch.rand(4, 6, 6, generator=g) < 0.2).long()
    if ignore_last_rows:  # only in rank 1's half: its normaliser counts fewer pixels
        target[3, :3] = 255
    return {"x": torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64), "target": target}


def _anchors() -> Batch:
    g = _gen(2)
    return {
        "x": torch.randn(4, 16, 5, generator=g, dtype=torch.float64),
        "labels": torch.randint(-1, 2, (4, 16), generator=g),
    }


def _boxes(g: torch.Generator, *shape: int) -> Tensor:
    corner = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 20
    return torch.cat([corner, corner + 6 + 4 * torch.rand(*shape, 2, generator=g)], dim=-1)


def _proposals() -> Batch:
    g = _gen(3)
    return {
        "feats": torch.randn(4, 8, 6, generator=g, dtype=torch.float64),
        "gt": torch.tensor([[0, 1, 2, 2, 2, 2, 2, 2]] * 4),
        "proposals": _boxes(g, 4, 8),
        "pred_boxes": _boxes(g, 4, 5),
        "pred_scores": torch.rand(4, 5, generator=g, dtype=torch.float64),
    }


def _pu(positives_per_image: List[int]) -> Batch:
    labels = torch.zeros(4, 10, dtype=torch.long)
    for i, n in enumerate(positives_per_image):
        labels[i, :n] = 1
    return {"x": torch.randn(4, 10, 4, generator=_gen(4), dtype=torch.float64), "labels": labels}


def _blocks(z: List[int]) -> Batch:
    n = len(z)
    fg = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
    return {
        "x": torch.randn(n, 3, 6, 6, generator=_gen(5), dtype=torch.float64),
        "z": torch.tensor(z),
        "eta": torch.stack([1 - fg, fg]).expand(n, 2, 4),  # the table, repeated per block
        "rho": torch.full((n, 2, 4), 0.05, dtype=torch.float64),
    }


def _images() -> Batch:
    g = _gen(6)
    return {
        "x": torch.rand(4, 3, 12, 12, generator=g, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 1, 0]),
    }


class Case(NamedTuple):
    model: Callable[[], nn.Module]
    batch: Callable[[], Batch]
    joined: bool  # DDP equals the single-process loss on the joined batch


CASES: Dict[str, Case] = {
    # per-element terms over equal per-rank counts: joined
    "ece_mean": Case(EceMean, _pixels, True),
    "ece_rpn_sum_fixed_normaliser": Case(EceRpnSum, _anchors, True),
    "bde_roi_per_image_densities": Case(BdeRoi, _proposals, True),
    "maxmin_per_sample_terms": Case(MaxMin, _images, True),
    "nnpu_equal_counts_per_rank": Case(NnpuPixels, lambda: _pu([3, 3, 3, 3]), True),
    "lsr_whole_groups_labels_per_rank": Case(Lsr, lambda: _blocks([0, 0, 1, 1, 2, 2, 3, 3]), True),
    # per-rank by design: the mean of the per-rank losses, not the joined batch's
    "ece_mean_unequal_ignored_pixels": Case(EceMean, lambda: _pixels(True), False),
    "nnpu_unequal_positives": Case(NnpuPixels, lambda: _pu([1, 1, 6, 6]), False),
    "lsr_label_on_both_ranks": Case(Lsr, lambda: _blocks([0, 0, 1, 1, 0, 0, 1, 1]), False),
    "lsr_inter_label_on_both_ranks": Case(
        LsrInter, lambda: _blocks([0, 0, 1, 1, 0, 0, 1, 1]), False
    ),
}


def _half(batch: Batch, rank: int) -> Batch:
    return {k: v.chunk(WORLD)[rank] for k, v in batch.items()}


def _build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.model().double()


def _ece_sampled(seed: int) -> Tensor:
    """Where ECE's background sampling (keep probability 0.5) keeps the terms of 256 pixels."""
    torch.manual_seed(seed)
    logits = torch.zeros(1, 2, 16, 16)
    kept = exclusive_cross_entropy(
        logits, torch.zeros(1, 16, 16, dtype=torch.long), sample_prob=0.5, reduction="none"
    )
    return kept != 0


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, case in CASES.items():
            model = _build(case)
            ddp = nn.parallel.DistributedDataParallel(model)
            loss = ddp(_half(case.batch(), rank))
            loss.backward()  # DDP averages the gradients over the ranks
            results[name] = {
                "loss": loss.detach(),
                "grads": [p.grad.detach().clone() for p in model.parameters()],
            }
        # ECE's sampling draws from each rank's torch RNG: mmengine's default seeds every rank
        # alike (randomness.diff_rank_seed=False), Detectron2's adds the rank
        results["ece_sampling"] = {"same_seed": _ece_sampled(0), "rank_seed": _ece_sampled(rank)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> List[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True
    )
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _loss_and_grads(model: nn.Module, loss: Tensor):
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


def _close(a, b) -> bool:
    return all(torch.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_loss_and_gradient_against_the_joined_batch(ddp_results, name):
    case = CASES[name]
    model = _build(case)
    batch = case.batch()
    joined, joined_grads = _loss_and_grads(model, model(batch))
    per_rank = torch.stack([model(_half(batch, r)) for r in range(WORLD)]).mean()
    per_rank, per_rank_grads = _loss_and_grads(model, per_rank)

    ranks = [res[name] for res in ddp_results]
    assert _close(ranks[0]["grads"], ranks[1]["grads"])  # DDP: one gradient on every rank
    ddp_loss = torch.stack([r["loss"] for r in ranks]).mean()
    # DDP's gradient is that of the mean of the per-rank losses, whatever the loss
    assert torch.allclose(ddp_loss, per_rank, rtol=1e-9)
    assert _close(ranks[0]["grads"], per_rank_grads)
    if case.joined:
        assert torch.allclose(ddp_loss, joined, rtol=1e-9), (ddp_loss, joined)
        assert _close(ranks[0]["grads"], joined_grads)
    else:  # the documented difference: per-rank normalisers / groups differ from the joined ones
        assert not torch.allclose(ddp_loss, joined, rtol=1e-3), (ddp_loss, joined)


def test_ece_sampling_masks_are_the_same_on_every_rank_under_one_seed(ddp_results):
    """ECE's background sampling is a per-pixel Bernoulli draw (no batch statistic), from each
    rank's own torch RNG: with one seed on every rank (mmengine's default) the ranks drop the
    same pixel positions; seeded per rank (Detectron2; mmengine randomness.diff_rank_seed=True)
    they draw independently."""
    same = [r["ece_sampling"]["same_seed"] for r in ddp_results]
    ranked = [r["ece_sampling"]["rank_seed"] for r in ddp_results]
    assert 0.3 < same[0].float().mean() < 0.7
    assert torch.equal(same[0], same[1])
    assert not torch.equal(ranked[0], ranked[1])


# -- MMSeg: tools/mmseg_train.py --launcher pytorch under torch.distributed.run ----------------

_PROBE = '''
import json, os
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    """Records each rank's image paths and losses per iteration and its parameters at the end."""

    def __init__(self, out_dir):
        self.out_dir, self.iters, self.sampler = out_dir, [], {}

    def before_train(self, runner):
        from torch.utils.data import SequentialSampler
        from sparse_ext.mmseg import GroupedBlockBatchSampler

        loader = runner.train_dataloader
        if isinstance(loader.batch_sampler, GroupedBlockBatchSampler):
            shard = [loader.batch_sampler.rank, loader.batch_sampler.world_size]
            try:  # a sampler that does not shard: every rank would get the same blocks
                GroupedBlockBatchSampler(SequentialSampler(loader.dataset), 4, 2)
                error = None
            except ValueError as e:
                error = str(e)
            self.sampler = dict(shard=shard, unsharded_error=error)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        paths = [s.img_path for s in data_batch["data_samples"]]
        losses = {k: float(v) for k, v in outputs.items()}
        self.iters.append({"img_paths": paths, "losses": losses})

    def after_train(self, runner):
        model = runner.model
        params = [float(p.detach().double().sum()) for p in model.module.parameters()]
        record = dict(rank=runner.rank, world_size=runner.world_size, iters=self.iters,
                      wrapper=type(model).__name__, params=params, sampler=self.sampler)
        with open(os.path.join(self.out_dir, f"rank{runner.rank}.json"), "w") as f:
            json.dump(record, f)
'''


def _mmseg_torchrun(tmp_path: Path, base_config: str, options: dict) -> List[dict]:
    """Train ``base_config`` plus the probe hook with 2 processes; the ranks' probe records."""
    from _mmseg_tiny_data import CONFIGS, cfg_options_argv

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "dist_probe.py").write_text(_PROBE)
    config = tmp_path / "dist_config.py"
    config.write_text(
        f"_base_ = {str(CONFIGS / base_config)!r}\n"
        "custom_imports = dict(imports=['sparse_ext.mmseg', 'dist_probe'])\n"
        "custom_hooks = [dict(type='SparseLossAnnealingHook'), "
        f"dict(type='RankProbeHook', out_dir={str(tmp_path)!r})]\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / "tools" / "mmseg_train.py"),
        str(config),
        "--launcher",
        "pytorch",
        "--cfg-options",
        *cfg_options_argv(options),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=_child_env(tmp_path / "probe"),
        timeout=400,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Distributed training: True" in proc.stdout + proc.stderr
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _check_ddp_records(records: List[dict], iters: int, loss_key: str) -> None:
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == WORLD for r in records)
    assert all(r["wrapper"] == "MMDistributedDataParallel" for r in records)
    for step in range(iters):
        paths = [set(r["iters"][step]["img_paths"]) for r in records]
        assert paths[0] and paths[1] and not paths[0] & paths[1]  # different data per rank
        for r in records:
            assert math.isfinite(r["iters"][step]["losses"][loss_key])
    assert len(records[0]["params"]) == len(records[1]["params"])
    for a, b in zip(records[0]["params"], records[1]["params"]):  # DDP kept them in sync
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_mmseg_train_tool_two_processes_ece(tmp_path):
    pytest.importorskip("mmseg")
    from _mmseg_tiny_data import tiny_unet_options, write_partial_nuclei

    root = write_partial_nuclei(tmp_path / "data", n_train=4, n_val=1)
    opts = tiny_unet_options(str(tmp_path / "work"), iters=2)
    opts.update(
        {
            "data_root": str(root),
            "train_dataloader.batch_size": 2,  # per process
            "randomness.diff_rank_seed": True,  # independent ECE sampling/dropout per rank
            "val_cfg": None,
            "val_dataloader": None,
            "val_evaluator": None,
        }
    )
    records = _mmseg_torchrun(tmp_path, "unet_s5-d16_ece_partial-nuclei.py", opts)
    _check_ddp_records(records, 2, "decode.loss_ece")
    assert (tmp_path / "work" / "iter_2.pth").is_file()  # rank 0 saved


@pytest.mark.slow  # ~25-40 s: a second MMSeg run; the ECE run above is the default one
def test_mmseg_train_tool_two_processes_lsr_grouped_batches(tmp_path):
    """The LSR config: InfiniteSampler + GroupedBlockBatchSampler under DDP give each rank whole
    same-label groups of its own blocks; a sampler that does not shard is refused. The groups
    follow the data's order (``label_sampling="data"``): the default draws a group's label
    uniformly and repeats the blocks of rare labels, so two ranks may share a block in a step;
    24 blocks keep the two steps inside one epoch of each rank's shard."""
    pytest.importorskip("mmseg")
    import csv

    from _mmseg_tiny_data import tiny_lsr_options, write_lsr_blocks

    root = tmp_path / "lsr"
    labels = {f"f0_r{i}_c0": i % 2 for i in range(24)}
    write_lsr_blocks(root / "train", labels, block=32, num_labels=2)
    opts = tiny_lsr_options(str(tmp_path / "work"), str(root))
    opts["train_dataloader.batch_sampler.label_sampling"] = "data"
    opts.update({"val_cfg": None, "val_dataloader": None, "val_evaluator": None})
    records = _mmseg_torchrun(tmp_path, "unet_s5-d16_lsr-intra-inter_lsr-blocks.py", opts)
    _check_ddp_records(records, 2, "decode.loss_lsr")
    with open(root / "train" / "block_labels.csv") as f:
        z = {row["block"]: row["z"] for row in csv.DictReader(f)}
    for rank, r in enumerate(records):
        assert r["sampler"]["shard"] == [rank, WORLD]
        assert "would give every rank the same blocks" in r["sampler"]["unsharded_error"]
        for it in r["iters"]:
            names = [Path(p).name for p in it["img_paths"]]
            assert len(names) == 4
            assert z[names[0]] == z[names[1]] and z[names[2]] == z[names[3]]  # whole groups


# -- Detectron2: detectron2.engine.launch with 2 CPU processes ---------------------------------

D2_SIZE = 96


def _write_coco(root: Path, n: int = 8) -> Path:
    """``n`` images with 1-3 bright boxes each; every other image keeps one annotation only."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 40, (D2_SIZE, D2_SIZE, 3), dtype=np.uint8)
        boxes = []
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(4, D2_SIZE - 30, 2)
            w, h = rng.integers(12, 24, 2)
            img[y : y + h, x : x + w] = 220
            boxes.append([int(x), int(y), int(w), int(h)])
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": D2_SIZE, "height": D2_SIZE})
        kept = boxes[:1] if i % 2 else boxes  # partial annotation
        for box in kept:
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": box}
            annotations.append(dict(ann, area=box[2] * box[3], iscrowd=0))
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "c"}]}
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


def _d2_main(json_file: str, image_root: str, out_dir: str, iters: int) -> None:
    """One rank: Detectron2's train loader and SimpleTrainer on a DDP model without device ids
    (a CPU module; DefaultTrainer's create_ddp_model passes the local rank as a GPU id)."""
    import detectron2.utils.comm as comm
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import HookBase, SimpleTrainer, create_ddp_model
    from detectron2.modeling import build_model

    # the recipes clip the whole model's gradient norm (CLIP_TYPE full_model)
    from sparse_ext.detectron2 import build_optimizer, load_sparse_config, register_partial_coco

    torch.set_num_threads(1)
    register_partial_coco("dist_cells", json_file, image_root)
    cfg = load_sparse_config(
        str(REPO / "configs" / "detectron2" / "faster_rcnn_R_18_FPN_tiny_cpu.yaml")
    )
    # fmt: off
    cfg.merge_from_list([
        "MODEL.SPARSE.ROI_LOSS", "nnpu",
        "MODEL.SPARSE.RPN_LOSS", "ece",
        "MODEL.SPARSE.PU.PRIOR", 0.1,
        "DATASETS.TRAIN", ("dist_cells",),
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", False,
        "SOLVER.IMS_PER_BATCH", 4,  # in total: 2 per process
        "SOLVER.MAX_ITER", iters,
    ])
    # fmt: on
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    seen: List[List[str]] = []

    def recording(loader):
        for batch in loader:
            seen.append([os.path.basename(d["file_name"]) for d in batch])
            yield batch

    losses: List[Dict[str, float]] = []
    progress: List[float] = []

    class Record(HookBase):
        def after_step(self) -> None:
            progress.append(model.module.roi_heads.box_predictor.progress)
            if comm.is_main_process():  # rank 0's storage holds the mean over the ranks
                latest = self.trainer.storage.latest()
                losses.append({k: float(latest[k][0]) for k in ("loss_cls", "loss_rpn_cls")})

    trainer = SimpleTrainer(model, recording(build_detection_train_loader(cfg)), optimizer)
    trainer.register_hooks([Record()])
    trainer.train(0, iters)
    params = [float(p.detach().double().sum()) for p in model.module.parameters()]
    record = dict(
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
        seen=seen,
        params=params,
        losses=losses,
        progress=progress,
    )
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(record, f)


def test_detectron2_launch_two_processes_nnpu_roi_ece_rpn(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from detectron2.engine import launch

    json_file = _write_coco(tmp_path / "coco")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    iters = 3
    launch(
        _d2_main,
        WORLD,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(str(json_file), str(tmp_path / "coco" / "images"), str(tmp_path), iters),
    )
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
    for r in records:
        assert len(r["seen"]) >= iters and all(len(b) == 2 for b in r["seen"])  # 4 / 2 ranks
    for a, b in zip(records[0]["params"], records[1]["params"]):  # DDP kept them in sync
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    # TrainingSampler shards one shuffled stream: the ranks' first batches are different images
    assert not set(records[0]["seen"][0]) & set(records[1]["seen"][0])
    assert len(records[0]["losses"]) == iters
    assert all(math.isfinite(v) for step in records[0]["losses"] for v in step.values())
    for r in records:  # the ECE schedule's progress: the storage's iter / MAX_ITER on every rank
        assert r["progress"] == pytest.approx([i / iters for i in range(iters)])
