"""Detectron2 adapter: the tiny Faster R-CNN on CPU trained with every sparse loss.

Skipped where detectron2 is not importable (it is not on PyPI; see docs/detectron2.md), except
under CI (the CI environment variable set), where that is a failure.
"""

import copy
import itertools
import math
import os

import pytest
import torch
from _frameworks import DETECTRON2_HINT, require

require("detectron2", "torchvision", hint=DETECTRON2_HINT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.layers import cat  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage, get_event_storage  # noqa: E402

from sparse_ext.detectron2 import (  # noqa: E402
    VALID_LOSSES,
    SparseProgressHook,
    SparseROIHeads,
    SparseRPN,
    add_sparse_config,
    load_sparse_config,
    model_zoo_config_file,
    set_sparse_progress,
    validate_sparse_config,
)
from sparse_ext.detectron2.config import ESTIMATED_BUDGET  # noqa: E402
from sparse_ext.losses import exclusive_cross_entropy, nnpu_loss  # noqa: E402
from sparse_ext.losses.fraction import FALLBACK_ANNOTATED_FRACTION  # noqa: E402
from sparse_ext.losses.nnpu import unlabeled_prior  # noqa: E402
from sparse_ext.losses.schedules import (  # noqa: E402
    ConstantSchedule,
    LinearSchedule,
    SigmoidSchedule,
    build_schedule,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs", "detectron2")
TINY = os.path.join(CONFIG_DIR, "faster_rcnn_R_18_FPN_tiny_cpu.yaml")
SIZE = 96


def tiny_cfg(roi="ce", rpn="ce", num_classes=1, **opts):
    cfg = load_sparse_config(TINY)
    cfg.MODEL.SPARSE.ROI_LOSS = roi
    cfg.MODEL.SPARSE.RPN_LOSS = rpn
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    return model


def image(boxes, classes, seed):
    """A uint8 image with bright rectangles at ``boxes`` and the matching Instances."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 40, (3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    for x0, y0, x1, y1 in boxes:
        img[:, int(y0) : int(y1), int(x0) : int(x1)] = 220
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return {"image": img, "instances": inst, "height": SIZE, "width": SIZE}


BOXES3 = [[8, 8, 30, 30], [50, 10, 80, 36], [20, 55, 44, 85]]


def batch(kind="mixed", num_classes=1):
    if kind == "mixed":  # three annotations (two classes if possible) + an unannotated image
        classes = [0, num_classes - 1, 0]
        return [image(BOXES3, classes, 1), image([], [], 2)]
    if kind == "single":
        return [image(BOXES3[:1], [0], 3)]
    if kind == "empty":
        return [image([], [], 4), image([], [], 5)]
    raise ValueError(kind)


def train_steps(model, data, steps=2, start_iter=0):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    history = []
    with EventStorage(start_iter) as storage:
        for it in range(start_iter, start_iter + steps):
            storage.iter = it
            losses = model(data)
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            history.append({k: v.detach() for k, v in losses.items()})
            grads = {
                "backbone": model.backbone.bottom_up.stem.conv1.weight.grad,
                "roi_cls": model.roi_heads.box_predictor.cls_score.weight.grad,
                "rpn_cls": model.proposal_generator.rpn_head.objectness_logits.weight.grad,
            }
            opt.step()
    return history, grads


def sample(model, data, seed):
    """Run the RPN and the ROI head's proposal sampling the way GeneralizedRCNN does."""
    images = model.preprocess_image(data)
    gt = [d["instances"] for d in data]
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, gt)
    torch.manual_seed(seed)
    sampled = model.roi_heads.label_and_sample_proposals(proposals, gt)
    return images, features, proposals, gt, sampled


def roi_predictions(model, features, sampled):
    heads = model.roi_heads
    feats = [features[f] for f in heads.box_in_features]
    box_features = heads.box_head(heads.box_pooler(feats, [p.proposal_boxes for p in sampled]))
    return heads.box_predictor(box_features)


# -- config ----------------------------------------------------------------------------------


def flat(node, prefix=""):
    """A config as {dotted key: value}."""
    out = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_r50_configs_resolve_detectron2_recipe_and_differ_by_sparse_lines_only():
    ce = load_sparse_config(os.path.join(CONFIG_DIR, "faster_rcnn_R_50_FPN_ce.yaml"))
    assert ce.MODEL.RESNETS.DEPTH == 50 and ce.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert ce.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert ce.SOLVER.MAX_ITER == 90000 and ce.SOLVER.BASE_LR == 0.02
    assert ce.MODEL.ROI_HEADS.NAME == "SparseROIHeads"
    assert ce.MODEL.PROPOSAL_GENERATOR.NAME == "SparseRPN"

    base = flat(ce)
    for loss in ("focal", "ece", "nnpu", "bde"):
        other = flat(
            load_sparse_config(os.path.join(CONFIG_DIR, f"faster_rcnn_R_50_FPN_{loss}.yaml"))
        )
        diff = sorted(k for k in base if base[k] != other[k])
        assert diff and all(k.startswith("MODEL.SPARSE.") for k in diff), (loss, diff)
        assert other["MODEL.SPARSE.ROI_LOSS"] == loss


def test_recommended_recipe_is_one_line_and_what_the_benchmark_ran():
    """faster_rcnn_*_sparse.yaml: one MODEL.SPARSE line on top of the CE recipe (R50-FPN) and of
    the tiny CPU config, and the tiny one is exactly the det benchmark's `ece_budget_est` run (ECE
    with the default exclusion bound, pi_u estimated per batch)."""
    from sparse_ext.benchmark.specs import LOSSES

    for base, sparse in (
        ("faster_rcnn_R_50_FPN_ce.yaml", "faster_rcnn_R_50_FPN_sparse.yaml"),
        ("faster_rcnn_R_18_FPN_tiny_cpu.yaml", "faster_rcnn_R_18_FPN_tiny_cpu_sparse.yaml"),
    ):
        a = flat(load_sparse_config(os.path.join(CONFIG_DIR, base)))
        b = flat(load_sparse_config(os.path.join(CONFIG_DIR, sparse)))
        assert sorted(k for k in a if a[k] != b[k]) == ["MODEL.SPARSE.ROI_LOSS"], sparse
        assert b["MODEL.SPARSE.ROI_LOSS"] == "ece" and b["MODEL.SPARSE.RPN_LOSS"] == "ce"
        assert b["MODEL.SPARSE.ECE.EXCLUSION_BUDGET"] == ESTIMATED_BUDGET
    bench = load_sparse_config(TINY)
    overrides = LOSSES["det"]["ece_budget_est"].overrides
    bench.merge_from_list([x for kv in overrides.items() for x in kv])
    assert flat(bench) == b
    paper = load_sparse_config(TINY)  # the benchmark's `ece` is the paper's: no bound
    paper.merge_from_list([x for kv in LOSSES["det"]["ece"].overrides.items() for x in kv])
    assert paper.MODEL.SPARSE.ECE.EXCLUSION_BUDGET == 1.0


def test_every_det_benchmark_spec_is_a_valid_config():
    """Each det benchmark loss merges onto its config and passes the config check (a misspelt
    key fails the merge); the ECE variants set the rho schedule they are named after."""
    from sparse_ext.benchmark.specs import LOSSES

    def merged(name):
        spec = LOSSES["det"][name]
        cfg = load_sparse_config(spec.config_path)
        cfg.merge_from_list([str(x) for kv in spec.overrides.items() for x in kv])
        validate_sparse_config(cfg)
        return cfg

    cfgs = {name: merged(name) for name in LOSSES["det"]}
    rho = {n: c.MODEL.SPARSE.ECE.SCHEDULE for n, c in cfgs.items() if n.startswith("ece")}
    assert all(cfgs[n].MODEL.SPARSE.ROI_LOSS == "ece" for n in rho)
    assert (rho["ece"].TYPE, rho["ece"].VALUE) == ("constant", 0.5)
    assert (rho["ece_rho08"].TYPE, rho["ece_rho08"].VALUE) == ("constant", 0.8)
    assert rho["ece_table2"].TYPE == "paper_table2"


ZOO_R50 = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
SHIPPED_CONFIGS = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_loads_through_the_model_zoo_and_builds(name):
    """Each configs/detectron2/*.yaml resolves (R50 recipes: from the installed detectron2's model
    zoo, no source clone) and builds on CPU without weights."""
    cfg = load_sparse_config(os.path.join(CONFIG_DIR, name))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model.roi_heads, SparseROIHeads)
    assert isinstance(model.proposal_generator, SparseRPN)
    assert model.roi_heads.box_predictor.loss_name == cfg.MODEL.SPARSE.ROI_LOSS
    assert model.proposal_generator.loss_name == cfg.MODEL.SPARSE.RPN_LOSS


