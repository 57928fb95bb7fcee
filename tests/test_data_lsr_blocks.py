"""lsr-blocks: block files, quantised labels and the eta/rho table against hand-computed values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from skimage import io as skio

from sparse_ext.data import make_lsr_blocks, quantise_fraction, read_block_labels


def _block(k):
    """3 x 3 class block with its first ``k`` pixels (row-major) nucleus."""
    b = np.zeros(9, np.uint8)
    b[:k] = 1
    return b.reshape(3, 3)


@pytest.fixture
def tiny(tmp_path):
    """Images A, B (3 x 6: two blocks each) and C (3 x 4: one block, one column unused), plus D
    (2 x 2, smaller than a block). Nucleus pixel counts per 3 x 3 block:
    A: 3, 6   B: 4, 9   C: 1."""
    masks = {
        "A": np.hstack([_block(3), _block(6)]),
        "B": np.hstack([_block(4), _block(9)]),
        "C": np.hstack([_block(1), np.ones((3, 1), np.uint8)]),
        "D": np.ones((2, 2), np.uint8),
    }
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for stem, m in masks.items():
        img = (np.arange(m.size).reshape(m.shape) * 7 % 251).astype(np.uint8)
        skio.imsave(tmp_path / "img" / f"{stem}.png", img, check_contrast=False)
        skio.imsave(tmp_path / "mask" / f"{stem}.png", m, check_contrast=False)
    return tmp_path


def _labels(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_quantise_fraction_bins():
    np.testing.assert_array_equal(
        quantise_fraction([0, 1, 3, 4, 5, 6, 9], 9, 3), [0, 0, 1, 1, 1, 2, 2]
    )
    np.testing.assert_array_equal(quantise_fraction([0, 29, 30, 99, 100], 100, 10), [0, 2, 3, 9, 9])


def test_mask_estimation_table_matches_hand_computation(tiny):
    out = tiny / "out"
    s = make_lsr_blocks(tiny / "img", tiny / "mask", out, block=3, bins=3, verbose=False)
    assert s.kept == 5 and s.images == 3 and s.extra["images smaller than a block"] == 1
    rows = _labels(out / "block_labels.csv")
    assert rows[0] == ["block", "z"]
    assert dict(rows[1:]) == {
        "A_r0_c0.png": "1",  # 3/9 -> floor(1.0) = 1
        "A_r0_c1.png": "2",  # 6/9 -> 2
        "B_r0_c0.png": "1",  # 4/9 -> 1
        "B_r0_c1.png": "2",  # 9/9 -> 3, clipped to bins - 1 = 2
        "C_r0_c0.png": "0",  # 1/9 -> 0
    }
    img_a = skio.imread(tiny / "img" / "A.png")
    np.testing.assert_array_equal(skio.imread(out / "blocks" / "A_r0_c1.png"), img_a[:, 3:6])
    np.testing.assert_array_equal(skio.imread(out / "masks" / "A_r0_c1.png"), _block(6))
    t = json.loads((out / "table.json").read_text())
    assert t["classes"] == ["background", "nucleus"] and t["labels"] == [0, 1, 2]
    nuc_eta = [1 / 9, (3 / 9 + 4 / 9) / 2, (6 / 9 + 1) / 2]
    # z = 0 has one block: the within-bin std 1 / (3 sqrt(12)); then the population std of
    # {3/9, 4/9} and {6/9, 9/9}
    nuc_rho = [1 / (3 * np.sqrt(12)), 1 / 18, 1 / 6]
    np.testing.assert_allclose(t["eta"][1], nuc_eta, atol=1e-12)
    np.testing.assert_allclose(t["rho"][1], nuc_rho, atol=1e-12)
    np.testing.assert_allclose(t["eta"][0], 1 - np.array(nuc_eta), atol=1e-12)
    np.testing.assert_allclose(t["rho"][0], nuc_rho, atol=1e-12)
    assert t["counts"] == [[1, 2, 2], [1, 2, 2]]
    assert any("one block only" in n and "'nucleus', 0)" in n for n in t["notes"])


def test_per_class_labels(tiny):
    out = tiny / "out"
    make_lsr_blocks(
        tiny / "img", tiny / "mask", out, block=3, bins=3, per_class=True, verbose=False
    )
    rows = _labels(out / "block_labels.csv")
    assert rows[0] == ["block", "z_background", "z_nucleus"]
    # background counts 6, 3, 5, 0, 8 -> z 2, 1, 1, 0, 2
    assert [r[1] for r in rows[1:]] == ["2", "1", "1", "0", "2"]
    t = json.loads((out / "table.json").read_text())
    np.testing.assert_allclose(
        t["eta"][0], [0.0, (3 / 9 + 5 / 9) / 2, (6 / 9 + 8 / 9) / 2], atol=1e-12
    )
    # z 0 holds one block (background 0/9): the within-bin std 1 / (3 sqrt(12))
    np.testing.assert_allclose(t["rho"][0], [1 / (3 * np.sqrt(12)), 1 / 9, 1 / 9], atol=1e-12)
    np.testing.assert_allclose(t["eta"][1], [1 / 9, 7 / 18, 5 / 6], atol=1e-12)


def test_fallback_for_labels_without_blocks(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    skio.imsave(tmp_path / "img" / "a.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    m = np.zeros((8, 8), np.uint8)
    m[0, 0] = 1  # block r0_c0: 1/16 -> z 0; the other three blocks: 0 -> z 0
    skio.imsave(tmp_path / "mask" / "a.png", m, check_contrast=False)
    make_lsr_blocks(
        tmp_path / "img", tmp_path / "mask", tmp_path / "o", block=4, bins=4, verbose=False
    )
    t = json.loads((tmp_path / "o" / "table.json").read_text())
    assert t["eta"][1][0] == pytest.approx(1 / 64)  # mean of 1/16, 0, 0, 0
    assert t["rho"][1][0] == pytest.approx(np.std([1 / 16, 0, 0, 0]))
    np.testing.assert_allclose(t["eta"][1][1:], [0.375, 0.625, 0.875])  # bin centres
    np.testing.assert_allclose(t["eta"][0][1:], [0.625, 0.375, 0.125])
    np.testing.assert_allclose(t["rho"][1][1:], 1 / (4 * math.sqrt(12)))
    assert any("no block for (class, z)" in n for n in t["notes"])


def test_table_from_visual_estimates_and_low_res_maps(tiny):
    table = tiny / "visual.csv"
    table.write_text(
        "class,z,eta,rho\n"
        "nucleus,0,0.1,0.05\nbackground,0,0.9,0.05\n"
        "nucleus,1,0.4,0.1\nbackground,1,0.6,0.1\n"
        "nucleus,2,0.8,0.1\n1,3,0.95,0.02\n"
    )
    (tiny / "low").mkdir()
    for stem, grid in {"A": [[2, 3]], "B": [[0, 2]], "C": [[1]], "D": [[0]]}.items():
        skio.imsave(tiny / "low" / f"{stem}.png", np.array(grid, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match=r"lacks .*\('background', 2\)"):
        make_lsr_blocks(
            tiny / "img",
            None,
            tiny / "o",
            3,
            4,
            low_res_dir=tiny / "low",
            table_csv=table,
            verbose=False,
        )
    with open(table, "a") as f:
        f.write("background,2,0.2,0.1\nbackground,3,0.05,0.02\n")
    make_lsr_blocks(
        tiny / "img",
        None,
        tiny / "o",
        3,
        4,
        low_res_dir=tiny / "low",
        table_csv=table,
        verbose=False,
    )
    assert [r[1] for r in _labels(tiny / "o" / "block_labels.csv")[1:]] == ["2", "3", "0", "2", "1"]
    t = json.loads((tiny / "o" / "table.json").read_text())
    assert t["eta"] == [[0.9, 0.6, 0.2, 0.05], [0.1, 0.4, 0.8, 0.95]]
    assert t["rho"] == [[0.05, 0.1, 0.1, 0.02], [0.05, 0.1, 0.1, 0.02]]
    assert not (tiny / "o" / "masks").exists()


def test_bad_inputs(tiny):
    out = tiny / "o"
    with pytest.raises(ValueError, match="masks_dir .* or table_csv"):
        make_lsr_blocks(tiny / "img", None, out, verbose=False)
    with pytest.raises(FileNotFoundError):
        make_lsr_blocks(tiny / "nope", tiny / "mask", out, verbose=False)
    skio.imsave(tiny / "mask" / "A.png", np.full((3, 6), 7, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="outside 0..1"):
        make_lsr_blocks(tiny / "img", tiny / "mask", out, 3, 3, verbose=False)
    skio.imsave(tiny / "mask" / "A.png", np.zeros((4, 6), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="size mismatch"):
        make_lsr_blocks(tiny / "img", tiny / "mask", out, 3, 3, verbose=False)
    (tiny / "mask" / "A.png").unlink()
    with pytest.raises(ValueError, match="images without a mask.*A"):
        make_lsr_blocks(tiny / "img", tiny / "mask", out, 3, 3, verbose=False)
    with pytest.raises(ValueError, match="at least 100x100"):
        make_lsr_blocks(
            tiny / "img",
            None,
            out,
            100,
            3,
            low_res_dir=tiny / "img",
            table_csv=tiny / "x.csv",
            verbose=False,
        )
    bad = tiny / "bad.csv"
    bad.write_text("class,z,eta\nnucleus,0,0.5\n")
    from sparse_ext.data import read_table_csv

    with pytest.raises(KeyError, match="'rho'"):
        read_table_csv(bad, ["background", "nucleus"], 3)
    bad.write_text("class,z,eta,rho\nnucleus,0,1.5,0.1\n")
    with pytest.raises(ValueError, match="eta"):
        read_table_csv(bad, ["background", "nucleus"], 3)
    bad.write_text("class,z,eta,rho\nstroma,0,0.5,0.1\n")
    with pytest.raises(ValueError, match="unknown class 'stroma'"):
        read_table_csv(bad, ["background", "nucleus"], 3)


def test_read_block_labels_both_layouts_and_bad_files(tmp_path):
    path = tmp_path / "block_labels.csv"
    path.write_text("block,z\na.png,2\nb,0\n\n")
    assert read_block_labels(path, ["background", "nucleus"], 3) == {"a": (2, 2), "b": (0, 0)}
    path.write_text("block,z_nucleus,z_background\na.png,2,0\n")  # columns in any order
    assert read_block_labels(path, ["background", "nucleus"], 3) == {"a": (0, 2)}
    assert read_block_labels(path, ["background", "nucleus"], 3, suffix="") == {"a.png": (0, 2)}
    bad = {
        "block,z\na.png,x\n": (ValueError, "must be integers"),
        "block,z\na.png,1\na,2\n": (ValueError, "'a' listed twice"),
        "block,z\na.png,1,2\n": (ValueError, "3 fields, header has 2"),
        "block,z\n": (ValueError, "no blocks listed"),
        "block,z\na.png,3\n": (KeyError, r"label\(s\) \[3\] missing from the table t.json"),
    }
    for text, (error, message) in bad.items():
        path.write_text(text)
        with pytest.raises(error, match=message):
            read_block_labels(path, ["background", "nucleus"], 3, table="t.json")
    with pytest.raises(FileNotFoundError, match="block label file not found"):
        read_block_labels(tmp_path / "none.csv", ["background", "nucleus"], 3)
