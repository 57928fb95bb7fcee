"""``MaxMinSegmentor`` (MODELS): weakly-supervised segmentation from image-level classes.

Belharbi et al., "Deep interpretable classification and weakly-supervised segmentation of
histology images via max-min uncertainty" (Belharbi et al., Fig. 2 and Algorithm 1). Wiring only; the
arithmetic is in :mod:`sparse_ext.losses.maxmin_objective` and :mod:`sparse_ext.losses.maxmin`.

- Localizer: any MMSeg ``backbone`` (+ optional ``neck``) and ``decode_head`` whose
  ``num_classes`` equals the number of image classes: its output are class activation maps,
  WILDCAT-pooled into the localizer's image logits (trained with their own cross-entropy) and
  combined, weighted by the localizer's class posterior, into a class-agnostic activation. The
  activation is resized to the image, min-max normalised per sample and pseudo-binarised (Eq. 12)
  into the foreground mask M+; M- = 1 - M+.
- Classifier: a separate ``classifier.backbone`` (e.g. ResNetV1c depth 18), global average
  pooling, dropout and a linear layer, fed x+ = x * M+ and x- = x * M-.
- Loss (Eq. 7): CE on x+, lambda * EEM/SEM on x-, the extended log-barrier on both region sizes
  and the localizer's CE. The decode head's own loss is never used (no pixel labels in training).
- Log-barrier t: t0 * factor**epoch capped at t_max (paper: 5, 1.01, 10). ``set_epoch(e)`` sets
  it; ``set_progress(p)``, called by ``SparseLossAnnealingHook`` before every iteration, sets the
  epoch to ``p * barrier['epochs']`` (with ``barrier['epochs']`` = the loop's max_epochs, t
  follows the paper's epochs exactly in an epoch-based loop; in an iteration-based loop it spans
  that many "epochs" over the training). Without ``barrier['epochs']`` t stays at t0.
- Predict: ``pred_sem_seg`` is the foreground mask (M+ > 0.5, i.e. normalised activation >
  sigma), ``seg_logits`` holds (M-, M+); ``pred_img_label`` / ``pred_img_scores`` the class and
  softmax of the classifier on x+ (Algorithm 1, test phase).
- ``objective="cam"``: the classifier-only CAM baseline of the paper's ablation (Table 4,
  "Wildcat"): the localizer alone, trained with the cross-entropy of its WILDCAT-pooled image
  logits; no classifier is built, the image class is the localizer's, and the mask is the same
  Eq. 12 pseudo-binarisation of the class-agnostic activation, so that the comparison is about
  training, not post-processing.

Image classes reach the model as ``data_sample.metainfo['img_label']`` (see
``ImageLabelDataset``; add ``'img_label'`` to ``PackSegInputs``' ``meta_keys``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, OptConfigType, OptMultiConfig, OptSampleList, SampleList
from torch import Tensor

from sparse_ext.losses._validate import check_choice
from sparse_ext.losses.maxmin_objective import (
    barrier_t,
    class_agnostic_activation,
    localizer_mask,
    maxmin_objective,
    wildcat_pool,
)

__all__ = ["MaxMinClassifier", "MaxMinSegmentor"]


class MaxMinClassifier(nn.Module):
    """Image classifier C: an MMSeg backbone, global average pooling, dropout and a linear layer.

    ``in_channels`` defaults to the backbone's ``feat_dim`` (MMSeg ResNets) and must be given for
    backbones without one.
    """

    def __init__(
        self,
        backbone: ConfigType,
        num_classes: int,
        in_channels: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = MODELS.build(backbone)
        if in_channels is None:
            in_channels = getattr(self.backbone, "feat_dim", None)
            if in_channels is None:
                raise ValueError(
                    f"classifier.in_channels is needed for {type(self.backbone).__name__} "
                    "(it has no feat_dim)"
                )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        last = feats[-1] if isinstance(feats, (list, tuple)) else feats
        return self.fc(self.dropout(self.pool(last).flatten(1)))


@MODELS.register_module()
class MaxMinSegmentor(BaseSegmentor):
    """Localizer + classifier trained with the max-min uncertainty objective (Belharbi et al. Eq. 7).

    Args:
        backbone, neck, decode_head: the localizer (MMSeg configs); ``decode_head.num_classes``
            must equal ``num_classes``.
        classifier: ``dict(backbone=..., in_channels=None, dropout=0.0)``.
        num_classes: number of image classes.
        regularizer: "eem" (Eq. 4/8), "sem" (Eq. 6/9) or None (no background term).
        lam: lambda of Eq. 7 (paper, GlaS: 1e-7; its ablation spans 1e-7 to 1e-1).
        size_weight, localizer_weight: weights of the size barrier and the localizer's CE.
        mask: ``dict(omega=5.0, sigma=0.15)`` of Eq. 12.
        pooling: WILDCAT ``dict(kmax=0.3, kmin=0.0, alpha=0.6)`` (paper, GlaS).
        barrier: ``dict(t0=5.0, factor=1.01, t_max=10.0, epochs=None)``; ``epochs``: number of
            epochs that training progress 0..1 spans in ``set_progress`` (None: t stays at t0).
        auxiliary_head: must be None (accepted so that MMSeg's model base configs can be reused).
        pretrained: checkpoint of the localizer backbone, as in ``EncoderDecoder``.
        objective: "maxmin" (Eq. 7 + the localizer's CE) or "cam" (the localizer's CE alone,
            WILDCAT-style; ``classifier``, ``regularizer``, ``lam``, ``size_weight``,
            ``localizer_weight`` and ``barrier`` are then unused and no classifier is built).
    """

    def __init__(
        self,
        backbone: ConfigType,
        decode_head: ConfigType,
        classifier: ConfigType,
        num_classes: int,
        neck: OptConfigType = None,
        regularizer: Optional[str] = "eem",
        lam: float = 1e-7,
        size_weight: float = 1.0,
        localizer_weight: float = 1.0,
        mask: Optional[dict] = None,
        pooling: Optional[dict] = None,
        barrier: Optional[dict] = None,
        auxiliary_head: OptConfigType = None,
        train_cfg: OptConfigType = None,
        test_cfg: OptConfigType = None,
        data_preprocessor: OptConfigType = None,
        pretrained: Optional[str] = None,
        init_cfg: OptMultiConfig = None,
        objective: str = "maxmin",
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.objective = check_choice("objective", objective, ("maxmin", "cam"))
        if auxiliary_head is not None:
            raise ValueError(
                "MaxMinSegmentor has no auxiliary head (there are no pixel labels to train it): "
                "set model.auxiliary_head=None"
            )
        if test_cfg is not None and test_cfg.get("mode", "whole") != "whole":
            raise ValueError(
                f"MaxMinSegmentor predicts whole images; got test_cfg mode {test_cfg['mode']!r}"
            )
        if pretrained is not None:
            backbone = dict(backbone, init_cfg=dict(type="Pretrained", checkpoint=pretrained))
        if regularizer not in ("eem", "sem", None):
            raise ValueError(f"regularizer must be 'eem', 'sem' or None, got {regularizer!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes (image classes) must be >= 2, got {num_classes}")
        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        self.decode_head = MODELS.build(decode_head)
        if self.decode_head.out_channels != num_classes:
            raise ValueError(
                f"decode_head gives {self.decode_head.out_channels} maps; the localizer needs one "
                f"class activation map per image class (num_classes={num_classes})"
            )
        self.align_corners = self.decode_head.align_corners
        self.classifier = (
            MaxMinClassifier(num_classes=num_classes, **classifier)
            if self.objective == "maxmin"
            else None
        )
        self.num_classes = num_classes
        self.regularizer = regularizer
        self.lam = lam
        self.size_weight = size_weight
        self.localizer_weight = localizer_weight
        self.mask_cfg = dict(dict(omega=5.0, sigma=0.15), **(mask or {}))
        self.pooling_cfg = dict(dict(kmax=0.3, kmin=0.0, alpha=0.6), **(pooling or {}))
        barrier = dict(dict(t0=5.0, factor=1.01, t_max=10.0, epochs=None), **(barrier or {}))
        self.barrier_epochs = barrier.pop("epochs")
        self.barrier_cfg = barrier
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.set_epoch(0)

    # -- log-barrier annealing ---------------------------------------------------------------

    def set_epoch(self, epoch: float) -> None:
        """t = min(t0 * factor**epoch, t_max) (Belharbi et al. Sec. 4 (a))."""
        self.epoch = float(epoch)
        self.t = barrier_t(epoch, **self.barrier_cfg)

    def set_progress(self, p: float) -> None:
        """Fraction of training done -> ``p * barrier['epochs']`` epochs (no-op without it)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {p}")
        if self.barrier_epochs is not None:
            self.set_epoch(p * self.barrier_epochs)

    # -- localizer -------------------------------------------------------------------------

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        x = self.backbone(inputs)
        return self.neck(x) if self.with_neck else x

    def localize(self, inputs: Tensor) -> Tuple[Tensor, Tensor]:
        """Foreground soft mask M+ (N, 1, H, W) and the localizer's image logits (N, C)."""
        cams = self.decode_head(self.extract_feat(inputs))
        loc_logits = wildcat_pool(cams, **self.pooling_cfg)
        activation = class_agnostic_activation(cams, loc_logits)
        mask = localizer_mask(
            activation, inputs.shape[-2:], align_corners=self.align_corners, **self.mask_cfg
        )
        return mask, loc_logits

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """(M-, M+) as a two-channel map at input resolution."""
        mask, _ = self.localize(inputs)
        return torch.cat([1.0 - mask, mask], dim=1)

    # -- BaseSegmentor API ---------------------------------------------------------------

    @staticmethod
    def _image_labels(data_samples: SampleList, device: torch.device) -> Tensor:
        try:
            labels = [int(ds.metainfo["img_label"]) for ds in data_samples]
        except KeyError:
            raise KeyError(
                "MaxMinSegmentor needs the image class in data_sample.metainfo['img_label']: "
                "use ImageLabelDataset and add 'img_label' to PackSegInputs' meta_keys"
            ) from None
        return torch.as_tensor(labels, dtype=torch.long, device=device)

    def loss(self, inputs: Tensor, data_samples: SampleList) -> Dict[str, Tensor]:
        labels = self._image_labels(data_samples, inputs.device)
        if int(labels.max()) >= self.num_classes or int(labels.min()) < 0:
            raise ValueError(
                f"image labels {sorted(set(labels.tolist()))} outside 0..{self.num_classes - 1}"
            )
        mask, loc_logits = self.localize(inputs)
        if self.objective == "cam":
            return {"loss_loc_cls": F.cross_entropy(loc_logits, labels)}
        losses = maxmin_objective(
            inputs,
            mask,
            labels,
            self.classifier,
            self.t,
            lam=self.lam,
            regularizer=self.regularizer,
            size_weight=self.size_weight,
            localizer_logits=loc_logits,
            localizer_weight=self.localizer_weight,
        )
        losses["barrier_t"] = torch.tensor(self.t, device=inputs.device)  # logged, not optimised
        return losses

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        mask, loc_logits = self.localize(inputs)
        logits = loc_logits if self.classifier is None else self.classifier(inputs * mask)
        scores = logits.softmax(dim=1)
        results = self.postprocess_result(torch.cat([1.0 - mask, mask], dim=1), data_samples)
        for res, score in zip(results, scores):
            res.pred_img_scores = score.detach()
            res.pred_img_label = score.argmax().detach()
        return results

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tuple[Tensor, ...]:
        """Foreground mask, localizer logits and classifier logits on x+ (no post-processing;
        ``objective="cam"``: mask and localizer logits)."""
        mask, loc_logits = self.localize(inputs)
        if self.classifier is None:
            return mask, loc_logits
        return mask, loc_logits, self.classifier(inputs * mask)
