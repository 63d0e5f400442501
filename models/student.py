"""The student: MobileNet encoder + skip decoder + sigmoid alpha. `create_student('edgecut-small')`."""
from __future__ import annotations

import torch
from torch import nn

from .decoder import Decoder
from .mobilenet import MobileNetEncoder
from .variants import StudentConfig, get_variant


class Student(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MobileNetEncoder(cfg.stages, cfg.stem_channels, cfg.width)
        self.decoder = Decoder(self.encoder.feature_channels(), cfg.context_channels, cfg.decoder_channels)

    def heads(self) -> list:
        """The last 1x1 convolution, where a logit calibration folds in (an ensemble has one per member)."""
        return [self.decoder.head]

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x, self.encoder(x))

    def forward_low(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the decoder's last grid (B,1,H/2,W/2), before their upsampling to H,W."""
        return self.decoder.low(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,3,H,W normalised image -> B,1,H,W alpha in [0,1]."""
        return torch.sigmoid(self.forward_logits(x))


def create_student(name_or_cfg) -> Student:
    cfg = get_variant(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return Student(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of convolutions and linears for one image (what dominates on CPU)."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs += out.numel() // out.shape[0] * k
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return int(macs)
