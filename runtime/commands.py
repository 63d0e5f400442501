"""`edgecut remove` and `edgecut models`: the runtime's verbs.

Kept import-light (argparse only at module level) so `edgecut --help` stays instant; numpy,
Pillow and onnxruntime load inside the handlers.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .argtypes import THREADS, integer
from .errors import EdgecutError, UsageError
from .outputs import output_folder, same_file

PNG_LEVEL = 1       # zlib level: 12 MP RGBA at 1 is ~2x faster to write than 6, ~15% larger
JPEG_QUALITY = 95
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")   # what folder scans pick up
NO_WRITE = (".gif",)   # read (an animation's first frame), never written: 256 colours and no soft alpha

REMOVE_EPILOG = """\
outputs:
  one file, no -o      PHOTO_cutout.png beside it (PHOTO_mask.png with --mask,
                       PHOTO_cutout.jpg with --bg); same for several files
  one file, -o FILE    FILE (.png or .webp keep transparency; .jpg needs --bg or --mask)
  -o DIR               DIR/NAME.png for files (NAME.jpg with --bg); a folder's images keep their relative
                       paths under DIR (folders need -o DIR)
  -                    read the photo from stdin, write PNG to stdout (or to -o FILE)
  --format FMT         png, webp or jpg instead, wherever edgecut names the file (and on stdout).
                       WebP: ~7x smaller cutouts than PNG, exact alpha, ~6x slower to write;
                       masks in WebP are lossless
  Existing outputs are skipped (so an interrupted batch resumes) unless --overwrite;
  an input is never overwritten. Files are written atomically (temp file + rename).

exit status: 0 all done, 1 some inputs failed (one line each on stderr), 2 usage error
"""


@dataclass
class Job:
    src: Optional[Path]          # None: stdin
    dst: Optional[Path]          # None: stdout
    label: str                   # how errors name the input
    fmt: str = "PNG"             # what goes to stdout (a file's own name says what it is)


# ---------------------------------------------------------------- planning: inputs -> jobs

def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: Path, exclude: Optional[Path]) -> List[Path]:
    """Images under a folder, sorted, skipping hidden entries and the output folder itself."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_p = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (exclude and same_file(root_p / d, exclude)))
        # a broken link or a pipe named like a photo is one failed line, not left out unseen
        found.extend(root_p / f for f in sorted(files) if _is_image(f))
    return found


FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}   # --format: what edgecut writes where it names the file


def _kind(args) -> tuple:
    """(suffix for files written beside their input, output extension)."""
    suffix = "_mask" if args.mask else "_cutout"
    if getattr(args, "format", None):
        return suffix, "." + args.format
    return suffix, ".jpg" if args.bg is not None and not args.mask else ".png"


def _output_is_file(args, inputs: List[str]) -> bool:
    out = args.output
    if out is None or Path(out).is_dir():
        return False
    looks_like_file = Path(out).suffix.lower() in IMAGE_EXTENSIONS
    single = len(inputs) == 1 and (inputs[0] == "-" or not Path(inputs[0]).is_dir())
    if looks_like_file and not single:
        raise UsageError(f"-o {out} looks like a file, but the inputs are several files or a folder; "
                         "give a folder")
    if single and Path(out).suffix and not looks_like_file and not Path(out).exists():
        # One photo to "cut.jpng": a typo of a file name, not a new folder of that name.
        raise UsageError(f"-o {out}: {Path(out).suffix} is not an image type; write .png, .webp or .jpg "
                         "(or give an existing folder)")
    return single and looks_like_file


