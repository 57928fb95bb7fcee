"""MMSeg adapter losses: equal to the core functions on the same inputs, MMSeg's loss contract,
clear errors, and every config's model trained for real steps on CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _frameworks import MMSEG_HINT, require

require("mmseg", hint=MMSEG_HINT)

from _mmseg_tiny_data import (  # noqa: E402
    CONFIGS,
    tiny_resnet_options,
    tiny_runtime_options,
    tiny_unet_options,
    write_lsr_blocks,
    write_partial_nuclei,
)
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.models.losses import CrossEntropyLoss, FocalLoss  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import sparse_ext.mmseg  # noqa: E402,F401
from sparse_ext.losses.exclusive_cross_entropy import exclusive_cross_entropy  # noqa: E402
from sparse_ext.losses.label_super_resolution import lsr_loss  # noqa: E402
from sparse_ext.losses.nnpu import nnpu_loss  # noqa: E402
from sparse_ext.mmseg.config import load_config  # noqa: E402
from sparse_ext.mmseg.hooks import set_training_progress  # noqa: E402
from sparse_ext.mmseg.losses import (  # noqa: E402
    ExclusiveCrossEntropyLoss,
    LabelSuperResolutionLoss,
    NonNegativePULoss,
    OneHotFocalLoss,
    SampledCrossEntropyLoss,
)
from sparse_ext.mmseg.transforms import encode_block_label  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _mmseg_scope():
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sparse_batch(n=2, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g).mul(2).requires_grad_()
    label = torch.randint(0, c, (n, h, w), generator=g)
    label[label == 2] = 0  # most pixels 0: unannotated or background
    label[0, :2] = 255  # ignored rows
    label[1, 3, 3] = c - 1
    return logits, label


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# -- ExclusiveCrossEntropyLoss


def test_ece_module_equals_core_function():
    logits, label = _sparse_batch()
    module = ExclusiveCrossEntropyLoss(schedule=0.5, loss_weight=2.0, sampling_schedule=1.0)
    assert module.loss_name == "loss_ece"
    got = module(logits, label, weight=None, ignore_index=255)
    want = 2.0 * exclusive_cross_entropy(logits, label, rho=0.5, ignore_index=255)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(_grad(got, logits), _grad(want, logits))
    # by config, as MMSeg builds it
    built = MODELS.build(
        dict(type="ExclusiveCrossEntropyLoss", schedule=0.5, loss_weight=2.0, sampling_schedule=1.0)
    )
    torch.testing.assert_close(built(logits, label), want)


def test_ece_focal_and_confidence_options_reach_the_core():
    logits, label = _sparse_batch(seed=1)
    kw = dict(confidence="margin", focal_alpha=0.5, focal_gamma=2.0)
    got = ExclusiveCrossEntropyLoss(schedule=0.8, **kw, sampling_schedule=1.0)(logits, label)
    want = exclusive_cross_entropy(logits, label, rho=0.8, **kw)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(
        got, ExclusiveCrossEntropyLoss(schedule=0.8, sampling_schedule=1.0)(logits, label)
    )


def test_ece_rho_one_equals_mmseg_cross_entropy():
    logits, label = _sparse_batch(seed=2)
    ece = ExclusiveCrossEntropyLoss(schedule=1.0, sampling_schedule=1.0)(
        logits, label, ignore_index=255
    )
    ce = CrossEntropyLoss(avg_non_ignore=True)(logits, label, ignore_index=255)
    torch.testing.assert_close(ece, ce)


def test_ece_schedule_follows_set_progress():
    logits, label = _sparse_batch(seed=3)
    module = ExclusiveCrossEntropyLoss(
        schedule=dict(type="linear", start=0.2, end=1.0), sampling_schedule=1.0
    )
    module.set_progress(0.0)
    at0 = module(logits, label)
    module.set_progress(1.0)
    at1 = module(logits, label)
    torch.testing.assert_close(at0, exclusive_cross_entropy(logits, label, rho=0.2))
    torch.testing.assert_close(at1, F.cross_entropy(logits, label, ignore_index=255))
    assert at0 < at1  # rho 0.2 drops more unannotated terms


def test_ece_sigmoid_head_and_pixel_weights():
    logits, label = _sparse_batch(c=2, seed=4)
    one = logits[:, 1:].detach().requires_grad_()
    got = ExclusiveCrossEntropyLoss(use_sigmoid=True, sampling_schedule=1.0)(one, label)
    want = exclusive_cross_entropy(one, label, rho=0.5, use_sigmoid=True)
    torch.testing.assert_close(got, want)
    # a pixel sampler's weights: all ones = unweighted; zero weights drop pixels
    module = ExclusiveCrossEntropyLoss(sampling_schedule=1.0)
    plain = module(logits, label)
    torch.testing.assert_close(module(logits, label, weight=torch.ones_like(label).float()), plain)
    half = torch.ones_like(label).float()
    half[1] = 0
    weighted = module(logits, label, weight=half)
    per = exclusive_cross_entropy(logits, label, rho=0.5, reduction="none")
    torch.testing.assert_close(weighted, per[0].sum() / (label != 255).sum())


def test_ece_bad_labels_and_names():
    logits, label = _sparse_batch()
    label[1, 0, 0] = 7
    with pytest.raises(ValueError, match=r"label values \[7\] are outside the classes 0..2"):
        ExclusiveCrossEntropyLoss()(logits, label)
    with pytest.raises(ValueError, match="do not match"):
        ExclusiveCrossEntropyLoss()(logits, label[:, :4])
    with pytest.raises(ValueError, match="loss_"):
        ExclusiveCrossEntropyLoss(loss_name="ece")


# -- the annotated fraction f ----------------------------------------------------------------------


def test_ece_recipe_keeps_unannotated_terms_with_the_probability_f_gives():
    from sparse_ext.losses import background_keep_prob

    logits, label = _sparse_batch(seed=5)
    module = ExclusiveCrossEntropyLoss(annotated_fraction=0.3)
    assert module.criterion.sample_prob == pytest.approx(background_keep_prob(0.3))
    torch.manual_seed(7)
    got = module(logits, label)
    torch.manual_seed(7)
    want = exclusive_cross_entropy(logits, label, rho=0.5, annotated_fraction=0.3)
    torch.testing.assert_close(got, want)
    # an explicit sampling schedule wins over f (ECE as published: 1.0)
    published = ExclusiveCrossEntropyLoss(annotated_fraction=0.3, sampling_schedule=1.0)
    torch.testing.assert_close(
        published(logits, label), exclusive_cross_entropy(logits, label, rho=0.5)
    )


def test_sampled_ce_is_ece_without_exclusion_at_the_keep_probability_f_gives():
    logits, label = _sparse_batch(seed=8)
    module = MODELS.build(dict(type="SampledCrossEntropyLoss", annotated_fraction=0.3))
    assert module.loss_name == "loss_sampled_ce"
    torch.manual_seed(3)
    got = module(logits, label)
    torch.manual_seed(3)
    want = exclusive_cross_entropy(logits, label, rho=1.0, annotated_fraction=0.3)
    torch.testing.assert_close(got, want)
    torch.manual_seed(3)
    recipe_with_rho_1 = ExclusiveCrossEntropyLoss(schedule=1.0, annotated_fraction=0.3)
    torch.testing.assert_close(got, recipe_with_rho_1(logits, label))
    # every object labelled (f = 1): every term kept, exactly cross-entropy over non-ignored
    full = MODELS.build(dict(type="SampledCrossEntropyLoss", annotated_fraction=1.0))
    torch.testing.assert_close(
        full(logits, label), F.cross_entropy(logits, label.long(), ignore_index=255)
    )


def test_unknown_fraction_warns_once_and_falls_back():
    from sparse_ext.losses import background_keep_prob
    from sparse_ext.losses.fraction import FALLBACK_ANNOTATED_FRACTION

    logits, label = _sparse_batch(seed=6)
    for module in (ExclusiveCrossEntropyLoss(), SampledCrossEntropyLoss(), NonNegativePULoss()):
        with pytest.warns(UserWarning, match="annotated fraction is unknown"):
            module(logits, label)
        assert module.annotated_fraction == FALLBACK_ANNOTATED_FRACTION
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module(logits, label)  # once only
    assert ExclusiveCrossEntropyLoss().criterion.sample_prob == 1.0  # nothing assumed before
    module = ExclusiveCrossEntropyLoss()
    with pytest.warns(UserWarning):
        module(logits, label)
    assert module.criterion.sample_prob == pytest.approx(background_keep_prob(0.2))


def test_nnpu_prior_from_the_fraction_is_the_sampled_prior_of_the_running_labelled_share():
    from sparse_ext.losses import nnpu_loss, unlabeled_prior

    logits, label = _sparse_batch(c=2, seed=8)
    module = NonNegativePULoss(annotated_fraction=0.25)
    got = module(logits, label)
    valid = label != 255
    share = float((label[valid] > 0).float().mean())
    pi_u = unlabeled_prior(0.25, min(share / 0.25, 0.99))
    flat = logits.permute(0, 2, 3, 1)[valid]
    want = nnpu_loss(flat, label[valid], pi_u, background_index=0, prior_mode="sampled")
    torch.testing.assert_close(got, want)
    # the share runs over batches: a batch without labelled pixels keeps the earlier share
    empty = torch.zeros_like(label)
    module(logits, empty)
    assert module.labelled_share.value == pytest.approx(
        share * valid.sum() / (valid.sum() + label.numel())
    )
    # a fixed prior is the paper's mode, untouched by f
    fixed = NonNegativePULoss(prior=0.2, annotated_fraction=0.25)
    want_fixed = nnpu_loss(flat, label[valid], 0.2, background_index=0)
    torch.testing.assert_close(fixed(logits, label), want_fixed)


def test_hook_helper_gives_the_fraction_only_to_losses_without_one():
    from sparse_ext.mmseg.hooks import set_annotated_fraction

    model = torch.nn.ModuleDict(
        dict(
            a=ExclusiveCrossEntropyLoss(),
            b=ExclusiveCrossEntropyLoss(annotated_fraction=0.5),
            c=NonNegativePULoss(),
            d=NonNegativePULoss(prior=0.1),
        )
    )
    assert set_annotated_fraction(model, 0.3) == 3  # a, c and d (d keeps its fixed prior)
    assert model["a"].annotated_fraction == 0.3 and model["b"].annotated_fraction == 0.5
    assert model["c"].annotated_fraction == 0.3 and model["d"].prior == 0.1


def test_partial_dataset_records_the_fraction(tmp_path):
    import json

    from sparse_ext.mmseg.datasets import recorded_fraction

    assert recorded_fraction("data/x/labels/frac030/train", "data/x") == 0.3
    assert recorded_fraction("labels/full/train", "data/x") is None
    (tmp_path / "annotations").mkdir()
    info = {"info": {"sparse_fraction": 0.27}, "images": [], "annotations": [], "categories": []}
    (tmp_path / "annotations" / "train_frac030.json").write_text(json.dumps(info))
    assert recorded_fraction(str(tmp_path / "labels" / "frac030" / "train"), str(tmp_path)) == 0.27


# -- NonNegativePULoss


def test_nnpu_module_equals_core_on_pixels():
    logits, label = _sparse_batch(seed=5)
    module = NonNegativePULoss(prior=0.2, loss_weight=0.5)
    assert module.loss_name == "loss_nnpu"
    got = module(logits, label, ignore_index=255)
    keep = label != 255
    flat = logits.permute(0, 2, 3, 1)[keep]
    want = 0.5 * nnpu_loss(flat, label[keep], 0.2, background_index=0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(_grad(got, logits), _grad(want, logits))
    for kw in (dict(mode="classic"), dict(nonnegative="kiryo", beta=0.0, gamma=1.0)):
        torch.testing.assert_close(
            NonNegativePULoss(prior=0.2, **kw)(logits, label),
            nnpu_loss(flat, label[keep], 0.2, background_index=0, **kw),
        )


def test_nnpu_sigmoid_head_and_errors():
    logits, label = _sparse_batch(c=2, seed=6)
    one = logits[:, 1:]
    keep = label != 255
    got = NonNegativePULoss(prior=0.3)(one, label)
    want = nnpu_loss(one[:, 0][keep], (label[keep] > 0).long(), 0.3)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\)"):
        NonNegativePULoss(prior=1.5)
    with pytest.raises(ValueError, match="outside the classes"):
        NonNegativePULoss(prior=0.3)(logits, label.masked_fill(label == 1, 4))


# -- OneHotFocalLoss (MMSeg's FocalLoss with one-hot targets: the focal baseline on CPU)


def test_one_hot_focal_loss_is_mmseg_focal_loss():
    logits, label = _sparse_batch(c=2, seed=8)
    got = OneHotFocalLoss(gamma=2.0, alpha=0.5, loss_weight=1.0)(logits, label, ignore_index=255)
    # MMSeg's sigmoid focal loss by hand: mean over pixels x classes, ignored pixels weigh 0
    valid = label != 255
    t = F.one_hot(label.masked_fill(~valid, 0), 2).permute(0, 3, 1, 2).float()
    p = logits.sigmoid()
    focal_weight = (0.5 * t + 0.5 * (1 - t)) * ((1 - p) * t + p * (1 - t)) ** 2
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * focal_weight
    torch.testing.assert_close(got, (bce * valid[:, None]).sum() / bce.numel())
    # without ignored pixels: identical to MMSeg's FocalLoss on its one-hot branch
    full = label.masked_fill(~valid, 0)
    one_hot = F.one_hot(full, 2).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(OneHotFocalLoss()(logits, full), FocalLoss()(logits, one_hot))
    # a one-channel (binary) head gets the foreground indicator
    fg = logits[:, 1:]
    torch.testing.assert_close(
        OneHotFocalLoss()(fg, full), FocalLoss()(fg, (full == 1)[:, None].float())
    )
    with pytest.raises(ValueError, match="outside the classes"):
        OneHotFocalLoss()(logits, full + 3)


# -- LabelSuperResolutionLoss

TABLE = dict(
    classes=["background", "nucleus"],
    eta=[[0.9, 0.6, 0.3], [0.1, 0.4, 0.7]],
    rho=[[0.05, 0.1, 0.1], [0.05, 0.1, 0.1]],
)


def _block_maps(z, h=8, w=8, pad_rows=0, num_labels=3, classes=2):
    """Encoded maps of blocks with shared labels z, the last ``pad_rows`` rows padding (255)."""
    maps = torch.stack(
        [torch.full((h, w), encode_block_label([v] * classes, num_labels) + 255) for v in z]
    )
    if pad_rows:
        maps[:, h - pad_rows :] = 255
    return maps


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
@pytest.mark.parametrize("distance", ["eq5", "gaussian"])
def test_lsr_module_equals_core_function(mode, distance):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 2, 8, 8, generator=g).requires_grad_()
    z = torch.tensor([0, 1, 1, 2, 2, 2])
    label = _block_maps(z.tolist(), pad_rows=2)
    module = LabelSuperResolutionLoss(
        table=TABLE, mode=mode, alpha=0.75, loss_weight=2.0, distance=distance
    )
    got = module(logits, label)
    eta, rho = torch.tensor(TABLE["eta"]), torch.tensor(TABLE["rho"])
    valid = torch.ones(6, 8, 8, dtype=torch.bool)
    valid[:, 6:] = False
    want = 2.0 * lsr_loss(
        logits, z, eta, rho, mode=mode, alpha=0.75, valid_mask=valid, distance=distance
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(_grad(got, logits), _grad(want, logits))
    assert torch.isfinite(got)


def test_lsr_table_from_file_per_class_labels_and_dropped_blocks(tmp_path):
    root = write_lsr_blocks(tmp_path, {"a": 0}, num_labels=3)
    module = LabelSuperResolutionLoss(table=str(root / "table.json"), mode="intra")
    assert module.classes == ["background", "nucleus"]
    logits = torch.randn(3, 2, 4, 4, requires_grad=True)
    per_class = [[0, 2], [1, 1], [2, 0]]
    label = torch.stack([torch.full((4, 4), encode_block_label(zz, 3) + 255) for zz in per_class])
    label[2] = 255  # a block that is all padding is left out
    got = module(logits, label)
    eta = module.eta.clone()
    rho = module.rho.clone()
    want = lsr_loss(logits[:2], torch.tensor(per_class[:2]), eta, rho, mode="intra")
    torch.testing.assert_close(got, want)


def test_lsr_high_res_term_adds_cross_entropy():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    label = _block_maps([1, 2], 4, 4)
    label[0, 0, :2] = encode_block_label([1, 1], 3) + torch.tensor([0, 1])  # two labelled pixels
    base = LabelSuperResolutionLoss(table=TABLE)(logits, label)
    mixed = LabelSuperResolutionLoss(table=TABLE, highres_weight=0.5)(logits, label)
    target = torch.full((2, 4, 4), 255)
    target[0, 0, :2] = torch.tensor([0, 1])
    torch.testing.assert_close(
        mixed, base + 0.5 * F.cross_entropy(logits, target, ignore_index=255)
    )


def test_lsr_intra_warmup_matches_intra_statistics_until_its_end():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 2, 8, 8, generator=g)
    z = [0, 1, 1, 2, 2, 2]
    label = _block_maps(z)
    module = LabelSuperResolutionLoss(table=TABLE, mode="inter", intra_warmup=0.2)
    eta, rho = torch.tensor(TABLE["eta"]), torch.tensor(TABLE["rho"])
    intra, inter = (lsr_loss(logits, torch.tensor(z), eta, rho, mode=m) for m in ("intra", "inter"))
    assert not torch.allclose(intra, inter)
    with pytest.raises(RuntimeError, match="SparseLossAnnealingHook"):
        module(logits, label)  # training without the hook: no progress to end the warm-up
    for progress, want in ((0.0, intra), (0.19, intra), (0.2, inter), (1.0, inter)):
        module.set_progress(progress)
        torch.testing.assert_close(module(logits, label), want)
    module.set_progress(0.0)
    module.eval()  # validation and test losses use the configured mode
    torch.testing.assert_close(module(logits, label), inter)
    plain = LabelSuperResolutionLoss(table=TABLE, mode="inter")  # no warm-up: no hook needed
    torch.testing.assert_close(plain(logits, label), inter)


def test_lsr_clear_errors():
    module = LabelSuperResolutionLoss(table=TABLE)
    logits = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="no block labels in the batch"):
        module(logits, torch.zeros(2, 4, 4, dtype=torch.long))  # a stock label map
    mixed = _block_maps([0, 1], 4, 4)
    mixed[1, :2] = encode_block_label([2, 2], 3) + 255
    with pytest.raises(ValueError, match="not constant"):
        module(logits, mixed)
    with pytest.raises(KeyError, match="not in the table"):
        module(logits, torch.full((2, 4, 4), 256 * (9 + 1) + 255))
    with pytest.raises(ValueError, match="predicts 3 classes, the LSR table has 2"):
        module(torch.randn(2, 3, 4, 4), _block_maps([0, 1], 4, 4))
    with pytest.raises(ValueError, match="unknown mode .both.; expected one of intra"):
        LabelSuperResolutionLoss(table=TABLE, mode="both")


# -- settings out of range fail when the model is built, naming the setting


BAD_LOSS_SETTINGS = [
    (dict(type="ExclusiveCrossEntropyLoss", schedule=1.5), r"schedule \(rho\) value must be in"),
    (
        dict(type="ExclusiveCrossEntropyLoss", schedule=dict(type="linear", start=0.1, end=2.0)),
        r"schedule \(rho\) end must be in \[0, 1\], got 2",
    ),
    (
        dict(type="ExclusiveCrossEntropyLoss", sampling_schedule=-0.5),
        r"sampling_schedule \(keep probability\) value must be in \[0, 1\]",
    ),
    (dict(type="ExclusiveCrossEntropyLoss", focal_alpha=1.5), r"focal_alpha must be in \[0, 1\]"),
    (dict(type="ExclusiveCrossEntropyLoss", focal_gamma=-2.0), "focal_gamma must be a finite"),
    (dict(type="ExclusiveCrossEntropyLoss", loss_weight=-1.0), "loss_weight must be a finite"),
    (dict(type="NonNegativePULoss", prior=0.0), r"prior must be in \(0, 1\), got 0"),
    (dict(type="NonNegativePULoss", prior=0.2, gamma=2.0), r"gamma must be in \[0, 1\], got 2"),
    (dict(type="NonNegativePULoss", prior=0.2, beta=-0.1), "beta must be a finite number >= 0"),
    (dict(type="NonNegativePULoss", prior=0.2, mode="pu"), "unknown mode 'pu'"),
    (dict(type="LabelSuperResolutionLoss", table=TABLE, alpha=1.5), r"alpha must be in \[0, 1\]"),
    (
        dict(type="LabelSuperResolutionLoss", table=TABLE, variance_floor=0.0),
        "variance_floor must be a finite number > 0, got 0",
    ),
    (
        dict(type="LabelSuperResolutionLoss", table=TABLE, highres_weight=-1.0),
        "highres_weight must be a finite number >= 0",
    ),
    (
        dict(type="LabelSuperResolutionLoss", table=TABLE, intra_warmup=1.0),
        r"intra_warmup must be in \[0, 1\), got 1",
    ),
    (dict(type="OneHotFocalLoss", gamma=-1.0), "gamma must be a finite number >= 0, got -1"),
    (dict(type="OneHotFocalLoss", alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
    (dict(type="OneHotFocalLoss", alpha=[0.5, 2.0]), r"alpha\[1\] must be in \[0, 1\], got 2"),
]


@pytest.mark.parametrize("cfg, message", BAD_LOSS_SETTINGS)
def test_bad_loss_settings_fail_when_the_model_is_built(cfg, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dict(cfg))
    head = dict(
        type="FCNHead",
        in_channels=4,
        channels=4,
        num_convs=1,
        num_classes=2,
        loss_decode=dict(cfg),
    )
    with pytest.raises(ValueError, match=message):
        MODELS.build(head)


def test_good_loss_settings_build():
    MODELS.build(dict(type="ExclusiveCrossEntropyLoss", schedule="paper_table2"))
    MODELS.build(dict(type="ExclusiveCrossEntropyLoss", schedule=4.0, confidence="logit_margin"))
    MODELS.build(dict(type="NonNegativePULoss", prior=0.2, nonnegative="kiryo", gamma=0.0))
    MODELS.build(dict(type="LabelSuperResolutionLoss", table=TABLE, alpha=0.0))
    focal = MODELS.build(dict(type="OneHotFocalLoss", gamma=2.0, alpha=(0.25, 0.75)))
    assert focal.alpha == [0.25, 0.75]


# -- every config: build the model, run real train steps on tiny data

SEG_CONFIGS = [
    ("unet_s5-d16_ce_partial-nuclei.py", tiny_unet_options),
    ("unet_s5-d16_focal_partial-nuclei.py", tiny_unet_options),
    ("unet_s5-d16_ece_partial-nuclei.py", tiny_unet_options),
    ("unet_s5-d16_ece-focal_partial-nuclei.py", tiny_unet_options),
    ("unet_s5-d16_nnpu_partial-nuclei.py", tiny_unet_options),
    ("unet_s5-d16_sampled-ce_partial-nuclei.py", tiny_unet_options),
    ("fcn_r18-d8_ce_partial-nuclei.py", tiny_resnet_options),
    ("fcn_r18-d8_ece_partial-nuclei.py", tiny_resnet_options),
    ("fcn_r18-d8_sampled-ce_partial-nuclei.py", tiny_resnet_options),
]
LSR_CONFIGS = [
    "unet_s5-d16_lsr-intra_lsr-blocks.py",
    "unet_s5-d16_lsr-inter_lsr-blocks.py",
    "unet_s5-d16_lsr-intra-inter_lsr-blocks.py",
    "unet_s5-d16_lsr-intra-inter-highres_lsr-blocks.py",
]


@pytest.fixture(scope="module")
def nuclei_root(tmp_path_factory):
    return write_partial_nuclei(tmp_path_factory.mktemp("nuclei"), n_train=2, n_val=1)


@pytest.fixture(scope="module")
def lsr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsr")
    labels = {f"f0_r{i}_c0": i % 3 for i in range(12)}
    write_lsr_blocks(root / "train", labels, block=32, highres=("f0_r0_c0", "f0_r3_c0"))
    write_lsr_blocks(root / "val", {"v_r0_c0": 1}, block=32)
    return root


def _train_steps(cfg, steps=2, progress=None):
    """Real train_steps of the config's model on its own dataloader (at ``progress``, as
    SparseLossAnnealingHook would set it, if given); returns the log vars of the last step and
    the gradient norm reaching the backbone's first layer."""
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    if progress is not None:
        set_training_progress(model, progress)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    it = iter(loader)
    first = next(p for name, p in model.backbone.named_parameters() if "weight" in name)
    for _ in range(steps - 1):
        log_vars = model.train_step(next(it), optim)
    data = model.data_preprocessor(next(it), True)
    losses = model(**data, mode="loss")
    total, log_vars = model.parse_losses(losses)
    total.backward()
    return log_vars, first.grad


