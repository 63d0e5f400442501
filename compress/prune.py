"""Structured channel pruning of a trained student, then fine-tuning by distillation.

Why Torch-Pruning's DepGraph: removing a channel from one conv means removing it from every
layer coupled to it (the residual adds of a stage, the decoder's concatenated skips, depthwise
convs, BatchNorms); DepGraph finds those groups from a traced forward pass, so the pruned net
stays consistent whatever the variant looks like. Channels are removed in multiples of 8 (what
int8 SIMD kernels want) and the single-channel head is never touched.

A target is a fraction of the MACs (or parameters) to KEEP. The pruner removes a small slice of
every layer's channels at a time until the count falls under the target, because MACs are not
linear in the channel ratio (a conv between two pruned layers loses on both sides).

A pruned checkpoint is a plain distill checkpoint (`{"model": state_dict, "variant": name}`) plus
a `"pruned"` record: the state dict's tensor shapes ARE the channel configuration, so
`rebuild_pruned` shrinks a freshly built variant to them and no pickled module ties the file to
one version of the code. torch_pruning is imported only where a model is pruned, so loading a
pruned checkpoint (export) needs no extra.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..models.student import count_macs, count_params, create_student
from ..runtime.imageio import write_text_atomic

IMPORTANCES = ("l1", "l2", "taylor", "random", "bn")


def make_importance(name: str):
    """Torch-Pruning's group importance for a criterion name (whole coupled groups are scored)."""
    import torch_pruning as tp

    imp = tp.importance
    table = {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "taylor": lambda: imp.GroupTaylorImportance(),   # needs gradients: see prune_to(grad_fn=)
        "random": lambda: imp.RandomImportance(),
        "bn": lambda: imp.BNScaleImportance(),           # |gamma| of the BatchNorms
    }
    if name not in table:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return table[name]()


def default_ignored(model) -> list:
    """Layers whose output channels must stay: the head's single alpha channel."""
    return [model.decoder.head] if hasattr(model, "decoder") else []


@dataclass
class Counts:
    macs: int
    params: int

    @classmethod
    def of(cls, model) -> "Counts":
        return cls(count_macs(model, model.cfg.input_size), count_params(model))


class _Counter:
    """MACs and params as channels go, without running the net: pruning never changes a conv's
    output resolution, so one forward pass records it and the rest is arithmetic. (Running the
    net after every slice cost most of the pruning time: each new channel count makes oneDNN
    build new kernels.) Counts what `count_macs` counts: convolutions and linears."""

    def __init__(self, model):
        self.model = model
        self.hw = {}
        hooks = [m.register_forward_hook(self._record) for m in model.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            size = model.cfg.input_size
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
        for h in hooks:
            h.remove()

    def _record(self, mod, inp, out):
        self.hw[mod] = out.shape[-2] * out.shape[-1]

    def counts(self) -> Counts:
        macs = 0
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                macs += self.hw[m] * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            elif isinstance(m, nn.Linear):
                macs += m.in_features * m.out_features
        return Counts(int(macs), count_params(self.model))


def prune_to(model, limit: int, measure: str = "macs", importance: str = "l1", round_to: int = 8,
             ignored=None, grad_fn: Optional[Callable[[nn.Module], None]] = None,
             slice_ratio: float = 0.01, max_layer_ratio: float = 0.9, progress: bool = False) -> Counts:
    """Prune `model` in place until its MACs (or params) are at most `limit`; returns the counts.

    Each pruner step removes `slice_ratio` of every layer's channels (rounded to `round_to`, at most
    `max_layer_ratio` of a layer overall), so the result lands within a slice of the target.
    `grad_fn(model)` fills .grad before each step, which the Taylor criterion needs.
    """
    import torch_pruning as tp

    if measure not in ("macs", "params"):
        raise ValueError("measure is 'macs' or 'params'")
    if importance == "taylor" and grad_fn is None:
        raise ValueError("the taylor importance needs gradients: pass grad_fn (training photos)")
    device = next(model.parameters()).device
    size = model.cfg.input_size
    model.eval()
    example = torch.zeros(1, 3, size, size, device=device)
    steps = max(1, round(1 / slice_ratio))
    pruner = tp.pruner.MetaPruner(
        model, example, importance=make_importance(importance), pruning_ratio=1.0, iterative_steps=steps,
        max_pruning_ratio=max_layer_ratio, round_to=round_to,
        ignored_layers=default_ignored(model) if ignored is None else list(ignored))
    counter = _Counter(model)
    counts = counter.counts()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"prune to {limit / 1e6:.1f}M {measure}", unit="slice", leave=False)
    while getattr(counts, measure) > limit and pruner.current_step < pruner.iterative_steps:
        if grad_fn is not None:
            model.zero_grad(set_to_none=True)
            grad_fn(model)
        pruner.step()
        model.zero_grad(set_to_none=True)
        counts = counter.counts()
        if bar:
            bar.update(1)
            bar.set_postfix({measure: f"{getattr(counts, measure) / 1e6:.2f}M"}, refresh=False)
    if bar:
        bar.close()
    return counts


