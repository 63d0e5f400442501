"""The distillation loss: regions and edges.

Weighted BCE + weighted soft IoU (the "structure loss" of F3Net: pixels near the target's edges
weigh up to 6x) cares about the subject's extent and its outline; an L1 on the alpha keeps soft
hair-like values; an L1 on image gradients (Sobel) sharpens edges that a pure region loss blurs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4


def _grad(x):
    k = torch.stack([_SOBEL, _SOBEL.t()])[:, None].to(x)
    return F.conv2d(x, k, padding=1)


def distill_loss(logits: torch.Tensor, target: torch.Tensor, w_l1=1.0, w_grad=1.0, w_iou=1.0) -> tuple:
    """logits, target: B,1,H,W (target in [0,1]). -> (total, parts dict)."""
    weight = 1 + 5 * (F.avg_pool2d(target, 15, 1, 7) - target).abs()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
    pred = torch.sigmoid(logits)
    inter = (pred * target * weight).sum((2, 3))
    union = ((pred + target) * weight).sum((2, 3))
    iou = 1 - (inter + 1) / (union - inter + 1)
    l1 = (pred - target).abs().mean((2, 3))
    grad = (_grad(pred) - _grad(target)).abs().mean((1, 2, 3))[:, None]
    parts = {"bce": bce.mean(), "iou": iou.mean(), "l1": l1.mean(), "grad": grad.mean()}
    total = parts["bce"] + w_iou * parts["iou"] + w_l1 * parts["l1"] + w_grad * parts["grad"]
    return total, parts