def test_model_zoo_prefix_names_a_config_of_the_installed_detectron2():
    cfg = load_sparse_config(f"model_zoo://{ZOO_R50}")
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads" and cfg.SOLVER.MAX_ITER == 90000
    assert cfg.MODEL.SPARSE.ROI_LOSS == "ce"  # add_sparse_config's defaults are there
    with pytest.raises(FileNotFoundError, match="model zoo"):
        load_sparse_config("model_zoo://COCO-Detection/no_such_config.yaml")
    with pytest.raises(FileNotFoundError, match=f"model_zoo://{ZOO_R50}"):
        load_sparse_config(ZOO_R50)  # a zoo-relative path without the prefix: hint at it


def set_key(cfg, key, value):
    *path, leaf = key.split(".")
    node = cfg
    for name in path:
        node = node[name]
    node[leaf] = value


SCHEDULE_CHOICES = (
    "one of constant, linear, sigmoid, paper_table2, reference_exclusivity, reference_sampling"
)
BAD_SETTINGS = [
    ("MODEL.SPARSE.ROI_LOSS", "dice", "one of ce, focal, ece, nnpu, bde"),
    ("MODEL.SPARSE.RPN_LOSS", "dice", "one of ce, focal, ece, nnpu, bde"),
    (
        "MODEL.SPARSE.ECE.SCHEDULE.TYPE",
        "cosine",
        SCHEDULE_CHOICES,
    ),
    ("MODEL.SPARSE.ECE.SCHEDULE.VALUE", 1.2, "in [0, 1]"),
    ("MODEL.SPARSE.ECE.SCHEDULE.START", -0.1, "in [0, 1]"),
    ("MODEL.SPARSE.ECE.SCHEDULE.END", 2.0, "in [0, 1]"),
    ("MODEL.SPARSE.ECE.SCHEDULE.MIDPOINT", 5000.0, "in [0, 1]"),
    ("MODEL.SPARSE.ECE.SCHEDULE.TEMPERATURE", 0.0, "> 0"),
    (
        "MODEL.SPARSE.ECE.SAMPLING.TYPE",
        "step",
        SCHEDULE_CHOICES,
    ),
    ("MODEL.SPARSE.ECE.SAMPLING.VALUE", 1.5, "in [0, 1]"),
    ("MODEL.SPARSE.ECE.CONFIDENCE", "entropy", "one of foreground, margin, logit_margin"),
    ("MODEL.SPARSE.ECE.FOCAL_ALPHA", -0.5, ">= 0"),
    ("MODEL.SPARSE.ECE.FOCAL_GAMMA", -1.0, ">= 0"),
    ("MODEL.SPARSE.ECE.EXCLUSION_BUDGET", 1.5, "in [0, 1] or -1 or -2"),
    ("MODEL.SPARSE.ECE.EXCLUSION_BUDGET", -0.5, "in [0, 1] or -1 or -2"),
    ("MODEL.SPARSE.PU.PRIOR", 1.5, "in (0, 1)"),
    ("MODEL.SPARSE.PU.PRIOR", 0.0, "in (0, 1)"),
    ("MODEL.SPARSE.PU.PRIOR", float("nan"), "in (0, 1)"),
    ("MODEL.SPARSE.PU.PRIOR", "0.04", "a number in (0, 1)"),
    ("MODEL.SPARSE.PU.RPN_PRIOR", 1.0, "in (0, 1) or 0"),
    ("MODEL.SPARSE.PU.RPN_PRIOR", -0.1, "in (0, 1) or 0"),
    ("MODEL.SPARSE.PU.MODE", "pu", "one of detection, classic"),
    ("MODEL.SPARSE.PU.PRIOR_MODE", "auto", "one of fixed, sampled"),
    ("MODEL.SPARSE.PU.SURROGATE", "hinge", "one of log, sigmoid"),
    ("MODEL.SPARSE.PU.UNLABELED_PRIOR", 1.0, "in [0, 1) or -1"),
    ("MODEL.SPARSE.PU.RPN_UNLABELED_PRIOR", -0.5, "in [0, 1) or -1"),
    ("MODEL.SPARSE.PU.OBJECT_SHARE", 1.0, "in [0, 1)"),
    ("MODEL.SPARSE.PU.RPN_OBJECT_SHARE", -0.01, "in [0, 1)"),
    ("MODEL.SPARSE.ANNOTATED_FRACTION", 1.5, "in (0, 1] or 0"),
    ("MODEL.SPARSE.PU.NONNEGATIVE", "relu", "one of clamp, kiryo, none"),
    ("MODEL.SPARSE.PU.BETA", -0.1, ">= 0"),
    ("MODEL.SPARSE.PU.GAMMA", 1.5, "in [0, 1]"),
    ("MODEL.SPARSE.BDE.IOU_THRESH", 0.0, "in (0, 1]"),
    ("MODEL.SPARSE.BDE.SCORE_THRESH", 1.01, "in [0, 1]"),
    ("MODEL.SPARSE.FOCAL.ALPHA", 1.5, "in [0, 1] or -1"),
    ("MODEL.SPARSE.FOCAL.GAMMA", -2.0, ">= 0"),
]


