#!/usr/bin/env python
"""Test (and evaluate) an MMSegmentation 1.x model with sparse_ext's components registered.

Equivalent of MMSeg's tools/test.py (mmengine ``Runner.from_cfg(cfg).test()``), with
``sparse_ext.mmseg`` imported (checkpoints load under torch's ``weights_only`` default) and
``--cfg-options data_root=DIR`` moving every path under the config's data root::

    python tools/mmseg_test.py configs/mmseg/unet_s5-d16_ece_partial-nuclei.py \
        work_dirs/ece/iter_20000.pth --cfg-options data_root=data/hela
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction
from mmengine.runner import Runner

import sparse_ext.mmseg  # noqa: F401  (registers sparse_ext's modules, checkpoint allow-list)
from sparse_ext.mmseg.config import load_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test (and evaluate) a segmentor (sparse_ext)")
    parser.add_argument("config", help="config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="the dir to save logs and the metrics (json)")
    parser.add_argument("--out", help="directory to save the predictions (IoUMetric output_dir)")
    parser.add_argument("--show", action="store_true", help="show prediction results")
    parser.add_argument("--show-dir", help="directory to save painted predictions")
    parser.add_argument("--wait-time", type=float, default=2, help="interval of --show (s)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config settings, key=value (data_root=DIR moves every path under it)",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--tta", action="store_true", help="test time augmentation")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def _visualize(cfg, args: argparse.Namespace) -> None:
    hook = cfg.default_hooks.get("visualization")
    if hook is None:
        raise RuntimeError("--show/--show-dir need a visualization hook in default_hooks")
    hook["draw"] = True
    if args.show:
        hook["show"], hook["wait_time"] = True, args.wait_time
    if args.show_dir:
        cfg.visualizer["save_dir"] = args.show_dir


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the test loop; returns the metrics."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _visualize(cfg, args)
    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        evaluators = cfg.test_evaluator
        for ev in evaluators if isinstance(evaluators, list) else [evaluators]:
            if ev.get("type") == "IoUMetric":
                ev["output_dir"], ev["keep_results"] = args.out, True
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == "__main__":
    main(sys.argv[1:])
