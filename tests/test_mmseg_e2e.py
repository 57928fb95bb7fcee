"""End to end through tools/mmseg_train.py and tools/mmseg_test.py on generated data: train the
UNet ECE config, save a checkpoint, resume, test, and load the checkpoint under torch's
``weights_only`` default."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _frameworks import MMSEG_HINT, require
from PIL import Image

require("mmseg", hint=MMSEG_HINT)

from _mmseg_tiny_data import (  # noqa: E402
    CONFIGS,
    REPO,
    cfg_options_argv,
    tiny_lsr_options,
    tiny_unet_options,
    write_lsr_blocks,
    write_partial_nuclei,
)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def test_unet_ece_train_resume_test_through_tools(tmp_path):
    root = write_partial_nuclei(tmp_path / "data", n_train=2, n_val=1)
    work = tmp_path / "work"
    config = str(CONFIGS / "unet_s5-d16_ece_partial-nuclei.py")
    opts = tiny_unet_options(str(work), iters=2)
    opts.update({"data_root": str(root), "train_dataloader.batch_size": 2})
    train, test = _tool("mmseg_train"), _tool("mmseg_test")

    runner = train.main([config, "--cfg-options", *cfg_options_argv(opts)])
    assert runner.iter == 2
    ckpt = work / "iter_2.pth"
    assert ckpt.is_file()
    loss = runner.model.decode_head.loss_decode
    assert type(loss).__name__ == "ExclusiveCrossEntropyLoss"
    # the paths under the config's data root moved to the generated data
    assert runner.cfg.val_dataloader.dataset.data_root == str(root)

    # the checkpoint holds mmengine's numpy/HistoryBuffer meta: torch's weights_only default
    # refuses it without the allow-list, and accepts it once the config's custom_imports (alone,
    # no explicit import) has imported sparse_ext.mmseg, which also registered the loss
    plain = _python(f"import torch; torch.load({str(ckpt)!r})")
    assert plain.returncode != 0 and "Weights only load failed" in plain.stderr
    allowed = _python(
        "import torch; from mmengine.config import Config; from mmseg.registry import MODELS; "
        f"Config.fromfile({config!r}); c = torch.load({str(ckpt)!r}); "
        "print(MODELS.get('ExclusiveCrossEntropyLoss').__name__, c['meta']['iter'])"
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert allowed.stdout.strip().endswith("ExclusiveCrossEntropyLoss 2")

    # resume (latest checkpoint in the work dir) and train one more iteration
    opts.update({"train_cfg.max_iters": 3, "param_scheduler.0.end": 3})
    opts["default_hooks.checkpoint.interval"] = 3
    opts["train_cfg.val_interval"] = 3
    runner = train.main([config, "--resume", "--cfg-options", *cfg_options_argv(opts)])
    assert runner.iter == 3
    log = Path(runner.log_dir) / f"{runner.timestamp}.log"
    assert "resumed epoch: 0, iter: 2" in log.read_text()
    assert (work / "iter_3.pth").is_file()
    resumed = torch.load(work / "iter_3.pth")  # weights_only default, allow-listed
    assert resumed["meta"]["iter"] == 3

    # test the checkpoint with the test tool
    test_dir = tmp_path / "test"
    metrics = test.main(
        [
            config,
            str(work / "iter_3.pth"),
            "--work-dir",
            str(test_dir),
            "--out",
            str(tmp_path / "preds"),
            "--cfg-options",
            f"data_root={root}",
            *cfg_options_argv({k: v for k, v in opts.items() if k.startswith("model.")}),
            "test_dataloader.num_workers=0",
            "test_dataloader.persistent_workers=False",
        ]
    )
    for key in ("mIoU", "mDice", "sparse/Dice", "sparse/AJI", "sparse/ObjF1"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["sparse/Dice"] <= 1.0
    assert len(list((tmp_path / "preds").glob("*.png"))) == 1  # one test image
    assert list(test_dir.rglob("*.json"))


def test_lsr_intra_inter_train_and_test_through_tools(tmp_path):
    root = tmp_path / "lsr"
    labels = {f"f0_r{i}_c0": i % 2 for i in range(8)}
    write_lsr_blocks(root / "train", labels, block=32, num_labels=2)
    for split in ("val", "test"):
        write_lsr_blocks(root / split, {"v_r0_c0": 1, "v_r1_c0": 0}, block=32, num_labels=2)
    work = tmp_path / "work"
    config = str(CONFIGS / "unet_s5-d16_lsr-intra-inter_lsr-blocks.py")
    opts = tiny_lsr_options(str(work), str(root))
    runner = _tool("mmseg_train").main([config, "--cfg-options", *cfg_options_argv(opts)])
    assert runner.iter == 2
    metrics = _tool("mmseg_test").main(
        [config, str(work / "iter_2.pth"), "--cfg-options", *cfg_options_argv(opts)]
    )
    assert "mIoU" in metrics and "sparse/Dice" in metrics
    # tools/lsr_block_check.py on the config as trained: every block once, its true share read
    # from its mask, its predicted share from the model
    dumped = str(work / Path(config).name)
    stats = _tool("lsr_block_check").block_stats(dumped, str(work / "iter_2.pth"))
    assert sorted(stats["labels"]) == [0, 1]
    for z, cell in stats["labels"].items():
        names = [n for n, label in labels.items() if label == z]
        masks = [np.array(Image.open(root / "train" / "masks" / f"{n}.png")) for n in names]
        assert cell["true"] == pytest.approx([float((m == 1).mean()) for m in masks])
        assert len(cell["predicted"]) == len(names)
        assert all(0.0 <= p <= 1.0 for p in cell["predicted"])
    assert 0.0 <= stats["dice"] <= 1.0


def test_mim_train_route_with_custom_imports(tmp_path):
    """MMSeg's own tools (`mim train mmseg CONFIG`, `mim test mmsegmentation ...`) with only the
    config's custom_imports. MMSeg's tools/train.py does not retarget data_root, so the datasets'
    roots are set."""
    mim = shutil.which("mim", path=str(Path(sys.executable).parent))
    if mim is None:
        pytest.skip("openmim is not installed (pip install openmim)")
    root = write_partial_nuclei(tmp_path / "data", n_train=2, n_val=1)
    opts = tiny_unet_options(str(tmp_path / "work"), iters=2)
    opts.update({"train_dataloader.batch_size": 2})
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts[f"{key}.dataset.data_root"] = str(root)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    config = str(CONFIGS / "unet_s5-d16_ece_partial-nuclei.py")

    def mim_run(*args):
        proc = subprocess.run([mim, *args], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc.stdout + proc.stderr

    out = mim_run("train", "mmseg", config, "--cfg-options", *cfg_options_argv(opts))
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    assert "decode.loss_ece" in out
    scalars = list((tmp_path / "work").rglob("scalars.json"))
    assert scalars and json.loads(scalars[0].read_text().splitlines()[0])
    # MMSeg's own test tool loads the checkpoint (weights_only default, allow-listed on import)
    out = mim_run(
        "test",
        "mmsegmentation",
        config,
        "--checkpoint",
        str(tmp_path / "work" / "iter_2.pth"),
        "--cfg-options",
        *cfg_options_argv(opts),
    )
    assert "sparse/Dice" in out and "Load checkpoint from" in out
