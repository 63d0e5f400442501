"""`edgecut bench accuracy|latency`: one `add_*` + one `run_*` per sub-verb; heavy imports inside."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.errors import EdgecutError


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark models: accuracy on the bench sets, latency and memory")
    bench = p.add_subparsers(dest="bench_command", metavar="WHAT")
    add_accuracy(bench)
    add_latency(bench)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _common(p) -> None:
    p.add_argument("--model", action="append", metavar="M",
                   help="embedded name, model file/folder, or teacher:SPEC; repeat for several "
                        "(default: the default embedded model)")
    p.add_argument("--teacher-path", help="model file for teacher:SPEC models (e.g. ~/.u2net/u2net.onnx)")
    p.add_argument("--json", type=Path, metavar="OUT", help="results file (default runs/bench/<kind>-<time>.json)")
    p.add_argument("--no-progress", action="store_true")


def _int_list(text: str):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


# --- accuracy ------------------------------------------------------------------------------------
def add_accuracy(bench) -> None:
    p = bench.add_parser("accuracy", help="IoU, MAE, maxF, S-measure and boundary F on the bench sets")
    _common(p)
    p.add_argument("--data", type=Path, help="bench folder with <set>/{images,masks} (default $EDGECUT_DATA/bench)")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--limit", type=int, help="at most N images per set")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--no-refine", action="store_true", help="score the plain bilinear alpha, not the edge-aware one")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="reuse/store predictions keyed by model sha256 (the teacher takes ~2 s a photo)")
    p.set_defaults(func=run_accuracy)


def run_accuracy(args) -> int:
    from . import accuracy, report

    sets = accuracy.find_sets(args.data or accuracy.default_data_dir(),
                              [s.strip() for s in args.sets.split(",")] if args.sets else None)
    models = args.model or ["default"]
    results = accuracy.run_accuracy(models, sets, args.limit, args.threads, args.teacher_path,
                                    refine=not args.no_refine, progress=not args.no_progress,
                                    cache_dir=args.cache)
    print(accuracy.results_table(results))
    payload = {**report.header("accuracy", args), "data": str(args.data or accuracy.default_data_dir()),
               "limit": args.limit, "refine": not args.no_refine,
               "cache": str(args.cache) if args.cache else None, "boundary_tolerance_px": 3,
               "maxf_protocol": "mean precision/recall curves over a set's images, then max F (beta^2=0.3)",
               "mean_over_sets": "unweighted mean of per-set values", "models": results}
    out = report.write_json(args.json or report.default_json_path("accuracy"), payload)
    print(f"results: {out}")
    failed = sum(len(s["failed"]) for r in results for s in r["sets"].values())
    return 1 if failed else 0


# --- latency ---------------------------------------------------------------------------------------
def add_latency(bench) -> None:
    p = bench.add_parser("latency", help="size, params, load time, p50/p90 latency, 12 MP end to end, peak RSS")
    _common(p)
    p.add_argument("--threads", type=_int_list, default=[1, 2], metavar="1,2",
                   help="thread counts to time (default 1,2)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per thread count (slow models: 3)")
    p.add_argument("--photo", type=Path, help="photo for the end-to-end timing (default: a synthetic 4000x3000 JPEG)")
    p.add_argument("--photo-size", type=_size, default=(4000, 3000), metavar="WxH",
                   help="size of the synthetic photo (default 4000x3000)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory run of `edgecut remove`")
    p.add_argument("--profile", action="store_true",
                   help="also print the per-stage split of the photo: decode, resize, inference, "
                        "upsample, composite, encode")
    p.set_defaults(func=run_latency)


def run_latency(args) -> int:
    from . import latency, report

    if args.runs < 1:
        raise EdgecutError("--runs must be at least 1")
    cfg = latency.LatencyConfig(threads=args.threads, runs=args.runs, photo=args.photo,
                                photo_size=args.photo_size, teacher_path=args.teacher_path,
                                measure_rss=not args.no_rss, profile=args.profile)
    results, photo = latency.run_latency(args.model or ["default"], cfg)
    print(latency.results_tables(results))
    if args.profile:
        from .profile import profile_table
        print("\n" + profile_table(results))
    payload = {**report.header("latency", args), "photo": photo, "runs": args.runs,
               "timing": "Session.infer on an RGB array already at the model's input size "
                         "(network + normalisation); end-to-end stages are medians",
               "models": results}
    out = report.write_json(args.json or report.default_json_path("latency"), payload)
    print(f"results: {out}")
    return 0
