"""Box-density weights (BDE baseline, Li et al., MICCAI 2020): sparse_ext.losses.bde_weights."""

import pytest
import torch

from sparse_ext.losses import bde_weights
from sparse_ext.losses.box_density import box_iou


def test_hand_computed_densities():
    candidates = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]]
    )
    predicted = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with candidate 0
            [1.0, 0.0, 10.0, 10.0],  # IoU 0.9 with candidate 0
            [20.0, 20.0, 30.0, 25.0],  # IoU 0.5 with candidate 1
            [55.0, 55.0, 65.0, 65.0],  # IoU 25/175 with candidate 2: below 0.5
        ]
    )
    # densities 2, 1, 0 -> weights 1 - d / 2
    assert bde_weights(candidates, predicted).tolist() == [0.0, 0.5, 1.0]
    # a stricter threshold: densities 2, 0, 0
    assert bde_weights(candidates, predicted, iou_threshold=0.6).tolist() == [0.0, 1.0, 1.0]
    # scores below the threshold do not count: densities 1, 1, 0
    scores = torch.tensor([0.9, 0.1, 0.8, 0.9])
    weights = bde_weights(candidates, predicted, scores, score_threshold=0.5)
    assert weights.tolist() == [0.0, 0.0, 1.0]


def test_no_predictions_or_no_overlap_gives_ones():
    candidates = torch.tensor([[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 9.0, 9.0]])
    assert bde_weights(candidates, torch.zeros(0, 4)).tolist() == [1.0, 1.0]
    far = torch.tensor([[100.0, 100.0, 110.0, 110.0]])
    assert bde_weights(candidates, far).tolist() == [1.0, 1.0]
    assert bde_weights(torch.zeros(0, 4), far).shape == (0,)


def test_weights_carry_no_gradient():
    candidates = torch.tensor([[0.0, 0.0, 4.0, 4.0]], requires_grad=True)
    weights = bde_weights(candidates, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert not weights.requires_grad


def test_iou_fallback_matches_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))


def test_bad_input():
    with pytest.raises(ValueError, match="candidate_boxes"):
        bde_weights(torch.zeros(3, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="predicted_scores"):
        bde_weights(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3))