def _check_log(log_vars, expect):
    assert any(k.endswith(expect) for k in log_vars), sorted(log_vars)
    for key, value in log_vars.items():
        if "loss" in key:
            assert np.isfinite(float(torch.as_tensor(value).detach())), (key, value)


@pytest.mark.parametrize("name, options", SEG_CONFIGS, ids=[c for c, _ in SEG_CONFIGS])
def test_partial_nuclei_configs_train(name, options, nuclei_root, tmp_path):
    opts = options(str(tmp_path), iters=2)
    opts.update({"data_root": str(nuclei_root), "train_dataloader.batch_size": 2})
    cfg = load_config(str(CONFIGS / name), opts)
    loss_type = cfg.model.decode_head.loss_decode.type
    expect = {
        "CrossEntropyLoss": "loss_ce",
        "OneHotFocalLoss": "loss_focal",
        "ExclusiveCrossEntropyLoss": "loss_ece",
        "NonNegativePULoss": "loss_nnpu",
        "SampledCrossEntropyLoss": "loss_sampled_ce",
    }[loss_type]
    log_vars, grad = _train_steps(cfg)
    _check_log(log_vars, f"decode.{expect}")
    assert f"aux.{expect}" in log_vars
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", LSR_CONFIGS)
def test_lsr_configs_train(name, lsr_root, tmp_path):
    opts = tiny_runtime_options(str(tmp_path), iters=2, crop=32, partial_nuclei=False)
    opts.update(
        {
            "data_root": str(lsr_root),
            "model.backbone.base_channels": 8,
            "model.decode_head.in_channels": 8,
            "model.decode_head.channels": 8,
            "train_dataloader.batch_size": 4,
            "train_dataloader.batch_sampler.group_size": 2,
        }
    )
    for key in (
        "model.data_preprocessor.size",
        "model.test_cfg.crop_size",
        "model.test_cfg.stride",
    ):
        opts.pop(key)
    cfg = load_config(str(CONFIGS / name), opts)
    assert Path(cfg.model.decode_head.loss_decode.table).is_file()
    log_vars, grad = _train_steps(cfg, progress=0.5)  # past the inter config's intra warm-up
    _check_log(log_vars, "decode.loss_lsr")
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# -- every config file: builds at full size, and differs from its baseline by the loss lines only

