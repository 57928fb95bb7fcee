"""Label super-resolution losses (Zhao, Hou et al., Eq. 1-11, App. A; Malkin et al., ICLR 2019):
sparse_ext.losses.lsr_loss with the reference interval distance (default), Eq. 5/9 and the
Gaussian form."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import LabelSuperResolutionLoss, load_lsr_table, lsr_loss
from sparse_ext.losses.label_super_resolution import mode_with_warmup

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


def reference_distance(mu, sigma2, v, eta, rho):
    """The reference interval distance (Malkin et al.) in plain floats."""
    miss = max(abs(mu - eta) - rho, 0.0)
    return miss**2 / (sigma2 + rho**2 + 1e-6) + math.log(v + FLOOR)


def block_stats_v(logits):
    """(mu, v, sigma2) per block and class: v = sum p(1-p) / |X| (Eq. 3), sigma2 = v / |X|."""
    p = logits.softmax(dim=1).numpy()
    count = p.shape[2] * p.shape[3]
    v = (p * (1 - p)).sum(axis=(2, 3)) / count
    return p.mean(axis=(2, 3)), v, v / count


def test_reference_is_the_default_distance():
    import inspect

    assert inspect.signature(lsr_loss).parameters["distance"].default == "reference"
    assert LabelSuperResolutionLoss(ETA, RHO).distance == "reference"
    logits = make_blocks(seed=7)
    assert (
        lsr_loss(logits, Z, ETA, RHO).item()
        == lsr_loss(logits, Z, ETA, RHO, distance="reference").item()
    )


def test_reference_on_two_pixels_by_hand():
    """One block of two pixels with p(nucleus) = 0.2 and 0.6 (sigmoid of the logit difference):
    mu = 0.4, v = (0.16 + 0.24) / 2 = 0.2, sigma2 = v / 2 = 0.1; both classes have the same v."""
    p1 = torch.tensor([0.2, 0.6], dtype=torch.float64)
    logits = torch.stack([torch.zeros(2, dtype=torch.float64), torch.logit(p1)])[None, :, None, :]
    eta = torch.tensor([[0.9], [0.1]], dtype=torch.float64)
    rho = torch.tensor([[0.05], [0.1]], dtype=torch.float64)
    got = lsr_loss(logits, torch.tensor([0]), eta, rho, mode="intra")
    # background: mu 0.6, |0.6 - 0.9| - 0.05 = 0.25; nucleus: mu 0.4, |0.4 - 0.1| - 0.1 = 0.2
    background = 0.25**2 / (0.1 + 0.05**2 + 1e-6) + math.log(0.2 + 0.03)
    nucleus = 0.2**2 / (0.1 + 0.1**2 + 1e-6) + math.log(0.2 + 0.03)
    assert got.item() == pytest.approx((background + nucleus) / 2, rel=1e-12)
    # one block: inter has variance 0 (Eq. 8), intra+inter the block's own sigma2 (Eq. 11)
    inter = lsr_loss(logits, torch.tensor([0]), eta, rho, mode="inter")
    expected = (0.25**2 / (0.05**2 + 1e-6) + 0.2**2 / (0.1**2 + 1e-6)) / 2 + math.log(0.2 + 0.03)
    assert inter.item() == pytest.approx(expected, rel=1e-12)
    both = lsr_loss(logits, torch.tensor([0]), eta, rho, mode="intra_inter")
    assert both.item() == pytest.approx(got.item(), rel=1e-12)
    # alpha scales rho in the interval and in the denominator
    half = lsr_loss(logits, torch.tensor([0]), eta, rho, mode="intra", alpha=0.5)
    background = 0.275**2 / (0.1 + 0.025**2 + 1e-6) + math.log(0.23)
    nucleus = 0.25**2 / (0.1 + 0.05**2 + 1e-6) + math.log(0.23)
    assert half.item() == pytest.approx((background + nucleus) / 2, rel=1e-12)


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_reference_hand_computed(mode):
    logits = make_blocks(seed=8)
    mu, v, sigma2 = block_stats_v(logits)
    values = []
    for cls in range(2):
        for z in (0, 1):
            blocks = [k for k in range(3) if Z[k] == z]
            e, r = ETA[cls, z].item(), RHO[cls, z].item()
            if mode == "intra":
                d = [
                    reference_distance(mu[k, cls], sigma2[k, cls], v[k, cls], e, r) for k in blocks
                ]
                values.append(np.mean(d))
                continue
            m = np.mean([mu[k, cls] for k in blocks])
            if mode == "inter":  # Eq. 8
                s2 = np.mean([(mu[k, cls] - m) ** 2 for k in blocks])
            else:  # Eq. 11
                s2 = np.mean([sigma2[k, cls] + mu[k, cls] ** 2 for k in blocks]) - m**2
            # the group's spread: the blocks' pixel variance and the variance of their means
            spread = np.mean([v[k, cls] + (mu[k, cls] - m) ** 2 for k in blocks])
            log_term = math.log(spread + FLOOR)
            values.append(max(abs(m - e) - r, 0.0) ** 2 / (s2 + r**2 + 1e-6) + log_term)
    got = lsr_loss(logits, Z, ETA, RHO, mode=mode)
    assert got.item() == pytest.approx(np.mean(values), rel=1e-10)


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_reference_costs_nothing_inside_eta_plus_minus_rho(mode):
    """Block means inside eta +- rho: the loss is the log term alone and the means get no
    gradient from the matching term (moving a mean within the interval changes nothing but v)."""
    eta = torch.tensor([[0.7, 0.4], [0.3, 0.6]], dtype=torch.float64)
    rho = torch.tensor([[0.1, 0.15], [0.1, 0.15]], dtype=torch.float64)
    # constant maps: p(nucleus) = 0.25 / 0.35 (z = 0, eta 0.3 +- 0.1), 0.5 (z = 1, 0.6 +- 0.15)
    p1 = torch.tensor([0.25, 0.5, 0.7], dtype=torch.float64)
    logits = torch.zeros(3, 2, 3, 3, dtype=torch.float64)
    logits[:, 1] = torch.logit(p1)[:, None, None]
    logits.requires_grad_(True)
    loss = lsr_loss(logits, Z, eta, rho, mode=mode)
    v = p1 * (1 - p1)  # constant maps: v = p (1 - p)
    if mode == "intra":
        log_terms = {
            0: math.log(v[0] + FLOOR),
            1: np.mean([math.log(v[k] + FLOOR) for k in (1, 2)]),
        }
    else:  # the group's spread: mean v plus the variance of the block means (0.5, 0.7: 0.01)
        log_terms = {0: math.log(v[0] + FLOOR), 1: math.log((v[1] + v[2]) / 2 + 0.01 + FLOOR)}
    expected = np.mean([log_terms[z] for _ in range(2) for z in (0, 1)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    outside = lsr_loss(
        logits.detach() - torch.tensor([0.0, 3.0])[None, :, None, None], Z, eta, rho, mode=mode
    )
    assert outside.item() > loss.item() + 0.5  # pushed out of the intervals: it costs


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_reference_gradient_is_only_the_log_term_inside_the_interval(mode):
    logits = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
    logits[:, 1] = torch.logit(torch.tensor([0.28, 0.55, 0.65], dtype=torch.float64))[:, None, None]
    eta = torch.tensor([[0.7, 0.4], [0.3, 0.6]], dtype=torch.float64)
    rho = torch.tensor([[0.1, 0.15], [0.1, 0.15]], dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    lsr_loss(x, Z, eta, rho, mode=mode).backward()
    # the same loss with rho huge (everything inside) has the same gradient: the log term's
    y = logits.clone().requires_grad_(True)
    lsr_loss(y, Z, eta, torch.full_like(rho, 0.99), mode=mode).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["inter", "intra_inter"])
def test_reference_inter_modes_charge_the_spread_of_a_labels_blocks(mode):
    """Inter modes: a label's mean (0.5) met by saturated blocks (two all-nucleus, two
    all-background) costs log(v + 0.25 + 0.03): the variance of the block means is in the log term,
    against log(v + 0.03) when every block is half nucleus with pixels as confident; in the intra
    mode the saturated blocks each miss their mean by 0.5 and cost far more."""
    eta = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    rho = torch.full((2, 1), 0.02, dtype=torch.float64)
    z = torch.zeros(4, dtype=torch.long)

    def logits(masks):
        lg = 8.0 * (2 * torch.as_tensor(np.stack(masks), dtype=torch.float64) - 1)
        return torch.stack([-lg / 2, lg / 2], 1)

    full, empty, half = np.ones((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))
    half[:, :2] = 1
    p = 1 / (1 + math.exp(-8.0))
    v = p * (1 - p)  # every pixel equally confident
    saturated = lsr_loss(logits([full, full, empty, empty]), z, eta, rho, mode=mode)
    matched = lsr_loss(logits([half] * 4), z, eta, rho, mode=mode)
    assert matched.item() == pytest.approx(math.log(v + FLOOR), rel=1e-9)
    # block means p and 1 - p: their variance (p - 0.5)^2, about 0.25
    assert saturated.item() == pytest.approx(math.log(v + (p - 0.5) ** 2 + FLOOR), rel=1e-9)
    intra = lsr_loss(logits([full, full, empty, empty]), z, eta, rho, mode="intra")
    assert intra.item() > saturated.item() + 100


def _ranking_batch():
    """12 blocks of 16 x 16 px, one disc each (nucleus fraction 0.03-0.43), z = the fraction
    quantised into 4 bins, (eta, rho) estimated from the masks (Appendix B.2), and three
    predictions: the true masks, background everywhere, and the blurry map p = eta[z] in every
    pixel (matches every mean, argmaxes to background)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    masks = []
    for _ in range(12):
        r = rng.uniform(1.5, 6.0)
        cy, cx = rng.uniform(5, 11, 2)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    masks = torch.tensor(np.stack(masks))
    frac = masks.double().mean((1, 2))
    z = torch.clamp((frac * 4).floor().long(), max=3)
    eta = torch.tensor([[0.0] * 4, [0.125, 0.375, 0.625, 0.875]], dtype=torch.float64)
    rho = torch.full((2, 4), 1 / (4 * math.sqrt(12)), dtype=torch.float64)
    for b in z.unique().tolist():
        eta[1, b] = frac[z == b].mean()
        rho[1, b] = frac[z == b].std(unbiased=False)
    eta[0], rho[0] = 1 - eta[1], rho[1]

    def logits(p1):
        lg = torch.logit(p1.clamp(1e-4, 1 - 1e-4))
        return torch.stack([-lg / 2, lg / 2], 1)

    true = logits(masks.double())
    background = logits(torch.zeros(masks.shape, dtype=torch.float64))
    blurry = logits(eta[1, z][:, None, None].expand(masks.shape).clone())
    assert set(z.tolist()) == {0, 1} and (eta[1, z] < 0.5).all()
    return z, eta, rho, true, background, blurry


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_only_the_reference_distance_prefers_the_true_mask(mode):
    """Issue 13's ranking on a synthetic batch (lower = preferred): the reference form puts the
    true mask first; Eq. 5 gives it nearly the same value as all-background, Eq. 9/11 prefer
    all-background; the Gaussian form prefers the blurry map."""
    z, eta, rho, true, background, blurry = _ranking_batch()

    def values(distance):
        return [
            lsr_loss(x, z, eta, rho, mode=mode, distance=distance).item()
            for x in (true, background, blurry)
        ]

    ref_true, ref_bg, ref_blurry = values("reference")
    assert ref_true < ref_bg - 1.0 and ref_true < ref_blurry - 1.0
    eq5_true, eq5_bg, eq5_blurry = values("eq5")
    assert eq5_true > min(eq5_bg, eq5_blurry) - 1e-3  # no margin for the true mask
    if mode != "intra":
        assert eq5_bg < eq5_true  # Eq. 9/11: all-background is preferred
    gauss_true, _, gauss_blurry = values("gaussian")
    assert gauss_blurry < gauss_true


