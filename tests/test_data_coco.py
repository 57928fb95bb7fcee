"""masks2coco / points2coco on generated images: round trips, clipping, bad input, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from skimage import io as skio

from sparse_ext.data import encode_instances, masks_to_coco, points_to_coco
from sparse_ext.data import io as data_io


def _tree_hash(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _random_instances(rng, h, w, n, ids):
    """Instance map with ``n`` overlapping rectangles/discs labelled with arbitrary ``ids``."""
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(2, max(3, min(h, w) / 4))
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = ids[k]
    return lab


def _write_pairs(root: Path, rng, sizes, mask_ext=".tif"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i, (h, w) in enumerate(sizes):
        stem = f"img{i}"
        skio.imsave(root / "images" / f"{stem}.png", rng.integers(0, 255, (h, w), dtype=np.uint8))
        ids = rng.choice(np.arange(1, 60000), size=6, replace=False)  # not consecutive
        lab = _random_instances(rng, h, w, 6, ids)
        if mask_ext == ".tif":
            tifffile.imwrite(root / "masks" / f"{stem}.tif", lab)
        else:
            skio.imsave(root / "masks" / f"{stem}.png", lab.astype(np.uint16), check_contrast=False)
        truth[stem] = lab
    return truth


def test_encode_instances_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(1, 30, 2)
        lab = rng.choice([0, 0, 0, 2, 9, 70000], size=(h, w)).astype(np.int64)
        ids, rles = encode_instances(lab)
        np.testing.assert_array_equal(ids, np.unique(lab[lab > 0]))
        for i, r in zip(ids, rles):
            ref = mask_utils.encode(np.asfortranarray((lab == i).astype(np.uint8)))
            assert r["counts"] == ref["counts"].decode()


@pytest.mark.parametrize("mask_ext", [".tif", ".png"])
def test_masks_to_coco_round_trip(tmp_path, mask_ext):
    rng = np.random.default_rng(1)
    truth = _write_pairs(tmp_path, rng, [(40, 55), (23, 31), (64, 64)], mask_ext)
    before = _tree_hash(tmp_path)
    out = tmp_path / "out" / "coco.json"
    s = masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    after = _tree_hash(tmp_path)
    assert {k: after[k] for k in before} == before  # inputs unmodified
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
    assert s.images == 3 and s.kept == len(coco["annotations"])
    by_id = {im["id"]: im for im in coco["images"]}
    rebuilt = {
        Path(im["file_name"]).stem: np.zeros((im["height"], im["width"]), np.int64)
        for im in coco["images"]
    }
    for a in coco["annotations"]:
        im = by_id[a["image_id"]]
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        assert m.sum() == a["area"]
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        target = rebuilt[Path(im["file_name"]).stem]
        assert not target[m].any()  # instances do not overlap
        target[m] = a["instance_id"]
    for stem, lab in truth.items():
        np.testing.assert_array_equal(rebuilt[stem], lab)
    assert after.keys() - before.keys() == {"out/coco.json"}  # no temp files left


def test_masks_to_coco_class_maps_and_class_folders(tmp_path):
    (tmp_path / "images").mkdir()
    skio.imsave(tmp_path / "images" / "a.png", np.zeros((20, 20), np.uint8), check_contrast=False)
    inst = np.zeros((20, 20), np.uint16)
    inst[2:6, 2:6] = 5
    inst[10:15, 10:18] = 9
    cls = np.zeros((20, 20), np.uint8)
    cls[inst == 5] = 2
    cls[inst == 9] = 1
    cls[10, 10] = 2  # minority pixel: majority vote keeps class 1
    (tmp_path / "inst").mkdir()
    (tmp_path / "cls").mkdir()
    tifffile.imwrite(tmp_path / "inst" / "a.tif", inst)
    skio.imsave(tmp_path / "cls" / "a.png", cls, check_contrast=False)
    out = tmp_path / "c.json"
    masks_to_coco(
        tmp_path / "images",
        tmp_path / "inst",
        out,
        class_maps_dir=tmp_path / "cls",
        category_names=["tumour", "lymphocyte"],
        verbose=False,
    )
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "tumour"}, {"id": 2, "name": "lymphocyte"}]
    assert {a["instance_id"]: a["category_id"] for a in coco["annotations"]} == {5: 2, 9: 1}

    # one sub-folder per class: one category per class map
    for name, box in (("mitosis", (1, 4)), ("tumour", (8, 12))):
        (tmp_path / "per_class" / name).mkdir(parents=True)
        m = np.zeros((20, 20), np.uint8)
        m[box[0] : box[1], box[0] : box[1]] = 1
        tifffile.imwrite(tmp_path / "per_class" / name / "a.tif", m)
    masks_to_coco(tmp_path / "images", tmp_path / "per_class", out, verbose=False)
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["mitosis", "tumour"]
    assert sorted((a["category_id"], a["bbox"][0]) for a in coco["annotations"]) == [
        (1, 1.0),
        (2, 8.0),
    ]


def test_masks_to_coco_bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    _write_pairs(tmp_path, rng, [(30, 30), (20, 25)])
    out = tmp_path / "o.json"
    with pytest.raises(FileNotFoundError, match="mask folder"):
        masks_to_coco(tmp_path / "images", tmp_path / "nope", out, verbose=False)
    # size mismatch
    tifffile.imwrite(tmp_path / "masks" / "img1.tif", np.ones((21, 25), np.uint16))
    with pytest.raises(ValueError, match="size mismatch.*img1"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    # empty mask
    tifffile.imwrite(tmp_path / "masks" / "img1.tif", np.zeros((20, 25), np.uint16))
    with pytest.raises(ValueError, match="img1.*empty"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    s = masks_to_coco(tmp_path / "images", tmp_path / "masks", out, allow_empty=True, verbose=False)
    assert s.images == 2
    # image without mask / mask without image
    (tmp_path / "masks" / "img1.tif").unlink()
    with pytest.raises(ValueError, match="images without a mask.*img1"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    tifffile.imwrite(tmp_path / "masks" / "stray.tif", np.ones((5, 5), np.uint16))
    with pytest.raises(ValueError, match="without a matching image.*stray"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    (tmp_path / "masks" / "stray.tif").unlink()
    # non-integer / negative labels
    tifffile.imwrite(tmp_path / "masks" / "img1.tif", np.full((20, 25), 0.5, np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)
    tifffile.imwrite(tmp_path / "masks" / "img1.tif", np.full((20, 25), -1, np.int32))
    with pytest.raises(ValueError, match="negative"):
        masks_to_coco(tmp_path / "images", tmp_path / "masks", out, verbose=False)


def test_points_to_coco_boxes_are_centred_and_clipped(tmp_path):
    (tmp_path / "im").mkdir()
    skio.imsave(tmp_path / "im" / "a.png", np.zeros((100, 80), np.uint8), check_contrast=False)
    skio.imsave(tmp_path / "im" / "b.png", np.zeros((50, 50), np.uint8), check_contrast=False)
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("image,x,y,class\na.png,40,50,mitosis\na,5,98,mitosis\nb,50,0,other\n")
    before = csv_path.read_bytes()
    out = tmp_path / "p.json"
    s = points_to_coco(tmp_path / "im", csv_path, out, box_size=32, verbose=False)
    assert csv_path.read_bytes() == before
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["mitosis", "other"]
    boxes = [a["bbox"] for a in coco["annotations"]]
    assert boxes[0] == [24.0, 34.0, 32.0, 32.0]  # interior: centred
    assert boxes[1] == [0.0, 82.0, 21.0, 18.0]  # clipped left and bottom (W=80, H=100)
    assert boxes[2] == [34.0, 0.0, 16.0, 16.0]  # corner of the 50x50 image
    assert s.extra["boxes clipped at the border"] == 2
    assert [a["category_id"] for a in coco["annotations"]] == [1, 1, 2]
    # JSON input, integer classes, no class column
    jpath = tmp_path / "points.json"
    jpath.write_text(json.dumps([{"image": "b.png", "x": 10, "y": 10}]))
    points_to_coco(tmp_path / "im", jpath, out, box_size=8, verbose=False)
    coco = json.loads(out.read_text())
    assert coco["annotations"][0]["bbox"] == [6.0, 6.0, 8.0, 8.0]
    assert coco["categories"] == [{"id": 1, "name": "object"}]


def test_points_to_coco_bad_inputs(tmp_path):
    (tmp_path / "im").mkdir()
    skio.imsave(tmp_path / "im" / "a.png", np.zeros((10, 10), np.uint8), check_contrast=False)
    p = tmp_path / "p.csv"
    out = tmp_path / "o.json"
    p.write_text("image,x\na,1\n")
    with pytest.raises(KeyError, match="missing column 'y'"):
        points_to_coco(tmp_path / "im", p, out, verbose=False)
    p.write_text("image,x,y\na,11,3\n")
    with pytest.raises(ValueError, match="point 0 .*outside image 'a'"):
        points_to_coco(tmp_path / "im", p, out, verbose=False)
    p.write_text("image,x,y\nzz,1,3\n")
    with pytest.raises(ValueError, match="unknown image 'zz'"):
        points_to_coco(tmp_path / "im", p, out, verbose=False)
    p.write_text("image,x,y\na,one,3\n")
    with pytest.raises(ValueError, match="numbers"):
        points_to_coco(tmp_path / "im", p, out, verbose=False)
    j = tmp_path / "p.json"
    j.write_text('[{"image": "a", "x": 1}]')
    with pytest.raises(KeyError, match="point 0 has no key 'y'"):
        points_to_coco(tmp_path / "im", j, out, verbose=False)
    j.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        points_to_coco(tmp_path / "im", j, out, verbose=False)
    with pytest.raises(FileNotFoundError):
        points_to_coco(tmp_path / "im", tmp_path / "missing.csv", out, verbose=False)
    assert not out.exists()


def test_outputs_are_atomic(tmp_path):
    """A write failing halfway (the file-size limit: a real EFBIG, no mock) leaves the previous
    output intact and no temporary file behind."""
    import resource

    target = tmp_path / "x.json"
    data_io.write_json(target, {"old": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8, hard))
    try:
        with pytest.raises(OSError):
            data_io.write_json(target, {"new": list(range(100))})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
