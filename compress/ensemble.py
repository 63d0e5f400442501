"""Build an ensemble checkpoint (models/ensemble.py) from trained runs, each at its own input size.

Each member is first calibrated on its own run's held-out photos (the logit scale and shift that
`export --calibrate` fits), so that members whose raw logits differ in scale count equally in the
mean; `export --calibrate` then fits the ensemble's own scale and shift on top. The result is
written like a distill run (best.pt, plus the first member's config.json and split.json), so
`export` takes it as it takes any run.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..runtime.errors import EdgecutError, UsageError
from ..runtime.outputs import same_file
from .commands import check_input_size
from .model_card import calibration_formula, calibration_outcome
from .soup import save_run

DROP = ("opt", "holdout", "best", "steps", "model", "calibration")


def parse_member(text: str) -> tuple[Path, int | None]:
    """`runs/x/best.pt@256` -> (path, 256); without `@SIZE`, the size the run trained at."""
    path, _, size = text.rpartition("@") if "@" in text else (text, "", "")
    if size and not size.isdigit():
        raise UsageError(f"{text}: the size after @ must be a number of pixels")
    try:
        return Path(path), check_input_size(int(size) or -1, text) if size else None   # @0 refused, as --input-size 0
    except EdgecutError as e:   # a size typed on the command line: a usage error, as --input-size's
        raise UsageError(str(e)) from None


def _has_run(checkpoint: Path) -> bool:
    """Whether a checkpoint lies in a distill run folder (its config.json names the held-out split);
    one recovered from a shipped file (`compress recover`) and not trained since does not."""
    return (checkpoint.parent / "config.json").is_file()


def build(members: list[tuple[Path, int | None]], out: Path, name: str, calibrate_members: bool = True,
          heldout_data=None) -> Path:
    from .calibrate import calibrate, fold_into_head
    from .export import load_student

    if len(members) < 2:
        raise UsageError("an ensemble needs at least two checkpoints")
    for path, _ in members:   # a folder or a file that is no checkpoint: load_student says which
        if not path.exists():
            raise EdgecutError(f"{path}: no such checkpoint")
    loaded = [load_student(path) for path, _ in members]   # every member readable before any is calibrated
    seen = []
    for (path, size), (model, ck) in zip(members, loaded):   # and every member checked: calibrating takes a while
        if ck.get("ensemble"):
            raise EdgecutError(f"{path}: already an ensemble")
        size = size or model.cfg.input_size
        twin = next((p for p, s in seen if s == size and same_file(p, path)), None)
        if twin is not None:   # one student twice at one size: the mean of its logits is its logits
            raise UsageError(f"{path}: given twice at {size} px ({twin}); an ensemble needs different "
                             "students, or one at different sizes")
        first = loaded[0][0].cfg
        if (tuple(model.cfg.mean), tuple(model.cfg.std)) != (tuple(first.mean), tuple(first.std)):
            raise EdgecutError(f"{path}: normalises its input unlike {members[0][0]} (mean/std differ)")
        seen.append((path, size))
    entries = []
    for (path, size), (model, ck) in zip(seen, loaded):
        model.cfg = replace(model.cfg, input_size=size)
        entry = {k: v for k, v in ck.items() if k not in DROP}
        shipped = ck.get("calibration") if ck.get("recovered_from") else None
        if calibrate_members and shipped and not _has_run(path):
            # no run, so no held-out photos: the member keeps the calibration it shipped with
            fold_into_head(model, shipped["scale"], shipped["shift"])
            entry["calibration"] = shipped
            print(f"{path} at {size} px: recovered, keeps its shipped calibration {calibration_formula(shipped)}")
        elif calibrate_members:
            try:
                entry["calibration"] = cal = calibrate(model, path.parent, heldout_data)
            except (FileNotFoundError, ValueError) as e:   # no run, its photos elsewhere, none held out
                raise EdgecutError(str(e)) from None
            print(f"{path} at {size} px: {calibration_outcome(cal)}")
        entries.append({**entry, "model": model.state_dict(), "input_size": size, "source": str(path)})
    # the held-out split that `export --calibrate` uses: the first member that has a run (a recovered one has none)
    runs = [p.parent for p, _ in members if _has_run(p)]
    return save_run({"variant": name, "ensemble": entries, "step": 0}, out, like=(runs or [members[0][0].parent])[0])