def test_eq5_intra_hand_computed():
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
    got = lsr_loss(logits, Z, ETA, RHO, mode="intra", distance="eq5")
    assert got.item() == pytest.approx(sum(groups) / len(groups), rel=1e-10)


@pytest.mark.parametrize("mode", ["inter", "intra_inter"])
def test_eq5_inter_and_intra_inter_hand_computed(mode):
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
    got = lsr_loss(logits, Z, ETA, RHO, mode=mode, distance="eq5")
    assert got.item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_eq5_inter_with_one_block_per_group_has_zero_variance():
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
    got = lsr_loss(logits, z, ETA, RHO, mode="inter", distance="eq5")
    assert got.item() == pytest.approx(expected, rel=1e-10)
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
@pytest.mark.parametrize("kind", ["reference", "eq5", "gaussian"])
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
    eq5 = lsr_loss(collapsed, Z, ETA, RHO, mode=mode, distance="eq5")
    assert eq5.item() == pytest.approx(floor_value, abs=1e-9)
    # a prediction that matches every mean exactly is no better under Eq. 5/9...
    exact = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    exact[:, 1] = torch.logit(ETA[1, Z])[:, None, None]
    assert lsr_loss(exact, Z, ETA, RHO, mode=mode, distance="eq5").item() >= eq5.item() - 1e-12
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
    kind=st.sampled_from(["reference", "eq5", "gaussian"]),
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


