"""Several students as one network: each sees the photo at its own size; their logits are averaged.

Why: two small students trained apart make different mistakes, and on held-out photos their
average beat either of them by more than another training run ever moved one (int8, whole
runtime, 135 photos: edgecut-medium-pruned 0.6789 and edgecut-fast 0.6782 IoU alone, their
averaged alphas 0.6923). Both run inside one graph, so the runtime, the int8 export and the
TFLite export see one model with one input, the larger member's size; smaller members get a
nearest-neighbour downscale in the graph (index gathers).

The logits are averaged on the largest member's last decoder grid (H/2), smaller members' logits
brought there by gathers, and upsampled to H once: each member upsampling its own logits to H first
cost a bilinear Resize per member, and onnxruntime ran the small member's one (96 -> 192 px, one
channel, in NHWC) at 0.36 ms of edgecut-duo's 11.5 ms; both ways are the same for members of one
size, as a bilinear upsampling is linear.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .decoder import upsample_to


@dataclass(frozen=True)
class EnsembleConfig:
    name: str
    input_size: int
    members: tuple          # each member's StudentConfig (its input_size: the size it runs at)
    mean: tuple
    std: tuple

    def to_dict(self) -> dict:
        return asdict(self)


def _nearest_rows(n_in: int, n_out: int) -> torch.Tensor:
    """For each of n_out output pixels, the input pixel whose centre is nearest its centre, in integers:
    floor((2i + 1) n_in / (2 n_out))."""
    return (torch.arange(n_out) * 2 + 1) * n_in // (2 * n_out)


def _resized(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resize of the last two (square) axes to len(idx) pixels each, as two index
    gathers with idx = _nearest_rows(n_in, n_out).

    Why gathers and not a Resize: a bilinear Resize between sizes that are not powers of two apart
    (256 -> 192) weighs pixels by fractions like 5/6, which onnxruntime's float Resize rounds
    differently on x86 and ARM (1.1% of alpha pixels off by more than 8/255 after int8), and a
    nearest Resize picks different pixels in LiteRT than in torch and onnxruntime (the TFLite export
    of the first edgecut-duo was 3.21/255 off its ONNX file). A Gather with constant indices copies
    the same pixels in every framework and on every processor, and int8 passes through it unchanged.
    The columns are gathered as rows of the transposed tensor: onnxruntime copies whole rows at once
    but single elements one by one (320 -> 192 px on uint8: 0.026 ms this way, 0.30 ms along the
    last axis)."""
    x = x.index_select(-2, idx)                                          # B,C,n_out,n_in
    return x.transpose(-1, -2).index_select(-2, idx).transpose(-1, -2)   # B,C,n_out,n_out


def _logit_grid(member: nn.Module) -> int:
    """Side of a member's logit grid (its decoder's last), by one dry run at its own size, in eval
    mode so that batch-norm statistics stay as they are."""
    was_training, size = member.training, member.cfg.input_size
    member.eval()
    with torch.no_grad():
        side = member.forward_low(torch.zeros(1, 3, size, size, device=next(member.parameters()).device)).shape[-1]
    member.train(was_training)
    return side


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
        self.grids = [_logit_grid(m) for m in members]
        # Constant indices, as buffers: computed inside forward, torch.export would trace the integer
        # arithmetic and the int8 TFLite quantizer would try to observe it.
        size, grid = self.cfg.input_size, max(self.grids)
        for s in {m.cfg.input_size for m in members} - {size}:
            self.register_buffer(f"rows_{size}_{s}", _nearest_rows(size, s), persistent=False)
        for g in set(self.grids) - {grid}:
            self.register_buffer(f"rows_{g}_{grid}", _nearest_rows(g, grid), persistent=False)

    def heads(self) -> list:
        """The last 1x1 convolution of each member: a logit calibration folds into all of them, since
        a * mean(z_i) + c = mean(a * z_i + c)."""
        return [head for m in self.members for head in m.heads()]

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        size, grid = self.cfg.input_size, max(self.grids)              # x: B,3,S,S
        logits = []
        for m, g in zip(self.members, self.grids):
            s = m.cfg.input_size
            z = m.forward_low(x if s == size else _resized(x, getattr(self, f"rows_{size}_{s}")))  # B,1,g,g
            logits.append(z if g == grid else _resized(z, getattr(self, f"rows_{g}_{grid}")))     # B,1,G,G
        z = sum(logits) * (1.0 / len(logits))   # Add and Mul quantize; a stacked mean did not
        return upsample_to(z, x)                                        # B,1,S,S

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,3,S,S normalised image -> B,1,S,S alpha in [0,1]."""
        return torch.sigmoid(self.forward_logits(x))
