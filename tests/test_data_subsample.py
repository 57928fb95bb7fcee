"""subsample: nested, exact fractions (hypothesis), per-image mode, sparse label maps, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import io as skio

from sparse_ext.data import nested_fractions, sparse_label_map, subsample_coco
from sparse_ext.data.subsample import exact_count

FRACTIONS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _coco(image_ids, width=100, height=100):
    ids = sorted(set(int(i) for i in image_ids)) or [1]
    return {
        "images": [
            {"id": i, "file_name": f"im{i}.png", "width": width, "height": height} for i in ids
        ],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {"id": k + 1, "image_id": int(i), "category_id": 1, "bbox": [1, 1, 5, 5]}
            for k, i in enumerate(image_ids)
        ],
    }


def test_exact_count_is_python_round():
    for n in range(0, 60):
        for f in range(1, 101):
            assert exact_count(n, f) == round(n * f / 100)


@settings(max_examples=60, deadline=None)
@given(
    image_ids=st.lists(st.integers(1, 6), min_size=0, max_size=120),
    fractions=st.sets(st.integers(1, 100), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
    per_image=st.booleans(),
)
def test_nested_and_exact(image_ids, fractions, seed, per_image):
    image_ids = np.array(image_ids, np.int64)
    level = nested_fractions(image_ids, sorted(fractions), seed, per_image=per_image)
    fs = sorted(fractions)
    kept = [set(np.flatnonzero(level <= f)) for f in fs]
    for small, large in zip(kept, kept[1:]):
        assert small <= large  # nested
    for f, k in zip(fs, kept):
        if per_image:
            for img in np.unique(image_ids):
                sel = np.flatnonzero(image_ids == img)
                assert len(k & set(sel)) == round(len(sel) * f / 100)
        else:
            assert len(k) == round(len(image_ids) * f / 100)


def test_seeds_give_different_reproducible_subsets():
    ids = np.repeat(np.arange(10), 20)
    a = nested_fractions(ids, FRACTIONS, 0)
    np.testing.assert_array_equal(a, nested_fractions(ids, FRACTIONS, 0))
    assert not np.array_equal(a, nested_fractions(ids, FRACTIONS, 1))


def test_subsample_coco_files_1e5_annotations(tmp_path):
    rng = np.random.default_rng(0)
    n = 100_000
    coco = _coco(rng.integers(1, 500, n), width=50, height=50)
    coco["info"] = {"description": "synthetic"}
    src = tmp_path / "train.json"
    src.write_text(json.dumps(coco))
    before = src.read_bytes()
    s = subsample_coco(src, tmp_path / "out", (10, 50, 90), seed=3, verbose=False)
    assert src.read_bytes() == before
    variants = {}
    for f in (10, 50, 90):
        v = json.loads((tmp_path / "out" / f"train_frac{f:03d}.json").read_text())
        assert v["info"]["sparse_fraction"] == f / 100
        assert v["info"]["description"] == "synthetic"
        assert v["images"] == coco["images"] and v["categories"] == coco["categories"]
        variants[f] = {a["id"] for a in v["annotations"]}
        assert len(variants[f]) == round(n * f / 100)
    assert variants[10] <= variants[50] <= variants[90]
    assert s.kept == 10_000 and len(s.outputs) == 3


def test_sparse_label_maps_match_kept_instances(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "inst").mkdir()
    anns, images = [], []
    inst_maps = {}
    for i in range(3):
        inst = np.zeros((30, 40), np.uint16)
        ids = rng.choice(np.arange(1, 1000), 8, replace=False)
        for k, v in enumerate(ids):
            inst[3 * k : 3 * k + 2, 2 : 10 + k] = v
        tifffile.imwrite(tmp_path / "inst" / f"s{i}.tif", inst)
        inst_maps[i + 1] = inst
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": 40, "height": 30})
        for v in ids:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [0, 0, 1, 1],
                    "instance_id": int(v),
                }
            )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "nucleus"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    subsample_coco(
        tmp_path / "c.json",
        tmp_path / "ann",
        (25, 50, 100),
        seed=1,
        instances_dir=tmp_path / "inst",
        labels_dir=str(tmp_path / "labels" / "frac{frac}" / "train"),
        verbose=False,
    )
    previous = None
    for f in (25, 50, 100):
        v = json.loads((tmp_path / "ann" / f"c_frac{f:03d}.json").read_text())
        union = None
        for im in images:
            lab = skio.imread(
                tmp_path / "labels" / f"frac{f:03d}" / "train" / f"{Path(im['file_name']).stem}.png"
            )
            kept = [a["instance_id"] for a in v["annotations"] if a["image_id"] == im["id"]]
            np.testing.assert_array_equal(lab, np.isin(inst_maps[im["id"]], kept).astype(np.uint8))
            union = lab if union is None else np.concatenate([union, lab])
        if previous is not None:
            assert (union >= previous).all()  # nested label maps
        previous = union
    full = inst_maps[1] > 0
    lab100 = skio.imread(tmp_path / "labels" / "frac100" / "train" / "s0.png")
    np.testing.assert_array_equal(lab100, full.astype(np.uint8))


def test_sparse_label_map_classes():
    inst = np.array([[0, 3, 3], [7, 7, 0], [9, 0, 0]])
    out = sparse_label_map(inst, np.array([7, 9, 42]), np.array([2, 1, 5]))
    np.testing.assert_array_equal(out, [[0, 0, 0], [2, 2, 0], [1, 0, 0]])


def test_bad_inputs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        subsample_coco(tmp_path / "missing.json", out, verbose=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        subsample_coco(bad, out, verbose=False)
    coco = _coco([1, 1, 2])
    del coco["annotations"][1]["bbox"]
    bad.write_text(json.dumps(coco))
    with pytest.raises(KeyError, match=r"annotations\[1\] \(id=2\) has no key 'bbox'"):
        subsample_coco(bad, out, verbose=False)
    coco = _coco([1, 1, 2])
    del coco["categories"]
    bad.write_text(json.dumps(coco))
    with pytest.raises(KeyError, match="'categories'"):
        subsample_coco(bad, out, verbose=False)
    coco = _coco([1, 2])
    coco["annotations"][1]["bbox"] = [98, 1, 5, 5]
    bad.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id=2\) bbox .* outside its image 2"):
        subsample_coco(bad, out, verbose=False)
    coco = _coco([1, 2])
    coco["annotations"][0]["image_id"] = 77
    bad.write_text(json.dumps(coco))
    with pytest.raises(KeyError, match="image_id 77"):
        subsample_coco(bad, out, verbose=False)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_coco([1, 2])))
    for fractions in ((0,), (101,), (12.5,), ()):
        with pytest.raises(ValueError, match="fractions|no fractions"):
            subsample_coco(good, out, fractions, verbose=False)
    (tmp_path / "inst").mkdir()
    with pytest.raises(KeyError, match="instance_id"):
        subsample_coco(
            good, out, (50,), instances_dir=tmp_path / "inst", labels_dir=str(out), verbose=False
        )
    with pytest.raises(ValueError, match="both"):
        subsample_coco(good, out, (50,), instances_dir=tmp_path / "inst", verbose=False)
    assert not out.exists() or not any(out.glob("bad_*"))
