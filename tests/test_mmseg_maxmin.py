"""MaxMinSegmentor (driven by SparseLossAnnealingHook) and ImageLabelDataset on CPU with tiny generated data."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from _frameworks import MMSEG_HINT, require

require("mmseg", hint=MMSEG_HINT)

from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import DATASETS, MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from skimage.io import imsave  # noqa: E402

import sparse_ext.mmseg  # noqa: E402, F401  (registers the components)
import sparse_ext.mmseg.hooks  # noqa: E402, F401  (SparseLossAnnealingHook)

CONFIG = "configs/mmseg/maxmin_unet_r18_eem.py"
SIZE = 64

init_default_scope("mmseg")


def _tiny(cfg_model) -> dict:
    """The config's model with 8 base channels in the UNet localizer and the ResNet-18."""
    m = copy.deepcopy(cfg_model)
    m.backbone.base_channels = 8
    m.decode_head.update(in_channels=8, channels=8)
    m.classifier.backbone.update(stem_channels=8, base_channels=8)
    return m


@pytest.fixture(scope="module")
def cfg():
    return Config.fromfile(CONFIG)


@pytest.fixture
def model(cfg):
    torch.manual_seed(0)
    return MODELS.build(_tiny(cfg.model))


def _batch(labels=(0, 1)):
    g = torch.Generator().manual_seed(1)
    inputs = [
        torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8, generator=g) for _ in labels
    ]
    meta = dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE))
    samples = [SegDataSample(metainfo=dict(meta, img_label=y)) for y in labels]
    return dict(inputs=inputs, data_samples=samples)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# -- model --------------------------------------------------------------------------------------


def test_config_builds_maxmin_with_eem_by_default(cfg, model):
    assert cfg.model.type == "MaxMinSegmentor" and model.regularizer == "eem"
    assert cfg.model.auxiliary_head is None
    assert model.t == 5.0 and model.mask_cfg == dict(omega=5.0, sigma=0.15)
    assert model.classifier.fc.in_features == 64  # ResNet-18 feat_dim with 8 base channels


