#!/usr/bin/env python
"""Train an MMSegmentation 1.x model with sparse_ext's components registered.

Equivalent of MMSeg's tools/train.py (mmengine ``Runner.from_cfg``), with ``sparse_ext.mmseg``
imported and ``--cfg-options data_root=DIR`` moving every path under the config's data root::

    python tools/mmseg_train.py configs/mmseg/unet_s5-d16_ece_partial-nuclei.py \
        --work-dir work_dirs/ece --cfg-options data_root=data/hela
    python tools/mmseg_train.py CONFIG --work-dir W --resume           # latest checkpoint in W
    python tools/mmseg_train.py CONFIG --work-dir W --resume W/iter_200.pth

Several processes (one per GPU, ``train_dataloader.batch_size`` per process), as MMSeg's
tools/dist_train.sh::

    python -m torch.distributed.run --nproc_per_node 2 tools/mmseg_train.py CONFIG \
        --launcher pytorch --cfg-options data_root=data/hela

Without CUDA (CPU processes) the pytorch launcher gets a gloo process group and a
DistributedDataParallel without ``device_ids`` (mmengine's own set-up assumes one GPU per
process). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import os.path as osp
import sys
from typing import Optional, Sequence

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

import sparse_ext.mmseg  # noqa: F401  (registers sparse_ext's modules, checkpoint allow-list)
from sparse_ext.mmseg.config import load_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a segmentor (sparse_ext)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument(
        "--resume",
        nargs="?",
        type=str,
        const="auto",
        help="resume from the latest checkpoint in the work_dir (no value) or from a given one",
    )
    parser.add_argument(
        "--amp", action="store_true", default=False, help="automatic mixed precision training"
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config settings, key=value (data_root=DIR moves every path under it)",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def setup_cpu_distributed(cfg: Config) -> bool:
    """Make mmengine's ``pytorch`` launcher work with CPU processes (gloo); no-op with CUDA.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper passes
    ``device_ids=[LOCAL_RANK]``, both of which fail without a GPU. Here the process group is
    initialised from torch.distributed.run's environment with gloo (the Runner then skips
    ``init_dist``) and ``model_wrapper_cfg`` gets ``device_ids=None``. Returns whether it did.
    """
    if cfg.get("launcher", "none") != "pytorch" or torch.cuda.is_available():
        return False
    env_cfg = cfg.get("env_cfg") or {}
    dist_cfg = dict(env_cfg.get("dist_cfg") or {}, backend="gloo")
    cfg.env_cfg = dict(env_cfg, dist_cfg=dist_cfg)
    if not torch_dist.is_initialized():
        timeout = dist_cfg.get("timeout")  # seconds, as mmengine's init_dist takes it
        kwargs = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
        torch_dist.init_process_group(backend="gloo", **kwargs)  # env:// of torch.distributed.run
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    wrapper["device_ids"] = None  # a CPU module: DistributedDataParallel refuses device ids
    cfg.model_wrapper_cfg = wrapper
    return True


def main(argv: Optional[Sequence[str]] = None) -> Runner:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if cfg.optim_wrapper.type == "AmpOptimWrapper":
            print_log("AMP training is already enabled in your config.", "current", logging.WARNING)
        else:
            if cfg.optim_wrapper.type != "OptimWrapper":
                raise ValueError(f"--amp needs OptimWrapper, got {cfg.optim_wrapper.type}")
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    main(sys.argv[1:])
