"""U-Net-style light decoder: upsample, concatenate the encoder skip, depthwise-separable conv.

The last stage runs at the input resolution and sees the RGB input itself, so edges follow the
photo rather than the blurry 1/2-resolution features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet import ConvBNReLU


class SeparableConv(nn.Sequential):
    """3x3 depthwise + 1x1 pointwise, each with BN and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNReLU(cin, cin, 3, groups=cin), ConvBNReLU(cin, cout, 1))


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    def __init__(self, feature_channels: list[int], context_channels: int, decoder_channels, refine_channels: int):
        super().__init__()
        *skips, deepest = feature_channels  # skips at strides 2, 4, 8, 16; deepest at 32
        self.context = ConvBNReLU(deepest, context_channels, 1)
        self.blocks = nn.ModuleList()
        c = context_channels
        for skip_c, out_c in zip(reversed(skips), decoder_channels):
            self.blocks.append(SeparableConv(c + skip_c, out_c))
            c = out_c
        self.refine = SeparableConv(c + 3, refine_channels)
        self.head = nn.Conv2d(refine_channels, 1, 1)

    def forward(self, image: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        *skips, x = feats
        x = self.context(x)                          # B,ctx,H/32,W/32
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(torch.cat([upsample_to(x, skip), skip], 1))   # up to H/16 ... H/2
        x = self.refine(torch.cat([upsample_to(x, image), image], 1))  # B,refine,H,W
        return self.head(x)                          # B,1,H,W logits