@pytest.mark.parametrize("key,value,valid", BAD_SETTINGS)
def test_bad_sparse_setting_fails_at_build_naming_the_key_and_its_range(key, value, valid):
    cfg = tiny_cfg()  # ce/ce: options of unused losses are checked too
    set_key(cfg, key, value)
    with pytest.raises(ValueError) as err:
        build_model(cfg)
    msg = str(err.value)
    assert msg.startswith("invalid MODEL.SPARSE setting: ") and msg.count(" = ") == 1, msg
    assert f"{key} = {value!r}: must be {valid}" in msg, msg


def test_sparse_settings_are_checked_by_either_sparse_module_and_reported_together():
    for roi_head, rpn in (("SparseROIHeads", "RPN"), ("StandardROIHeads", "SparseRPN")):
        cfg = tiny_cfg()
        cfg.MODEL.ROI_HEADS.NAME = roi_head
        cfg.MODEL.PROPOSAL_GENERATOR.NAME = rpn
        cfg.MODEL.SPARSE.PU.PRIOR = 2.0
        cfg.MODEL.SPARSE.FOCAL.GAMMA = -1.0
        with pytest.raises(ValueError, match="settings: MODEL.SPARSE.PU.PRIOR = 2.0") as err:
            build_model(cfg)
        assert "; MODEL.SPARSE.FOCAL.GAMMA = -1.0: must be >= 0" in str(err.value)


def test_sparse_settings_at_the_ends_of_their_ranges_are_valid():
    cfg = tiny_cfg("NNPU", "Focal")  # loss names are case-insensitive
    for key, value in {
        "MODEL.SPARSE.PU.PRIOR": 0.999,
        "MODEL.SPARSE.PU.RPN_PRIOR": 0.0,
        "MODEL.SPARSE.PU.BETA": 0.0,
        "MODEL.SPARSE.PU.GAMMA": 0.0,
        "MODEL.SPARSE.FOCAL.ALPHA": -1.0,
        "MODEL.SPARSE.FOCAL.GAMMA": 0.0,
        "MODEL.SPARSE.BDE.IOU_THRESH": 1.0,
        "MODEL.SPARSE.BDE.SCORE_THRESH": 1.0,
        "MODEL.SPARSE.ECE.SCHEDULE.TYPE": " Paper_Table2 ",
        "MODEL.SPARSE.ECE.SCHEDULE.START": 0.0,
        "MODEL.SPARSE.ECE.SCHEDULE.END": 1,
        "MODEL.SPARSE.ECE.SAMPLING.VALUE": 0.0,
    }.items():
        set_key(cfg, key, value)
    validate_sparse_config(cfg)
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.loss_name == "nnpu"
    assert model.proposal_generator.loss_name == "focal"
    assert model.proposal_generator.focal_options == {"alpha": -1.0, "gamma": 0.0}


def test_softmax_roi_losses_refuse_sigmoid_ce():
    cfg = tiny_cfg(roi="ece")
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        build_model(cfg)


def test_add_sparse_config_defaults_are_stock():
    cfg = get_cfg()
    add_sparse_config(cfg)
    assert cfg.MODEL.SPARSE.ROI_LOSS == "ce" and cfg.MODEL.SPARSE.RPN_LOSS == "ce"
    assert set(VALID_LOSSES) == {"ce", "focal", "ece", "nnpu", "bde"}


def test_ece_schedules_from_config():
    cfg = tiny_cfg("ece", "ece")
    ece = build(cfg).roi_heads.box_predictor.ece_loss
    assert ece.schedule == ConstantSchedule(0.5) and ece.sampling_schedule is None
    cfg.MODEL.SPARSE.ECE.SCHEDULE.TYPE = "paper_table2"
    cfg.MODEL.SPARSE.ECE.SAMPLING.TYPE = "reference_sampling"
    model = build(cfg)
    for ece in (model.roi_heads.box_predictor.ece_loss, model.proposal_generator.ece_loss):
        assert ece.schedule == build_schedule("paper_table2")
        assert ece.sampling_schedule == build_schedule("reference_sampling")
    assert not model.roi_heads.box_predictor.ece_loss.use_sigmoid
    assert model.proposal_generator.ece_loss.use_sigmoid
    cfg.MODEL.SPARSE.ECE.SCHEDULE.TYPE = "sigmoid"
    cfg.MODEL.SPARSE.ECE.SCHEDULE.START = 0.2
    cfg.MODEL.SPARSE.ECE.SCHEDULE.END = 0.8
    ece = build(cfg).roi_heads.box_predictor.ece_loss
    assert ece.schedule == SigmoidSchedule(0.2, 0.8, 0.5, 0.1)


# -- training --------------------------------------------------------------------------------


# Each loss in both the ROI head and the RPN by default; the 20 cross pairs are `slow`.
LOSS_PAIRS = [
    pytest.param(roi, rpn, marks=() if roi == rpn else pytest.mark.slow)
    for roi, rpn in itertools.product(VALID_LOSSES, VALID_LOSSES)
]


