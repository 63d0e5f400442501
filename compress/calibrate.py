"""Calibrate a student's alpha on held-out photos, then fold the fix into its last layer.

Why: composite augmentation pastes extra subjects into training photos, so the student learns a
world with more foreground than real photos have (measured on the held-out split: predicted mean
alpha 0.41 against the teacher's 0.30). A Platt-style scale and shift of the logits,
alpha = sigmoid(a * z + c), fitted by BCE against the teacher on held-out photos (never trained on,
never the benchmark sets), removes that bias. Both a and c fold exactly into the 1x1 head conv
(bilinear upsampling after it is linear with weights summing to one), so the exported model and
the runtime are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import eval_tensors, find_pairs, load_all, split_pairs
from .distill import evaluate


def heldout_tensors(run_dir, input_size: int, mean, std):
    """The held-out photos of a distill run (same stable split as training), at the model's input."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    pairs = find_pairs(cfg["data"], set(cfg.get("sets") or ()) or None, cfg.get("label_roots", ()),
                       cfg.get("exclude", ()))
    _, held = split_pairs(pairs, cfg.get("holdout", 0.03))
    if not held:
        raise ValueError(f"{run_dir}: the run has no held-out photos to calibrate on")
    return eval_tensors(load_all(held, progress=False), input_size, mean, std)


@torch.no_grad()
def _logits(model, x, batch: int = 32):
    model.eval()
    return torch.cat([model.forward_logits(x[i:i + batch]) for i in range(0, len(x), batch)])


def fit(model, x, y) -> tuple[float, float]:
    """(a, c) minimising BCE(sigmoid(a * logits + c), y)."""
    z = _logits(model, x)
    a = torch.tensor(1.0, requires_grad=True)
    c = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.LBFGS([a, c], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a * z + c, y)
        loss.backward()
        return loss

    opt.step(closure)
    return a.item(), c.item()


@torch.no_grad()
def fold_into_head(model, a: float, c: float) -> None:
    head = model.decoder.head
    head.weight.mul_(a)
    head.bias.mul_(a).add_(c)


def calibrate(model, run_dir) -> dict:
    """Fit on half the held-out photos, report on the other half, fold the fit into the model."""
    cfg = model.cfg
    x, y = heldout_tensors(run_dir, cfg.input_size, cfg.mean, cfg.std)
    fit_idx, test_idx = slice(0, None, 2), slice(1, None, 2)
    a, c = fit(model, x[fit_idx], y[fit_idx])
    before = evaluate(model, x[test_idx], y[test_idx])
    fold_into_head(model, a, c)
    after = evaluate(model, x[test_idx], y[test_idx])
    return {"scale": a, "shift": c, "photos_fit": len(x[fit_idx]), "photos_checked": len(x[test_idx]),
            "before": before, "after": after}
