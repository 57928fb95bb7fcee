"""The benchmark driver and the demo, end to end on a tiny generated dataset (no download)."""

from __future__ import annotations

import ast
import csv
import glob
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from _det_bench import det_context, write_coco
from _frameworks import MMSEG_HINT, require

from sparse_ext.benchmark.context import RunContext, SetupError
from sparse_ext.benchmark.results import ResultsTable, cost_ratios, format_summary, summarise
from sparse_ext.benchmark.specs import LOSSES, parse_losses, profile_for
from sparse_ext.benchmark.synthetic import make_synthetic_nuclei

require("mmseg", hint=MMSEG_HINT)

# tiny runs: 32x32 crops of 64x64 frames, UNet width 8, batch 2
TINY = dict(crop=32, unet_base_channels=8, batch_size=2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the committed results, except history/ (rows of recipes since changed) and demo/ (the demo's own
# table, rewritten by every demo run)
DOC_CSVS = sorted(
    path
    for path in glob.glob(os.path.join(REPO, "docs", "benchmarks", "**", "*.csv"), recursive=True)
    if os.path.relpath(path, os.path.join(REPO, "docs", "benchmarks")).split(os.sep)[0]
    not in ("history", "demo")
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    make_synthetic_nuclei(str(root), fractions=(30, 100), n_frames={"train": 3, "test": 2})
    return str(root)


def _load_tool(name):
    """A script of tools/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synthetic_dataset_layout_and_nesting(tiny_data):
    from skimage.io import imread
    from tifffile import imread as tifread

    root = os.path.join(tiny_data, "hela")
    stems = sorted(os.listdir(os.path.join(root, "images", "train")))
    assert len(stems) == 3
    for stem in stems:
        inst = tifread(os.path.join(root, "instances", "train", stem.replace(".png", ".tif")))
        f30 = imread(os.path.join(root, "labels", "frac030", "train", stem))
        f100 = imread(os.path.join(root, "labels", "frac100", "train", stem))
        assert np.array_equal(f100 > 0, inst > 0)
        assert np.all(f100[f30 > 0] > 0)  # nested: every 30 % nucleus is in the 100 % map
        n30 = np.unique(inst[f30 > 0]).size
        assert 0 < n30 < np.unique(inst[inst > 0]).size


def test_benchmark_end_to_end_csv_plot_and_resume(tiny_data, tmp_path, capsys):
    from sparse_ext.benchmark import run_benchmark

    out = str(tmp_path / "out")
    lines = []
    kwargs = dict(
        task="seg",
        fractions=(30, 100),
        losses=("ce", "ece", "nnpu"),
        seeds=(0,),
        iters=2,
        quick=True,
        out=out,
        work_dirs=str(tmp_path / "work"),
        profile_overrides=TINY,
        log=lines.append,
    )
    run_benchmark(tiny_data, **kwargs)
    rows = _read(os.path.join(out, "seg.csv"))
    assert [(r["loss"], r["fraction"]) for r in rows] == [
        ("ce", "30"),
        ("ece", "30"),
        ("nnpu", "30"),
        ("ce", "100"),
        ("ece", "100"),
        ("nnpu", "100"),
    ]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["iters"] == "2" and r["mode"] == "quick" and r["seed"] == "0"
        for m in ("dice", "iou", "aji", "object_f1"):
            assert 0.0 <= float(r[m]) <= 1.0
        assert float(r["seconds"]) > 0 and float(r["sec_per_iter"]) > 0
        assert r["config"].startswith("configs/mmseg/")
        # the annotated-fraction check: the ECE recipe trained on with the data's f (two
        # iterations give no estimate); nnPU has no check but gets the data's f (not the
        # fallback 0.2); cross-entropy takes no f
        if r["loss"] in ("ece", "nnpu"):
            assert float(r["f_used"]) == int(r["fraction"]) / 100 and r["f_estimate"] == "nan"
        else:
            assert r["f_used"] == r["f_estimate"] == ""
    assert os.path.getsize(os.path.join(out, "seg.png")) > 1000
    progress = [x for x in lines if x.startswith("[seg] ")]
    assert sum("s/iter" in x for x in progress) == 6
    assert any("cost_vs_ce" in x for x in lines)
    bar = capsys.readouterr().err  # tqdm: runs done / total, elapsed<ETA
    assert "0/6" in bar and "6/6" in bar and "<" in bar

    # second call: every run is finished, nothing is trained again
    lines.clear()
    before = os.path.getmtime(os.path.join(out, "seg.csv"))
    run_benchmark(tiny_data, **kwargs)
    assert sum("skipped" in x for x in lines) == 6
    bar = capsys.readouterr().err  # runs done before start the bar at 6/6
    assert "6/6" in bar and "0/6" not in bar
    assert not any("s/iter" in x for x in lines)
    assert os.path.getmtime(os.path.join(out, "seg.csv")) == before
    assert len(_read(os.path.join(out, "seg.csv"))) == 6


def test_demo_code_path_tiny_schedule(tiny_data, tmp_path):
    from sparse_ext.benchmark import run_demo

    out = str(tmp_path / "demo")
    lines = []
    results = run_demo(tiny_data, out, iters=2, profile_overrides=TINY, log=lines.append)
    assert set(results) == {"ce", "ece_paper", "ce_sampled"}
    for m in results.values():
        assert 0.0 <= m["dice"] <= 1.0
    for name in ("demo.csv", "demo.png", "demo_overlay.png"):
        assert os.path.getsize(os.path.join(out, name)) > 500, name
    assert any(out in x for x in lines)  # says where the outputs are
    assert len(_read(os.path.join(out, "demo.csv"))) == 3


@pytest.mark.parametrize(
    "task, losses, tiny, metrics",
    [
        (
            "lsr",
            ("intra_inter", "lowres", "inter_highres", "highres"),
            dict(block=16, bins=4, unet_base_channels=8),
            ("dice", "iou", "masked_dice", "masked_iou"),
        ),
        (
            "maxmin",
            ("eem", "none"),
            dict(crop=32, unet_base_channels=8, batch_size=2),
            ("f1_plus", "f1_minus", "dice"),
        ),
    ],
)
def test_lsr_and_maxmin_benchmarks_end_to_end(
    tiny_data, tmp_path, monkeypatch, task, losses, tiny, metrics
):
    from sparse_ext.benchmark import run_benchmark

    monkeypatch.chdir(tmp_path)  # relative work dirs, as on the command line
    out, lines = "out", []
    run_benchmark(
        tiny_data,
        task,
        fractions=(30, 100),
        losses=losses,
        iters=2,
        out=out,
        work_dirs="work",
        profile_overrides=tiny,
        log=lines.append,
    )
    assert any("fraction 100 only" in x for x in lines)
    rows = _read(os.path.join(out, f"{task}.csv"))
    assert [(r["loss"], r["fraction"], r["status"]) for r in rows] == [
        (name, "100", "ok") for name in losses
    ], [r["error"] for r in rows]
    for r in rows:
        for m in metrics:
            assert 0.0 <= float(r[m]) <= 1.0, (r["loss"], m, r[m])
    assert os.path.getsize(os.path.join(out, f"{task}.png")) > 1000
    baseline = {"lsr": "intra", "maxmin": "none"}[task]
    assert any(f"cost_vs_{baseline}" in x for x in lines)
    if task == "maxmin":
        assert 0.0 <= float(rows[0]["cls_error"]) <= 100.0


def test_lowres_baseline_predicts_the_table_majority_per_block(tmp_path):
    from skimage.io import imsave

    from sparse_ext.benchmark.lsr import lowres_predictions, score_lsr

    root = tmp_path / "d"
    (root / "labels" / "full" / "test").mkdir(parents=True)
    gt = np.zeros((8, 12), np.uint8)
    gt[:4, :4] = 1  # block (0, 0): fraction 1 -> z 1 (2 bins)
    gt[4:, 4:6] = 1  # block (1, 1): fraction 0.5 -> z 1
    gt[0, 8] = 1  # block (0, 2): fraction 1/16 -> z 0
    imsave(root / "labels" / "full" / "test" / "f.png", gt, check_contrast=False)
    table = tmp_path / "table.json"
    table.write_text(
        '{"classes": ["background", "nucleus"], "labels": [0, 1],'
        ' "eta": [[0.9, 0.3], [0.1, 0.7]], "rho": [[0.1, 0.1], [0.1, 0.1]]}'
    )
    pred = lowres_predictions(str(root), str(table), block=4)["f"]
    expected = np.zeros_like(gt, dtype=np.int64)
    expected[:4, :4] = 1
    expected[4:, 4:8] = 1
    np.testing.assert_array_equal(pred, expected)
    scores = score_lsr({"f": pred}, str(root), band_width=1)
    tp, fp, fn = 24, 8, 1
    assert scores["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert 0.0 < scores["masked_dice"] < 1.0


def test_highres_blocks_are_a_fixed_share_of_the_training_blocks_with_their_masks(
    tiny_data, tmp_path
):
    from skimage.io import imread

    from sparse_ext.benchmark.lsr import prepare_highres, prepare_lsr_blocks

    root = prepare_lsr_blocks(os.path.join(tiny_data, "hela"), str(tmp_path), 16, 4)
    train = os.path.join(root, "train")
    rows = {r["block"]: r for r in _read(os.path.join(train, "block_labels.csv"))}
    folder, labels = prepare_highres(root, 0.25)
    assert (folder, labels) == ("train/highres_25pct", "train/block_labels_highres_25pct.csv")
    chosen = _read(os.path.join(root, labels))
    assert len(chosen) == round(0.25 * len(rows))
    files = sorted(os.listdir(os.path.join(root, folder)))
    assert files == sorted(r["block"] for r in chosen)  # the CSV names the files
    for r in chosen:
        assert r == rows[r["block"]]  # the block's labels unchanged
        np.testing.assert_array_equal(
            imread(os.path.join(root, folder, r["block"])),
            imread(os.path.join(train, "masks", r["block"])),
        )
    # built once: a second call keeps the same blocks; a tiny share still gives one block
    mtime = os.path.getmtime(os.path.join(root, labels))
    assert prepare_highres(root, 0.25) == (folder, labels)
    assert os.path.getmtime(os.path.join(root, labels)) == mtime
    assert len(_read(os.path.join(root, prepare_highres(root, 1e-6)[1]))) == 1
    assert not glob.glob(os.path.join(train, "*.partial"))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="highres_fraction"):
            prepare_highres(root, bad)


def test_highres_specs_train_on_the_chosen_blocks(tiny_data, tmp_path):
    """inter_highres: every block with its label, the chosen ones with their masks as high-res
    labels; highres: the chosen blocks alone, cross-entropy on their masks, ungrouped batches."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from sparse_ext.benchmark.lsr import build_config, prepare_highres, prepare_lsr_blocks
    from sparse_ext.benchmark.specs import profile_for

    profile = dict(profile_for("lsr", "quick"), block=16, bins=4, highres_fraction=0.25)
    root = prepare_lsr_blocks(os.path.join(tiny_data, "hela"), str(tmp_path / "cache"), 16, 4)
    folder, labels = prepare_highres(root, 0.25)
    chosen = {r["block"][: -len(".png")] for r in _read(os.path.join(root, labels))}
    init_default_scope("mmseg")
    for name in ("inter_highres", "highres"):
        cfg = build_config(
            RunContext(
                task="lsr",
                spec=LOSSES["lsr"][name],
                fraction=100,
                seed=0,
                iters=1,
                mode="quick",
                profile=profile,
                data_root=os.path.join(tiny_data, "hela"),
                work_dir=str(tmp_path / name),
            ),  # fmt: skip
            root,
        )
        data = DATASETS.build(cfg.train_dataloader.dataset)
        infos = [data.get_data_info(i) for i in range(len(data))]
        names = {os.path.basename(d["img_path"])[: -len(".png")]: d for d in infos}
        if name == "highres":
            assert set(names) == chosen and cfg.train_dataloader.get("batch_sampler") is None
            assert cfg.model.decode_head.loss_decode.type == "CrossEntropyLoss"
        else:
            assert len(names) > len(chosen)
            assert {n for n, d in names.items() if "highres_path" in d} == chosen
            assert cfg.model.decode_head.loss_decode.mode == "inter"
            assert cfg.model.decode_head.loss_decode.highres_weight > 0


def test_maxmin_tiles_labels_follow_the_nucleus_fraction(tiny_data, tmp_path):
    from skimage.io import imread

    from sparse_ext.benchmark.maxmin import prepare_maxmin_tiles

    root = prepare_maxmin_tiles(os.path.join(tiny_data, "hela"), str(tmp_path), 16, 0.2)
    assert prepare_maxmin_tiles(os.path.join(tiny_data, "hela"), str(tmp_path), 16, 0.2) == root
    rows = _read(os.path.join(root, "train.csv"))
    assert rows and {r["label"] for r in rows} <= {"negative", "positive"}
    for r in rows:
        fraction = (imread(os.path.join(root, "masks", r["mask"])) > 0).mean()
        assert (fraction >= 0.2) if r["label"] == "positive" else (fraction == 0)
    # 3 frames of 64 px -> 48 tiles of 16 px; the ambiguous ones (0 < fraction < 0.2) are left out
    assert len(rows) < 48


def test_results_table_keeps_the_rows_of_a_process_writing_beside_it(tmp_path):
    path = str(tmp_path / "det.csv")
    base = dict(task="det", fraction=10, iters=5, mode="quick", status="ok")
    one, two = ResultsTable(path, "det"), ResultsTable(path, "det")  # two grids, one CSV
    one.add(dict(base, loss="ce", seed=0, f1=0.5))
    two.add(dict(base, loss="ce", seed=1, f1=0.6))
    one.add(dict(base, loss="bde", seed=0, f1=0.7))
    assert [(r["loss"], r["seed"]) for r in _read(path)] == [("ce", "0"), ("ce", "1"), ("bde", "0")]
    assert one.finished(("det", "ce", 10, 1, 5, "quick"))["f1"] == "0.6"  # the other's run


def test_results_table_resume_and_retry(tmp_path):
    path = str(tmp_path / "seg.csv")
    table = ResultsTable(path, "seg")
    base = dict(task="seg", fraction=30, seed=0, iters=5, mode="quick")
    table.add(dict(base, loss="ce", status="ok", sec_per_iter=0.5, dice=0.2))
    table.add(dict(base, loss="ece", status="failed", error="boom"))
    again = ResultsTable(path, "seg")
    assert again.finished(("seg", "ce", 30, 0, 5, "quick"))["dice"] == "0.2"
    assert again.finished(("seg", "ece", 30, 0, 5, "quick")) is None  # failed runs are retried
    assert again.finished(("seg", "ce", 30, 0, 6, "quick")) is None  # other budget, other run
    again.add(dict(base, loss="ece", status="ok", sec_per_iter=0.75, dice=0.9))
    rows = _read(path)
    assert [(r["loss"], r["status"]) for r in rows] == [("ce", "ok"), ("ece", "ok")]
    assert cost_ratios(rows) == {"ce": 1.0, "ece": 1.5}
    # runs are compared with the baseline of the same call (session), fraction and seed only
    other = [
        dict(loss="ce", session="a", fraction="30", seed="0", sec_per_iter="0.2"),
        dict(loss="ece", session="a", fraction="30", seed="0", sec_per_iter="0.3"),
        dict(loss="ce", session="b", fraction="30", seed="0", sec_per_iter="0.6"),
        dict(loss="ece", session="b", fraction="30", seed="0", sec_per_iter="0.6"),
        dict(loss="nnpu", session="c", fraction="30", seed="0", sec_per_iter="0.9"),
    ]
    ratios = cost_ratios(other)
    assert ratios["ece"] == pytest.approx(1.25) and math.isnan(ratios["nnpu"])
    text = format_summary(rows, "seg", loss_order=["ce", "ece"])
    assert "0.200" in text and "0.900" in text and "1.50" in text


def test_summarise_mean_and_spread_over_seeds():
    rows = [
        dict(loss="ece", fraction="10", dice="0.5"),
        dict(loss="ece", fraction="10", dice="0.7"),
        dict(loss="ece", fraction="30", dice=""),  # failed metric: left out
    ]
    table = summarise(rows, "dice")
    mean, std, n = table["ece"][10]
    assert n == 2 and math.isclose(mean, 0.6) and math.isclose(std, 0.1)
    assert 30 not in table["ece"]


def test_bad_inputs_are_named(tmp_path):
    from sparse_ext.benchmark import run_benchmark

    with pytest.raises(KeyError, match="unknown seg loss 'nope'.*ce"):
        parse_losses("seg", ["ce", "nope"])
    with pytest.raises(KeyError, match="unknown task"):
        parse_losses("cls", None)
    with pytest.raises(FileNotFoundError, match="sparse-ext data fetch hela"):
        run_benchmark(str(tmp_path), "seg", losses=["ce"], out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="fractions"):
        run_benchmark(str(tmp_path), "seg", fractions=(0,), losses=["ce"])


def test_det_without_detectron2_fails_with_one_message(tmp_path, monkeypatch, capsys):
    from sparse_ext.benchmark import run_benchmark
    from sparse_ext.cli import main

    monkeypatch.delenv("SPARSE_EXT_D2_PYTHON", raising=False)
    monkeypatch.setitem(sys.modules, "detectron2", None)  # not importable in this Python
    with pytest.raises(SetupError, match="detectron2.*SPARSE_EXT_D2_PYTHON"):
        run_benchmark(str(tmp_path), "det", out=str(tmp_path / "o"), log=print)
    assert not os.path.exists(tmp_path / "o" / "det.csv")
    capsys.readouterr()
    assert main(["benchmark", "--task", "det", "--data", str(tmp_path), "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "detectron2" in err[0] and "setup_env.sh" in err[0], err


def test_det_python_override_must_have_detectron2(tmp_path, monkeypatch):
    from sparse_ext.benchmark.det import detectron2_python

    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'detectron2'\" >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("SPARSE_EXT_D2_PYTHON", str(fake))
    with pytest.raises(SetupError, match=f"SPARSE_EXT_D2_PYTHON={fake}.*No module named"):
        detectron2_python()
    monkeypatch.setenv("SPARSE_EXT_D2_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(SetupError, match="cannot import detectron2"):
        detectron2_python()


def test_det_uses_this_python_by_default(monkeypatch):
    pytest.importorskip("detectron2")
    from sparse_ext.benchmark.det import detectron2_python

    monkeypatch.delenv("SPARSE_EXT_D2_PYTHON", raising=False)
    assert detectron2_python() == sys.executable
    monkeypatch.setenv("SPARSE_EXT_D2_PYTHON", sys.executable)  # an override that has it
    assert detectron2_python() == sys.executable


def test_det_subprocess_gets_the_thread_count(monkeypatch):
    from sparse_ext.benchmark.det import _env

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(1)  # what --threads 1 does in the parent
        assert _env()["OMP_NUM_THREADS"] == "1"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's own setting wins
        assert _env()["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)


def _doc_rows(path):
    """The finished rows of a committed benchmark CSV whose loss still exists, with contexts."""
    out = []
    for row in _read(path):
        spec = LOSSES[row["task"]].get(row["loss"])
        if row["status"] != "ok" or spec is None:
            continue
        ctx = RunContext(
            task=row["task"],
            spec=spec,
            fraction=int(row["fraction"]),
            seed=int(row["seed"]),
            iters=int(row["iters"]),
            mode=row["mode"],
            profile=json.loads(row["overrides"])["profile"],
            data_root="data/hela",
            work_dir="work",
        )
        out.append((row, ctx))
    return out


@pytest.mark.parametrize("path", DOC_CSVS, ids=os.path.basename)
def test_committed_csvs_are_found_and_their_rows_reproduced(path):
    """Every finished row of docs/benchmarks/*.csv is the run its context names: same key, same
    config and overrides columns."""
    rows = _doc_rows(path)
    assert rows
    table = ResultsTable(path, rows[0][0]["task"])
    for row, ctx in rows:
        assert table.finished(ctx.key) == row
        fields = ctx.csv_fields()
        assert {k: str(fields[k]) for k in fields} == {k: row[k] for k in fields}


@pytest.mark.parametrize("path", DOC_CSVS, ids=os.path.basename)
def test_committed_csv_runs_are_skipped(path, tiny_data, tmp_path, monkeypatch):
    """A rerun over a committed CSV trains nothing and leaves the CSV as it was."""
    import sparse_ext.benchmark.driver as driver
    from sparse_ext.benchmark import run_benchmark

    row, ctx = _doc_rows(path)[0]
    csv_path = tmp_path / f"{ctx.task}.csv"
    shutil.copy(path, csv_path)
    before = csv_path.read_bytes()

    def no_training(ctx):
        raise AssertionError(f"{ctx.label} trained again")

    monkeypatch.setattr(driver, "run_one", no_training)
    if ctx.task == "det":  # no detectron2 needed to skip finished runs
        monkeypatch.setattr(driver.task_module("det"), "check_environment", lambda: None)
    lines = []
    done = run_benchmark(
        tiny_data,
        ctx.task,
        fractions=[ctx.fraction],
        losses=[ctx.spec.name],
        seeds=[ctx.seed],
        iters=ctx.iters,
        quick=ctx.mode == "quick",
        out=str(tmp_path),
        work_dirs=str(tmp_path / "work"),
        log=lines.append,
    )
    assert done == [row]
    assert sum("done before" in x for x in lines) == 1, lines
    assert csv_path.read_bytes() == before


def test_det_profiles_train_at_native_scale_and_do_not_cap_recall():
    quick = profile_for("det", quick=True)["opts"]
    # Detectron2 crops before it resizes: a shorter edge other than the crop's would rescale it
    crop_h, crop_w = ast.literal_eval(quick["INPUT.CROP.SIZE"])
    assert ast.literal_eval(quick["INPUT.MIN_SIZE_TRAIN"]) == (min(crop_h, crop_w),)
    assert quick["INPUT.MAX_SIZE_TRAIN"] == max(crop_h, crop_w)
    # whole test frames of any size stay at the scale trained at (0: Detectron2 does not resize)
    assert quick["INPUT.MIN_SIZE_TEST"] == 0
    from detectron2.config import get_cfg
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", str(quick["INPUT.MIN_SIZE_TEST"])])
    for shape in ((500, 500, 3), (700, 1100, 3)):  # the H&E tiles, HeLa's frames
        image = np.zeros(shape, np.uint8)
        augs = T.AugmentationList(detection_utils.build_augmentation(cfg, is_train=False))
        assert augs(T.AugInput(image)).apply_image(image).shape == shape
    full = profile_for("det", quick=False)
    assert full["recipe_configs"] and full["opts"]["MODEL.ROI_HEADS.NUM_CLASSES"] == 1
    for opts in (quick, full["opts"]):  # a test frame holds up to ~200 nuclei
        assert opts["TEST.DETECTIONS_PER_IMAGE"] >= 300
        assert opts["MODEL.RPN.POST_NMS_TOPK_TEST"] >= opts["TEST.DETECTIONS_PER_IMAGE"]


def test_reference_ece_wrapper_matches_the_package():
    ece_loss = pytest.importorskip("ece_loss")
    from sparse_ext.benchmark.reference_ece import ReferenceECELoss

    logits = torch.randn(2, 2, 8, 8)
    label = torch.randint(0, 2, (2, 8, 8))
    label[0, :2] = 255
    wrapper = ReferenceECELoss(background_sampling_threshold=2.0)  # sampling always on
    wrapper.set_progress(1.0)  # epoch 300: thresholds at their plateau
    ref = ece_loss.ExclusiveCrossEntropyLoss(
        ignore_index=255, reduction="none", background_sampling_threshold=2.0
    )(logits, label, epoch=300)
    expected = ref.sum() / (label != 255).sum()
    assert torch.allclose(wrapper(logits, label), expected)
    assert wrapper.loss_name.startswith("loss_")
    wrapper.set_progress(0.0)  # epoch 0: exclusivity threshold ~0.003, almost no background term
    assert wrapper(logits, label) < expected


def test_every_loss_spec_names_a_shipped_config():
    from sparse_ext.benchmark.specs import LOSSES

    for task, specs in LOSSES.items():
        for name, spec in specs.items():
            if spec.config:  # baselines without one train nothing (threshold, lowres)
                assert os.path.isfile(spec.config_path), (task, name, spec.config_path)
    assert {"fcn_ce", "fcn_ece", "fcn_ce_sampled"} <= set(LOSSES["seg"])


def test_seg_recipe_checks_ratios_margins_and_worst_seed():
    tool = _load_tool("seg_recipe_checks")
    rows = [
        {"loss": "ce", "fraction": "100", "seed": "0", "dice": "0.8"},
        {"loss": "ce", "fraction": "100", "seed": "1", "dice": "1.0"},
        {"loss": "ce", "fraction": "30", "seed": "0", "dice": "0.1"},
        {"loss": "ce", "fraction": "30", "seed": "1", "dice": "0.3"},
        {"loss": "ce", "fraction": "30", "seed": "2", "dice": "0.9"},
        {"loss": "ce_sampled", "fraction": "30", "seed": "0", "dice": "0.9"},
        {"loss": "ce_sampled", "fraction": "30", "seed": "1", "dice": "0.7"},
    ]
    lines = tool.checks(rows)
    assert lines[0].startswith("CE@100: 0.900 ± 0.100 (2)")
    row = next(x for x in lines if x.startswith("| ce_sampled | 30 |"))
    # mean 0.8: 0.8 / 0.9 of CE@100; over CE's seeds 0-1 (0.1, 0.3; not seed 2's 0.9): +0.6
    assert row == "| ce_sampled | 30 | 0.800 ± 0.100 (2) | 0.889 | +0.600 | 0.700 |"
    assert tool.fraction_checks(rows) == []  # rows without the check's columns
    fcn = rows + [
        {"loss": "fcn_ce", "fraction": "100", "seed": "0", "dice": "0.5"},
        {"loss": "fcn_ece", "fraction": "30", "seed": "0", "dice": "0.4"},
    ]
    row = next(x for x in tool.checks(fcn) if x.startswith("| fcn_ece | 30 |"))
    assert (
        row
        == "| fcn_ece | 30 | 0.400 ± 0.000 (1) | 0.800 (fcn_ce@100 0.500 ± 0.000 (1)) | - | 0.400 |"
    )
    rows[5].update(f_estimate="0.28", f_used="0.28")
    rows[6].update(f_estimate="0.35", f_used="0.3")
    assert tool.fraction_checks(rows)[-1] == "| ce_sampled | 30 | 2 | 0.280-0.350 | 0.280-0.300 |"
    # a loss without the check (nnPU) records the f it was given and no estimate
    rows.append(
        {
            "loss": "nnpu",
            "fraction": "10",
            "seed": "0",
            "dice": "0.9",
            "f_estimate": "nan",
            "f_used": "0.1",
        }
    )
    assert tool.fraction_checks(rows)[-1] == "| nnpu | 10 | 1 | - | 0.100-0.100 |"


def test_det_one_annotation_per_patch_protocol(tmp_path):
    """fraction ONE_PER_PATCH: the run trains on one annotation per 256 px patch of the
    exhaustive training file (Zhao, Pang et al., MICCAI 2021), drawn once with seed 0."""
    from sparse_ext.benchmark.cli import _fraction_list
    from sparse_ext.benchmark.det import build_command
    from sparse_ext.benchmark.results import ONE_PER_PATCH, fraction_label

    assert _fraction_list("1/patch,10,30") == [ONE_PER_PATCH, 10, 30]
    assert fraction_label(ONE_PER_PATCH) == "1/patch" and fraction_label(30) == "30%"
    root = tmp_path / "d"
    # one 512 x 256 image (two 256 px patches) with 3 nuclei in each half
    write_coco(root / "annotations", ("train.json", "test.json"), (20, 80, 140, 280, 340, 400))
    ctx = det_context(root, tmp_path / "work", "ce", ONE_PER_PATCH, seed=1)
    cmd = build_command(ctx, sys.executable)
    train_json = cmd[cmd.index("bench_train") + 1]
    assert train_json.startswith(str(tmp_path / "work"))
    kept = json.loads(open(train_json).read())
    xs = sorted(a["bbox"][0] for a in kept["annotations"])
    assert len(xs) == 2 and xs[0] < 246 and xs[1] >= 256  # one per patch, each half served
    assert kept["info"]["sparse_fraction"] == pytest.approx(2 / 6)
    assert kept["info"]["sparse_protocol"]["patch"] == 256
    again = build_command(ctx, sys.executable)  # the same labels for every run and seed
    assert json.loads(open(again[again.index("bench_train") + 1]).read()) == kept
    with pytest.raises(ValueError, match="one annotation per patch"):
        from sparse_ext.benchmark import run_benchmark

        run_benchmark(str(tmp_path), "seg", fractions=(ONE_PER_PATCH,), out=str(tmp_path / "o"))


@pytest.mark.parametrize("per_image, dense", [(6, False), (60, True)])
def test_det_dense_data_get_larger_samplers(tmp_path, per_image, dense):
    """The quick profile's dense rule: objects per 256 px crop of the exhaustive training file
    (here 512 x 256 images: half the image per crop) above the threshold -> larger samplers,
    whatever the run's annotated fraction."""
    from sparse_ext.benchmark.det import build_command, objects_per_crop

    root = tmp_path / "d"
    xs = [8 * i for i in range(per_image)]
    write_coco(root / "annotations", ("train.json", "test.json"), xs)
    write_coco(root / "annotations", ("train_frac010.json",), xs[:1])
    ctx = det_context(root, tmp_path / "work", "ce", 10)
    profile = ctx.profile
    assert objects_per_crop(ctx) == pytest.approx(per_image / 2)
    cmd = build_command(ctx, sys.executable)
    for key, value in profile["dense"]["opts"].items():
        assert (key in cmd and cmd[cmd.index(key) + 1] == str(value)) == dense, key
    assert profile["dense"]["opts"]["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] > 32  # the tiny's


def test_det_scale_jitter_is_multi_scale_training(tmp_path, capsys):
    """--scale-jitter 1.5: training crops resized to a short side drawn from 256 / 320 / 384 (the
    crop, 1.25 x, 1.5 x); without it the profile's single 256; test frames stay native."""
    from sparse_ext.benchmark import run_benchmark
    from sparse_ext.benchmark.det import build_command, scale_jitter_opts
    from sparse_ext.cli import main

    root = tmp_path / "d"
    write_coco(root / "annotations", ("train.json", "test.json", "train_frac010.json"), [0])
    ctx = det_context(root, tmp_path / "work", "ce", 10)

    def last(key):  # Detectron2 applies the opts in order: the last value of a key wins
        cmd = build_command(ctx, sys.executable)
        return cmd[len(cmd) - cmd[::-1].index(key)]

    keys = ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST")
    assert [last(k) for k in keys] == ["(256,)", "256", "0"]
    ctx.profile["scale_jitter"] = 1.5
    assert [last(k) for k in keys] == ["(256, 320, 384)", "384", "0"]
    ctx.profile["scale_jitter"] = 0.5
    with pytest.raises(ValueError, match="at least 1"):
        build_command(ctx, sys.executable)
    with pytest.raises(ValueError, match="quick profile"):
        scale_jitter_opts({}, 1.5)
    off_grid = scale_jitter_opts({"INPUT.MIN_SIZE_TRAIN": "(256,)"}, 1.1)  # MAX itself is drawn
    assert off_grid["INPUT.MIN_SIZE_TRAIN"] == "(256, 282)"
    assert main(["benchmark", "--task", "seg", "--scale-jitter", "1.5", "--out", "o"]) == 2
    assert "--scale-jitter is for --task det" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scale_jitter .* is for task 'det', not 'seg'"):
        run_benchmark(str(root), "seg", profile_overrides={"scale_jitter": 1.5}, out=str(tmp_path))


def test_det_recipe_checks_choose_the_prior_by_validation_recall():
    tool = _load_tool("det_recipe_checks")

    def row(loss, seed, val_ar, f1):
        metrics = dict(recall=f1, precision=f1, f1=f1, f1_valthr=f1, ap=f1, ap50=f1)
        return dict(loss=loss, fraction="10", seed=str(seed), val_average_recall=str(val_ar),
                    **{k: str(v) for k, v in metrics.items()})  # fmt: skip

    rows = [
        row("ce", 0, 0.5, 0.4),
        row("ce", 1, 0.5, 0.6),
        row("nnpu_pi02", 0, 0.6, 0.1),
        row("nnpu_pi04", 0, 0.9, 0.7),  # best validation recall, seed 0
        row("nnpu_pi03", 1, 0.8, 0.9),  # tie on seed 1: the smaller prior
        row("nnpu_pi05", 1, 0.8, 0.2),
        *(row(f"nnpu_pi0{p}", 0, 0.1, 0.0) for p in (3, 5, 6)),
        *(row(f"nnpu_pi0{p}", 1, 0.1, 0.0) for p in (2, 4, 6)),
        row("nnpu_pi02", 2, 0.9, 0.9),  # seed 2 has part of the grid only: no choice
    ]
    chosen = [r for r in tool.with_validation_prior(rows) if r["loss"] == "nnpu_val"]
    assert [(r["seed"], r["chosen"]) for r in chosen] == [("0", "nnpu_pi04"), ("1", "nnpu_pi03")]
    lines = tool.checks(rows)
    nnpu = next(x for x in lines if x.startswith("| nnpu_val | 10% |"))
    # F1 mean (0.7 + 0.9) / 2 = 0.8 against CE's 0.5
    assert "0.800 ± 0.100 (2)" in nnpu and nnpu.endswith("| +0.300 " * 5 + "|")
    assert any("validation chose pi = 0.04, 0.03" in x for x in lines)
    assert lines[0].endswith("| F1 - CE | recall - CE | precision - CE | F1@val - CE | AP - CE |")
    # differences to CE pair the seeds: a method without seed 1 is compared with CE's seed 0
    lines = tool.checks([*rows, row("ce", 2, 0.5, 0.9), row("bde", 0, 0.5, 0.7)])
    bde = next(x for x in lines if x.startswith("| bde | 10% |"))
    assert bde.endswith("| +0.300 " * 5 + "|")  # 0.7 - 0.4, not 0.7 - mean(CE) 0.633
    # another baseline, on the seeds both ran: bde's seed 0 against nnpu_val's (0.7)
    lines = tool.checks([*rows, row("bde", 0, 0.5, 0.7)], baseline="nnpu_val")
    assert lines[0].endswith("| AP - nnpu_val |")
    bde = next(x for x in lines if x.startswith("| bde | 10% |"))
    assert bde.endswith("| +0.000 " * 5 + "|")
    ce = next(x for x in lines if x.startswith("| ce | 10% |"))
    assert ce.endswith("| -0.300 " * 5 + "|")  # (0.4 - 0.7 + 0.6 - 0.9) / 2
    # a method the tool does not list is not dropped: it comes after the listed ones
    lines = tool.checks([*rows, row("zz_new", 0, 0.5, 0.7), row("bde", 0, 0.5, 0.7)])
    names = [x.split(" | ")[0][2:] for x in lines[2:] if x.startswith("| ")]
    assert names[-1] == "zz_new" and names.index("bde") < names.index("nnpu_val")
    # runs with AP50 < 0.01 are listed (nnpu_val repeats a run: not counted twice)
    assert not any("learned nothing" in x for x in tool.checks(rows[:6]))
    lines = tool.checks([*rows, row("ece", 3, 0.5, 0.0)])
    assert lines[-1] == (
        "- learned nothing (AP50 < 0.01, 7 of 14 runs): nnpu_pi03 10% seed 0; nnpu_pi05 10% "
        "seed 0; nnpu_pi06 10% seed 0; nnpu_pi02 10% seed 1; nnpu_pi04 10% seed 1; nnpu_pi06 10% "
        "seed 1; ece 10% seed 3"
    )


def test_derived_data_is_kept_per_dataset(tmp_path):
    """LSR blocks and max-min tiles built from one dataset are never reused for another."""
    spec = LOSSES["lsr"]["intra"]

    def ctx(data_root):
        return RunContext(
            task="lsr", spec=spec, fraction=100, seed=0, iters=1, mode="quick", profile={},
            data_root=str(data_root), work_dir=str(tmp_path / "work" / "lsr" / "intra_f100_s0"),
        )  # fmt: skip

    hela, hgsc = ctx(tmp_path / "data" / "hela"), ctx(tmp_path / "data" / "hgsc")
    assert hela.derived_data_dir != hgsc.derived_data_dir
    assert hela.derived_data_dir == ctx(tmp_path / "data" / "hela").derived_data_dir
    assert os.path.basename(hela.derived_data_dir).startswith("hela-")
    assert os.path.dirname(hela.derived_data_dir) == str(tmp_path / "work" / "lsr" / "_data")


def test_train_then_scores_the_averaged_weights_of_an_ema_hook(tmp_path):
    """A config with mmengine's EMAHook is scored with its averaged weights, as runner.test()
    would, and the trained weights are back in the model afterwards."""
    from _mmseg_tiny_data import CONFIGS, tiny_training_options

    from sparse_ext.benchmark.mmengine_runs import train_then
    from sparse_ext.mmseg.config import load_config

    opts = tiny_training_options(tmp_path, iters=3)
    cfg = load_config(str(CONFIGS / "unet_s5-d16_ce_partial-nuclei.py"), opts)
    cfg.custom_hooks = [dict(type="EMAHook", momentum=0.5)]
    seen = {}

    def after(runner):
        hook = next(h for h in runner.hooks if type(h).__name__ == "EMAHook")
        seen["runner"], seen["hook"] = runner, hook
        seen["scored"] = runner.model.decode_head.conv_seg.weight.detach().clone()
        return "done"

    result, seconds, per_iter = train_then(cfg, after)
    assert result == "done" and seconds > 0 and per_iter > 0
    trained = seen["runner"].model.decode_head.conv_seg.weight.detach()
    averaged = seen["hook"].ema_model.module.decode_head.conv_seg.weight.detach()
    assert torch.equal(seen["scored"], averaged)
    assert not torch.equal(trained, averaged)


def test_train_then_lets_the_fallback_fraction_warning_through(tmp_path):
    """train_then silences the frameworks' UserWarnings, not a loss saying it assumes f."""
    from _mmseg_tiny_data import CONFIGS, tiny_training_options

    from sparse_ext.benchmark.mmengine_runs import train_then
    from sparse_ext.mmseg.config import load_config

    opts = tiny_training_options(tmp_path, iters=1)
    cfg = load_config(str(CONFIGS / "unet_s5-d16_nnpu_partial-nuclei.py"), opts)
    cfg.custom_hooks = []  # nothing hands the data's f over
    with pytest.warns(UserWarning, match="annotated fraction is unknown"):
        train_then(cfg, lambda runner: None)


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(REPO, "docs/benchmarks/*.sh"))))
def test_grid_scripts_name_only_known_losses(script):
    """Every comma-separated list of names in a committed grid script (its --losses arguments)
    names benchmark specs: a misspelt or missing spec would stop the grid mid-way."""
    import re

    known = {name for specs in LOSSES.values() for name in specs}
    text = open(script).read()
    lists = re.findall(r"(?<![\w/,.-])([a-z][a-z0-9_]*(?:,[a-z][a-z0-9_]*)+)(?![\w/,.-])", text)
    assert lists
    unknown = sorted({name for names in lists for name in names.split(",")} - known)
    assert not unknown, f"{os.path.basename(script)} names unknown losses {unknown}"


def test_det_false_positives_sorts_each_unmatched_detection_by_its_best_overlap():
    import numpy as np

    tool = _load_tool("det_false_positives")
    # two annotations of area 100; detections, most confident first: a match of annotation 0, a
    # second box on it (duplicate), a match of annotation 1, a small box half on it (fragment),
    # a large one a fifth on it (oversized), one on nothing (isolated)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.52])
    iou = np.array([[0.9, 0.0], [0.6, 0.0], [0.0, 0.7], [0.0, 0.3], [0.0, 0.2], [0.05, 0.0]])
    areas = np.array([100.0, 100.0, 100.0, 30.0, 500.0, 100.0])
    counts = tool.classify(scores, iou, areas, np.array([100.0, 100.0]))
    assert dict(counts) == {"tp": 2, "duplicate": 1, "fragment": 1, "oversized": 1, "isolated": 1}
    # the less confident of two boxes on one annotation is the duplicate, whatever its IoU
    counts = tool.classify(np.array([0.6, 0.9]), np.array([[0.95], [0.55]]), areas[:2], areas[:1])
    assert (counts["tp"], counts["duplicate"]) == (1, 1)
    # no annotation: everything isolated
    counts = tool.classify(np.array([0.9]), np.zeros((1, 0)), areas[:1], np.zeros(0))
    assert (counts["isolated"], sum(counts.values())) == (1, 1)
    # a method's runs pooled: counts summed, then precision and fragments per true positive
    from collections import Counter

    runs = [Counter(tp=3, fragment=3, isolated=1), Counter(tp=1, fragment=2, duplicate=1)]
    row = tool.table_row("ece (2 runs)", sum(runs, Counter()))
    assert row == "| ece (2 runs) | 4 | 1 | 5 | 0 | 1 | 0.364 | 1.25 |"


def test_run_folder_names_round_trip():
    from sparse_ext.benchmark.context import parse_run_folder, run_folder_name

    assert run_folder_name("ece_rpn_ece", 10, 3) == "ece_rpn_ece_f010_s3"
    assert parse_run_folder("work/det/hela/ece_rpn_ece_f010_s3/") == ("ece_rpn_ece", 10, 3)
    assert parse_run_folder(run_folder_name("ce", 0, 12)) == ("ce", 0, 12)
    with pytest.raises(ValueError, match="not a benchmark run folder"):
        parse_run_folder("ce_f10_s3")


def test_det_score_floor_reads_the_recorded_run_and_keeps_only_unbound_runs_without_weights(
    tmp_path, capsys
):
    tool = _load_tool("det_score_floor")
    path = tmp_path / "det.csv"
    fields = ["loss", "fraction", "seed", "status", "val_threshold", "f1_valthr"]
    rows = [
        ["ce", "0", "1", "ok", "0.05", "0.70"],
        ["ce", "10", "1", "failed", "", ""],
        ["ce", "10", "1", "ok", "0.2", "0.75"],
    ]
    path.write_text("\n".join(",".join(r) for r in [fields, *rows]) + "\n")
    assert tool.recorded(str(path), "work/ce_f010_s1/") == (0.2, 0.75)
    assert tool.recorded(str(path), "ce_f000_s1") == (0.05, 0.70)
    with pytest.raises(ValueError, match="no finished row of ce_f030_s1"):
        tool.recorded(str(path), "ce_f030_s1")
    with pytest.raises(ValueError, match="not a benchmark run folder"):
        tool.recorded(str(path), "somewhere")
    # folders without weights: 10 % (threshold 0.2, above the floor) keeps its recorded F1, one
    # annotation per patch (at the floor) is left out of the means
    tool.main(["--data", "x", "--csv", str(path), str(tmp_path / "ce_f010_s1")])
    tool.main(["--data", "x", "--csv", str(path), str(tmp_path / "ce_f000_s1")])
    out = capsys.readouterr().out
    assert "| ce_f010_s1 | 0.2 | 0.750 | recorded | recorded |" in out
    assert "| ce_f010 | 1 | 0.750 ± 0.000 | 0.750 ± 0.000 | +0.000 |" in out
    assert "| ce_f000_s1 | 0.05 | 0.700 | no weights | left out |" in out
    assert "| ce_f000 |" not in out
    with pytest.raises(SystemExit):
        tool.main(["--data", "x", "--csv", str(path), "--floor", "0.05", "ce_f010_s1"])
    assert "must be in (0, 0.05)" in capsys.readouterr().err


def test_det_false_positives_missed_counts_annotations_reached_at_iou_half():
    from collections import Counter

    import numpy as np

    tool = _load_tool("det_false_positives")
    # three boxes x four annotations: annotation 0 reached twice, 1 exactly at 0.5, 2 at 0.49, 3
    # by none; the count is one-to-many (an upper bound of the recall)
    iou = np.array([[0.9, 0.0, 0.49, 0.0], [0.7, 0.5, 0.0, 0.1], [0.0, 0.0, 0.2, 0.0]])
    assert tool.reached(iou) == 2
    assert tool.reached(np.zeros((0, 4))) == 0 and tool.reached(np.zeros((3, 0))) == 0
    counts = Counter(annotations=8, proposal=6, box=7, scored=5, detection=4, above=1)
    assert tool.stage_row("ce", counts) == "| ce | 8 | 0.750 | 0.875 | 0.625 | 0.500 | 0.125 |"
