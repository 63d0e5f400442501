"""`edgecut video`: live background replacement from a camera or a video file.

Import-light like every command module: OpenCV (the `video` extra), numpy and onnxruntime load
inside the handler, so `edgecut --help` works without OpenCV installed.
"""
from __future__ import annotations

import argparse
import sys

from .argtypes import THREADS, integer
from .errors import EdgecutError

VIDEO_EPILOG = """\
examples:
  edgecut video --input 0                             camera 0 in a window, background blurred
  edgecut video --input 0 --bg beach.jpg --skip 2     on a Raspberry Pi: the model every 2nd frame
  edgecut video --input talk.mp4 -o talk-green.mp4 --bg '#00ff00'
  edgecut video --input talk.mp4 -o small.mp4 --max-side 320

outputs: .mp4/.m4v/.mov/.mkv (MPEG-4 part 2) or .avi (MJPEG), written to a temp file and renamed;
Ctrl-C stops and still leaves a playable file of the frames so far. A window needs OpenCV with
GUI support (pip install opencv-python) and a display; opencv-python-headless can only write files.

exit status: 0 done (or a camera stopped with Ctrl-C / q), 1 error, 130 a file interrupted by Ctrl-C
"""


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def slow_int8_note(model: str, session) -> str:
    """A hint for the Raspberry Pi 4 or the older laptop: without int8 dot-product instructions
    the default (two students in one graph) runs several times slower, and live video wants the
    192 px model instead. '' when the user chose a model, or where the hint does not apply."""
    from .cpu import int8_dot

    if model != "default" or session.manifest.precision != "int8":
        return ""
    dot = int8_dot()
    if not dot.startswith("none"):
        return ""
    return (f"this CPU has no int8 dot product ({dot}), so the default model runs several times slower "
            "than on one with it; for a live frame rate try --model edgecut-fast")


def run_video(args) -> int:
    from pathlib import Path

    from . import video
    from .session import Session

    video.require_cv2()
    cfg = video.VideoConfig(bg=args.bg, smooth=args.smooth, skip=args.skip, max_side=args.max_side,
                            refine=args.refine, max_frames=args.frames,
                            report_every=0.0 if args.quiet else 2.0)
    video.check_source(args.input)       # a missing file, a bad --bg or a missing window fails
    video.make_renderer(cfg.bg)          # before the camera opens
    sink = None if args.output else video.WindowSink()
    source = video.open_source(args.input)
    try:
        if sink is None:
            inputs = [] if source.is_camera else [Path(args.input).expanduser()]
            sink = video.FileSink(args.output, source.fps, inputs=inputs)
        session = Session(args.model, threads=args.threads or video.default_threads())
    except BaseException:
        source.capture.release()
        raise
    if not args.quiet:
        note = slow_int8_note(args.model, session)
        if note:
            print(f"edgecut video: note: {note}", file=sys.stderr)
    stats = video.run_video(session, source, sink, cfg)
    if not args.quiet:
        print(f"edgecut video: {stats.summary()}", file=sys.stderr)
        if stats.interrupted:
            where = f"; {args.output} holds the frames so far" if args.output and stats.frames else ""
            print(f"edgecut video: stopped by Ctrl-C{where}", file=sys.stderr)
    if args.output and not stats.frames:
        raise EdgecutError(f"{args.input}: no frames read, nothing written")
    return 130 if stats.interrupted and not source.is_camera else 0


def register(sub) -> None:
    p = sub.add_parser(
        "video", help="live background replacement: camera or video file to a window or a video file",
        description="Replace the background of a camera stream or a video file (blur, a colour or an "
                    "image), live in a window or into a video file. Needs the video extra: "
                    "pip install 'edgecut[video]'.",
        epilog=VIDEO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", "-i", required=True, metavar="CAMERA_INDEX|FILE",
                   help="camera number (0 is the first camera) or a video file")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write a video file instead of showing a window (.mp4, .avi, .mkv, .mov)")
    p.add_argument("--bg", default="blur", metavar="blur|COLOR|IMAGE",
                   help="new background: blur or blur:RADIUS, a colour (white, '#00ff00'), or an "
                        "image file scaled to cover (default: %(default)s)")
    p.add_argument("--model", default="default",
                   help="embedded model name, model folder, manifest .json or model file "
                        "(default: %(default)s)")
    p.add_argument("--smooth", type=_fraction, default=0.6, metavar="S",
                   help="temporal smoothing of the alpha: weight of the previous frame's alpha, "
                        "0 = off; higher = steadier edges, more lag (default: %(default)s)")
    p.add_argument("--skip", type=integer(1), default=1, metavar="N",
                   help="run the model on every N-th frame and reuse its alpha in between "
                        "(default: every frame)")
    p.add_argument("--max-side", type=integer(16, 16384), metavar="PX",
                   help="shrink frames to this long side before everything else (e.g. 320 on a Pi); "
                        "the output has this size (to an even number of pixels, as video formats need)")
    p.add_argument("--threads", type=THREADS, metavar="N",
                   help="inference threads (default: CPU cores - 1, at most 4: one core is left "
                        "for decoding, compositing and encoding)")
    p.add_argument("--refine", action="store_true",
                   help="edge-snapping guided upscaling of the alpha (only helps frames >= 4x the "
                        "model's input; slower)")
    p.add_argument("--frames", type=integer(1), metavar="N", help="stop after N frames")
    p.add_argument("-q", "--quiet", action="store_true", help="no FPS lines, no summary")
    p.set_defaults(func=run_video)
