"""Quantization-aware fine-tuning: train the student while it sees the int8 rounding it will ship with.

The int8 model is still made by onnxruntime's static quantization (`edgecut export --int8`): QAT
only changes the float weights it starts from. So the fake quantization here mirrors what that
quantizer does to the exported graph, not torch's own int8 backends:
  - the ONNX export folds each BatchNorm into its convolution, and onnxruntime then rounds the
    folded weight per output channel, symmetric int8 (scale = max|w| / 127), and export halves
    the steps of every non-depthwise conv to 7 bits (seven_bit.py); here every Conv+BN sees
    exactly that folded, rounded weight (BN statistics frozen, as QAT usually does);
  - activations are uint8 per tensor, asymmetric, with 0 exactly representable: the network input,
    every Conv(+BN+ReLU) output, every residual sum, each decoder upsampling and concatenation,
    and the logits. Their ranges follow an
    exponential moving average of each batch's min/max (the observer of most QAT recipes);
  - rounding uses the straight-through estimator (torch.fake_quantize_*), so gradients pass.

Nothing is added to the module tree: the fake-quant state lives outside the state_dict, so a QAT
checkpoint loads, exports and prunes like any other. The forward methods are swapped per module
(enable) and restored (disable). A resumed run re-seeds the activation ranges from its first batch;
the moving average settles again within a few hundred steps.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from ..models.decoder import Decoder, upsample_to
from ..models.mobilenet import ConvBNReLU, InvertedResidual
from .seven_bit import QMAX_W7, is_depthwise

QMAX_W = 127     # int8 symmetric weights: [-127, 127], as onnxruntime quantizes them
QMAX_A = 255     # uint8 activations


def fake_quant_weight(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Per-output-channel symmetric int8 rounding of a conv weight (O,I,kh,kw); for all but a
    depthwise conv, those steps are then halved to the 7-bit range of the shipped file
    (`seven_bit.seven_bit_weights`: round(q / 2), scale doubled)."""
    scale = (w.detach().abs().amax(dim=(1, 2, 3)) / QMAX_W).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    q = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -QMAX_W, QMAX_W)
    if is_depthwise(groups, w.shape):
        return q
    # Halved on the integer steps, as the export does: every odd step is a tie (round half to even),
    # which rounding the float q / (2 scale) would break at random.
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    q7 = torch.round(torch.round(q.detach() / s) / 2).clamp(-QMAX_W7, QMAX_W7) * (2 * s)
    return q + (q7 - q.detach())        # straight through: the gradient of the 8-bit fake quantization


class ActivationQuant:
    """uint8 per-tensor fake quantization with an EMA min/max observer. Not an nn.Module on
    purpose: its state must not enter the student's state_dict."""

    def __init__(self, momentum: float = 0.01):
        self.momentum = momentum
        self.lo = self.hi = None

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().amin(), x.detach().amax()
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.lo is None:
            self.observe(x)
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        scale = ((hi - lo) / QMAX_A).clamp(min=1e-8).float().reshape(1)
        zero = torch.round(-lo / scale).clamp(0, QMAX_A).to(torch.int32).reshape(1)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, QMAX_A)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """Conv weight and bias with an eval-mode BN folded in: what the ONNX export computes."""
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * inv.reshape(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * inv
    if conv.bias is not None:
        b = b + conv.bias * inv
    return w, b


def _conv(conv: nn.Conv2d, x, w, b):
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _qat_conv_bn_relu(self, x):
    conv, bn = self[0], self[1]
    if self._qat_in is not None:                       # the network input: quantized by onnxruntime too
        x = self._qat_in(x, self.training)
    w, b = _folded(conv, bn)
    y = _conv(conv, x, fake_quant_weight(w, conv.groups), b)
    if len(self) > 2:
        y = F.relu(y)
    return self._qat_out(y, self.training)


def _qat_head(self, x):
    y = _conv(self, x, fake_quant_weight(self.weight, self.groups), self.bias)
    return self._qat_out(y, self.training)


def _qat_residual(self, x):   # enabled only on the blocks that have the residual
    return self._qat_out(x + self.block(x), self.training)


def _qat_merge(self, level, x, skip):
    """Decoder.merge with the two tensors onnxruntime quantizes that no conv outputs: the
    upsampled map (Resize runs in float, its result is quantized for the Concat) and the Concat."""
    up = self._qat_up[level](upsample_to(x, skip), self.training)
    return self._qat_cat[level](torch.cat([up, skip], 1), self.training)


def enable(model: nn.Module, momentum: float = 0.01) -> nn.Module:
    """Switch a student to fake-quantized forward passes (in place); returns it. BatchNorm
    statistics freeze from here on: the folded weights must be the ones onnxruntime will round."""
    first = True
    for mod in model.modules():
        if isinstance(mod, ConvBNReLU):
            object.__setattr__(mod, "_qat_in", ActivationQuant(momentum) if first else None)
            first = False
            object.__setattr__(mod, "_qat_out", ActivationQuant(momentum))
            mod.forward = types.MethodType(_qat_conv_bn_relu, mod)
        elif isinstance(mod, InvertedResidual) and mod.use_residual:
            object.__setattr__(mod, "_qat_out", ActivationQuant(momentum))
            mod.forward = types.MethodType(_qat_residual, mod)
    dec = model.decoder
    assert isinstance(dec, Decoder)
    object.__setattr__(dec, "_qat_up", [ActivationQuant(momentum) for _ in dec.blocks])
    object.__setattr__(dec, "_qat_cat", [ActivationQuant(momentum) for _ in dec.blocks])
    dec.merge = types.MethodType(_qat_merge, dec)
    head = model.decoder.head
    object.__setattr__(head, "_qat_out", ActivationQuant(momentum))
    head.forward = types.MethodType(_qat_head, head)
    return model


def disable(model: nn.Module) -> nn.Module:
    """Back to plain float forward passes (the trained weights stay)."""
    for mod in model.modules():
        for method in ("forward", "merge"):
            if method in mod.__dict__:
                delattr(mod, method)
        for attr in ("_qat_in", "_qat_out", "_qat_up", "_qat_cat"):
            if attr in mod.__dict__:
                object.__delattr__(mod, attr)
    return model


def is_enabled(model: nn.Module) -> bool:
    return any("_qat_out" in m.__dict__ for m in model.modules())

