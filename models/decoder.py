"""U-Net-style light decoder: upsample, concatenate the encoder skip, depthwise-separable conv.

It stops at 1/2 resolution and upsamples the single-channel logits: a full-resolution stage
that re-reads the RGB input cost half of the whole model's CPU time (depthwise convs over 19
channels at 256x256, measured with onnxruntime's profiler) for edges that the runtime's guided
upsampling snaps to the photo anyway, at the photo's own resolution.
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
    def __init__(self, feature_channels: list[int], context_channels: int, decoder_channels):
        super().__init__()
        *skips, deepest = feature_channels  # skips at strides 2, 4, 8, 16; deepest at 32
        self.context = ConvBNReLU(deepest, context_channels, 1)
        self.blocks = nn.ModuleList()
        c = context_channels
        for skip_c, out_c in zip(reversed(skips), decoder_channels):
            self.blocks.append(SeparableConv(c + skip_c, out_c))
            c = out_c
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, image: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        return upsample_to(self.low(feats), image)   # B,1,H/2,W/2 -> B,1,H,W logits

    def low(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The logits before the last upsampling (B,1,H/2,W/2): where an ensemble averages its members."""
        *skips, x = feats
        x = self.context(x)                          # B,ctx,H/32,W/32
        for level, (block, skip) in enumerate(zip(self.blocks, reversed(skips))):
            x = block(self.merge(level, x, skip))    # up to H/16 ... H/2
        return self.head(x)                          # B,1,H/2,W/2

    def merge(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample x to the skip's size and concatenate them (the input of block `level`); its own
        method so that QAT can quantize both results where onnxruntime does."""
        return torch.cat([upsample_to(x, skip), skip], 1)
