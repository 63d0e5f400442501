"""MobileNetV2-style inverted-residual encoder, built for int8.

ReLU everywhere and no squeeze-excite: both hard-swish and SE stay in float under onnxruntime
and LiteRT int8, so a student that uses them gains nothing from quantization.
"""
from __future__ import annotations

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel counts in multiples of 8: what int8 SIMD kernels (and pruning) like."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = make_divisible(cin * expansion)
        layers = []
        if expansion != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        else:
            hidden = cin
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden), ConvBNReLU(hidden, cout, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetEncoder(nn.Module):
    """Returns one feature map per stride (2, 4, 8, 16, 32): the last block output at each."""

    def __init__(self, stages, stem_channels: int = 16, width: float = 1.0):
        super().__init__()
        c = make_divisible(stem_channels * width)
        self.stem = ConvBNReLU(3, c, 3, 2)  # B,3,H,W -> B,c,H/2,W/2
        self.stages = nn.ModuleList()
        self.strides = []
        stride = 2
        for t, cout, n, s in stages:
            cout = make_divisible(cout * width)
            blocks = [InvertedResidual(c if i == 0 else cout, cout, s if i == 0 else 1, t) for i in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            stride *= s
            self.strides.append(stride)
            c = cout
        self.stage_channels = [make_divisible(st[1] * width) for st in stages]

    def feature_channels(self) -> list[int]:
        """Channels of the features returned by forward, from stride 2 to stride 32."""
        out = {}
        for s, c in zip(self.strides, self.stage_channels):
            out[s] = c  # the last stage at a stride wins
        return [out[s] for s in sorted(out)]

    def forward(self, x) -> list[torch.Tensor]:
        feats = {}
        x = self.stem(x)
        for stage, s in zip(self.stages, self.strides):
            x = stage(x)
            feats[s] = x
        return [feats[s] for s in sorted(feats)]
