"""Live background replacement: a camera or a video file in, a window or a video file out.

One Session serves every frame. Per frame: decode, optional shrink (`max_side`), the model's
alpha at its own resolution (every `skip` frames), temporal smoothing, upscale to the frame,
composite, encode. Decoding, the model, compositing and encoding each run in their own thread
(OpenCV, onnxruntime and Pillow release the GIL), so on a 2-4 core machine they overlap instead
of adding up: the frame rate is set by the slowest stage, usually the model.

Temporal smoothing is an exponential moving average of the low-res alpha:
    a_t = smooth * a_(t-1) + (1 - smooth) * model(frame_t)
A matte that jitters by a few levels at the edges from frame to frame (sensor noise, JPEG blocks)
reads as flicker; averaging over ~1/(1 - smooth) frames removes it at the price of about that
much lag when the subject moves (smooth 0.6: ~2.5 frames, ~80 ms at 30 fps). Flicker is measured
as the mean absolute change of the smoothed alpha (at model resolution, 0..255) between
consecutive frames (`VideoStats.alpha_change`): on a static scene every bit of it is flicker.

OpenCV (opencv-python-headless, the `video` extra) is imported on first use, never by the base
runtime. Compositing reuses `composite.py` (Pillow's integer blend in C); only the blurred
background is made here, with OpenCV at a quarter-size image, because `composite.onto_blur`'s
photo-quality blur costs ~20 ms a 640x480 frame, more than the whole frame budget at 60 fps.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np

from . import composite
from .errors import EdgecutError
from .outputs import output_file
from .upsample import GuidedUpsample, guided_upsample

__all__ = ["VideoConfig", "VideoStats", "TemporalAlpha", "open_source", "FileSink", "WindowSink",
           "make_renderer", "upscale_alpha", "run_video", "require_cv2", "default_threads", "CODECS"]

# Container (by extension) -> the codec OpenCV's bundled FFmpeg can write in it without extra libraries.
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
BLUR_SIDE = 160          # the background blur runs at this long side: it is smooth anyway
DEFAULT_FPS = 30.0       # written when a source does not say (most cameras)
QUEUE_FRAMES = 4         # frames buffered between decoder, model and encoder threads


def default_threads() -> int:
    """Inference threads for video: all cores but one (decode, compose and encode run beside the
    model), at most 4. On 2 cores, 1 inference thread gave 30 fps where 2 gave 19 (640x480, int8
    student, a loaded machine): onnxruntime's spinning workers starve the other stages."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def require_cv2():
    # Our own errors name the file and the fix; OpenCV's warnings (camera probing, codec fallbacks)
    # would only add noise to them, and FFmpeg's own log ("moov atom not found" for a zero-byte
    # .mp4) is a second line beside ours. OPENCV_LOG_LEVEL=INFO and OPENCV_FFMPEG_LOGLEVEL=24
    # (FFmpeg's warning level) bring them back.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")     # AV_LOG_QUIET
    try:
        import cv2
    except ImportError:
        raise EdgecutError("edgecut video needs OpenCV: pip install 'edgecut[video]'") from None
    return cv2


@dataclass
class VideoConfig:
    bg: str = "blur"                  # blur | blur:RADIUS | a colour | an image file
    smooth: float = 0.6               # EMA weight of the previous alpha; 0 = off
    skip: int = 1                     # run the model on every N-th frame, reuse its alpha between
    max_side: Optional[int] = None    # shrink frames to this long side first (speed on a Pi)
    refine: bool = False              # guided-filter upscaling (only for >= 4x upscales; costs time)
    max_frames: Optional[int] = None  # stop after this many frames
    report_every: float = 2.0         # seconds between FPS lines on stderr; 0 = quiet


@dataclass
class VideoStats:
    frames: int = 0
    inferences: int = 0
    seconds: float = 0.0
    alpha_change: float = 0.0      # mean |alpha_t - alpha_(t-1)|, model resolution, 0..255
    size: Tuple[int, int] = (0, 0)  # (width, height) processed and written
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        w, h = self.size
        return (f"{self.frames} frames in {self.seconds:.1f} s: {self.fps:.1f} fps ({w}x{h}, model on "
                f"{self.inferences} frames, alpha change {self.alpha_change:.2f}/255 per frame)")