def test_train_steps_finite_losses_and_gradients_reach_both_backbones(model):
    data = model.data_preprocessor(_batch(), training=True)
    losses = model.loss(**data)
    assert set(losses) == {"loss_fg_cls", "loss_bg_reg", "loss_size", "loss_loc_cls", "barrier_t"}
    total, _ = model.parse_losses(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    total.backward()
    assert _grad_norm(model.backbone) > 0  # localizer (through the mask and its own CE)
    assert _grad_norm(model.classifier.backbone) > 0
    assert _grad_norm(model.decode_head) > 0
    # real optimiser steps through train_step
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    before = model.classifier.fc.weight.detach().clone()
    for _ in range(2):
        log = model.train_step(_batch(), wrapper)
        assert all(math.isfinite(v.item()) for v in log.values())
    assert not torch.equal(before, model.classifier.fc.weight)


def test_mask_gradient_flows_from_the_classifier_terms_alone(cfg):
    """With the localizer CE and the size barrier off, the localizer still learns through M."""
    m = _tiny(cfg.model)
    m.update(localizer_weight=0.0, size_weight=0.0)
    model = MODELS.build(m)
    data = model.data_preprocessor(_batch(), training=True)
    total, _ = model.parse_losses(model.loss(**data))
    total.backward()
    assert _grad_norm(model.backbone) > 0


def test_sem_and_no_regulariser_switch(cfg):
    data = None
    keys = {}
    for reg in ("sem", None):
        m = _tiny(cfg.model)
        m.regularizer = reg
        model = MODELS.build(m)
        data = data or model.data_preprocessor(_batch(), training=True)
        keys[reg] = set(model.loss(**data))
    assert "loss_bg_reg" in keys["sem"] and "loss_bg_reg" not in keys[None]


def test_cam_objective_trains_the_localizer_alone_and_classifies_with_it(cfg):
    """objective='cam' (Table 4's 'Wildcat' row): no classifier, the localizer's WILDCAT CE is
    the whole loss, and the image class comes from the localizer's pooled logits."""
    m = _tiny(cfg.model)
    m.objective = "cam"
    torch.manual_seed(0)
    model = MODELS.build(m)
    assert model.classifier is None
    assert not any("classifier" in name for name, _ in model.named_parameters())
    data = model.data_preprocessor(_batch(), training=True)
    torch.manual_seed(1)  # the same dropout mask in both forward passes
    losses = model.loss(**data)
    assert set(losses) == {"loss_loc_cls"} and torch.isfinite(losses["loss_loc_cls"])
    torch.manual_seed(1)
    _, loc_logits = model.localize(data["inputs"])
    want = torch.nn.functional.cross_entropy(loc_logits, torch.tensor([0, 1]))
    torch.testing.assert_close(losses["loss_loc_cls"], want)
    losses["loss_loc_cls"].backward()
    assert _grad_norm(model.backbone) > 0 and _grad_norm(model.decode_head) > 0
    model.eval()
    with torch.no_grad():
        (res,) = model.val_step(_batch((1,)))
        data = model.data_preprocessor(_batch((1,)), training=False)
        mask, loc_logits = model._forward(data["inputs"])
    torch.testing.assert_close(res.pred_img_scores, loc_logits[0].softmax(0))
    assert torch.equal(res.pred_sem_seg.data[0], (mask[0, 0] > 0.5).long())
    m.objective = "wildcat"
    with pytest.raises(ValueError, match="objective"):
        MODELS.build(m)


def test_ablation_specs_wire_table_4_rows(cfg):
    """The maxmin benchmark specs (Belharbi et al. Table 4) build the models they name: CAM,
    FG only, FG + BG (EEM/SEM) with and without the absolute size constraints (ASC), all with
    the config's GlaS settings unless the spec says otherwise."""
    from sparse_ext.benchmark.specs import DEFAULT_LOSSES, LOSSES

    assert {"cam", "fg", "fg_bg_eem", "eem", "sem"} <= set(DEFAULT_LOSSES["maxmin"])
    expect = {  # name: (objective, regularizer, ASC on, lambda)
        "cam": ("cam", "eem", True, 1e-7),
        "fg": ("maxmin", None, False, 1e-7),
        "fg_bg_eem": ("maxmin", "eem", False, 1e-7),
        "eem": ("maxmin", "eem", True, 1e-7),
        "fg_bg_sem": ("maxmin", "sem", False, 1e-7),
        "sem": ("maxmin", "sem", True, 1e-7),
        "none": ("maxmin", None, True, 1e-7),
        "eem_lam1e-1": ("maxmin", "eem", True, 0.1),
    }
    assert set(LOSSES["maxmin"]) == set(expect)
    data = None
    for name, (objective, regularizer, asc, lam) in expect.items():
        c = copy.deepcopy(cfg)
        c.merge_from_dict(copy.deepcopy(LOSSES["maxmin"][name].overrides))
        model = MODELS.build(_tiny(c.model))
        assert (model.objective, model.regularizer, model.lam) == (objective, regularizer, lam)
        assert (model.size_weight > 0) == asc, name
        assert model.barrier_cfg == dict(t0=5.0, factor=1.01, t_max=10.0), name
        assert model.mask_cfg == dict(omega=5.0, sigma=0.15), name
        data = data or model.data_preprocessor(_batch(), training=True)
        losses = model.loss(**data)
        if objective == "cam":
            continue
        assert ("loss_bg_reg" in losses) == (regularizer is not None), name
        assert (float(losses["loss_size"]) != 0.0) == asc, name


def test_barrier_t_follows_epochs_and_progress(cfg, model):
    assert cfg.model.barrier.epochs == cfg.train_cfg.max_epochs == 80
    model.set_epoch(10)
    assert model.t == pytest.approx(5 * 1.01**10)
    model.set_epoch(1000)
    assert model.t == 10.0  # capped
    model.set_progress(0.5)  # half of the config's 80 epochs
    assert model.t == pytest.approx(5 * 1.01**40)
    m = _tiny(cfg.model)
    m.barrier = dict(t0=10.0, factor=1.1, t_max=30.0, epochs=20)  # the paper's Camelyon setting
    driven = MODELS.build(m)
    driven.set_progress(0.25)
    assert driven.t == pytest.approx(10 * 1.1**5)
    data = driven.data_preprocessor(_batch(), training=True)
    assert driven.loss(**data)["barrier_t"].item() == pytest.approx(10 * 1.1**5)
    with pytest.raises(ValueError, match="progress"):
        driven.set_progress(1.5)
    m.barrier = dict(epochs=None)
    fixed = MODELS.build(m)
    fixed.set_progress(0.9)  # no epochs to span: t stays at t0
    assert fixed.t == 5.0


def test_predict_returns_mask_and_image_class(model):
    model.eval()
    with torch.no_grad():
        out = model.val_step(_batch((1,)))
    (res,) = out
    pred = res.pred_sem_seg.data
    assert pred.shape == (1, SIZE, SIZE)
    assert set(pred.unique().tolist()) <= {0, 1}
    assert res.seg_logits.data.shape == (2, SIZE, SIZE)
    assert torch.equal(pred[0], (res.seg_logits.data[1] > 0.5).long())
    assert res.pred_img_scores.shape == (2,) and float(res.pred_img_scores.sum()) == pytest.approx(
        1
    )
    assert int(res.pred_img_label) == int(res.pred_img_scores.argmax())


def test_bad_inputs_and_configs(cfg, model):
    data = model.data_preprocessor(_batch(), training=True)
    for ds in data["data_samples"]:
        ds.set_metainfo(dict(img_label=5))
    with pytest.raises(ValueError, match="outside"):
        model.loss(**data)
    no_label = _batch()
    no_label["data_samples"] = [SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE)))] * 2
    with pytest.raises(KeyError, match="img_label"):
        model.loss(**model.data_preprocessor(no_label, training=True))
    bad = {
        "decode_head": dict(num_classes=3),
        "regularizer": "kl",
        "auxiliary_head": dict(type="FCNHead"),
        "test_cfg": dict(mode="slide"),
    }
    for key, value in bad.items():
        m = _tiny(cfg.model)
        if key == "decode_head":
            m.decode_head.update(value)
        else:
            m[key] = value
        with pytest.raises(ValueError):
            MODELS.build(m)


