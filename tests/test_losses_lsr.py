"""Label super-resolution losses (Zhao, Hou et al., Eq. 1-11, App. A): sparse_ext.losses.lsr_loss."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import LabelSuperResolutionLoss, load_lsr_table, lsr_loss

FLOOR = 0.03


def distance(mu, sigma2, eta, rho):
    """Eq. 5 / Eq. 9 with the variance floor in the log, written out in plain floats."""
    return 0.5 * sigma2 * (eta - mu) ** 2 / (rho**2 + sigma2) ** 2 + 0.5 * math.log(
        2 * math.pi * (sigma2 + FLOOR)
    )


def gaussian_distance(mu, sigma2, eta, rho):
    """-log N(eta; mu, rho^2 + sigma2) with the variance floor in the log, in plain floats."""
    variance = rho**2 + sigma2
    return 0.5 * (eta - mu) ** 2 / variance + 0.5 * math.log(2 * math.pi * (variance + FLOOR))


def make_blocks(seed=0, n=3, h=2, w=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, h, w, generator=g, dtype=torch.float64)


ETA = torch.tensor([[0.9, 0.6], [0.1, 0.4]], dtype=torch.float64)  # (classes, labels)
RHO = torch.tensor([[0.05, 0.1], [0.05, 0.1]], dtype=torch.float64)
Z = torch.tensor([0, 1, 1])


def block_stats(logits):
    p = logits.softmax(dim=1).numpy()
    count = p.shape[2] * p.shape[3]
    mu = p.mean(axis=(2, 3))  # (N, L)
    sigma2 = (p * (1 - p)).sum(axis=(2, 3)) / count**2
    return mu, sigma2


def test_intra_hand_computed():
    logits = make_blocks()
    mu, sigma2 = block_stats(logits)
    groups = []  # (l, z): mean of its blocks' distances
    for cls in range(2):
        for z in (0, 1):
            blocks = [k for k in range(3) if Z[k] == z]
            d = [
                distance(mu[k, cls], sigma2[k, cls], ETA[cls, z].item(), RHO[cls, z].item())
                for k in blocks
            ]
            groups.append(sum(d) / len(d))
    got = lsr_loss(logits, Z, ETA, RHO, mode="intra")
    assert got.item() == pytest.approx(sum(groups) / len(groups), rel=1e-10)


@pytest.mark.parametrize("mode", ["inter", "intra_inter"])
def test_inter_and_intra_inter_hand_computed(mode):
    logits = make_blocks(seed=1)
    mu, sigma2 = block_stats(logits)
    values = []
    for cls in range(2):
        for z in (0, 1):
            blocks = [k for k in range(3) if Z[k] == z]
            m = np.mean([mu[k, cls] for k in blocks])
            if mode == "inter":
                s2 = np.mean([(mu[k, cls] - m) ** 2 for k in blocks])
            else:  # Eq. 11
                s2 = (
                    np.mean([sigma2[k, cls] for k in blocks])
                    + np.mean([mu[k, cls] ** 2 for k in blocks])
                    - m**2
                )
            values.append(distance(m, s2, ETA[cls, z].item(), RHO[cls, z].item()))
    got = lsr_loss(logits, Z, ETA, RHO, mode=mode)
    assert got.item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_inter_with_one_block_per_group_has_zero_variance():
    logits = make_blocks(seed=2, n=2)
    z = torch.tensor([0, 1])
    mu, _ = block_stats(logits)
    expected = np.mean(
        [
            distance(mu[k, cls], 0.0, ETA[cls, z[k]].item(), RHO[cls, z[k]].item())
            for k in range(2)
            for cls in range(2)
        ]
    )
    assert lsr_loss(logits, z, ETA, RHO, mode="inter").item() == pytest.approx(expected, rel=1e-10)
    # zero variance: the distance is the log term alone
    assert expected == pytest.approx(0.5 * math.log(2 * math.pi * FLOOR))


def test_alpha_scales_rho_and_per_class_labels():
    logits = make_blocks(seed=3)
    a = lsr_loss(logits, Z, ETA, RHO, mode="intra", alpha=0.5)
    b = lsr_loss(logits, Z, ETA, 0.5 * RHO, mode="intra")
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    per_class = torch.stack([Z, Z], dim=1)
    assert lsr_loss(logits, per_class, ETA, RHO).item() == pytest.approx(
        lsr_loss(logits, Z, ETA, RHO).item(), rel=1e-12
    )


def test_valid_mask_restricts_pixels_and_drops_empty_blocks():
    logits = make_blocks(seed=4)
    valid = torch.ones(3, 2, 3, dtype=torch.bool)
    valid[:, :, 2] = False  # last column is padding
    masked = lsr_loss(logits, Z, ETA, RHO, mode="intra", valid_mask=valid)
    cropped = lsr_loss(logits[..., :2], Z, ETA, RHO, mode="intra")
    assert masked.item() == pytest.approx(cropped.item(), rel=1e-12)
    valid[0] = False  # block 0 (the only z = 0 block) has no valid pixel: its groups vanish
    dropped = lsr_loss(logits, Z, ETA, RHO, mode="intra", valid_mask=valid)
    only_rest = lsr_loss(logits[1:, ..., :2], Z[1:], ETA, RHO, mode="intra")
    assert dropped.item() == pytest.approx(only_rest.item(), rel=1e-12)
    nothing = torch.zeros_like(valid)
    zero = lsr_loss(logits.requires_grad_(True), Z, ETA, RHO, valid_mask=nothing)
    assert zero.item() == 0.0 and zero.grad_fn is not None


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
@pytest.mark.parametrize("kind", ["eq5", "gaussian"])
def test_gradcheck_float64(mode, kind):
    logits = make_blocks(seed=5, h=2, w=2).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: lsr_loss(x, Z, ETA, RHO, mode=mode, distance=kind), (logits,)
    )


def test_gaussian_distance_hand_computed():
    logits = make_blocks(seed=3)
    mu, sigma2 = block_stats(logits)
    groups = []
    for cls in range(2):
        for z in (0, 1):
            d = [
                gaussian_distance(
                    mu[k, cls], sigma2[k, cls], ETA[cls, z].item(), RHO[cls, z].item()
                )
                for k in range(3)
                if Z[k] == z
            ]
            groups.append(sum(d) / len(d))
    got = lsr_loss(logits, Z, ETA, RHO, mode="intra", distance="gaussian")
    assert got.item() == pytest.approx(sum(groups) / len(groups), rel=1e-10)
    module = LabelSuperResolutionLoss(ETA, RHO, mode="intra", distance="gaussian")
    assert module(logits, Z).item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="distance"):
        lsr_loss(logits, Z, ETA, RHO, distance="kl")


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_eq5_has_a_collapsed_minimum_that_the_gaussian_distance_does_not(mode):
    """Every block predicted 'background' with certainty (sigma2 = 0) is a global minimum of
    Eq. 5/9 whatever the table says; the Gaussian form charges the missed means."""
    collapsed = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    collapsed[:, 0] = 40.0  # p(background) = 1 in every pixel of every block
    floor_value = 0.5 * math.log(2 * math.pi * FLOOR)
    eq5 = lsr_loss(collapsed, Z, ETA, RHO, mode=mode)
    assert eq5.item() == pytest.approx(floor_value, abs=1e-9)
    # a prediction that matches every mean exactly is no better under Eq. 5/9...
    exact = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    exact[:, 1] = torch.logit(ETA[1, Z])[:, None, None]
    assert lsr_loss(exact, Z, ETA, RHO, mode=mode).item() >= eq5.item() - 1e-12
    # ...but it is under the Gaussian distance, by the means' squared misses over rho^2
    gauss_collapsed = lsr_loss(collapsed, Z, ETA, RHO, mode=mode, distance="gaussian")
    gauss_exact = lsr_loss(exact, Z, ETA, RHO, mode=mode, distance="gaussian")
    assert gauss_exact.item() < gauss_collapsed.item() - 1.0


def test_module_and_table_file(tmp_path):
    table = {
        "classes": ["background", "nucleus"],
        "labels": [0, 1],
        "eta": ETA.tolist(),
        "rho": RHO.tolist(),
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    eta, rho, classes = load_lsr_table(path)
    assert classes == ["background", "nucleus"] and torch.allclose(eta.double(), ETA)
    logits = make_blocks(seed=6).float()
    from_file = LabelSuperResolutionLoss(str(path), mode="inter")(logits, Z)
    assert from_file.item() == pytest.approx(
        lsr_loss(logits, Z, ETA, RHO, mode="inter").item(), rel=1e-6
    )


def test_table_from_lsr_blocks_converter(tmp_path):
    from PIL import Image

    from sparse_ext.data import make_lsr_blocks

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[:10, :10] = 1
    mask[20:40, 20:40] = 1
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(images / "a.png")
    Image.fromarray(mask).save(masks / "a.png")
    make_lsr_blocks(images, masks, tmp_path / "out", block=20, bins=4)
    eta, rho, classes = load_lsr_table(tmp_path / "out" / "table.json")
    assert eta.shape == rho.shape == (len(classes), 4)


def test_errors():
    logits = make_blocks()
    with pytest.raises(ValueError, match="does not cover block label z=2"):
        lsr_loss(logits, torch.tensor([0, 1, 2]), ETA, RHO)
    with pytest.raises(ValueError, match="mode"):
        lsr_loss(logits, Z, ETA, RHO, mode="both")
    with pytest.raises(ValueError, match="logits"):
        lsr_loss(logits[0], Z, ETA, RHO)
    with pytest.raises(ValueError, match="block_labels"):
        lsr_loss(logits, torch.tensor([0, 1]), ETA, RHO)
    with pytest.raises(ValueError, match="classes"):
        lsr_loss(logits, Z, ETA[:1], RHO[:1])
    with pytest.raises(ValueError, match="eta and rho"):
        lsr_loss(logits, Z, ETA, RHO[:, :1])
    with pytest.raises(ValueError, match="valid_mask"):
        lsr_loss(logits, Z, ETA, RHO, valid_mask=torch.ones(3, 2, 2, dtype=torch.bool))


def test_table_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_lsr_table(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"eta": [[0.5]]}))
    with pytest.raises(KeyError, match="rho"):
        load_lsr_table(bad)
    bad.write_text(json.dumps({"eta": [[0.5, 0.2]], "rho": [[0.1]]}))
    with pytest.raises(ValueError, match="must be equal"):
        load_lsr_table(bad)


@settings(max_examples=60, deadline=None)
@given(
    scale=st.sampled_from([1e-3, 1.0, 50.0, 1e4]),
    n=st.integers(1, 6),
    keep=st.floats(0.0, 1.0),
    mode=st.sampled_from(["intra", "inter", "intra_inter"]),
    zero_rho=st.booleans(),
    half=st.booleans(),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["eq5", "gaussian"]),
)
def test_finite_for_finite_logits(scale, n, keep, mode, zero_rho, half, seed, kind):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, 2, 4, 4, generator=g)
    if half:
        logits = logits.clamp(-6e4, 6e4).half()
    logits.requires_grad_(True)
    valid = torch.rand(n, 4, 4, generator=g) < keep
    z = torch.randint(0, 2, (n,), generator=g)
    # rho = 0 (a table cell from one block) makes Eq. 5's gradient diverge as sigma2 -> 0: finite
    # in float32, but beyond float16's range, so half precision is checked with rho > 0 only
    rho = torch.zeros_like(RHO) if zero_rho and not half else RHO
    loss = lsr_loss(logits, z, ETA, rho, mode=mode, valid_mask=valid, distance=kind)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