class TemporalAlpha:
    """The model's alpha for each frame, at model resolution: every `skip`-th frame runs the model,
    the others reuse its alpha; new alphas are blended into the previous one (EMA, see module doc)."""

    def __init__(self, session, smooth: float = 0.6, skip: int = 1):
        if not 0.0 <= smooth < 1.0:
            raise EdgecutError(f"smoothing must be in [0, 1), got {smooth}")
        if skip < 1:
            raise EdgecutError(f"skip must be at least 1, got {skip}")
        self.session, self.smooth, self.skip = session, float(smooth), int(skip)
        self.alpha: Optional[np.ndarray] = None
        self.frames = self.inferences = 0
        self._change_sum = 0.0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.alpha is None or self.frames % self.skip == 0:
            new = self.session.infer(rgb)
            self.inferences += 1
            if self.alpha is None or self.smooth == 0.0:
                out = new
            else:
                out = self.alpha * np.float32(self.smooth) + new * np.float32(1.0 - self.smooth)
            if self.alpha is not None:
                self._change_sum += float(np.abs(out - self.alpha).mean()) * 255.0
            self.alpha = out
        self.frames += 1
        return self.alpha

    @property
    def mean_change(self) -> float:
        """Mean absolute alpha change per frame transition, in 0..255 (flicker on a static scene)."""
        return self._change_sum / (self.frames - 1) if self.frames > 1 else 0.0


# --- background -----------------------------------------------------------------------------------
Render = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _blur_renderer(radius: Optional[float]) -> Render:
    cv2 = require_cv2()

    def render(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        r = radius if radius is not None else 0.015 * max(w, h)   # as composite.onto_blur
        s = min(1.0, BLUR_SIDE / max(w, h))
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), max(0.5, r * s))
        bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.asarray(composite.onto_image(rgb, alpha, bg))
    return render


def _image_renderer(path: Path) -> Render:
    from PIL import Image, ImageOps

    from .imageio import load_image

    source = load_image(path)
    fitted = {}   # frame size -> background scaled to cover it, made once

    def render(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        size = (rgb.shape[1], rgb.shape[0])
        if size not in fitted:
            fitted[size] = ImageOps.fit(source, size, Image.BILINEAR)
        return np.asarray(composite.onto_image(rgb, alpha, fitted[size]))
    return render


def make_renderer(bg: str) -> Render:
    """(RGB frame, uint8 alpha) -> RGB frame on the new background; a bad spec fails here, once."""
    from .api import _blur_radius

    if bg == "blur" or bg.startswith("blur:"):
        return _blur_renderer(_blur_radius(bg))
    try:
        color = composite.parse_color(bg)
        return lambda rgb, alpha: np.asarray(composite.onto_color(rgb, alpha, color))
    except EdgecutError:
        pass
    path = Path(bg).expanduser()
    if not path.is_file():
        raise EdgecutError(f"--bg {bg!r} is not blur, a colour, or an image file")
    return _image_renderer(path)


def upscale_alpha(alpha: np.ndarray, rgb: np.ndarray, refine: bool) -> np.ndarray:
    """Low-res float alpha -> uint8 alpha at the frame's size.

    Plain bilinear with OpenCV (~0.1 ms at 640x480, 10x Pillow's) unless refine asks for the
    runtime's guided filter and the upscale is large enough for it to pay (see upsample.py).
    """
    cv2 = require_cv2()
    h, w = rgb.shape[:2]
    if refine and max(w, h) >= GuidedUpsample.min_ratio * max(alpha.shape):
        return guided_upsample(alpha, rgb)
    small = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)   # uint8 first: 3x less work
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# --- sources and sinks ----------------------------------------------------------------------------
@dataclass
class Source:
    capture: object
    label: str
    fps: float
    is_camera: bool


def check_source(spec: Union[str, int]) -> Optional[Path]:
    """The video file a source names (None for a camera), checked before anything slow opens, so a
    mistyped path is the error a user sees rather than a missing window or a model load."""
    text = str(spec)
    if text.isdigit():
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise EdgecutError(f"{text}: no such file")
    if path.is_dir():
        raise EdgecutError(f"{text}: is a directory, not a video")
    return path


def open_source(spec: Union[str, int]) -> Source:
    """A camera index (0, 1, ...) or a video file."""
    cv2 = require_cv2()
    text = str(spec)
    if text.isdigit():
        cap = cv2.VideoCapture(int(text))
        if not cap.isOpened():
            raise EdgecutError(f"camera {text}: cannot open it (is a camera connected, and free?)")
        label, is_camera = f"camera {text}", True
    else:
        path = check_source(text)
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise EdgecutError(f"{text}: cannot read it as a video")
        label, is_camera = text, False
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not (1.0 <= fps <= 240.0):
        fps = DEFAULT_FPS
    return Source(cap, label, fps, is_camera)