# maxmin_*.py configs are tested with the max-min segmentor (tests/test_mmseg_maxmin.py)
ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py") if not p.name.startswith("maxmin_"))
BASELINES = {
    "unet_s5-d16_focal_partial-nuclei.py": "unet_s5-d16_ce_partial-nuclei.py",
    "unet_s5-d16_ece_partial-nuclei.py": "unet_s5-d16_ce_partial-nuclei.py",
    "unet_s5-d16_ece-focal_partial-nuclei.py": "unet_s5-d16_ce_partial-nuclei.py",
    "unet_s5-d16_nnpu_partial-nuclei.py": "unet_s5-d16_ce_partial-nuclei.py",
    "unet_s5-d16_sampled-ce_partial-nuclei.py": "unet_s5-d16_ce_partial-nuclei.py",
    "fcn_r18-d8_ece_partial-nuclei.py": "fcn_r18-d8_ce_partial-nuclei.py",
    "fcn_r18-d8_sampled-ce_partial-nuclei.py": "fcn_r18-d8_ce_partial-nuclei.py",
    "unet_s5-d16_lsr-intra_lsr-blocks.py": "unet_s5-d16_lsr-intra-inter_lsr-blocks.py",
    "unet_s5-d16_lsr-inter_lsr-blocks.py": "unet_s5-d16_lsr-intra-inter_lsr-blocks.py",
    "unet_s5-d16_lsr-intra-inter-highres_lsr-blocks.py": (
        "unet_s5-d16_lsr-intra-inter_lsr-blocks.py"
    ),
}