def test_mmseg_loss_and_lsr_configs_default_to_reference_with_groupnorm():
    """The MMSeg LabelSuperResolutionLoss defaults to the reference distance and equals the core
    function; every LSR config trains with it and with GroupNorm (issue 13: BN's batch statistics
    carry the label of GroupedBlockBatchSampler's one-label groups)."""
    pytest.importorskip("mmseg")
    from pathlib import Path

    from mmengine.config import Config

    from sparse_ext.mmseg.losses import LabelSuperResolutionLoss as MMSegLSR
    from sparse_ext.mmseg.transforms import encode_block_label

    table = {"eta": ETA.tolist(), "rho": RHO.tolist()}
    module = MMSegLSR(table=table, mode="intra")
    assert module.distance == "reference"
    logits = make_blocks(seed=9, h=4, w=4).float()
    label = torch.stack(
        [torch.full((4, 4), encode_block_label([int(z)] * 2, 2) + 255) for z in Z]
    ).int()
    torch.testing.assert_close(
        module(logits, label), lsr_loss(logits, Z, ETA.float(), RHO.float(), mode="intra")
    )
    configs = sorted((Path(__file__).parents[1] / "configs" / "mmseg").glob("*lsr*.py"))
    assert len(configs) == 4
    for path in configs:
        cfg = Config.fromfile(str(path))
        assert cfg.model.decode_head.loss_decode.distance == "reference", path.name
        assert cfg.model.backbone.norm_cfg.type == "GN", path.name
        assert cfg.model.decode_head.norm_cfg.type == "GN", path.name