def plan(args) -> tuple:
    """Inputs -> (jobs, problems): problems are per-input errors reported like failed files."""
    inputs = list(args.inputs)
    suffix, ext = _kind(args)
    if "-" in inputs and len(inputs) > 1:
        raise UsageError("'-' (stdin) must be the only input")
    if args.output == "-" and (len(inputs) > 1 or Path(inputs[0]).is_dir()):
        raise UsageError("-o - (stdout) takes a single input")
    to_file = _output_is_file(args, inputs)
    out_dir = None if (args.output in (None, "-") or to_file) else Path(args.output)
    if to_file and Path(args.output).suffix.lower() in NO_WRITE:
        raise UsageError(f"-o {args.output}: GIF holds 256 colours and no soft alpha; write .png, .webp or .jpg")
    if to_file and not args.mask and args.bg is None and Path(args.output).suffix.lower() in (".jpg", ".jpeg", ".bmp"):
        raise UsageError(f"-o {args.output}: that format cannot hold transparency; "
                         "write .png or .webp, or add --bg/--mask")
    fmt = getattr(args, "format", None)
    if fmt == "jpg" and not args.mask and args.bg is None:
        raise UsageError("--format jpg cannot hold transparency; use png or webp, or add --bg/--mask")
    if fmt and to_file and Path(args.output).suffix.lower().replace(".jpeg", ".jpg") != ext:
        raise UsageError(f"--format {fmt}: -o {args.output} names another type; drop one of the two")

    if inputs == ["-"]:
        dst = Path(args.output) if to_file else None
        if dst is None and out_dir is not None:
            dst = out_dir / f"stdin{ext}"
        return [Job(None, dst, "<stdin>", FORMATS[ext[1:]])], []

    jobs, problems = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            if out_dir is None:
                raise UsageError(f"{raw} is a folder: give -o DIR for the results")
            files = _scan(p, out_dir)
            if not files:
                problems.append(f"{raw}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
            jobs += [Job(f, out_dir / f.relative_to(p).with_suffix(ext), str(f)) for f in files]
        elif args.output == "-":
            jobs.append(Job(p, None, raw, FORMATS[ext[1:]]))
        elif to_file:
            jobs.append(Job(p, Path(args.output), raw))
        elif out_dir is not None:
            jobs.append(Job(p, out_dir / (p.stem + ext), raw))
        else:
            jobs.append(Job(p, p.with_name(p.stem + suffix + ext), raw))
    _dedupe(jobs)
    return jobs, problems


def _dedupe(jobs: List[Job]) -> None:
    """Inputs with one output name (a.jpg, a.png) each keep their extension in it (a_jpg.png,
    a_png.png). Which photo a name holds must not depend on which others are there: when the
    first of them kept a.png, a resumed run that found a new a.jpg beside a.png took a.png's
    cutout for a.jpg's and skipped it."""
    plain = Counter(str(j.dst) for j in jobs if j.dst is not None)
    taken = set()
    for job in jobs:
        if job.dst is None or plain[str(job.dst)] == 1:
            continue
        stem = job.dst.stem + (job.src.suffix.replace(".", "_") if job.src else "")
        dst, n = job.dst.with_name(stem + job.dst.suffix), 2
        while str(dst) in taken or str(dst) in plain:     # nor another input's own name (a_png.png)
            dst, n = job.dst.with_name(f"{stem}-{n}{job.dst.suffix}"), n + 1
        job.dst = dst
        taken.add(str(dst))


# ---------------------------------------------------------------- running

class _Progress:
    """tqdm when installed (the bench/compress extras), plain lines otherwise; off for pipes."""

    def __init__(self, total: int, enabled: bool):
        self.bar, self.enabled, self.total, self.done = None, enabled, total, 0
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def message(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _save_params(fmt: str, mode: str = "RGBA") -> dict:
    """Encoder settings. WebP is lossy for photos (its alpha stays exact) and lossless for a mask,
    which is all alpha: lossy, a mask was up to 13/255 off."""
    if fmt == "WEBP" and mode == "L":
        return {"lossless": True, "quality": 0, "method": 0}   # method 0: 3x faster, same pixels
    return {"PNG": {"compress_level": PNG_LEVEL}, "JPEG": {"quality": JPEG_QUALITY},
            "WEBP": {"quality": 90}}.get(fmt, {})


def _process(job: Job, session, render, refine: bool, input_paths: set) -> None:
    import io

    from .composite import within
    from .imageio import check_fits, format_for, load_photo, rgb_profile, save_image_atomic

    if job.dst is not None and os.path.realpath(job.dst) in input_paths:
        raise EdgecutError(f"{job.dst}: refusing to overwrite an input")
    src = sys.stdin.buffer if job.src is None else job.src
    photo, own = load_photo(src)
    result = render(photo, within(session.alpha(photo, refine=refine), own))
    del own
    icc = rgb_profile(photo)   # keep wide-gamut (e.g. Display P3) colours right
    del photo
    if job.dst is None:
        buf = io.BytesIO()
        extra = {"icc_profile": icc} if icc and result.mode != "L" else {}
        check_fits(result, job.fmt, "<stdout>")
        try:
            result.save(buf, job.fmt, **_save_params(job.fmt, result.mode), **extra)
        except (OSError, ValueError) as e:
            raise EdgecutError(f"<stdout>: cannot encode {job.fmt} ({e})") from None
        try:
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.buffer.flush()
        except OSError as e:   # a full disk or closed pipe behind stdout: name stdout, not the input
            raise EdgecutError(f"<stdout>: cannot write ({e.strerror or e})") from None
        return
    fmt = format_for(job.dst)
    if fmt == "JPEG" and result.mode == "RGBA":
        raise EdgecutError(f"{job.dst}: JPEG cannot hold transparency (write .png/.webp, or use --bg)")
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgecutError(f"{job.dst}: cannot create its folder ({e.strerror or e})") from None
    params = _save_params(fmt, result.mode)
    if icc and fmt in ("PNG", "JPEG", "WEBP", "TIFF") and result.mode != "L":
        params["icc_profile"] = icc
    save_image_atomic(result, job.dst, fmt, inputs=[job.src] if job.src else [], **params)


def _error_line(job: Job, err: Exception) -> str:
    msg = str(err)
    if not (msg.startswith(job.label) or msg.startswith("<stdout>") or (job.dst is not None and msg.startswith(str(job.dst)))):
        msg = f"{job.label}: {msg}"
    return f"edgecut remove: error: {msg}"


def run_remove(args) -> int:
    try:
        jobs, problems = plan(args)
    except UsageError as e:
        print(f"edgecut remove: error: {e}", file=sys.stderr)
        return 2
    if any(j.src is None for j in jobs) and sys.stdin is None:
        print("edgecut remove: error: standard input is closed; name a file", file=sys.stderr)
        return 2
    if any(j.dst is None for j in jobs) and sys.stdout is None:
        print("edgecut remove: error: standard output is closed; use -o FILE", file=sys.stderr)
        return 2
    if any(j.dst is None for j in jobs) and sys.stdout.isatty():
        print("edgecut remove: error: refusing to write image bytes to a terminal; use -o FILE",
              file=sys.stderr)
        return 2

    import warnings
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from PIL import Image

    from .api import compositor
    from .session import Session

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit reports these
    input_paths = {os.path.realpath(j.src) for j in jobs if j.src is not None}
    if args.bg is not None and Path(args.bg).is_file():   # the background photo is an input too
        input_paths.add(os.path.realpath(args.bg))
    # An output that is an input is not "done before": it fails in _process, one line per file.
    done_before = [not args.overwrite and j.dst is not None and j.dst.is_file()   # a folder there fails
                   and os.path.realpath(j.dst) not in input_paths for j in jobs]
    skipped = sum(done_before)
    todo = [j for j, skip in zip(jobs, done_before) if not skip]
    cpus = os.cpu_count() or 1
    n_jobs = max(1, min(args.jobs or min(4, cpus), len(todo) or 1))
    threads = args.threads or max(1, cpus // n_jobs)
    try:
        render = compositor(args.mask, args.bg)  # a bad --bg fails here, before any work
    except EdgecutError as e:
        print(f"edgecut remove: error: --bg: {e}", file=sys.stderr)
        return 2
    # An -o folder that cannot be created (a typo under /proc, a file's name) is one line before
    # the model loads, not the same failure repeated for every photo of the folder.
    if todo and args.output not in (None, "-") and not any(j.dst == Path(args.output) for j in todo):
        try:
            output_folder(args.output)
        except EdgecutError as e:
            print(f"edgecut remove: error: {e}", file=sys.stderr)
            return 1
    session = Session(args.model, threads=threads, tta=args.tta) if todo else None

    progress = _Progress(len(todo), enabled=not args.quiet and len(todo) > 1 and sys.stderr.isatty())
    for line in problems:
        progress.message(f"edgecut remove: error: {line}")
    failed, done = len(problems), 0
    pool = ThreadPoolExecutor(n_jobs)   # decode, inference, filter and encode all release the GIL
    try:
        futures = {pool.submit(_process, j, session, render, args.refine, input_paths): j for j in todo}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                fut.result()
                done += 1
            except EdgecutError as e:
                failed += 1
                progress.message(_error_line(job, e))
            except MemoryError:
                failed += 1
                progress.message(_error_line(job, EdgecutError("out of memory")))
            except OSError as e:   # the environment (disk, permissions), not a bug: report, go on
                failed += 1
                progress.message(_error_line(job, EdgecutError(f"{e.strerror or e}")))
            progress.step(job.label)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        raise
    pool.shutdown()
    progress.close()
    if not args.quiet:
        summary = f"processed {done}, failed {failed}"
        if skipped:
            summary += f", skipped {skipped} (output exists; --overwrite replaces)"
        print(summary, file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------- models

def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def _human_count(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def run_models(args) -> int:
    from ..models import default_model, embedded_dir, list_models, resolve
    from .cpu import int8_dot

    problems: List[str] = []
    models = list_models(problems)
    for line in problems:
        print(f"edgecut models: error: {line}", file=sys.stderr)
    if not models:
        print(f"no embedded models in {embedded_dir()}", file=sys.stderr)
        return 1 if problems else 0
    default = default_model()
    rows = [("", "name", "format", "precision", "input", "size", "params")]
    for m in models:
        path, _ = resolve(m.name)
        size = _human_size(path.stat().st_size) if path.is_file() else "missing"
        h, w = m.input_size
        rows.append(("*" if m.name == default else "", m.name, m.format, m.precision,
                     f"{h}x{w}", size, _human_count(m.params)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\n* default (used when --model is not given)")
    dot = int8_dot()
    print(f"this CPU: int8 dot product {dot}")
    if dot.startswith("none"):
        print("  (int8 runs several times slower without dot-product instructions: on two x86 CPUs with "
              "AVX2 alone the default took 15-24 ms against 4.8-6.7 ms with VNNI; edgecut-medium-pruned "
              "(7-8 ms there) and edgecut-fast (4-7 ms) are the models for live use)")
    return 1 if problems else 0


# ---------------------------------------------------------------- registration

def register(sub) -> None:
    p = sub.add_parser(
        "remove", help="cut the subject out of photos (files, folders or stdin)",
        description="Cut the subject out of photos: RGBA cutouts with soft edges, masks, or "
                    "composites on a colour, an image or a blurred copy of the photo.",
        epilog=REMOVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), or - for stdin")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (one input) or folder")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--mask", action="store_true", help="write the alpha mask (grayscale PNG)")
    what.add_argument("--bg", metavar="COLOR|IMAGE|blur",
                      help="composite onto a colour (white, '#00ff00'), an image file "
                           "(scaled to cover), or blur / blur:RADIUS (the photo itself, blurred)")
    p.add_argument("--model", default="default",
                   help="embedded model name (see `edgecut models`), a model folder, a manifest "
                        ".json, or an .onnx/.tflite with its manifest beside it (default: %(default)s)")
    p.add_argument("--threads", type=THREADS, metavar="N",
                   help="inference threads per photo (default: CPU cores / jobs)")
    p.add_argument("--jobs", type=integer(1, 64), metavar="N",
                   help="photos processed in parallel (default: min(4, CPU cores))")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="plain bilinear upscaling of the matte (no edge-snapping guided filter)")
    p.add_argument("--tta", action="store_true",
                   help="also run each photo's mirror image and average the two: twice the "
                        "inference time, a cleaner matte (+0.5 IoU points on the bench sets)")
    p.add_argument("--format", choices=sorted(FORMATS), metavar="{png,webp,jpg}",
                   help="output type where edgecut names the file: folders, beside the input, stdout "
                        "(default: png; jpg with --bg)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary line")
    p.set_defaults(func=run_remove)

    m = sub.add_parser("models", help="list the embedded models",
                       description="List the models shipped inside edgecut.")
    m.set_defaults(func=run_models)