def test_every_config_is_trained_by_a_test():
    assert set(ALL_CONFIGS) == {c for c, _ in SEG_CONFIGS} | set(LSR_CONFIGS)
    assert set(BASELINES) | set(BASELINES.values()) == set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_at_full_size(name, tmp_path):
    """Config.fromfile + MODELS.build of the config as shipped (stock widths); the LSR loss reads
    its table at build time, so it gets a generated one."""
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.custom_imports == dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)
    assert cfg.default_scope == "mmseg"
    if cfg.model.decode_head.loss_decode.get("type") == "LabelSuperResolutionLoss":
        table = write_lsr_blocks(tmp_path, {"a": 0}, num_labels=3) / "table.json"
        cfg.model.decode_head.loss_decode.table = str(table)
    model = MODELS.build(cfg.model)
    assert isinstance(model, EncoderDecoder)
    assert type(model.decode_head.loss_decode).__name__ == cfg.model.decode_head.loss_decode.type
    assert model.decode_head.num_classes == 2
    assert not any("SyncBatchNorm" in type(m).__name__ for m in model.modules())
    # the hook moves schedules and hands the data's annotated fraction to the losses: a loss
    # that takes either without it would train on its fallback
    hooks = [h["type"] for h in cfg.get("custom_hooks", [])]
    needs_hook = any(
        hasattr(m, "set_progress") or hasattr(m, "set_annotated_fraction") for m in model.modules()
    )
    assert ("SparseLossAnnealingHook" in hooks) == needs_hook


def _flat(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    if isinstance(node, (list, tuple)) and any(isinstance(v, dict) for v in node):
        out = {}
        for i, value in enumerate(node):
            out.update(_flat(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_config_differs_from_baseline_by_loss_lines_only(name):
    cfg = _flat(Config.fromfile(str(CONFIGS / name)).to_dict())
    base = _flat(Config.fromfile(str(CONFIGS / BASELINES[name])).to_dict())
    changed = {
        k for k in cfg.keys() | base.keys() if cfg.get(k, "<unset>") != base.get(k, "<unset>")
    }
    allowed = (
        "model.decode_head.loss_decode.",
        "model.auxiliary_head.loss_decode.",
        "custom_hooks.",
        "train_dataloader.dataset.data_prefix.highres_path",  # the "& high res" labels
    )
    assert changed and all(k.startswith(allowed) for k in changed), sorted(changed)
