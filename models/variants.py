"""Named student variants, timm-style: configuration as data, looked up by name.

Kept torch-free so the runtime and `edgecut models` can read it without the compress extra.
Every variant uses ReLU and no squeeze-excite: measured on onnxruntime and LiteRT, hard-swish and
SE fall back to float under int8, while plain ReLU inverted residuals quantize end to end.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class StudentConfig:
    name: str
    input_size: int = 256
    # Encoder stages: (expansion, out_channels, blocks, stride). Strides after the stride-2 stem.
    stages: tuple = (
        (1, 16, 1, 1),   # 1/2
        (4, 24, 2, 2),   # 1/4
        (4, 32, 3, 2),   # 1/8
        (4, 64, 3, 2),   # 1/16
        (4, 96, 2, 1),   # 1/16
        (4, 160, 2, 2),  # 1/32
    )
    stem_channels: int = 16
    width: float = 1.0
    context_channels: int = 128
    # Decoder channels from 1/16 up to 1/2 (one per skip level); logits are upsampled from 1/2.
    decoder_channels: tuple = (64, 40, 24, 16)
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        return asdict(self)


_REGISTRY: dict[str, StudentConfig] = {}


def register(cfg: StudentConfig) -> StudentConfig:
    _REGISTRY[cfg.name] = cfg
    return cfg


def get_variant(name: str) -> StudentConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown student variant {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_variants() -> list[str]:
    return sorted(_REGISTRY)


_BASE = StudentConfig(name="base")
register(replace(_BASE, name="edgecut-nano", width=0.5, context_channels=64,
                 decoder_channels=(40, 24, 16, 16)))
register(replace(_BASE, name="edgecut-small"))
register(replace(_BASE, name="edgecut-small-320", input_size=320))
register(replace(_BASE, name="edgecut-medium", width=1.4, context_channels=160,
                 decoder_channels=(80, 48, 32, 24)))