@pytest.mark.parametrize("bright", [True, False])
def test_label_calibrated_threshold_baseline_reads_labels_and_table_only(tmp_path, bright):
    """The LSR benchmark's ``threshold`` floor: one global grey threshold and its polarity from
    the training blocks, their labels and the table (sparse_ext.benchmark.lsr). Blocks hold a
    disc of grey 170 (or 40 on 200 when dark) on 70 with noise < 20: the chosen threshold must
    separate the two, and it is applied to the test frames with that polarity."""
    pytest.importorskip("skimage")
    from skimage.io import imsave

    from sparse_ext.benchmark.lsr import threshold_from_block_labels, threshold_predictions
    from sparse_ext.data import make_lsr_blocks

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    fg, bg = (170, 70) if bright else (40, 200)
    for split, n in (("train", 3), ("test", 1)):
        for d in ("images", "masks"):
            (tmp_path / d / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((64, 64), np.uint8)
            for cy, cx, r in rng.uniform((4, 4, 3), (60, 60, 11), (6, 3)):
                mask |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            img = np.where(mask, fg, bg) + rng.integers(0, 20, (64, 64))
            imsave(
                tmp_path / "images" / split / f"f{i}.png",
                img.astype(np.uint8),
                check_contrast=False,
            )
            imsave(tmp_path / "masks" / split / f"f{i}.png", mask, check_contrast=False)
    lsr_root = tmp_path / "lsr"
    make_lsr_blocks(
        tmp_path / "images" / "train",
        tmp_path / "masks" / "train",
        lsr_root / "train",
        block=16,
        bins=4,
        verbose=False,
    )
    t, got_bright = threshold_from_block_labels(str(lsr_root))
    assert got_bright == bright, t
    if bright:
        assert bg + 19 <= t < fg  # grey > t: every disc pixel, no background pixel
    else:
        assert fg + 19 < t <= bg
    pred = threshold_predictions(str(tmp_path), t, got_bright)["f0"]
    from skimage.io import imread

    truth = imread(tmp_path / "masks" / "test" / "f0.png")
    np.testing.assert_array_equal(pred, truth.astype(np.int64))


def _toy_blocks(n=80, size=16, bins=4):
    """Blocks holding 0-4 bright discs (grey 1 + noise 0.3 on 0), z = nucleus fraction in 4 bins,
    the table by mask estimation (every used cell has several blocks)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(rng.integers(0, 5)):
            r, cy, cx = rng.uniform(2, 5), *rng.uniform(2, size - 2, 2)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks.append(m)
    masks = torch.tensor(np.stack(masks))
    noise = torch.tensor(rng.standard_normal(masks.shape), dtype=torch.float32)
    images = (masks.float() + 0.3 * noise)[:, None]
    frac = masks.double().mean((1, 2))
    z = torch.clamp((frac * bins).floor().long(), max=bins - 1)
    eta, rho = torch.zeros(2, bins), torch.full((2, bins), 0.05)
    for b in z.unique().tolist():
        eta[1, b], rho[1, b] = frac[z == b].mean(), frac[z == b].std(unbiased=False)
    eta[0], rho[0] = 1 - eta[1], rho[1]
    assert torch.bincount(z).min() >= 2
    return images, masks, z, eta, rho


def _train_toy(mode, distance, steps=150):
    images, masks, z, eta, rho = _toy_blocks()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = lsr_loss(net(images), z, eta, rho, mode=mode, distance=distance)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(images).argmax(1).bool()
    return float(2 * (pred & masks).sum() / (pred.sum() + masks.sum()))


@pytest.mark.parametrize("mode", ["intra", "inter", "intra_inter"])
def test_reference_distance_teaches_a_tiny_net_the_masks_from_block_labels(mode):
    """A two-layer conv net trained from block labels and the table alone (150 Adam steps)
    segments the discs with the reference distance in every mode; with Eq. 9 (the inter mode as
    published) it collapses to background."""
    assert _train_toy(mode, "reference") > 0.9
    if mode == "inter":
        assert _train_toy(mode, "eq5") < 0.1


def test_intra_warmup_picks_the_mode_by_training_progress():
    assert mode_with_warmup("inter", 0.2, 0.1) == "intra"
    assert mode_with_warmup("intra_inter", 0.2, 0.2) == "intra_inter"  # the warm-up has ended
    assert mode_with_warmup("inter", 0.2, 0.0, training=False) == "inter"
    assert mode_with_warmup("inter", 0.0, None) == "inter"  # no warm-up: no progress needed
    with pytest.raises(RuntimeError, match="needs the training progress"):
        mode_with_warmup("inter", 0.2, None)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 2, 6, 6, generator=g)
    z = torch.tensor([0, 1, 1, 2])
    eta = torch.tensor([[0.9, 0.6, 0.3], [0.1, 0.4, 0.7]])
    rho = torch.full((2, 3), 0.1)
    module = LabelSuperResolutionLoss(eta, rho, mode="inter", intra_warmup=0.5)
    module.set_progress(0.25)
    torch.testing.assert_close(module(logits, z), lsr_loss(logits, z, eta, rho, mode="intra"))
    module.set_progress(0.5)
    torch.testing.assert_close(module(logits, z), lsr_loss(logits, z, eta, rho, mode="inter"))
    with pytest.raises(ValueError, match=r"intra_warmup must be in \[0, 1\)"):
        LabelSuperResolutionLoss(eta, rho, intra_warmup=1.0)
