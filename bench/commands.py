"""`edgecut bench accuracy|latency`: one `add_*` + one `run_*` per sub-verb; heavy imports inside."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from ..runtime.argtypes import MAX_THREADS, THREADS, integer, number
from ..runtime.errors import EdgecutError
from ..runtime.outputs import output_file, output_folder, refuse_inputs


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark models: accuracy on the bench sets, latency and memory")
    bench = p.add_subparsers(dest="bench_command", metavar="WHAT")
    add_accuracy(bench)
    add_latency(bench)
    add_report(bench)
    add_agree(bench)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    add_fetch_peer(sub)


# --- fetch-peer ----------------------------------------------------------------------------------
def add_fetch_peer(sub) -> None:
    from .peers import PEERS

    p = sub.add_parser("fetch-peer", help="download a peer model to benchmark against (e.g. MediaPipe Selfie)")
    p.add_argument("name", choices=sorted(PEERS))
    p.add_argument("--tarball", type=Path, metavar="TGZ", help="use an already downloaded `npm pack` tarball")
    p.set_defaults(func=run_fetch_peer)


def run_fetch_peer(args) -> int:
    from .peers import PEERS, fetch_peer

    d = fetch_peer(args.name, tarball=args.tarball)
    print(f"{d}  ({PEERS[args.name].manifest.license}; use it as --model peer:{args.name})")
    return 0


def _common(p) -> None:
    p.add_argument("--model", action="append", metavar="M",
                   help="embedded name, model file/folder, teacher:SPEC or peer:NAME, any of them "
                        "ending in +tta for mirror test-time augmentation (edgecut-duo+tta); repeat for "
                        "several (default: the default embedded model)")
    p.add_argument("--teacher-path", help="model file for teacher:SPEC models (e.g. ~/.u2net/u2net.onnx)")
    p.add_argument("--json", type=Path, metavar="OUT", help="results file (default runs/bench/<kind>-<time>.json)")
    p.add_argument("--no-progress", action="store_true")


def _int_list(text: str):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1 or max(vals) > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected integers from 1 to {MAX_THREADS}, got {text!r}")
    if len(set(vals)) != len(vals):   # 1,1 timed one row without a word: a typo of 1,2?
        raise argparse.ArgumentTypeError(f"expected distinct thread counts, got {text!r}")
    return vals


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if not (16 <= w <= 20000 and 16 <= h <= 20000):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, each from 16 to 20000 pixels, got {text!r}")
    from ..runtime.imageio import MAX_PIXELS   # here: the CLI starts without Pillow and numpy

    if w * h > MAX_PIXELS:      # remove refuses such a photo; making it took more memory than 24 GB
        raise argparse.ArgumentTypeError(f"expected at most {MAX_PIXELS // 1_000_000} MP (what edgecut remove "
                                         f"takes), got {text!r} ({w * h / 1e6:.0f} MP)")
    return w, h


def _model_paths(args) -> list:
    """The files and folders behind --model/--reference/--teacher-path: what no output may replace."""
    specs = list(args.model or []) + [getattr(args, "reference", None), args.teacher_path]
    paths = []
    for spec in filter(None, specs):
        spec = spec[:-len("+tta")] if spec.endswith("+tta") else spec
        p = Path(spec.split(":", 1)[1] if spec.startswith("teacher:") else spec).expanduser()
        if p.exists():
            paths += [p, p.with_name("manifest.json")] if p.is_file() else [p]
    return paths


def _models(args) -> list:
    """The --model values, each once: a repeated one doubled the run (an hour for a teacher) and
    its rows in every table."""
    models = []
    for spec in args.model or ["default"]:
        if not spec.strip() or spec.strip() == "+tta":
            raise EdgecutError(f"--model {spec!r}: name a model (see `edgecut models`)")
        if spec in models:
            print(f"note: --model {spec} is given twice; it is benchmarked once", file=sys.stderr)
        else:
            models.append(spec)
    return models


def _sets(args) -> list:
    """The bench sets of --data/--sets. A set is a folder of --data by name: an empty name (from
    `--sets a,`) read as --data itself, and a path such as ../other/set put its cache entries
    outside the --cache folder."""
    from . import accuracy

    return accuracy.find_sets(args.data or accuracy.default_data_dir(), _set_names(args))


def _set_names(args) -> Optional[list]:
    if not args.sets:
        return None
    names = list(dict.fromkeys(n.strip().rstrip("/") for n in args.sets.split(",") if n.strip()))
    if not names:
        raise EdgecutError(f"--sets {args.sets!r}: name at least one set")
    for n in names:
        if n in (".", "..") or "/" in n or "\\" in n:
            raise EdgecutError(f"--sets {n!r}: name a set folder inside --data, not a path")
    return names


def _open_models(models, args) -> None:
    """Open every model once before the work: a teacher that is missing, named last, failed only
    after the others had run (half an hour of a report), and nothing was written."""
    from ..compress.teachers import TEACHER_PREFIX, open_model

    specs = models + ([args.reference] if getattr(args, "reference", None) else [])
    if args.teacher_path and not any(s.startswith(TEACHER_PREFIX) for s in specs):
        # it was ignored without a word, and the run scored no teacher at all
        raise EdgecutError(f"--teacher-path {args.teacher_path}: is the file of a teacher:SPEC model, and no "
                           f"--model names one (e.g. --model teacher:u2net --teacher-path {args.teacher_path})")
    for spec in specs:
        open_model(spec, args.teacher_path, 1)


def _bench_files(sets) -> list:
    return [f for s in sets for pair in s.pairs for f in pair]


def _check_outputs(args, files=(), inputs=()) -> None:
    """Every path the verb will write, checked before the models run (a report takes half an hour);
    none of them may be a model file or manifest the verb reads, nor a photo or mask (`inputs`),
    nor another of its outputs (--json r.txt was replaced by the table written beside it)."""
    files = [f for f in (args.json, *files) if f is not None]
    for f in files:
        output_file(f)
    tables = [args.json.with_suffix(".txt")] if args.json is not None and args.bench_command != "report" else []
    seen = {}
    for f in files + tables:
        key = Path(os.path.abspath(f.expanduser()))
        if key in seen:
            raise EdgecutError(f"{f}: two outputs of this run would be this one file (--json is where the "
                               "table's .txt or one of --out's files goes); give --json a name ending in .json")
        seen[key] = f
    refuse_inputs(files + [f.with_suffix(".txt") for f in files], [*_model_paths(args), *inputs],
                  hint="write the results elsewhere (--json / --out)")
    if args.json is None:
        from .report import default_json_path

        output_folder(default_json_path(args.bench_command).parent)
    if getattr(args, "cache", None) is not None:
        output_folder(args.cache)


# --- accuracy ------------------------------------------------------------------------------------
def add_accuracy(bench) -> None:
    p = bench.add_parser("accuracy", help="IoU, MAE, maxF, S-measure and boundary F on the bench sets")
    _common(p)
    p.add_argument("--data", type=Path, help="bench folder with <set>/{images,masks} (default $EDGECUT_DATA/bench)")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--limit", type=integer(1), help="at most N images per set")
    p.add_argument("--threads", type=THREADS, help="onnxruntime intra-op threads")
    p.add_argument("--no-refine", action="store_true", help="score the plain bilinear alpha, not the edge-aware one")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="reuse/store predictions keyed by model sha256 (the teacher takes ~2 s a photo)")
    p.add_argument("--worst", type=integer(1, 1000), metavar="N",
                   help="name each set's N lowest-IoU photos in the results and draw them (photo, alpha, errors) "
                        "in a contact sheet per model and set, in a folder beside the --json file")
    p.set_defaults(func=run_accuracy)


def run_accuracy(args) -> int:
    from . import accuracy, report

    sets = _sets(args)
    models = _models(args)
    _check_outputs(args, inputs=_bench_files(sets))
    json_path = args.json or report.default_json_path("accuracy")
    worst_dir = json_path.with_name(json_path.stem + "-worst") if args.worst else None
    if worst_dir is not None and worst_dir.exists() and not worst_dir.is_dir():   # its parent: _check_outputs
        raise EdgecutError(f"{worst_dir}: is a file; the worst photos' sheets go in a folder of this name "
                           "(give --json another name)")
    _open_models(models, args)
    results = accuracy.run_accuracy(models, sets, args.limit, args.threads, args.teacher_path,
                                    refine=not args.no_refine, progress=not args.no_progress,
                                    cache_dir=args.cache, worst=args.worst or 0, worst_dir=worst_dir)
    printed = accuracy.results_table(results)
    print(printed)
    payload = {**report.header("accuracy", args), "data": str(args.data or accuracy.default_data_dir()),
               "limit": args.limit, "refine": not args.no_refine,
               "cache": str(args.cache) if args.cache else None, "boundary_tolerance_px": 3,
               "maxf_protocol": "mean precision/recall curves over a set's images, then max F (beta^2=0.3)",
               "mean_over_sets": "unweighted mean of per-set values", "models": results}
    out = report.write_results(json_path, payload, printed)
    print(f"results: {out}")
    if worst_dir is not None:
        print(f"worst photos: {worst_dir}/<model>/<set>.jpg")
    failed = sum(len(s["failed"]) for r in results for s in r["sets"].values())
    return 1 if failed else 0


def _timing(p) -> None:
    """--runs and --min-time, shared by `bench latency` and `bench report` (both time Session.infer)."""
    p.add_argument("--runs", type=integer(1), default=20, help="timed runs per thread count, at least (slow models: 3)")
    p.add_argument("--min-time", type=number(0, 3600), default=1.0, metavar="S",
                   help="and at least S seconds of them per thread count (default 1; slow models: no floor)")


# --- latency ---------------------------------------------------------------------------------------
def add_latency(bench) -> None:
    p = bench.add_parser("latency", help="size, params, load time, p50/p90 latency, 12 MP end to end, peak RSS")
    _common(p)
    p.add_argument("--threads", type=_int_list, default=[1, 2], metavar="1,2",
                   help="thread counts to time (default 1,2)")
    _timing(p)
    p.add_argument("--photo", type=Path, help="photo for the end-to-end timing (default: a synthetic 4000x3000 JPEG)")
    p.add_argument("--photo-size", type=_size, metavar="WxH",
                   help="size of the synthetic photo (default 4000x3000); not with --photo")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory run of `edgecut remove`")
    p.add_argument("--profile", action="store_true",
                   help="also print the per-stage split of the photo: decode, resize, inference, "
                        "upsample, composite, encode")
    p.set_defaults(func=run_latency)


def run_latency(args) -> int:
    from . import latency, report

    models = _models(args)
    if args.photo and args.photo_size:   # the size was ignored: the run timed the photo at its own size
        raise EdgecutError(f"--photo-size is the size of the synthetic photo; --photo {args.photo} has its own")
    _check_outputs(args, inputs=[args.photo] if args.photo else [])
    _open_models(models, args)
    cfg = latency.LatencyConfig(threads=args.threads, runs=args.runs, min_seconds=args.min_time, photo=args.photo,
                                photo_size=args.photo_size or latency.PHOTO_12MP, teacher_path=args.teacher_path,
                                measure_rss=not args.no_rss, profile=args.profile)
    results, photo = latency.run_latency(models, cfg)
    head = report.header("latency", args)
    printed = report.machine_line(head["machine"]) + "\n\n" + latency.results_tables(results)
    if args.profile:
        from .profile import profile_table
        printed += "\n\n" + profile_table(results)
    print(printed)
    payload = {**head, "photo": photo, "runs": args.runs, "min_time_s": args.min_time,
               "timing": "Session.infer on an RGB array already at the model's input size "
                         "(network + normalisation); end-to-end stages are medians",
               "models": results}
    out = report.write_results(args.json or report.default_json_path("latency"), payload, printed)
    print(f"results: {out}")
    return 0


# --- report ----------------------------------------------------------------------------------------
def add_report(bench) -> None:
    p = bench.add_parser("report", help="every model's size, latency and accuracy in one markdown table "
                                        "and a Pareto plot (accuracy against latency)")
    _common(p)
    p.add_argument("--data", type=Path, help="bench folder with <set>/{images,masks} (default $EDGECUT_DATA/bench)")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--threads", type=_int_list, default=[1, 2], metavar="1,2",
                   help="thread counts to time; the plot uses the first (default 1,2)")
    _timing(p)
    p.add_argument("--cache", type=Path, metavar="DIR", help="prediction cache, as for `bench accuracy`")
    p.add_argument("--out", type=Path, default=Path("runs/bench/report"), metavar="STEM",
                   help="writes STEM.md, STEM.png and STEM.json (default runs/bench/report)")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from ..runtime.imageio import write_text_atomic
    from . import accuracy, compare, report

    data = args.data or accuracy.default_data_dir()
    sets = _sets(args)
    models = _models(args)
    stem = args.out
    if stem.name in ("", ".", ".."):
        raise EdgecutError(f"--out {str(stem)!r}: give a file stem, e.g. runs/bench/report")
    _check_outputs(args, [stem.with_suffix(".md"), stem.with_suffix(".png")]
                   + ([] if args.json else [stem.with_suffix(".json")]), inputs=_bench_files(sets))
    _open_models(models, args)
    res = compare.build_report(models, sets, args.threads, args.runs, args.cache, args.teacher_path,
                               progress=not args.no_progress, min_seconds=args.min_time)
    md = compare.markdown(res["rows"], args.threads, [s.name for s in sets])
    print(md)
    write_text_atomic(stem.with_suffix(".md"), md)
    png = compare.plot(res["rows"], stem.with_suffix(".png"), args.threads[0])
    out = report.write_json(args.json or stem.with_suffix(".json"),
                            {**report.header("report", args), "data": str(data), **res})
    print(f"table: {stem.with_suffix('.md')}\nplot: {png or 'skipped (pip install matplotlib, in edgecut[bench])'}"
          f"\nresults: {out}")
    failed = sum(len(st["failed"]) for r in res["accuracy"] for st in r["sets"].values())
    return 1 if failed else 0   # as bench accuracy: photos that could not be scored are a failure


# --- agree -----------------------------------------------------------------------------------------
def add_agree(bench) -> None:
    p = bench.add_parser("agree", help="alpha difference between a reference model and others on the bench "
                                       "photos or your own (ONNX vs TFLite, fp32 vs int8)")
    _common(p)
    p.add_argument("--reference", required=True, metavar="M", help="the model the others are compared with")
    p.add_argument("--data", type=Path, help="a folder of photos (searched recursively), or a bench folder with "
                                             "<set>/images (masks are not needed; default $EDGECUT_DATA/bench)")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--limit", type=integer(1), help="at most N images per set")
    p.add_argument("--threads", type=THREADS, help="intra-op threads")
    p.add_argument("--max-mean", type=number(0), metavar="STEPS",
                   help="exit 1 when a model's mean difference over all photos exceeds this (in 1/255)")
    p.set_defaults(func=run_agree)


def run_agree(args) -> int:
    from . import accuracy, agreement, report

    if not args.model:
        raise EdgecutError("bench agree: name the models to compare with --model (and --reference)")
    data = args.data or accuracy.default_data_dir()
    photos = agreement.photo_sets(data, _set_names(args))
    models = _models(args)
    _check_outputs(args, inputs=[f for files in photos.values() for f in files])
    _open_models(models, args)
    results = agreement.run_agreement(args.reference, models, photos, args.limit, args.threads,
                                      args.teacher_path, progress=not args.no_progress)
    printed = agreement.results_table(results)
    print(printed)
    out = report.write_results(args.json or report.default_json_path("agree"),
                               {**report.header("agree", args), "data": str(data), "limit": args.limit,
                                "units": "1/255 of alpha", "models": results}, printed)
    print(f"results: {out}")
    worse = [r["model"]["name"] for r in results
             if args.max_mean is not None and (r["all"]["mean"] is None or r["all"]["mean"] > args.max_mean)]
    if worse:
        print(f"beyond --max-mean {args.max_mean}: {', '.join(worse)}")
    failed = sum(len(s["failed"]) for r in results for s in r["sets"].values())
    return 1 if worse or failed else 0