def prune_student(model, target_macs: Optional[float] = None, target_params: Optional[float] = None,
                  importance: str = "l1", round_to: int = 8, ignored=None, grad_fn=None,
                  progress: bool = False) -> Counts:
    """One-shot: keep `target_macs` (or `target_params`) of the model's current MACs (params)."""
    measure, fraction = _target(target_macs, target_params)
    limit = int(fraction * getattr(Counts.of(model), measure))
    return prune_to(model, limit, measure, importance, round_to, ignored, grad_fn, progress=progress)


def _target(target_macs, target_params):
    if (target_macs is None) == (target_params is None):
        raise ValueError("give exactly one of target_macs and target_params")
    fraction = target_macs if target_macs is not None else target_params
    if not 0 < fraction < 1:
        raise ValueError(f"a target is the fraction of the model to keep, in (0, 1); got {fraction}")
    return ("macs" if target_macs is not None else "params"), float(fraction)


def schedule(fraction: float, steps: int) -> list[float]:
    """Fractions of the original to keep after each round: linear in the count, e.g. 0.6 over 2
    rounds -> [0.8, 0.6]; small cuts followed by fine-tuning lose less than one big cut."""
    return [1 - (1 - fraction) * (k + 1) / steps for k in range(steps)]


def rebuild_pruned(variant, state_dict) -> nn.Module:
    """A student of `variant` shrunk to the channel counts of a pruned state dict, weights loaded."""
    model = create_student(variant)
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, nn.Conv2d):
            _shrink_conv(mod, state_dict[prefix + "weight"])
        elif isinstance(mod, nn.BatchNorm2d):
            _shrink_bn(mod, state_dict[prefix + "running_mean"].numel())
    model.load_state_dict(state_dict)
    return model


def _shrink_conv(conv: nn.Conv2d, weight: torch.Tensor) -> None:
    out, in_per_group = weight.shape[:2]
    if conv.groups > 1:   # depthwise (groups == in_channels): the group count follows the channels
        groups = out // (conv.out_channels // conv.groups)
        conv.groups = groups
        conv.in_channels = groups * in_per_group
    else:
        conv.in_channels = in_per_group
    conv.out_channels = out
    conv.weight = nn.Parameter(torch.empty_like(weight, device="cpu", dtype=torch.float32))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.empty(out))


def _shrink_bn(bn: nn.BatchNorm2d, n: int) -> None:
    bn.num_features = n
    if bn.affine:
        bn.weight = nn.Parameter(torch.empty(n))
        bn.bias = nn.Parameter(torch.empty(n))
    if bn.track_running_stats:
        bn.running_mean = torch.zeros(n)
        bn.running_var = torch.ones(n)


