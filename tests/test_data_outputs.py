"""Every converter and CLI subcommand: outputs never replace or land among the inputs (refused with
one error naming both), outputs are written all or nothing, progress bars only when verbose.

Write failures are real, not mocked: the process's file-size limit (RLIMIT_FSIZE; CPython ignores
SIGXFSZ, so a write past the limit raises OSError EFBIG) makes the converter fail in the middle of
writing a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from sparse_ext.cli import main
from sparse_ext.data import (
    make_lsr_blocks,
    masks_to_coco,
    merge_detections,
    one_per_patch,
    points_to_coco,
    semantic_dir_to_instances,
    subsample_coco,
    tile_image,
)
from sparse_ext.data.io import OutputSet, check_outputs, encode_each, write_json


def tree(root: Path) -> Dict[str, str]:
    """Relative path -> sha256 of every file below ``root`` (hidden temporary files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def folders(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` in any file fail with OSError(EFBIG) while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# -- one small project with the inputs of every converter ---------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "classes", "instances"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        inst = np.zeros((64, 64), np.uint16)
        for k in range(6):
            y, x = rng.integers(0, 56, 2)
            inst[y : y + 8, x : x + 8] = 10 * k + 1
        img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
        skio.imsave(tmp_path / "images" / f"im{i}.png", img, check_contrast=False)
        tifffile.imwrite(tmp_path / "masks" / f"im{i}.tif", inst)
        skio.imsave(
            tmp_path / "classes" / f"im{i}.png", (inst > 0).astype(np.uint8), check_contrast=False
        )
    (tmp_path / "points.csv").write_text("image,x,y\nim0,10,12\nim1,40,33\nim1,63,0\n")
    masks_to_coco(tmp_path / "images", tmp_path / "masks", tmp_path / "coco.json", verbose=False)
    tiles = {
        "tiling": {"tile": 40, "overlap": 16},
        "slides": [{"id": 1, "file_name": "im0.png", "width": 64, "height": 64}],
        "images": [
            {"id": t + 1, "file_name": f"t{t}.png", "width": 40, "height": 40, "slide_id": 1}
            | {"x0": x0, "y0": 0}
            for t, x0 in enumerate((0, 24))
        ],
    }
    (tmp_path / "tiles.json").write_text(json.dumps(tiles))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 5, 5], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [10, 3, 5, 5], "score": 0.8},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path


# converter name -> (python call writing to ``out``, CLI arguments writing to ``out``)
def _calls(p: Path) -> Dict[str, tuple]:
    return {
        "masks2coco": (
            lambda out: masks_to_coco(p / "images", p / "masks", out, verbose=False),
            lambda out: ["masks2coco", str(p / "images"), str(p / "masks"), str(out)],
        ),
        "points2coco": (
            lambda out: points_to_coco(p / "images", p / "points.csv", out, verbose=False),
            lambda out: ["points2coco", str(p / "images"), str(p / "points.csv"), str(out)],
        ),
        "semantic2instances": (
            lambda out: semantic_dir_to_instances(p / "classes", out, 4, verbose=False),
            lambda out: ["semantic2instances", str(p / "classes"), str(out), "--diameter", "4"],
        ),
        "subsample": (
            lambda out: subsample_coco(
                p / "coco.json",
                out,
                (30, 60),
                instances_dir=p / "masks",
                labels_dir=str(Path(out) / "labels"),
                verbose=False,
            ),
            lambda out: [
                "subsample",
                str(p / "coco.json"),
                str(out),
                "--fractions",
                "30,60",
                "--instances",
                str(p / "masks"),
                "--labels-out",
                str(Path(out) / "labels"),
            ],
        ),  # fmt: skip
        "one-per-patch": (
            lambda out: one_per_patch(p / "coco.json", out, 32, 8, verbose=False),
            lambda out: [
                "one-per-patch",
                str(p / "coco.json"),
                str(out),
                "--patch",
                "32",
                "--overlap",
                "8",
            ],
        ),  # fmt: skip
        "tile": (
            lambda out: tile_image(p / "images", out, 40, 16, masks=p / "masks", verbose=False),
            lambda out: [
                "tile",
                str(p / "images"),
                str(out),
                "--tile",
                "40",
                "--overlap",
                "16",
                "--masks",
                str(p / "masks"),
            ],
        ),  # fmt: skip
        "merge": (
            lambda out: merge_detections(p / "tiles.json", p / "dets.json", out, verbose=False),
            lambda out: ["merge", str(p / "tiles.json"), str(p / "dets.json"), str(out)],
        ),
        "lsr-blocks": (
            lambda out: make_lsr_blocks(p / "images", p / "classes", out, 32, 4, verbose=False),
            lambda out: [
                "lsr-blocks",
                str(p / "images"),
                str(p / "classes"),
                str(out),
                "--block",
                "32",
                "--bins",
                "4",
            ],
        ),  # fmt: skip
    }


# outputs that are inputs, or lie among them: (converter, output relative to the project, input
# the error must name)
REFUSED = [
    ("masks2coco", "masks/im0.tif", "masks"),  # the data loss of issue 14: a mask replaced by JSON
    ("masks2coco", "images/coco.json", "images"),
    ("points2coco", "points.csv", "points.csv"),
    ("points2coco", "images/p.json", "images"),
    ("semantic2instances", "classes", "classes"),
    ("semantic2instances", "classes/instances", "classes"),
    ("subsample", "masks", "masks"),  # variants and label maps into the instance maps' folder
    ("one-per-patch", "coco.json", "coco.json"),
    ("one-per-patch", "link.json", "coco.json"),  # a symbolic link to the input
    ("tile", ".", "images"),  # OUT/images would be the input image folder
    ("tile", "images/tiles", "images"),
    ("merge", "dets.json", "dets.json"),
    ("merge", "tiles.json", "tiles.json"),
    ("lsr-blocks", "images", "images"),
    ("lsr-blocks", "classes/lsr", "classes"),
]


@pytest.mark.parametrize("name,out,named", REFUSED)
def test_outputs_among_inputs_are_refused(project, name, out, named, capsys):
    if out == "link.json":
        os.symlink(project / "coco.json", project / "link.json")
    call, cli = _calls(project)[name]
    before, dirs = tree(project), folders(project)
    target = project / out
    with pytest.raises(ValueError, match="output") as err:
        call(target)
    names_input = re.compile(f"input (folder |file )?{re.escape(str(project / named))}( |:|$)")
    assert names_input.search(str(err.value)) and str(target) in str(err.value)
    assert tree(project) == before and folders(project) == dirs  # nothing written, nothing made
    # the CLI: one line on stderr naming both, exit status 2
    assert main(["convert", *cli(target)]) == 2
    err_text = capsys.readouterr().err.strip()
    assert err_text.startswith("sparse-ext: error: output") and "\n" not in err_text
    assert names_input.search(err_text)
    assert tree(project) == before and folders(project) == dirs


# imageio's PNG plugin closes its file again when garbage-collected after the failed write, which
# fails the same way (EFBIG) and is reported as "unraisable": harmless, the file is already deleted
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", list(_calls(Path("."))))
def test_a_failed_write_leaves_the_previous_output_untouched(
    project, name, tmp_path_factory, capsys
):
    """A write failing halfway through a file (file-size limit) leaves no partial or temporary
    file, no new folder, and the previous run's outputs byte for byte."""
    call, cli = _calls(project)[name]
    out_root = tmp_path_factory.mktemp("out")
    out = out_root / ("result.json" if name in ("masks2coco", "points2coco", "one-per-patch",
                                                "merge") else "result")  # fmt: skip
    call(out)  # a complete previous output
    call(out)  # and a second run over it works (outputs replaced, nothing refused)
    before, dirs = tree(out_root), folders(out_root)
    assert before
    with file_size_limit(16), pytest.raises(OSError):
        call(out)
    assert tree(out_root) == before and folders(out_root) == dirs
    # into a fresh folder: the failed run leaves nothing at all behind
    fresh = out_root / "fresh" / "deeper" / out.name
    with file_size_limit(16), pytest.raises(OSError):
        call(fresh)
    assert not (out_root / "fresh").exists()
    # the CLI reports the failed write in one line (exit status 2), and leaves nothing either
    with file_size_limit(16):
        rc = main(["convert", *cli(fresh)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("sparse-ext: error:") and "too large" in err[-1]
    assert not (out_root / "fresh").exists() and tree(out_root) == before


def test_a_failure_after_some_files_commits_none(project, tmp_path_factory):
    """Multi-file converters that fail on a later input keep the earlier outputs as they were."""
    out_root = tmp_path_factory.mktemp("out")
    semantic_dir_to_instances(project / "classes", out_root / "inst", 4, verbose=False)
    tile_image(project / "images", out_root / "tiles", 40, 16, verbose=False)
    make_lsr_blocks(project / "images", project / "classes", out_root / "lsr", 32, 4, verbose=False)
    subsample_coco(
        project / "coco.json",
        out_root / "sub",
        (50,),
        instances_dir=project / "masks",
        labels_dir=str(out_root / "labels"),
        verbose=False,
    )
    before = tree(out_root)
    # a third input, sorted last, that fails only when it is reached
    skio.imsave(
        project / "classes" / "im9.png", np.zeros((64, 64, 3), np.uint8), check_contrast=False
    )
    with pytest.raises(ValueError, match="im9"):
        semantic_dir_to_instances(project / "classes", out_root / "inst", 4, verbose=False)
    (project / "images" / "zz.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="zz"):
        tile_image(project / "images", out_root / "tiles", 40, 16, verbose=False)
    (project / "images" / "zz.tif").unlink()
    (project / "classes" / "im9.png").unlink()
    skio.imsave(project / "images" / "im9.png", np.zeros((64, 64), np.uint8), check_contrast=False)
    skio.imsave(
        project / "classes" / "im9.png", np.full((64, 64), 7, np.uint8), check_contrast=False
    )
    with pytest.raises(ValueError, match="im9.*outside"):
        make_lsr_blocks(project / "images", project / "classes", out_root / "lsr", 32, 4)
    tifffile.imwrite(project / "masks" / "im1.tif", np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="size mismatch"):
        subsample_coco(
            project / "coco.json",
            out_root / "sub",
            (50,),
            instances_dir=project / "masks",
            labels_dir=str(out_root / "labels"),
            verbose=False,
        )
    assert tree(out_root) == before


def test_check_outputs_rules(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("x")
    inputs = [tmp_path / "in", tmp_path / "list.csv", None, tmp_path / "missing"]
    check_outputs(inputs, files=[tmp_path / "o.json"], folders=[tmp_path / "out"])
    refused = [
        dict(files=[tmp_path / "list.csv"]),
        dict(files=[tmp_path / "in" / "a.png"]),
        dict(files=[tmp_path / "in" / "new" / "b.json"]),
        dict(files=[tmp_path / "in"]),
        dict(folders=[tmp_path / "in"]),
        dict(folders=[tmp_path / "in" / "sub"]),
        dict(folders=[tmp_path / "list.csv"]),
    ]
    for kwargs in refused:
        with pytest.raises(ValueError, match="output"):
            check_outputs(inputs, **kwargs)
    # an input file directly in an output folder could be replaced by an output of that name
    with pytest.raises(ValueError, match="holds the input"):
        check_outputs([tmp_path / "list.csv"], folders=[tmp_path])


def test_output_set_refuses_writing_one_path_twice_and_keeps_file_modes(tmp_path):
    with pytest.raises(ValueError, match="two outputs"), OutputSet([]) as out:
        out.write_json(tmp_path / "a.json", 1)
        out.write_json(tmp_path / "a.json", 2)
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "b.json", {})
    (tmp_path / "c.txt").write_text("")
    assert (tmp_path / "b.json").stat().st_mode == (tmp_path / "c.txt").stat().st_mode


def test_encode_each_is_json_dumps_of_each_item():
    items = [
        {"id": 1, "bbox": [1.5, 2, 3e-7, 4], "s": 'a},{"b', "t": "\x00x\u00e9\\"},
        [1, "},{"],
        "plain",
        None,
        {"nested": {"k": [{"a": 1}, {"b": "\n"}]}},
    ]
    assert encode_each(items) == [json.dumps(i, separators=(",", ":")).encode() for i in items]
    assert encode_each([]) == []


def test_subsample_files_equal_compact_json_dumps(project, tmp_path):
    subsample_coco(project / "coco.json", tmp_path, (40,), seed=2, verbose=False)
    text = (tmp_path / "coco_frac040.json").read_text()
    assert text == json.dumps(json.loads(text), separators=(",", ":"))


def test_lsr_blocks_into_the_parent_of_its_mask_folder_is_refused(project):
    """OUT/masks of lsr-blocks would be the input class-map folder when it is called "masks"."""
    (project / "masks").rename(project / "instance_maps")
    (project / "classes").rename(project / "masks")
    before = tree(project)
    with pytest.raises(
        ValueError, match=f"is the input folder {re.escape(str(project / 'masks'))}"
    ):
        make_lsr_blocks(project / "images", project / "masks", project, 32, 4, verbose=False)
    assert tree(project) == before


# converter -> what its tqdm bar shows for the project: "<desc>: 100%|...| <n>/<n> [...]"
BARS = {
    "masks2coco": "masks2coco: 100%",
    "semantic2instances": "semantic2instances: 100%",
    "subsample": "subsample label maps: 100%",
    "one-per-patch": "one-per-patch: 100%",
    "tile": "tile im1: 100%",
    "lsr-blocks": "lsr-blocks: 100%",
}


@pytest.mark.parametrize("name", list(BARS))
def test_progress_bar_only_when_verbose(project, name, tmp_path, capsys):
    call, cli = _calls(project)[name]
    call(tmp_path / "quiet")
    assert capsys.readouterr() == ("", "")
    assert main(["convert", *cli(tmp_path / "loud")]) == 0  # the CLI is verbose
    out, err = capsys.readouterr()
    assert BARS[name] in err and ("4/4" if name == "tile" else "2/2") in err
    assert out.startswith(name)  # the one-line summary on stdout
