"""Several students as one network: each sees the photo at its own size; their logits are averaged.

Why: two small students trained apart make different mistakes, and on held-out photos their
average beat either of them by more than another training run ever moved one (int8, whole
runtime, 135 photos: edgecut-medium-pruned 0.6789 and edgecut-fast 0.6782 IoU alone, their
averaged alphas 0.6923). Both run inside one graph, so the runtime, the int8 export and the
TFLite export see one model with one input, the larger member's size; smaller members get a
nearest-neighbour downscale in the graph and their logits are upsampled back before the mean.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EnsembleConfig:
    name: str
    input_size: int
    members: tuple          # each member's StudentConfig (its input_size: the size it runs at)
    mean: tuple
    std: tuple

    def to_dict(self) -> dict:
        return asdict(self)


def _resized(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour, on purpose: a bilinear resize between sizes that are not powers of two apart
    (256 -> 192) weighs pixels by fractions like 5/6, and onnxruntime's float Resize rounds those
    differently on x86 and ARM; quantizing its output then flipped some uint8 values, which the
    smaller member amplified (ARM vs x86: 1.1% of alpha pixels off by more than 8/255, up to 100).
    Nearest copies pixels, so the int8 graph stays exact on both. LiteRT's nearest resize picks other
    pixels than torch and onnxruntime, though: the TFLite export of edgecut-duo is 3.21/255 off its ONNX
    file on the bench photos (the bilinear build matched), so an ensemble's TFLite file is not yet a
    faithful copy."""
    return F.interpolate(x, size=size, mode="nearest")


class Ensemble(nn.Module):
    def __init__(self, members: list, name: str = "ensemble"):
        super().__init__()
        first = members[0].cfg
        for m in members[1:]:
            if tuple(m.cfg.mean) != tuple(first.mean) or tuple(m.cfg.std) != tuple(first.std):
                raise ValueError("ensemble members must share one input normalisation")
        self.members = nn.ModuleList(members)
        self.cfg = EnsembleConfig(name=name, input_size=max(m.cfg.input_size for m in members),
                                  members=tuple(m.cfg for m in members), mean=tuple(first.mean),
                                  std=tuple(first.std))

    def heads(self) -> list:
        """The last 1x1 convolution of each member: a logit calibration folds into all of them, since
        a * mean(z_i) + c = mean(a * z_i + c)."""
        return [head for m in self.members for head in m.heads()]

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        size = self.cfg.input_size                                      # x: B,3,S,S
        logits = []
        for m in self.members:
            s = m.cfg.input_size
            z = m.forward_logits(x if s == size else _resized(x, (s, s)))   # B,1,s,s
            logits.append(z if s == size else _resized(z, x.shape[-2:]))   # B,1,S,S
        return sum(logits) * (1.0 / len(logits))    # Add and Mul quantize; a stacked mean did not

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,3,S,S normalised image -> B,1,S,S alpha in [0,1]."""
        return torch.sigmoid(self.forward_logits(x))