@pytest.mark.parametrize("roi,rpn", LOSS_PAIRS)
def test_every_loss_combination_trains(roi, rpn):
    cfg = tiny_cfg(roi, rpn, num_classes=2)
    cfg.MODEL.SPARSE.BDE.SCORE_THRESH = 0.0  # random init: let every prediction count
    model = build(cfg)
    history, grads = train_steps(model, batch("mixed", num_classes=2), steps=2)
    for losses in history:
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
        assert all(torch.isfinite(v) for v in losses.values()), losses
    for name, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("loss", VALID_LOSSES)
@pytest.mark.parametrize("kind", ["single", "empty"])
def test_images_with_one_or_no_annotation(loss, kind):
    cfg = tiny_cfg(loss, loss)
    cfg.MODEL.SPARSE.BDE.SCORE_THRESH = 0.0
    model = build(cfg)
    history, grads = train_steps(model, batch(kind), steps=1)
    assert all(torch.isfinite(v) for v in history[0].values()), history
    assert torch.isfinite(grads["roi_cls"]).all() and torch.isfinite(grads["rpn_cls"]).all()
    if kind == "empty":  # nothing to regress
        assert history[0]["loss_box_reg"] == 0 and history[0]["loss_rpn_loc"] == 0


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)  # same parameters and buffers, same names, same order
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


def test_ce_builds_and_trains_as_stock_detectron2_bit_for_bit():
    """ce + the same seed: the same weights as StandardROIHeads + FastRCNNOutputLayers and RPN
    (no weights copied), and the same losses and updated weights after a real train step, for the
    sparse ROI head and the sparse RPN alone and together."""

    def seeded_step(roi_head, rpn):
        cfg = tiny_cfg()
        cfg.MODEL.ROI_HEADS.NAME = roi_head
        cfg.MODEL.PROPOSAL_GENERATOR.NAME = rpn
        model = build(cfg, seed=0)
        init = copy.deepcopy(model)
        torch.manual_seed(123)  # the proposal and anchor samplers draw from it
        losses = train_steps(model, batch("mixed"), steps=1)[0][0]
        return init, losses, model

    stock_init, stock_losses, stock = seeded_step("StandardROIHeads", "RPN")
    for roi_head, rpn in (
        ("SparseROIHeads", "RPN"),
        ("StandardROIHeads", "SparseRPN"),
        ("SparseROIHeads", "SparseRPN"),
    ):
        init, losses, model = seeded_step(roi_head, rpn)
        assert type(model.roi_heads).__name__ == roi_head
        assert type(model.proposal_generator).__name__ == rpn
        assert_same_weights(stock_init, init)
        assert losses.keys() == stock_losses.keys()
        for k in losses:
            assert torch.equal(losses[k], stock_losses[k]), (roi_head, rpn, k)
        assert_same_weights(stock, model)


def test_r50_ce_recipe_builds_the_model_zoo_faster_rcnn_weights():
    """configs/detectron2/faster_rcnn_R_50_FPN_ce.yaml vs Detectron2's own loader on its model-zoo
    file: the same seed gives the same R50-FPN weights."""
    stock_cfg = get_cfg()
    stock_cfg.merge_from_file(model_zoo_config_file(ZOO_R50))
    ours_cfg = load_sparse_config(os.path.join(CONFIG_DIR, "faster_rcnn_R_50_FPN_ce.yaml"))
    models = []
    for cfg in (stock_cfg, ours_cfg):
        cfg.MODEL.DEVICE = "cpu"
        torch.manual_seed(0)
        models.append(build_model(cfg))
    assert type(models[1].roi_heads) is SparseROIHeads
    assert_same_weights(*models)


def test_ece_with_rho_one_equals_ce():
    """rho = 1 excludes nothing: CE, with the default bound (its counts taken) in the ROI head."""
    ce = build(tiny_cfg())
    cfg = tiny_cfg("ece", "ece", **{"MODEL.SPARSE.ANNOTATED_FRACTION": 0.5})
    cfg.MODEL.SPARSE.ECE.SCHEDULE.VALUE = 1.0
    ece = build(cfg)
    ece.load_state_dict(ce.state_dict())
    data = batch("mixed")
    out = []
    for model in (ce, ece):
        torch.manual_seed(7)
        out.append(train_steps(model, data, steps=1)[0][0])
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=1e-5, atol=1e-6)