def _temp_beside(dst: Path) -> Path:
    # The extension stays last: OpenCV picks the container from it.
    return dst.with_name(f".{dst.stem}.{os.getpid()}.partial{dst.suffix}")


class FileSink:
    """A video file written to a temp name and renamed on close: an interrupted run leaves a
    complete, playable file of the frames so far, never a half-written one under the real name."""

    def __init__(self, path: Union[str, Path], fps: float, inputs=()):
        self.path = Path(path).expanduser()
        suffix = self.path.suffix.lower()
        if self.path.is_dir():        # before the type check: "unsupported type (none)" misleads
            raise EdgecutError(f"{self.path}: is a directory, not a video file")
        if suffix not in CODECS:
            raise EdgecutError(f"{self.path}: unsupported video type {suffix or '(none)'} "
                               f"(use {', '.join(CODECS)})")
        for src in inputs:
            if self.path.exists() and os.path.samefile(self.path, src):
                raise EdgecutError(f"{self.path}: refusing to overwrite the input")
        if not self.path.parent.is_dir():
            raise EdgecutError(f"{self.path}: folder {self.path.parent} does not exist")
        output_file(self.path)   # a folder it cannot write into (read-only, /proc) is named here
        self.fps, self.tmp, self.writer, self.frames = fps, _temp_beside(self.path), None, 0

    def write(self, bgr: np.ndarray) -> None:
        cv2 = require_cv2()
        if self.writer is None:
            h, w = bgr.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise EdgecutError(f"{self.path}: OpenCV cannot write this video type here")
        self.writer.write(bgr)
        self.frames += 1

    def close(self) -> Optional[Path]:
        """Finish the file (moov atom, index) and move it into place; None when nothing was written."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


def gui_problem(cv2=None) -> Optional[str]:
    """Why no window can be shown here, or None. opencv-python-headless has no GUI at all, and a
    machine without a display (ssh, CI) has nothing to show one on."""
    cv2 = cv2 or require_cv2()
    info = cv2.getBuildInformation()
    gui = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.strip().startswith("GUI:")), "")
    if gui.upper() == "NONE":
        return "this OpenCV has no window support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    return None


class WindowSink:
    """A window with an FPS overlay; q or Esc closes it (as does Ctrl-C in the terminal)."""

    TITLE = "edgecut video (q to quit)"

    def __init__(self):
        self.cv2 = require_cv2()
        why = gui_problem(self.cv2)
        if why:
            raise EdgecutError(f"cannot open a window: {why}; write a file instead with --output out.mp4")
        self.frames, self.closed_by_user, self.fps_text = 0, False, ""

    def write(self, bgr: np.ndarray) -> None:
        cv2 = self.cv2
        if self.fps_text:
            cv2.putText(bgr, self.fps_text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4)
            cv2.putText(bgr, self.fps_text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        try:
            cv2.imshow(self.TITLE, bgr)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            raise EdgecutError(f"cannot show the window ({str(e).strip().splitlines()[-1]}); "
                               "use --output out.mp4") from None
        self.frames += 1
        if key in (ord("q"), 27):
            self.closed_by_user = True

    def close(self) -> None:
        try:
            self.cv2.destroyAllWindows()
        except self.cv2.error:
            pass
        return None

    discard = close


# --- the loop ---------------------------------------------------------------------------------------
# Four stages, each in one thread so frame order (and the EMA) is kept, linked by short queues:
#   decode (+ shrink) -> model (RGB, low-res alpha) -> compose (main thread) -> encode / window.
# Exceptions travel down the queues like frames and are raised in the main thread.
_END = object()


def _put(q: "queue.Queue", item, stop: threading.Event) -> bool:
    """Block while the pipeline runs; give up once it is stopping (no thread is left hanging)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: "queue.Queue", stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def _decode(source: Source, out: "queue.Queue", stop: threading.Event, max_side, limit) -> None:
    """Frames in order. A camera does not wait for us: when the model is slower than the camera,
    the frame nobody has taken yet is replaced by the newer one, so the picture stays live
    instead of lagging further and further behind."""
    cv2 = require_cv2()
    n = 0
    try:
        while not stop.is_set() and (limit is None or n < limit):
            ok, frame = source.capture.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            # even sides: the writers' 4:2:0 formats drop an odd row or column, so the file was
            # 100x76 while the summary said 101x76
            if max_side and max(h, w) > max_side:
                s = max_side / max(w, h)
                size = tuple(max(2, round(v * s) // 2 * 2) for v in (w, h))
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            elif (h | w) & 1 and min(h, w) > 1:   # a clip made elsewhere: its last row/column goes
                frame = frame[:h // 2 * 2, :w // 2 * 2]
            if source.is_camera and out.full():
                try:
                    out.get_nowait()
                except queue.Empty:
                    pass
            if not _put(out, frame, stop):
                return
            n += 1
    except BaseException as e:
        _put(out, e, stop)
    _put(out, _END, stop)


def _model(tracker: TemporalAlpha, inbox, out, stop: threading.Event) -> None:
    cv2 = require_cv2()
    while True:
        item = _get(inbox, stop)
        if item is _END or isinstance(item, BaseException):
            _put(out, item, stop)
            return
        try:
            rgb = cv2.cvtColor(item, cv2.COLOR_BGR2RGB)
            item = (rgb, tracker(rgb))
        except BaseException as e:
            item = e
        if not _put(out, item, stop) or isinstance(item, BaseException):
            return


def _encode(sink, inbox: "queue.Queue", errors: list) -> None:
    """Writes until the end marker, which the main thread always sends: frames made before a
    Ctrl-C are still written."""
    while True:
        item = inbox.get()
        if item is _END:
            return
        if errors:
            continue   # drain, so the main thread never blocks on a full queue
        try:
            sink.write(item)
        except BaseException as e:
            errors.append(e)


def run_video(session, source: Source, sink, cfg: VideoConfig = VideoConfig(),
              log=lambda line: print(line, file=sys.stderr, flush=True)) -> VideoStats:
    """Process frames until the source ends, `max_frames`, q in the window, or Ctrl-C.

    Ctrl-C (KeyboardInterrupt) stops decoding, lets the encoder finish the frames already made and
    closes the sink, so the output is a valid video; stats.interrupted says it happened.
    """
    cv2 = require_cv2()
    render = make_renderer(cfg.bg)
    tracker = TemporalAlpha(session, cfg.smooth, cfg.skip)
    decoded = queue.Queue(1 if source.is_camera else QUEUE_FRAMES)
    modelled, composed = queue.Queue(QUEUE_FRAMES), queue.Queue(QUEUE_FRAMES)
    stop, errors = threading.Event(), []
    window = isinstance(sink, WindowSink)
    threads = [threading.Thread(target=_decode, daemon=True, name="edgecut-decode",
                                args=(source, decoded, stop, cfg.max_side, cfg.max_frames)),
               threading.Thread(target=_model, daemon=True, name="edgecut-model",
                                args=(tracker, decoded, modelled, stop))]
    encoder = None if window else threading.Thread(target=_encode, daemon=True, name="edgecut-encode",
                                                   args=(sink, composed, errors))
    stats = VideoStats()
    t0 = last_report = time.perf_counter()
    for t in threads + ([encoder] if encoder else []):
        t.start()
    failed = None
    try:
        while True:
            item = _get(modelled, stop)
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            if errors:
                raise errors[0]
            rgb, low = item
            alpha = upscale_alpha(low, rgb, cfg.refine)
            out = cv2.cvtColor(render(rgb, alpha), cv2.COLOR_RGB2BGR)
            stats.frames += 1
            stats.size = (out.shape[1], out.shape[0])
            now = time.perf_counter()
            if window:
                sink.fps_text = f"{stats.frames / max(now - t0, 1e-9):.1f} fps"
                sink.write(out)
                if sink.closed_by_user:
                    break
            else:
                composed.put(out)
            if cfg.report_every and now - last_report >= cfg.report_every:
                log(f"edgecut video: {stats.frames} frames, {stats.frames / (now - t0):.1f} fps")
                last_report = now
    except KeyboardInterrupt:
        stats.interrupted = True
    except BaseException as e:
        failed = e
    with _no_sigint():   # a second Ctrl-C must not cut the file short while it is being finished
        stop.set()
        if encoder is not None:
            composed.put(_END)   # the encoder drains until it sees this, so the put always fits
            encoder.join()
        for t in threads:
            t.join(timeout=5)
        source.capture.release()
        stats.seconds = time.perf_counter() - t0
        stats.inferences, stats.alpha_change = tracker.inferences, tracker.mean_change
        failed = failed or (errors[0] if errors else None)
        if failed is not None:
            sink.discard()
        else:
            sink.close()
    if failed is not None:
        raise failed
    return stats


class _no_sigint:
    def __enter__(self):
        import signal

        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False