def channel_counts(model) -> dict:
    """Output channels of every conv, for logs and manifests."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# --- fine-tuning -------------------------------------------------------------------------------
@dataclass
class FinetuneData:
    """Training photos held in memory once for every prune round, plus the held-out split."""
    augmenter: object
    held: Optional[tuple]   # (images, alphas) tensors, or None
    photos: int


def load_finetune_data(cfg, model_cfg, progress: bool = True) -> FinetuneData:
    """`cfg`: a distill TrainConfig (data, sets, label roots, exclusions, hold-out, augmentation)."""
    from ..runtime.errors import EdgecutError
    from .data import BatchAugmenter, eval_tensors, load_pairs, split_pairs
    from .distill import training_pairs

    pairs = training_pairs(cfg)
    train_pairs, held_pairs = split_pairs(pairs, cfg.holdout)
    augment = replace(cfg.augment, size=model_cfg.input_size)
    train_pairs, samples = load_pairs(train_pairs, progress=progress)
    if not samples:
        raise EdgecutError(f"no usable (photo, alpha) pairs under {cfg.data}: every training photo was unreadable")
    _, held = load_pairs(held_pairs, progress=False)
    aug = BatchAugmenter(samples, augment, model_cfg.mean, model_cfg.std, seed=cfg.seed)
    ev = eval_tensors(held, model_cfg.input_size, model_cfg.mean, model_cfg.std) if held else None
    return FinetuneData(aug, ev, len(train_pairs))


def finetune(model, data: FinetuneData, cfg, steps: int, progress: bool = True, desc: str = "fine-tune") -> dict:
    """`steps` of distillation on the teacher alphas (same loss, data and augmentation as `distill`),
    with a short warm-up and cosine decay of cfg.lr; returns the last loss and held-out metrics."""
    from .distill import _check_finite, _lr_at, batch_size_for, evaluate, pick_device
    from .losses import distill_loss

    device = pick_device(cfg.device)
    batch_size = batch_size_for(device, cfg.batch_size)
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = replace(cfg, steps=steps, warmup=min(cfg.warmup, max(1, steps // 10)))
    bar = None
    if progress and steps:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False)
    loss = None
    diverged = torch.zeros((), dtype=torch.long, device=device)   # first step of a NaN/inf loss (0: none)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, sched)
        x, y = data.augmenter.batch(batch_size)
        loss, _ = distill_loss(model.forward_logits(x.to(device).contiguous(memory_format=torch.channels_last)),
                               y.to(device))
        diverged = torch.where((diverged == 0) & ~torch.isfinite(loss.detach()), step + 1, diverged)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar:
            bar.update(1)
            bar.set_postfix({"loss": f"{loss.item():.3f}"}, refresh=False)
    if bar:
        bar.close()
    if steps:   # a diverged fine-tune (too high a --lr) stops before pruned.pt is written
        _check_finite(int(diverged), model, steps, cfg.lr)
    out = {"loss": loss.item() if loss is not None else None}
    if data.held is not None:
        out["holdout"] = evaluate(model, *data.held)
    model.eval().to("cpu", memory_format=torch.contiguous_format)
    return out


def taylor_grad_fn(data: FinetuneData, batch_size: int = 8):
    """grad_fn for the Taylor criterion: the distillation loss on one fixed augmented batch."""
    from .losses import distill_loss

    x, y = data.augmenter.batch(batch_size)

    def grad_fn(model):
        loss, _ = distill_loss(model.forward_logits(x), y)
        loss.backward()

    return grad_fn


# --- the whole job -----------------------------------------------------------------------------
@dataclass
class PruneConfig:
    target_macs: Optional[float] = None     # fraction of the MACs to keep
    target_params: Optional[float] = None   # or of the parameters
    importance: str = "l1"
    round_to: int = 8
    steps: int = 1                          # prune / fine-tune rounds
    finetune_steps: int = 0                 # distillation steps after each round
    rounds: list = field(default_factory=list)   # filled in: what each round did


def prune_checkpoint(checkpoint, out_dir, pcfg: PruneConfig, train_cfg=None, progress: bool = True,
                     log=print) -> Path:
    """Load a distill checkpoint, prune it in `pcfg.steps` rounds (fine-tuning between them when
    `pcfg.finetune_steps`), and write `<out_dir>/pruned.pt` + `prune.json`; returns the checkpoint."""
    from .distill import _save_atomic
    from .export import load_student

    measure, fraction = _target(pcfg.target_macs, pcfg.target_params)
    if pcfg.steps < 1:
        raise ValueError("steps must be at least 1")
    needs_data = pcfg.finetune_steps > 0 or pcfg.importance == "taylor"
    if needs_data and train_cfg is None:
        raise ValueError("fine-tuning and the taylor importance need training photos (a TrainConfig)")
    if train_cfg is not None and train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed if train_cfg is not None else 0)
    model, ck = load_student(checkpoint)
    data = load_finetune_data(train_cfg, model.cfg, progress) if needs_data else None
    base = Counts.of(model)
    log(f"{ck['variant']}: {base.macs / 1e6:.1f}M MACs, {base.params:,} params; keeping {fraction:.0%} of the "
        f"{measure} in {pcfg.steps} round(s), importance {pcfg.importance}")
    grad_fn = taylor_grad_fn(data) if pcfg.importance == "taylor" else None
    rounds = []
    holdout = ck.get("holdout")
    for k, keep in enumerate(schedule(fraction, pcfg.steps)):
        t0 = time.time()
        limit = int(keep * getattr(base, measure))
        counts = prune_to(model, limit, measure, pcfg.importance, pcfg.round_to, grad_fn=grad_fn, progress=progress)
        rec = {"round": k + 1, "keep": keep, "macs": counts.macs, "params": counts.params,
               "prune_s": round(time.time() - t0, 2)}
        if pcfg.finetune_steps:
            ft = finetune(model, data, train_cfg, pcfg.finetune_steps, progress, desc=f"fine-tune {k + 1}/{pcfg.steps}")
            rec.update(ft)
            holdout = ft.get("holdout", holdout)
        rounds.append(rec)
        if getattr(counts, measure) > limit:
            log(f"warning: round {k + 1} stopped at {getattr(counts, measure) / getattr(base, measure):.0%} of the "
                f"{measure} (target {keep:.0%}): every layer is at its floor ({pcfg.round_to}-channel steps, "
                "at most 90% of a layer removed)")
        log(f"round {k + 1}/{pcfg.steps}: {counts.macs / 1e6:.1f}M MACs ({counts.macs / base.macs:.0%}), "
            f"{counts.params:,} params ({counts.params / base.params:.0%})"
            + (f", held-out IoU {rec['holdout']['iou']:.4f}" if "holdout" in rec else ""))
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {**{k: v for k, v in asdict(pcfg).items() if k != "rounds"}, "rounds": rounds,
              "source": str(checkpoint), "base_macs": base.macs, "base_params": base.params,
              "macs": counts.macs, "params": counts.params}
    if ck.get("pruned"):   # pruning a pruned checkpoint: keep the chain back to the distilled model
        record["previous"] = ck["pruned"]
    # the size it was trained (and now pruned and fine-tuned) at, which export, qat and the card read
    trained = {"input_size": ck["input_size"]} if ck.get("input_size") else {}
    _save_atomic({"model": model.state_dict(), "variant": ck["variant"], "step": ck.get("step"),
                  "holdout": holdout, "pruned": record, **trained}, out / "pruned.pt")
    write_text_atomic(out / "prune.json", json.dumps({**record, "channels": channel_counts(model)}, indent=1))
    log(f"before: {base.macs / 1e6:.1f}M MACs, {base.params:,} params -> after: {counts.macs / 1e6:.1f}M MACs "
        f"({counts.macs / base.macs:.0%}), {counts.params:,} params ({counts.params / base.params:.0%})")
    return out / "pruned.pt"