def test_ece_exclusion_budget_from_config_and_the_annotated_fraction():
    def budgets(cfg):
        model = build(cfg)
        stages = (model.roi_heads.box_predictor, model.proposal_generator)
        return [stage.ece_loss.exclusion_budget for stage in stages]

    paper = {"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 1.0}
    assert budgets(tiny_cfg("ece", "ece", **paper)) == [None, None]  # the unbounded Eq. 7
    assert budgets(tiny_cfg("ece", "ece", **{"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 0.2})) == [
        0.2,
        0.2,
    ]
    cfg = tiny_cfg("ece", "ece", **{"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -1.0})
    model = build(cfg)  # inference reads no f: the model builds, and predicts
    model.eval()
    with torch.no_grad():
        assert len(model(batch("mixed"))) == 2
    model.train()
    with pytest.raises(ValueError, match="ECE.EXCLUSION_BUDGET derives pi_u.*ANNOTATED_FRACTION"):
        train_steps(model, batch("mixed"), steps=1)  # training does
    cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 0.1  # pi_u of each stage's object share
    assert budgets(cfg) == [
        pytest.approx(unlabeled_prior(0.1, 0.06)),
        pytest.approx(unlabeled_prior(0.1, 0.0014)),
    ]
    cfg.MODEL.SPARSE.ECE.CONFIDENCE = "margin"
    with pytest.raises(ValueError, match="EXCLUSION_BUDGET = -1.0 ranks.*not 'margin'"):
        build(cfg)
    cfg.MODEL.SPARSE.ECE.CONFIDENCE = "foreground"
    history, _ = train_steps(build(cfg), batch("mixed"), steps=2)
    assert all(torch.isfinite(v) for losses in history for v in losses.values()), history


def test_ece_exclusion_budget_estimated_per_batch_from_the_sampled_candidates():
    cfg = tiny_cfg("ece")  # the default budget, -2
    assert cfg.MODEL.SPARSE.ECE.EXCLUSION_BUDGET == ESTIMATED_BUDGET == -2.0
    with pytest.warns(UserWarning, match="EXCLUSION_BUDGET -2: the annotated fraction is unknown"):
        fallback = build(cfg).roi_heads.box_predictor.ece_budget_fraction
    assert fallback == FALLBACK_ANNOTATED_FRACTION
    cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 0.25
    cfg.MODEL.SPARSE.ECE.SCHEDULE.VALUE = 0.3  # rho below the untrained head's confidences
    model = build(cfg)
    assert model.roi_heads.box_predictor.ece_budget_fraction == 0.25
    assert model.roi_heads.box_predictor.ece_loss.exclusion_budget is None
    data = batch("mixed")
    gt = [d["instances"] for d in data]
    # proposals: the three annotations shifted by 1 px (IoU > 0.8) and five 6 px boxes (IoU < 0.1)
    # in the annotated image, six 6 px boxes in the other; Detectron2 appends the annotations.
    small = [
        [x, y, x + 6, y + 6] for x, y in ((0, 0), (88, 0), (0, 88), (88, 88), (60, 60), (40, 40))
    ]
    boxes = [[[x0 + 1, y0 + 1, x1 + 1, y1 + 1] for x0, y0, x1, y1 in BOXES3] + small[:5], small]
    proposals = []
    for b in boxes:
        inst = Instances((SIZE, SIZE))
        inst.proposal_boxes = Boxes(torch.tensor(b, dtype=torch.float32))
        inst.objectness_logits = torch.zeros(len(b))
        proposals.append(inst)
    with EventStorage(0):
        images = model.preprocess_image(data)
        features = model.backbone(images.tensor)
        sampled = model.roi_heads.label_and_sample_proposals(proposals, gt)
        # by hand: 3 proposals on annotations (their 3 appended boxes not counted), 5 + 6 off them
        assert [p.candidates_on_annotated.unique().tolist() for p in sampled] == [[3], [0]]
        assert [p.unlabeled_candidates.unique().tolist() for p in sampled] == [[5], [6]]
        budget = 3 * 0.75 / (0.25 * 11)  # estimated_unlabeled_prior: 0.818
        predictions = roi_predictions(model, features, sampled)
        losses = model.roi_heads.box_predictor.losses(predictions, sampled)
        logged = get_event_storage().latest()["fast_rcnn/ece_budget"][0]
    assert logged == pytest.approx(budget)
    scores = predictions[0]
    logits = torch.cat([scores[:, 1:], scores[:, :1]], dim=1)
    target = torch.remainder(cat([p.gt_classes for p in sampled]) + 1, 2)
    ece = model.roi_heads.box_predictor.ece_loss
    expected = ece(logits, target, exclusion_budget=budget)
    torch.testing.assert_close(losses["loss_cls"], expected)
    assert not torch.allclose(expected, ece(logits, target))  # the bound changed the loss
    history, _ = train_steps(model, data, steps=2)
    assert all(torch.isfinite(v) for losses in history for v in losses.values()), history

    # the stock path (no bound) records nothing; the RPN has no ROI sampler to count: no bound
    paper = tiny_cfg("ece", **{"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 1.0})
    with EventStorage(0):
        plain = build(paper).roi_heads.label_and_sample_proposals(proposals, gt)
    assert not plain[0].has("candidates_on_annotated")
    with pytest.raises(RuntimeError, match="counts the candidates.*'SparseROIHeads'"):
        model.roi_heads.box_predictor._estimated_budget(plain)  # sampled without the counts
    cfg.MODEL.SPARSE.RPN_LOSS = "ece"
    rpn = build(cfg).proposal_generator
    assert rpn.loss_name == "ece" and rpn.ece_loss.exclusion_budget is None

    # the default bound ranks the foreground confidence, where it bounds anything
    margin = {"MODEL.SPARSE.ECE.CONFIDENCE": "margin"}
    validate_sparse_config(tiny_cfg("ce", "ece", **margin))  # -2 leaves the RPN unbounded
    with pytest.raises(ValueError, match="EXCLUSION_BUDGET = -2.0 ranks.*or EXCLUSION_BUDGET 1"):
        validate_sparse_config(tiny_cfg("ece", **margin))
    with pytest.raises(ValueError, match="EXCLUSION_BUDGET = -2.0 ranks"):
        validate_sparse_config(tiny_cfg("ECE", **margin))  # loss names take any case
    validate_sparse_config(tiny_cfg("ece", **margin, **{"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 1.0}))


@pytest.mark.parametrize("prior_mode,surrogate", [("fixed", "log"), ("sampled", "sigmoid")])
def test_nnpu_equals_core_function_on_the_heads_logits_and_labels(prior_mode, surrogate):
    cfg = tiny_cfg("nnpu", "nnpu", num_classes=2)
    cfg.MODEL.SPARSE.PU.PRIOR_MODE = prior_mode
    cfg.MODEL.SPARSE.PU.SURROGATE = surrogate
    if prior_mode == "fixed":
        cfg.MODEL.SPARSE.PU.PRIOR = 0.3
        cfg.MODEL.SPARSE.PU.RPN_PRIOR = 0.2
        roi_prior, rpn_prior = 0.3, 0.2
    else:  # pi_u = (1 - f) q / (1 - f q) for each head's own q
        cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 0.25
        cfg.MODEL.SPARSE.PU.OBJECT_SHARE = 0.4
        cfg.MODEL.SPARSE.PU.RPN_OBJECT_SHARE = 0.1
        roi_prior, rpn_prior = 0.75 * 0.4 / 0.9, 0.75 * 0.1 / 0.975
    options = dict(prior_mode=prior_mode, surrogate=surrogate)
    model = build(cfg)
    data = batch("mixed", num_classes=2)
    with EventStorage(0):
        images, features, proposals, gt, sampled = sample(model, data, seed=5)
        predictions = roi_predictions(model, features, sampled)
        losses = model.roi_heads.box_predictor.losses(predictions, sampled)
        gt_classes = cat([p.gt_classes for p in sampled])
        assert (gt_classes == 2).any() and (gt_classes < 2).any()  # both kinds of samples
        expected = nnpu_loss(predictions[0], gt_classes, roi_prior, background_index=2, **options)
        torch.testing.assert_close(losses["loss_cls"], expected)

        # RPN: the objectness logits of the sampled anchors with labels 1 / 0 (ignored dropped)
        rpn = model.proposal_generator
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
        deltas = [
            d.view(d.shape[0], -1, 4, d.shape[-2], d.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for d in deltas
        ]
        torch.manual_seed(9)
        labels, matched = rpn.label_and_sample_anchors(anchors, gt)
        rpn_losses = rpn.losses(anchors, logits, labels, deltas, matched)
        labels = torch.stack(labels)
        valid = labels >= 0
        assert (labels == -1).any()
        expected = nnpu_loss(cat(logits, dim=1)[valid], labels[valid].long(), rpn_prior, **options)
        torch.testing.assert_close(rpn_losses["loss_rpn_cls"], expected)
        # the sampled prior of each batch is logged: pi_b = Np/N + (Nu/N) pi_u
        logged = {k: v[0] for k, v in get_event_storage().latest().items()}
    if prior_mode == "sampled":
        n_pos = int((gt_classes < 2).sum())
        assert logged["fast_rcnn/pu_prior"] == pytest.approx(
            (n_pos + (len(gt_classes) - n_pos) * roi_prior) / len(gt_classes)
        )
        n_pos, n = int((labels == 1).sum()), int(valid.sum())
        assert logged["rpn/pu_prior"] == pytest.approx((n_pos + (n - n_pos) * rpn_prior) / n)
    else:
        assert "fast_rcnn/pu_prior" not in logged and "rpn/pu_prior" not in logged


def test_sampled_prior_reads_the_annotated_fraction_from_the_training_metadata():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = (
        "sparse_adapter_f30",
        "sparse_adapter_f30b",
        "sparse_adapter_f50",
        "sparse_adapter_none",
    )
    for name, fraction in zip(names, (0.3, 0.3, 0.5, None)):
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(sparse_fraction=fraction)
    try:
        cfg = tiny_cfg("nnpu", "nnpu")
        cfg.MODEL.SPARSE.PU.PRIOR_MODE = "sampled"
        cfg.DATASETS.TRAIN = (names[0], names[1])
        model = build(cfg)
        assert model.roi_heads.box_predictor.pu_options["prior"] == pytest.approx(
            unlabeled_prior(0.3, 0.06)
        )
        assert model.proposal_generator.pu_options["prior"] == pytest.approx(
            unlabeled_prior(0.3, 0.0014)
        )
        cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 1.0  # the key wins: every object labelled, pi_u 0
        assert build(cfg).roi_heads.box_predictor.pu_options["prior"] == 0.0
        cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 0.0
        cfg.MODEL.SPARSE.PU.UNLABELED_PRIOR = 0.05  # explicit pi_u
        assert build(cfg).roi_heads.box_predictor.pu_options["prior"] == 0.05
        cfg.DATASETS.TRAIN = (names[0], names[2])
        with pytest.raises(ValueError, match="different annotated fractions"):
            build(cfg)
        cfg.DATASETS.TRAIN = (names[3],)
        model = build(cfg)  # the RPN still derives its pi_u: it cannot train, inference can
        assert model.proposal_generator.pu_options["prior"] is None
        model.eval()
        with torch.no_grad():
            assert len(model(batch("mixed"))) == 2
        model.train()
        with pytest.raises(
            ValueError, match="RPN_UNLABELED_PRIOR -1 derives pi_u.*ANNOTATED_FRACTION"
        ):
            train_steps(model, batch("mixed"), steps=1)
        cfg.MODEL.SPARSE.PU.MODE = "classic"
        with pytest.raises(ValueError, match="PRIOR_MODE 'sampled' needs MODE 'detection'"):
            build(cfg)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.mark.parametrize("surrogate", ["log", "sigmoid"])
def test_nnpu_sampled_prior_trains(surrogate):
    cfg = tiny_cfg("nnpu", "nnpu", num_classes=2)
    cfg.MODEL.SPARSE.PU.PRIOR_MODE = "sampled"
    cfg.MODEL.SPARSE.PU.SURROGATE = surrogate
    cfg.MODEL.SPARSE.ANNOTATED_FRACTION = 0.1
    history, grads = train_steps(build(cfg), batch("mixed", num_classes=2), steps=2)
    assert all(torch.isfinite(v) for losses in history for v in losses.values()), history
    for name, g in grads.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_ece_rho_follows_the_schedule_as_storage_iter_advances():
    cfg = tiny_cfg("ece", "ece", num_classes=2, **{"MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 1.0})
    cfg.SOLVER.MAX_ITER = 10
    cfg.MODEL.SPARSE.ECE.SCHEDULE.TYPE = "linear"
    cfg.MODEL.SPARSE.ECE.SCHEDULE.START = 0.05
    cfg.MODEL.SPARSE.ECE.SCHEDULE.END = 0.95
    schedule = LinearSchedule(0.05, 0.95)
    model = build(cfg)
    predictor = model.roi_heads.box_predictor
    data = batch("mixed", num_classes=2)
    with EventStorage(0) as storage:
        _, features, _, _, sampled = sample(model, data, seed=3)
        scores, deltas = roi_predictions(model, features, sampled)
        # make the unannotated proposals' foreground confidence spread over (0, 1)
        gt_classes = cat([p.gt_classes for p in sampled])
        spread = torch.linspace(-4, 4, scores.shape[0])
        scores = scores.detach().clone()
        scores[:, 2] = spread  # background logit
        values = []
        for it in (0, 5, 10):
            storage.iter = it
            loss = predictor.losses((scores, deltas), sampled)["loss_cls"]
            rho = schedule(it / 10)
            logits = torch.cat([scores[:, 2:], scores[:, :2]], dim=1)
            target = torch.remainder(gt_classes + 1, 3)
            expected = exclusive_cross_entropy(logits, target, rho=rho)
            torch.testing.assert_close(loss, expected)
            values.append(loss.item())
        assert values[0] < values[1] < values[2]  # more unannotated terms kept as rho grows

        # an explicit progress (SparseProgressHook / set_sparse_progress) takes precedence
        assert set_sparse_progress(model, 0.5) >= 2
        storage.iter = 0
        loss = predictor.losses((scores, deltas), sampled)["loss_cls"]
        assert loss.item() == pytest.approx(values[1], rel=1e-6)


def test_progress_hook_in_a_detectron2_trainer_loop():
    cfg = tiny_cfg("ece", "ece")
    model = build(cfg)
    data = batch("mixed")

    def loader():
        while True:
            yield data

    trainer = SimpleTrainer(model, loader(), torch.optim.SGD(model.parameters(), lr=1e-3))
    trainer.register_hooks([SparseProgressHook()])
    trainer.train(0, 4)
    assert model.roi_heads.box_predictor.progress == pytest.approx(3 / 4)
    assert model.proposal_generator.progress == pytest.approx(3 / 4)


def test_progress_reaches_models_wrapped_in_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = build(tiny_cfg("ece", "ece"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        set_sparse_progress(wrapped, 0.25)
    finally:
        dist.destroy_process_group()
    assert model.roi_heads.box_predictor.progress == 0.25
    assert model.proposal_generator.progress == 0.25
    with pytest.raises(ValueError, match="progress"):
        set_sparse_progress(model, 1.5)


def test_bde_without_confident_predictions_is_plain_ce():
    ce = build(tiny_cfg())
    init = copy.deepcopy(ce.state_dict())
    cfg = tiny_cfg("bde", "bde")
    cfg.MODEL.SPARSE.BDE.SCORE_THRESH = 1.0  # no prediction reaches it: every weight is 1
    bde = build(cfg)
    bde.load_state_dict(init)
    data = batch("mixed")
    out = []
    for model in (ce, bde):
        torch.manual_seed(11)
        out.append(train_steps(model, data, steps=1)[0][0])
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k])
    # with every prediction counting, dense unannotated regions are down-weighted
    cfg.MODEL.SPARSE.BDE.SCORE_THRESH = 0.0
    dense = build(cfg)
    dense.load_state_dict(init)
    torch.manual_seed(11)
    low = train_steps(dense, data, steps=1)[0][0]
    assert low["loss_cls"] < out[0]["loss_cls"] and low["loss_rpn_cls"] < out[0]["loss_rpn_cls"]
    assert low["loss_box_reg"] == out[0]["loss_box_reg"]  # regression unchanged


def test_focal_roi_head_scores_with_sigmoid():
    model = build(tiny_cfg("focal", "focal"))
    assert model.roi_heads.box_predictor.use_sigmoid_ce
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in batch("single")[0].items() if k != "instances"}])
    scores = out[0]["instances"].scores
    assert ((scores >= 0) & (scores <= 1)).all()
    assert math.isfinite(float(scores.sum()))


def test_ece_keeps_the_background_of_proposals_on_annotations():
    """MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU: unannotated proposals that overlap an annotation
    (below the foreground IoU) are never excluded, and the estimated bound counts the same
    number of exclusions among the others."""
    keep = {
        "MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU": 0.2,
        "MODEL.SPARSE.ANNOTATED_FRACTION": 0.5,
        "MODEL.SPARSE.ECE.SCHEDULE.VALUE": 0.3,  # rho below the untrained head's confidences
    }
    model = build(tiny_cfg("ece", **keep))
    predictor = model.roi_heads.box_predictor
    assert predictor.ece_keep_background_iou == 0.2
    with pytest.warns(UserWarning, match="annotated fraction is unknown"):
        assert build(tiny_cfg("ece")).roi_heads.box_predictor.ece_keep_background_iou is None
    data = batch("mixed")
    gt = [d["instances"] for d in data]
    # the annotated image: the annotations shifted by 1 px (IoU > 0.8), their left thirds (IoU
    # 1/3: background, kept) and two 6 px boxes far from them; six 6 px boxes in the other
    small = [
        [x, y, x + 6, y + 6] for x, y in ((0, 0), (88, 0), (0, 88), (88, 88), (60, 60), (40, 40))
    ]
    thirds = [[x0, y0, x0 + (x1 - x0) / 3, y1] for x0, y0, x1, y1 in BOXES3]
    shifted = [[x0 + 1, y0 + 1, x1 + 1, y1 + 1] for x0, y0, x1, y1 in BOXES3]
    proposals = []
    for b in (shifted + thirds + small[:2], small):
        inst = Instances((SIZE, SIZE))
        inst.proposal_boxes = Boxes(torch.tensor(b, dtype=torch.float32))
        inst.objectness_logits = torch.zeros(len(b))
        proposals.append(inst)
    with EventStorage(0):
        features = model.backbone(model.preprocess_image(data).tensor)
        sampled = model.roi_heads.label_and_sample_proposals(proposals, gt)
        gt_classes = cat([p.gt_classes for p in sampled])
        predictions = roi_predictions(model, features, sampled)
        kept = predictor._kept_background(predictions, sampled, gt_classes)
        boxes = cat([p.proposal_boxes.tensor for p in sampled])
        expected_kept = torch.zeros_like(kept)
        for third in thirds:
            expected_kept |= (boxes == torch.tensor(third)).all(dim=1)
        assert int(expected_kept.sum()) == 3
        assert torch.equal(kept, expected_kept)
        losses = predictor.losses(predictions, sampled)
        assert get_event_storage().latest()["fast_rcnn/ece_kept_background"][0] == pytest.approx(
            3 / len(gt_classes)
        )
    # 3 candidates on annotations, 11 off them: pi_u = 3 * 0.5 / (0.5 * 11); its 11 * pi_u = 3
    # exclusions are a share 3 / 8 of the 8 proposals that may be excluded
    unannotated = int((gt_classes == 1).sum())
    assert unannotated == 11
    scores = predictions[0]
    logits = torch.cat([scores[:, 1:], scores[:, :1]], dim=1)
    target = torch.remainder(gt_classes + 1, 2)
    ece = predictor.ece_loss
    expected = ece(logits, target, (target != 0) | kept, exclusion_budget=3 / 8)
    torch.testing.assert_close(losses["loss_cls"], expected)
    budget = 3 * 0.5 / (0.5 * 11)
    assert not torch.allclose(expected, ece(logits, target, exclusion_budget=budget))
    history, _ = train_steps(model, data, steps=2)
    assert all(torch.isfinite(v) for losses in history for v in losses.values()), history

    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"KEEP_BACKGROUND_IOU = .*: must be in \[0, 1\)"):
            validate_sparse_config(tiny_cfg("ece", **{"MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU": bad}))


def test_ece_keeps_the_background_of_proposals_on_part_of_a_detection():
    """MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE: the regressed boxes of confident unannotated
    proposals (NMS at ROI_HEADS.NMS_THRESH_TEST) stand in for annotations in the
    KEEP_BACKGROUND_IOU rule: a proposal on a third of one keeps its background term, the
    detection itself and its near duplicate (IoU >= the foreground threshold) may be excluded."""
    opts = {
        "MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU": 0.2,
        "MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE": 0.6,
        "MODEL.SPARSE.ANNOTATED_FRACTION": 0.5,
        "MODEL.SPARSE.ECE.SCHEDULE.VALUE": 0.3,
    }
    model = build(tiny_cfg("ece", **opts))
    predictor = model.roi_heads.box_predictor
    assert (predictor.ece_keep_background_score, predictor.ece_foreground_iou) == (0.6, 0.5)
    # an unannotated image: a detection D (fg score 0.9), its 1 px shift (0.8, suppressed by
    # NMS, IoU 0.88 with D: not kept), D's left third (0.5 < 0.6: not a pseudo-annotation; IoU
    # 1/3 with D: kept), a box overlapping D at IoU 1/9 (below 0.2: not kept) and a far box
    # scored 0.7 whose own box is the only pseudo-annotation near it (IoU 1: not kept)
    boxes = torch.tensor(
        [
            [20.0, 20.0, 50.0, 50.0],
            [21.0, 21.0, 51.0, 51.0],
            [20.0, 20.0, 30.0, 50.0],
            [44.0, 20.0, 74.0, 50.0],
            [70.0, 70.0, 90.0, 90.0],
        ]
    )
    fg = torch.tensor([0.9, 0.8, 0.5, 0.3, 0.7])
    scores = torch.stack([torch.logit(fg), torch.zeros(5)], dim=1)  # softmax fg prob = fg
    deltas = torch.zeros(5, 4 * predictor.num_classes)  # regressed boxes = the proposals
    inst = Instances((SIZE, SIZE))
    inst.proposal_boxes = Boxes(boxes)
    inst.gt_classes = torch.ones(5, dtype=torch.long)  # all unannotated
    with EventStorage(0):
        kept = predictor._kept_background((scores, deltas), [inst], inst.gt_classes)
        assert kept.tolist() == [False, False, True, False, False]
        # the fourth box's IoU with D is 6 * 30 / (2 * 900 - 180) = 1 / 9: at a 0.1 rule it is kept
        predictor.ece_keep_background_iou = 0.1
        kept = predictor._kept_background((scores, deltas), [inst], inst.gt_classes)
        assert kept.tolist() == [False, False, True, True, False]
        # no confident proposal: nothing beyond the annotations' rule (none here)
        predictor.ece_keep_background_score = 0.95
        kept = predictor._kept_background((scores, deltas), [inst], inst.gt_classes)
        assert not kept.any()
    model = build(tiny_cfg("ece", **opts))
    history, _ = train_steps(model, batch("mixed"), steps=2)
    assert all(torch.isfinite(v) for losses in history for v in losses.values()), history

    with pytest.raises(ValueError, match="KEEP_BACKGROUND_SCORE = 0.5 applies the"):
        validate_sparse_config(tiny_cfg("ece", **{"MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE": 0.5}))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"KEEP_BACKGROUND_SCORE = .*: must be in \[0, 1\)"):
            validate_sparse_config(
                tiny_cfg("ece", **{**opts, "MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE": bad})
            )


def test_det_false_positives_missed_follows_the_model_stage_by_stage(tmp_path):
    """tools/det_false_positives.py --missed: the share of annotations each stage reaches. Its own
    forward pass (proposals, regressed boxes, detections) must give the detections Detectron2's
    predictor gives, and each stage can only lose annotations to the next."""
    import importlib.util

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultPredictor
    from detectron2.structures import pairwise_iou
    from skimage import io

    spec = importlib.util.spec_from_file_location(
        "det_false_positives", os.path.join(REPO, "tools", "det_false_positives.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    boxes = [[10.0, 12.0, 40.0, 44.0], [55.0, 50.0, 80.0, 75.0], [20.0, 60.0, 34.0, 90.0]]
    bgr = image(boxes, [0, 0, 0], seed=3)["image"].permute(1, 2, 0).numpy()  # the model's order
    os.makedirs(tmp_path / "images" / "test")
    io.imsave(tmp_path / "images" / "test" / "a.png", bgr[:, :, ::-1], check_contrast=False)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}],
        "annotations": [
            {"id": i, "image_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1}
            for i, (x0, y0, x1, y1) in enumerate(boxes)
        ],
    }
    # a model after a few real steps, its weights and config saved; every anchor is a test
    # proposal, so that the early stages reach the annotations
    opts = {
        "INPUT.MIN_SIZE_TEST": 0,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 5000,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 5000,
        "MODEL.RPN.NMS_THRESH": 1.0,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.3,
        "TEST.DETECTIONS_PER_IMAGE": 5000,
    }
    cfg = tiny_cfg("ece", **opts)
    model = build(cfg)
    train_steps(model, batch("mixed"), steps=3)
    run = tmp_path / "run"
    run.mkdir()
    DetectionCheckpointer(model, save_dir=str(run)).save("model_final")
    (run / "config.yaml").write_text(cfg.dump())

    cfg.MODEL.WEIGHTS = str(run / "model_final.pth")
    out = DefaultPredictor(cfg)(bgr.copy())["instances"]
    gt = Boxes(torch.tensor(boxes))
    on_gt = pairwise_iou(out.pred_boxes, gt).max(dim=1).values >= 0.5
    threshold = float(out.scores[on_gt].max()) - 1e-4  # the best detection on a nucleus passes

    counts = tool.stage_counts(str(run), coco, str(tmp_path / "images" / "test"), threshold)
    assert counts["annotations"] == 3
    reach = [counts[k] for k in tool.STAGES]
    # box -> scored -> detection -> above only filter (proposals are before regression)
    assert 3 >= reach[1] >= reach[2] >= reach[3] >= reach[4] >= 1, counts
    assert counts["proposal"] >= 1, counts
    assert counts["detection"] == tool.reached(pairwise_iou(out.pred_boxes, gt).numpy())
    above = out[out.scores > threshold]
    assert counts["above"] == tool.reached(pairwise_iou(above.pred_boxes, gt).numpy())
    assert tool.stage_row("x", counts).startswith("| x | 3 | ")
