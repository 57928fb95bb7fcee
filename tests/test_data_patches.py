"""one-per-patch (Zhao, Pang et al., MICCAI 2021, Sec. 3.1): at most one annotation per patch,
exactly one where possible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_ext.data import grid_origins, one_per_patch
from sparse_ext.data.patches import patch_membership, select_one_per_patch


def _coco(boxes_per_image, size=(1600, 1600)):
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.png", "width": size[0], "height": size[1]})
        for b in boxes:
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": list(map(float, b))}
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "mitosis"}]}


def test_grid_origins():
    np.testing.assert_array_equal(grid_origins(1600, 500, 100), [0, 400, 800, 1100])
    np.testing.assert_array_equal(grid_origins(500, 500, 100), [0])
    np.testing.assert_array_equal(grid_origins(300, 500, 100), [0])
    np.testing.assert_array_equal(grid_origins(901, 500, 100), [0, 400, 401])
    with pytest.raises(ValueError, match="overlap"):
        grid_origins(1000, 500, 500)


def test_exactly_one_per_patch_when_annotations_avoid_the_overlaps(tmp_path):
    """Centres only in patch interiors (not in any overlap band): every non-empty patch keeps
    exactly one annotation, and which one depends on the seed."""
    rng = np.random.default_rng(0)
    interiors = [(20, 380), (520, 780), (920, 1080), (1320, 1580)]  # in one patch only (per axis)
    boxes = []
    for _ in range(120):
        (x0, x1), (y0, y1) = interiors[rng.integers(4)], interiors[rng.integers(4)]
        cx, cy = rng.uniform(x0 + 16, x1 - 16), rng.uniform(y0 + 16, y1 - 16)
        boxes.append([cx - 16, cy - 16, 32, 32])
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_coco([boxes])))
    kept_sets = []
    for seed in (0, 1):
        s = one_per_patch(src, tmp_path / f"out{seed}.json", 500, 100, seed, verbose=False)
        out = json.loads((tmp_path / f"out{seed}.json").read_text())
        kept = np.array([a["bbox"] for a in out["annotations"]])
        centres = kept[:, :2] + 16
        ann, cell, n_patch = patch_membership(centres, 1600, 1600, 500, 100)
        counts = np.bincount(cell, minlength=n_patch)
        assert counts.tolist() == [1] * 16  # all 16 patches had annotations
        assert s.kept == 16 and s.dropped == 104 and s.extra["patches left empty"] == 0
        assert out["info"]["sparse_protocol"]["seed"] == seed
        kept_sets.append({a["id"] for a in out["annotations"]})
    assert kept_sets[0] != kept_sets[1]


def test_never_two_per_patch_and_maximal_with_overlaps():
    rng = np.random.default_rng(3)
    for _ in range(100):
        w, h = rng.integers(200, 1800, 2)
        n = int(rng.integers(1, 80))
        centres = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
        ann, cell, n_patch = patch_membership(centres, w, h, 500, 100)
        keep = select_one_per_patch(ann, cell, n, n_patch, rng.permutation(n))
        held = np.bincount(cell[keep[ann]], minlength=n_patch)
        assert held.max() <= 1
        served = held == 1
        # an annotation was deleted only because one of its patches already holds another
        for a in np.flatnonzero(~keep):
            assert served[cell[ann == a]].any()


def test_bad_inputs(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_coco([[[10, 10, 5, 5]]])))
    with pytest.raises(ValueError, match="overlap"):
        one_per_patch(src, tmp_path / "o.json", 100, 100, verbose=False)
    with pytest.raises(ValueError, match="would replace the input"):
        one_per_patch(src, src, verbose=False)
    coco = _coco([[[1590, 10, 20, 5]]])
    src.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="outside its image"):
        one_per_patch(src, tmp_path / "o.json", verbose=False)
    assert not (tmp_path / "o.json").exists()