# -- dataset ----------------------------------------------------------------------------------


def _write_data(root, n_per_class=2):
    """Grey crops: 'positive' ones hold a bright disc (the evaluation mask), 'negative' none."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for i in range(2 * n_per_class):
        label = i % 2
        mask = ((yy - 20 - 4 * i) ** 2 + (xx - 30) ** 2 < 100).astype(np.uint8) * label
        img = (40 + 150 * mask + np.random.default_rng(i).integers(0, 20, (SIZE, SIZE))).astype(
            np.uint8
        )
        imsave(root / "images" / f"c{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"c{i}.png", mask, check_contrast=False)
        rows.append((f"c{i}.png", ("negative", "positive")[label], f"c{i}.png"))
    lines = ["image,label,mask"] + [",".join(r) for r in rows]
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return rows


def _dataset_cfg(root, ann="train.csv", **kw):
    return dict(
        type="ImageLabelDataset",
        data_root=str(root),
        ann_file=ann,
        data_prefix=dict(img_path="images", seg_map_path="masks"),
        metainfo=dict(image_classes=("negative", "positive")),
        **kw,
    )


def test_image_label_dataset_csv_json_and_pipeline(tmp_path, cfg):
    rows = _write_data(tmp_path)
    ds = DATASETS.build(_dataset_cfg(tmp_path, pipeline=cfg.test_pipeline))
    assert len(ds) == 4 and ds.metainfo["classes"] == ("background", "foreground")
    info = ds.get_data_info(1)
    assert info["img_label"] == 1 and info["seg_map_path"].endswith("masks/c1.png")
    item = ds[1]
    assert item["data_samples"].metainfo["img_label"] == 1  # reaches the model
    assert item["inputs"].shape == (3, SIZE, SIZE)
    assert int(item["data_samples"].gt_sem_seg.data.max()) == 1
    # JSON with class indices and no masks
    samples = [dict(image=r[0], label=i % 2) for i, r in enumerate(rows)]
    (tmp_path / "list.json").write_text(json.dumps({"samples": samples}))
    js = DATASETS.build(_dataset_cfg(tmp_path, ann="list.json"))
    assert [js.get_data_info(i)["img_label"] for i in range(4)] == [0, 1, 0, 1]
    assert "seg_map_path" not in js.get_data_info(0)


def test_image_label_dataset_class_folders(tmp_path):
    for name, n in (("neg", 2), ("pos", 1)):
        (tmp_path / "img" / name).mkdir(parents=True)
        (tmp_path / "msk" / name).mkdir(parents=True)
        for i in range(n):
            imsave(tmp_path / "img" / name / f"{i}.png", np.zeros((8, 8), np.uint8))
            imsave(
                tmp_path / "msk" / name / f"{i}.png",
                np.zeros((8, 8), np.uint8),
                check_contrast=False,
            )
    ds = DATASETS.build(
        dict(type="ImageLabelDataset", data_prefix=dict(img_path=str(tmp_path / "img")))
    )
    assert ds.metainfo["image_classes"] == ("neg", "pos")
    assert [ds.get_data_info(i)["img_label"] for i in range(3)] == [0, 0, 1]
    with_masks = DATASETS.build(
        dict(
            type="ImageLabelDataset",
            data_prefix=dict(img_path=str(tmp_path / "img"), seg_map_path=str(tmp_path / "msk")),
            metainfo=dict(image_classes=("pos", "neg")),
        )
    )
    assert with_masks.get_data_info(0)["img_label"] == 0  # order from image_classes
    assert with_masks.get_data_info(0)["seg_map_path"].endswith("msk/pos/0.png")


def test_image_label_dataset_bad_inputs(tmp_path):
    _write_data(tmp_path)
    csv = tmp_path / "bad.csv"

    def build(text, **kw):
        csv.write_text(text)
        return DATASETS.build(_dataset_cfg(tmp_path, ann="bad.csv", **kw))

    with pytest.raises(KeyError, match="'unknown'"):
        build("image,label\nc0.png,unknown\n")
    with pytest.raises(ValueError, match="outside"):
        build("image,label\nc0.png,2\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build("image,label\nmissing.png,1\n")
    with pytest.raises(FileNotFoundError, match="nomask.png"):
        build("image,label,mask\nc0.png,1,nomask.png\n")
    with pytest.raises(ValueError, match="row 1 has no mask"):
        build("image,label,mask\nc0.png,1,c0.png\nc1.png,0,\n")
    with pytest.raises(KeyError, match="'label'"):
        build("image,class\nc0.png,1\n")
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        DATASETS.build(_dataset_cfg(tmp_path, ann="nothing.csv"))
    with pytest.raises(ValueError, match=".csv or .json"):
        (tmp_path / "list.yaml").write_text("x")
        DATASETS.build(_dataset_cfg(tmp_path, ann="list.yaml"))


# -- end to end through the Runner --------------------------------------------------------------


def _runner_cfg(cfg, root, work_dir) -> Config:
    c = copy.deepcopy(cfg)
    c.model = _tiny(c.model)
    c.work_dir = str(work_dir)
    for split in ("train", "val", "test"):
        dl = c[f"{split}_dataloader"]
        dl.update(batch_size=2, num_workers=0, persistent_workers=False)
        dl.dataset.data_root = str(root)
    c.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=2)
    c.default_hooks.logger.interval = 1
    c.default_hooks.checkpoint.interval = 2
    c.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
    c.randomness = dict(seed=0)
    return c


def test_runner_trains_validates_and_tests_with_annealing_hook(tmp_path, cfg):
    _write_data(tmp_path / "data")
    c = _runner_cfg(cfg, tmp_path / "data", tmp_path / "work")
    c.model.barrier.epochs = 2  # = max_epochs: t follows the epochs
    runner = Runner.from_cfg(c)
    runner.train()
    assert runner.model.t == pytest.approx(5 * 1.01)  # set during the 2nd (index 1) epoch
    metrics = runner.test()
    assert {"maxmin/F1+", "maxmin/F1-", "maxmin/ClsError", "sparse/Dice"} <= set(metrics)
    assert 0.0 <= metrics["maxmin/F1+"] <= 1.0 and 0.0 <= metrics["maxmin/ClsError"] <= 100.0


def test_annealing_hook_in_iteration_based_loop(tmp_path, cfg):
    _write_data(tmp_path / "data")
    c = _runner_cfg(cfg, tmp_path / "data", tmp_path / "work")
    c.model.barrier.epochs = 3
    c.train_cfg = dict(type="IterBasedTrainLoop", max_iters=3)
    c.val_dataloader = c.val_cfg = c.val_evaluator = None
    c.param_scheduler = []
    c.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=100)
    c.log_processor = dict(by_epoch=False)
    runner = Runner.from_cfg(c)
    runner.train()
    assert runner.model.t == pytest.approx(5 * 1.01**2)  # progress 2/3 before the last iteration
