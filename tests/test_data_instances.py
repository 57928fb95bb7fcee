"""semantic_to_instances: distance-transform watershed with maxima one diameter apart."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import io as skio

from sparse_ext.data import semantic_dir_to_instances, semantic_to_instances


def _discs(centres, radius, shape=(60, 90)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return [(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2 for cy, cx in centres]


def test_watershed_separates_two_touching_discs():
    a, b = _discs([(30, 30), (30, 50)], 10)  # centres 20 px apart, discs touch
    mask = (a | b).astype(np.uint8)
    assert ndi.label(mask)[1] == 1  # one connected blob
    inst = semantic_to_instances(mask, diameter=16)
    assert inst.dtype == np.int32 and inst.max() == 2
    assert set(np.unique(inst[mask == 0])) == {0}
    for disc in (a, b):
        ids, counts = np.unique(inst[disc], return_counts=True)
        assert counts.max() / disc.sum() > 0.97  # each disc is (almost) one instance
    assert np.unique(inst[a]).tolist() != np.unique(inst[b]).tolist()


def test_diameter_is_the_minimum_separation_of_centres():
    a, b = _discs([(30, 30), (30, 50)], 10)
    mask = (a | b).astype(np.uint8)
    assert semantic_to_instances(mask, diameter=20).max() == 2  # exactly one diameter apart
    assert semantic_to_instances(mask, diameter=21).max() == 1  # closer than a diameter: merged


def test_semantic_classes_get_unique_ids_and_empty_mask():
    a, b, c = _discs([(15, 15), (15, 60), (45, 40)], 8)
    mask = np.zeros(a.shape, np.uint8)
    mask[a | b] = 1
    mask[c] = 2
    inst = semantic_to_instances(mask, diameter=10)
    assert inst.max() == 3
    assert len(np.unique(inst[c])) == 1 and np.unique(inst[c])[0] not in np.unique(inst[a | b])
    assert semantic_to_instances(np.zeros((5, 5), np.uint8), 3).max() == 0


def test_bad_inputs_and_directory_version(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        semantic_to_instances(np.zeros((2, 3, 4)), 5)
    with pytest.raises(ValueError, match="diameter"):
        semantic_to_instances(np.zeros((4, 4)), 0)
    a, b = _discs([(30, 30), (30, 50)], 10)
    (tmp_path / "m").mkdir()
    skio.imsave(tmp_path / "m" / "x.png", ((a | b) * 255).astype(np.uint8), check_contrast=False)
    before = (tmp_path / "m" / "x.png").read_bytes()
    s = semantic_dir_to_instances(tmp_path / "m", tmp_path / "out", 16, verbose=False)
    assert s.kept == 2 and (tmp_path / "m" / "x.png").read_bytes() == before
    assert tifffile.imread(tmp_path / "out" / "x.tif").max() == 2
    with pytest.raises(ValueError, match="is the input folder"):
        semantic_dir_to_instances(tmp_path / "m", tmp_path / "m", 16, verbose=False)
    with pytest.raises(FileNotFoundError):
        semantic_dir_to_instances(tmp_path / "nope", tmp_path / "out", 16, verbose=False)
