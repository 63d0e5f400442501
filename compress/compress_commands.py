"""`edgecut compress prune|quantize|qat|soup|ensemble|rewrite|recover`: make trained students smaller, integer,
steadier or faster, or get a trainable checkpoint back from a shipped model.

Only argparse at import time: torch, torch_pruning and onnxruntime's tools load in the handlers.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from ..runtime.argtypes import THREADS, integer, number
from .commands import (POSITIVE, SEED, add_data_args, asked_input_size, data_options, fraction, fraction_below_one,
                       train_root)


def register(sub) -> None:
    p = sub.add_parser("compress", help="prune, quantize (PTQ or QAT) or average (soup) trained students")
    verbs = p.add_subparsers(dest="compress_command", metavar="STEP")
    add_prune(verbs)
    add_quantize(verbs)
    add_qat(verbs)
    add_soup(verbs)
    add_ensemble(verbs)
    add_rewrite(verbs)
    add_recover(verbs)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@contextmanager
def _output_run(folder):
    """output_folder for a verb that writes its files only at the end (prune, soup, ensemble, recover,
    rewrite): a folder made here is removed again when the verb fails or is interrupted, so a refusal
    found late, a failed step or a full disk leaves no empty or half-written folder that looks like a run."""
    from ..runtime.outputs import output_folder
    from .export import _new_folder

    folder = Path(folder)
    output_folder(folder if folder.exists() else folder.parent)   # a file there, or no write access: one line
    with _new_folder(folder):
        yield folder


def _refuse_a_run(folder: Path, mark: str = "recovered_from", verb: str = "recover") -> None:
    """recover, soup and ensemble write FOLDER/best.pt: refuse a folder holding a checkpoint the verb did
    not write (a distill run's best.pt or last.pt, which it would silently replace); its own earlier
    output (a checkpoint carrying `mark`) may go, so a rerun replaces it."""
    from ..runtime.errors import EdgecutError
    from .loaders import load_checkpoint

    folder = Path(folder)
    if (folder / "last.pt").exists():
        raise EdgecutError(f"{folder}: holds a training run (last.pt); pass a new --out folder")
    best = folder / "best.pt"
    if best.exists():
        try:
            ours = bool(load_checkpoint(best).get(mark))
        except EdgecutError:
            ours = False
        if not ours:
            raise EdgecutError(f"{best}: a checkpoint `compress {verb}` did not write would be replaced; "
                               "pass a new --out folder")


def _refuse_ensemble(ck: dict, path, verb: str) -> None:
    """prune and qat rebuild one student from the checkpoint's variant: an ensemble has none."""
    from ..runtime.errors import EdgecutError

    if ck.get("ensemble"):
        raise EdgecutError(f"{path}: an ensemble of {len(ck['ensemble'])} students; {verb} each member's "
                           "checkpoint, then build the ensemble again (edgecut compress ensemble)")


def _refuse_repeats(paths, what: str) -> None:
    """The same checkpoint twice is one run counted twice: a soup of it is that run, called a soup."""
    from ..runtime.errors import EdgecutError
    from ..runtime.outputs import same_file

    for i, a in enumerate(paths):
        for b in paths[:i]:
            if same_file(a, b):
                raise EdgecutError(f"{a}: given twice ({b}); {what}")


def add_finetune_args(p) -> None:
    """The distillation data and run options that prune's and qat's fine-tuning share."""
    add_data_args(p)
    p.add_argument("--batch-size", type=integer(1, 65536), default=0, help="default: 16 on CPU, 128 on a GPU")
    p.add_argument("--holdout", type=fraction_below_one, default=0.03, help="fraction held out, in [0, 1)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=THREADS, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="fine-tuning device: auto, cpu, cuda ...")


# --- prune -------------------------------------------------------------------------------------
# The criteria of prune.IMPORTANCES, spelled out here: this module must import without torch.
IMPORTANCES = ("l1", "l2", "taylor", "random", "bn")


KEEP = fraction(lo_open=True)   # prune's targets: the fraction to keep


def add_prune(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning (Torch-Pruning DepGraph) + distillation fine-tune")
    p.add_argument("checkpoint", type=Path, help="best.pt / last.pt from `edgecut distill` (or an earlier pruned.pt)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-macs", type=KEEP, metavar="F", help="fraction of the MACs to keep, e.g. 0.6")
    target.add_argument("--target-params", type=KEEP, metavar="F", help="fraction of the parameters to keep")
    p.add_argument("--importance", choices=IMPORTANCES, default="l1",
                   help="channel criterion: l1/l2 weight magnitude, taylor (needs photos), random, bn (BN gamma)")
    p.add_argument("--round-to", type=integer(1), default=8, help="keep channel counts multiples of this (default 8)")
    p.add_argument("--steps", type=integer(1), default=1, help="prune / fine-tune rounds, each cutting a little more")
    p.add_argument("--finetune-steps", type=integer(0), default=0, metavar="N",
                   help="distillation steps after each round (0: prune only)")
    p.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak fine-tuning learning rate")
    add_finetune_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for pruned.pt and prune.json (default runs/prune/<checkpoint folder>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_prune)


def run_prune(args) -> int:
    from ..runtime.errors import EdgecutError
    from .loaders import load_checkpoint

    ck = load_checkpoint(args.checkpoint)   # missing, a folder or not a checkpoint: one line before any work
    _refuse_ensemble(ck, args.checkpoint, "prune")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise EdgecutError("pruning needs the prune extra: pip install 'edgecut[prune]' (torch-pruning)") from None
    from .distill import TrainConfig
    from .prune import PruneConfig, prune_checkpoint

    train_cfg = None
    if args.finetune_steps or args.importance == "taylor":
        try:
            data = data_options(args)
        except EdgecutError as e:
            raise EdgecutError(f"{e}; fine-tuning and the taylor importance need training photos") from None
        from .distill import pick_device

        pick_device(args.device)
        train_cfg = TrainConfig(**data, batch_size=args.batch_size, lr=args.lr,
                                holdout=args.holdout, seed=args.seed, threads=args.threads, device=args.device)
    elif args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or Path("runs/prune") / args.checkpoint.resolve().parent.name
    if (out / "pruned.pt").resolve() == args.checkpoint.resolve():
        raise EdgecutError(f"{out / 'pruned.pt'}: would overwrite the input checkpoint; pass another --out")
    pcfg = PruneConfig(target_macs=args.target_macs, target_params=args.target_params, importance=args.importance,
                       round_to=args.round_to, steps=args.steps, finetune_steps=args.finetune_steps)
    with _output_run(out):
        try:
            path = prune_checkpoint(args.checkpoint, out, pcfg, train_cfg, progress=not args.no_progress)
        except FileNotFoundError as e:
            raise EdgecutError(str(e)) from None
    print(f"pruned checkpoint: {path}  (export it with: edgecut export {path} --name NAME)")
    return 0


# --- quantize ----------------------------------------------------------------------------------
def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="static int8 (QDQ) of an exported fp32 ONNX folder, with a per-layer report")
    p.add_argument("model_dir", type=Path, help="fp32 model folder from `edgecut export` (model.onnx + manifest.json)")
    p.add_argument("--calib", type=Path, default=None, help="calibration photos folder (default $EDGECUT_DATA/train)")
    p.add_argument("--calib-n", type=integer(1), default=128, help="number of calibration photos")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="activation range calibration")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    p.add_argument("--not-portable", action="store_true",
                   help="plain quantize_static: int8 Resize and per-tensor Add scales; a little more accurate, "
                        "but x86 and ARM alphas may differ (default: exact, same on both)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="ONNX node names to leave in float")
    p.add_argument("--auto-exclude", type=integer(0), default=0, metavar="K",
                   help="mixed precision: leave the K activations with the worst int8 SQNR in float")
    p.add_argument("--report", action="store_true", help="print per-layer SQNR (fp32 vs int8), worst first")
    p.add_argument("--report-n", type=integer(1), default=8, help="photos for the report and --auto-exclude")
    p.add_argument("--report-json", type=Path, default=None,
                   help="also write the report as JSON here (implies --report)")
    p.add_argument("--name", default=None, help="output model name (default: <input name>-int8)")
    p.add_argument("--out", type=Path, default=None, help="parent folder of OUT/NAME (default: beside MODEL_DIR)")
    p.set_defaults(func=run_quantize)


def run_quantize(args) -> int:
    import json

    from ..runtime.errors import EdgecutError
    from ..runtime.imageio import write_text_atomic
    from ..runtime.manifest import Manifest
    from ..runtime.outputs import output_file, refuse_inputs
    from .loaders import check_name, check_onnx

    manifest_path = args.model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise EdgecutError(f"{args.model_dir}: no manifest.json (expected a folder from `edgecut export`)")
    m = Manifest.load(manifest_path)
    if m.format != "onnx" or m.precision != "fp32":
        raise EdgecutError(f"{args.model_dir}: needs an fp32 ONNX model (this one is {m.format} {m.precision})")
    name = check_name(args.name) if args.name is not None else f"{args.model_dir.name}-int8"
    out = args.out or args.model_dir.parent
    if (out / name).resolve() == args.model_dir.resolve():
        raise EdgecutError(f"{out / name}: would overwrite the input model; pass another --name or --out")
    check_onnx(args.model_dir / m.file)
    if args.report_json:
        args.report = True   # a JSON of the report is asked for: without the report there would be none
        refuse_inputs([args.report_json], [args.model_dir / m.file, manifest_path], "pass another --report-json")
        dest = (out / name).resolve()
        if args.report_json.resolve() == dest or dest in args.report_json.resolve().parents:
            # it would replace the model's model.onnx or manifest.json, or be removed with a failed model
            raise EdgecutError(f"--report-json {args.report_json}: inside the output model folder {out / name}; "
                               "pass a path outside it")
        output_file(args.report_json)
    from .export import calibration_photos
    from .quantize import check_exclusions, errors_json, quantize_model, report_table

    check_exclusions(args.model_dir, args.exclude, args.auto_exclude)   # before anything is written

    calib = args.calib or train_root()
    try:
        warned: set = set()   # a bad photo in both samples is named once
        photos = calibration_photos(calib, args.calib_n, warned=warned)
        probe = calibration_photos(calib, args.report_n, seed=1, warned=warned) if (args.report or args.auto_exclude) else None
    except FileNotFoundError as e:
        raise EdgecutError(str(e)) from None
    made = not (out / name).exists()
    try:
        with _output_run(out):   # after the photos: none found leaves no empty --out folder, nor does a failure
            print(f"calibrating on {len(photos)} photos from {calib} ({args.method}, "
                  f"{'per-tensor' if args.per_tensor else 'per-channel'} weights)", file=sys.stderr)
            res = quantize_model(args.model_dir, out, name, photos, args.method, not args.per_tensor, args.exclude,
                                 args.auto_exclude, probe if args.report or args.auto_exclude else None,
                                 portable=not args.not_portable)
    except BaseException as e:   # a failure after the folder was written (the report, --auto-exclude) leaves none
        if made:
            import shutil

            shutil.rmtree(out / name, ignore_errors=True)
        if isinstance(e, OSError) and not e.filename:   # onnx and onnxruntime name no file when a write fails
            raise EdgecutError(f"{out / name}: cannot write the int8 model ({e.strerror or e})") from None
        raise
    q = Manifest.load(res.folder / "manifest.json")
    if res.excluded:
        print(f"left in float: {', '.join(res.excluded)}")
    print(f"float ops left: {q.extra['quantization']['float_ops'] or 'none'}")
    if res.errors is not None:
        print(report_table(res.errors))
        print(f"alpha mean abs diff vs fp32 on {len(probe)} photos: {res.output_mae:.4f}")
        if args.report_json:
            write_text_atomic(args.report_json, json.dumps({
                "model": str(res.folder), "excluded": res.excluded, "output_mae": res.output_mae,
                "layers": errors_json(res.errors)}, indent=1))
    print(f"int8: {res.folder}")
    return 0


# --- qat ---------------------------------------------------------------------------------------
def add_qat(sub) -> None:
    p = sub.add_parser("qat", help="quantization-aware fine-tuning by distillation, then `edgecut export --int8`")
    p.add_argument("checkpoint", type=Path, help="best.pt / last.pt from `edgecut distill`, or a pruned.pt")
    p.add_argument("--steps", type=integer(1), default=2000)
    p.add_argument("--minutes", type=number(0), default=0, help="fit the run into this many minutes (sets --steps)")
    p.add_argument("--lr", type=POSITIVE, default=1e-4, help="peak learning rate (low: the weights only adapt)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="fine-tune at the size the model will be exported at (default: the checkpoint's)")
    p.add_argument("--eval-every", type=integer(1), default=250)
    add_finetune_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/qat/<checkpoint folder>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_qat)


def _refuse_to_resume_another(out: Path, checkpoint: Path) -> None:
    """A folder with a last.pt is resumed from it, and the checkpoint given is not read: that is right
    for this QAT run interrupted, but a distill run there would go on as QAT (its last.pt and config
    replaced), and another checkpoint's QAT run would go on under this checkpoint's name."""
    from ..runtime.errors import EdgecutError
    from ..runtime.outputs import same_file
    from .loaders import read_run_json

    if not (out / "last.pt").exists():
        return
    cfg = read_run_json(out / "config.json") or {}
    if not cfg.get("qat"):
        raise EdgecutError(f"{out}: holds a training run that is not a QAT run (last.pt); pass a new --out folder")
    init = cfg.get("init")
    if not (isinstance(init, str) and (same_file(init, checkpoint) or Path(init).resolve() == checkpoint.resolve())):
        raise EdgecutError(f"{out}: holds the QAT run of {init}, which would be resumed instead; pass that "
                           "checkpoint to resume it, or a new --out folder")


def run_qat(args) -> int:
    from ..runtime.errors import EdgecutError
    from ..runtime.outputs import output_folder, refuse_inputs
    from .distill import TrainConfig, pick_device, train
    from .loaders import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    _refuse_ensemble(ck, args.checkpoint, "fine-tune")
    data = data_options(args)
    pick_device(args.device)
    out = args.out or f"runs/qat/{args.checkpoint.resolve().parent.name}"
    if (Path(out) / "best.pt").resolve() == args.checkpoint.resolve():
        raise EdgecutError(f"{out}: would overwrite the input checkpoint; pass another --out")
    refuse_inputs([Path(out) / "best.pt", Path(out) / "last.pt"], [args.checkpoint], "pass another --out")
    _refuse_to_resume_another(Path(out), args.checkpoint)
    output_folder(out)
    cfg = TrainConfig(variant=ck["variant"], **data, out=out, steps=args.steps, minutes=args.minutes,
                      batch_size=args.batch_size, lr=args.lr, warmup=min(100, args.steps // 10),
                      holdout=args.holdout, eval_every=args.eval_every, seed=args.seed, threads=args.threads,
                      device=args.device, init=str(args.checkpoint), qat=True,
                      input_size=asked_input_size(args.input_size) or ck.get("input_size") or 0)
    best = train(cfg, progress=not args.no_progress)
    size = f" --input-size {cfg.input_size}" if cfg.input_size else ""
    print(f"QAT checkpoint: {best}  (make the int8 model with: edgecut export {best} --name NAME --int8{size})")
    return 0


# --- soup --------------------------------------------------------------------------------------
def add_soup(sub) -> None:
    p = sub.add_parser("soup", help="average the weights of runs that started from the same checkpoint")
    p.add_argument("checkpoints", type=Path, nargs="+", help="two or more best.pt of one architecture")
    p.add_argument("--out", type=Path, required=True, help="run folder for the soup's best.pt")
    p.set_defaults(func=run_soup)


def run_soup(args) -> int:
    from ..runtime.outputs import refuse_inputs
    from .soup import soup

    refuse_inputs([args.out / "best.pt"], args.checkpoints, "pass another --out (a new run folder)")
    _refuse_repeats(args.checkpoints, "a soup averages different runs")
    _refuse_a_run(args.out, "soup", "soup")
    with _output_run(args.out):
        best = soup(args.checkpoints, args.out)
    print(f"soup of {len(args.checkpoints)} checkpoints: {best}  (then: edgecut export {best} --calibrate ...)")
    return 0


# --- ensemble ----------------------------------------------------------------------------------
def add_ensemble(sub) -> None:
    p = sub.add_parser("ensemble", help="run several trained students as one model (their logits averaged)")
    p.add_argument("members", nargs="+", metavar="CHECKPOINT[@SIZE]",
                   help="two or more checkpoints, each optionally at another input size (a multiple of 32)")
    p.add_argument("--out", type=Path, required=True, help="run folder for the ensemble's best.pt")
    p.add_argument("--name", default="ensemble", help="architecture name kept in the manifest")
    p.add_argument("--no-calibrate-members", action="store_true",
                   help="average the members' raw logits (default: calibrate each on its held-out photos first)")
    p.add_argument("--heldout-data", metavar="DIR",
                   help="the members' training root here, if they trained elsewhere (a GPU box)")
    p.set_defaults(func=run_ensemble)


def run_ensemble(args) -> int:
    from ..runtime.outputs import refuse_inputs
    from .ensemble import build, parse_member

    members = [parse_member(m) for m in args.members]
    refuse_inputs([args.out / "best.pt"], [p for p, _ in members], "pass another --out (a new run folder)")
    _refuse_a_run(args.out, "ensemble", "ensemble")
    with _output_run(args.out):
        best = build(members, args.out, args.name,
                     calibrate_members=not args.no_calibrate_members, heldout_data=args.heldout_data)
    print(f"ensemble of {len(args.members)} students: {best}  (then: edgecut export {best} --calibrate ...)")
    return 0


# --- rewrite -----------------------------------------------------------------------------------
def add_rewrite(sub) -> None:
    p = sub.add_parser("rewrite", help="apply export's onnxruntime rewrites (7-bit GEMM weights, exact on AVX2 "
                                       "without VNNI; and the exact speed-ups: SpaceToDepth stem, uint8 data "
                                       "movement, channels in multiples of 16) to a model exported before them")
    p.add_argument("model", help="embedded model name or model folder from `edgecut export`")
    p.add_argument("--out", type=Path, required=True, help="folder for OUT/NAME")
    p.add_argument("--name", help="name of the result (default: the model's)")
    p.add_argument("--embed", action="store_true", help="copy the result into the package's models/embedded/NAME")
    p.add_argument("--default", action="store_true", help="with --embed: make it the default model")
    p.set_defaults(func=run_rewrite)


def run_rewrite(args) -> int:
    from ..models import resolve
    from ..runtime.errors import EdgecutError
    from ..runtime.manifest import Manifest
    from .export import rewrite_folder
    from .loaders import check_name, check_onnx

    path, _ = resolve(args.model)
    folder = path.parent if path.is_file() else path
    if not (folder / "manifest.json").is_file():
        raise EdgecutError(f"{folder}: no manifest.json (expected a folder from `edgecut export`)")
    man = Manifest.load(folder / "manifest.json")
    name = check_name(args.name) if args.name is not None else (man.name or folder.name)
    dest = args.out / name
    if dest.resolve() == folder.resolve():
        raise EdgecutError(f"{dest}: would overwrite the input model; pass another --out or --name")
    if folder.resolve() in args.out.resolve().parents or args.out.resolve() == folder.resolve():
        raise EdgecutError(f"{args.out}: inside the input model folder {folder} (the copy would hold itself); "
                           "pass another --out")
    if dest.exists() and not (dest / "manifest.json").is_file() and (not dest.is_dir() or any(dest.iterdir())):
        # the result replaces DEST whole: a model folder (an earlier rewrite) may go, a run or photos may not
        raise EdgecutError(f"{dest}: exists and is not a model folder, and would be replaced; "
                           "pass another --out or --name")
    if man.format == "onnx":
        check_onnx(folder / man.file)
    with _output_run(args.out):
        try:
            dest, done = rewrite_folder(folder, args.out, name)
        except ValueError as e:
            raise EdgecutError(str(e)) from None
        except OSError as e:   # a full disk while copying or rewriting the model
            raise EdgecutError(f"{dest}: cannot write the rewritten model ({e.strerror or e})") from None
    if dest is None:
        print(f"{folder.name}: nothing to rewrite (every rewrite already applied or not applicable); nothing written")
        return 0
    widened = len(done["padding"].get("convs", {}))
    print(f"{dest}: convolutions with 7-bit weights: {done['seven_bit']}; "
          f"stem {'rewritten' if done['stem'] else 'as it was'}; quantize steps moved before data movement: "
          f"{done['moves']}; convolutions widened: {widened}")
    if args.embed:
        from .export import embed

        print(f"embedded: {embed(dest, name, default=args.default)}")
    return 0


# --- recover -----------------------------------------------------------------------------------
def add_recover(sub) -> None:
    p = sub.add_parser("recover", help="distill checkpoints from a shipped int8 student or ensemble, to fine-tune it")
    p.add_argument("model", help="embedded model name or model folder (a single student, or an ensemble: one "
                                 "checkpoint per member)")
    p.add_argument("--out", type=Path, required=True, help="run folder for the recovered best.pt (an ensemble: "
                                                           "one subfolder per member)")
    p.add_argument("--photos", type=Path, help="photos whose statistics the BatchNorms get (default: $EDGECUT_DATA/train)")
    p.add_argument("-n", type=integer(1), default=256, help="how many of them (sampled reproducibly)")
    p.set_defaults(func=run_recover)


def run_recover(args) -> int:
    from ..models import resolve
    from ..runtime.errors import EdgecutError
    from ..runtime.manifest import Manifest
    from .distill import _save_atomic
    from .export import calibration_photos
    from .loaders import check_onnx
    from .recover import recover, recover_members

    path, man = resolve(args.model)
    folder = path.parent if path.is_file() else path
    if "variant" not in (man.extra or {}):   # before --out is made: nothing written for a refusal
        raise EdgecutError(f"{folder.name}: its manifest names no student variant (not an edgecut student?)")
    if man.format == "onnx":
        check_onnx(path)
    _refuse_a_run(args.out)
    with _output_run(args.out):   # a failed recovery leaves no empty --out folder
        try:
            photos = calibration_photos(args.photos or train_root(), args.n)
            ensemble = bool((Manifest.load(folder / "manifest.json").extra or {}).get("ensemble"))
            cks = recover_members(folder, photos) if ensemble else [recover(folder, photos)]
        except (FileNotFoundError, ValueError) as e:
            raise EdgecutError(str(e)) from None
        outs = [args.out / f"member{k}-{ck['input_size']}" if ensemble else args.out for k, ck in enumerate(cks)]
        for out in outs:   # every member folder checked before any is written
            _refuse_a_run(out)
        for ck, out in zip(cks, outs):
            out.mkdir(parents=True, exist_ok=True)
            _save_atomic(ck, out / "best.pt")
            print(f"{folder.name} -> {out / 'best.pt'} ({ck['variant']}, {ck['input_size']} px, BatchNorm "
                  f"statistics from {len(photos)} photos); fine-tune with: edgecut distill --init {out / 'best.pt'} "
                  f"--input-size {ck['input_size']} ...")
    if ensemble:
        parts = " ".join(f"R{k}/best.pt@{ck['input_size']}" for k, ck in enumerate(cks))
        print(f"after fine-tuning each member (distill runs R0, R1, ...), one graph again: edgecut compress ensemble "
              f"{parts} --out RUN --name {folder.name}")
    return 0
