"""`edgecut video` on short generated videos: backgrounds, smoothing, skip, shrink, Ctrl-C, no GUI.

The tiny fixture model says "red is the subject", so the videos are the red disk of
conftest.synthetic_photo with sensor noise that changes from frame to frame: a static scene where
any change of the alpha from frame to frame is flicker.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, synthetic_photo
from edgecut.cli import main
from edgecut.runtime.errors import EdgecutError

cv2 = pytest.importorskip("cv2")
from edgecut.runtime import video  # noqa: E402  (needs cv2 for most of what is tested)

SIZE = (160, 120)


def write_video(path: Path, frames: int, size=SIZE, noise: float = 6.0, fps: float = 25.0) -> Path:
    base, _ = synthetic_photo(size)
    rng = np.random.default_rng(1)
    noisy = [cv2.cvtColor(np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8),
                          cv2.COLOR_RGB2BGR) for _ in range(min(frames, 7))]   # cycled: fast to make
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    w = cv2.VideoWriter(str(path), fourcc, fps, size)
    assert w.isOpened()
    for i in range(frames):
        w.write(noisy[i % len(noisy)])
    w.release()
    return path


def read_video(path: Path) -> list:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 12)


def _errors(err: str) -> list:
    return [line for line in err.splitlines() if "error:" in line]


def test_colour_background_file_to_file(tiny_model_dir, clip, tmp_path, capsys):
    out = tmp_path / "green.mp4"
    rc = main(["video", "-i", str(clip), "-o", str(out), "--model", str(tiny_model_dir),
               "--bg", "#00ff00", "--threads", "1"])
    assert rc == 0
    frames = read_video(out)
    assert len(frames) == 12 and frames[0].shape == (SIZE[1], SIZE[0], 3)
    f = frames[-1].astype(int)
    centre, corner = f[SIZE[1] // 2, SIZE[0] // 2], f[3, 3]
    assert centre[0] > 150 and centre[1] < 100          # the red subject is kept
    assert corner[1] > 200 and corner[0] < 60            # the background is now green
    assert "12 frames in" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*partial*"))         # the temp file was renamed away


def test_blur_and_image_backgrounds_and_avi(tiny_model_dir, clip, tmp_path):
    bg = tmp_path / "bg.png"
    from PIL import Image
    Image.new("RGB", (50, 40), (0, 0, 255)).save(bg)
    for spec, name in (("blur", "b.avi"), ("blur:3", "b3.mkv"), (str(bg), "img.mp4")):
        out = tmp_path / name
        assert main(["video", "-i", str(clip), "-o", str(out), "--model", str(tiny_model_dir),
                     "--bg", spec, "-q"]) == 0, spec
        frames = read_video(out)
        assert len(frames) == 12
    corner = read_video(tmp_path / "img.mp4")[-1][3, 3].astype(int)
    assert corner[2] > 200 and corner[0] < 60            # blue image behind the subject


def _run(session, path, out, **cfg):
    src = video.open_source(str(path))
    sink = video.FileSink(out, src.fps)
    return video.run_video(session, src, sink, video.VideoConfig(report_every=0, **cfg))


def test_smoothing_reduces_flicker_on_a_static_scene(tiny_session, tmp_path):
    noisy = write_video(tmp_path / "static.mp4", 16, noise=12.0)
    raw = _run(tiny_session, noisy, tmp_path / "raw.mp4", smooth=0.0)
    smooth = _run(tiny_session, noisy, tmp_path / "smooth.mp4", smooth=0.6)
    assert raw.frames == smooth.frames == 16
    assert raw.alpha_change > 0.05                        # the noise does make the matte flicker
    assert smooth.alpha_change < 0.5 * raw.alpha_change   # EMA theory for white noise: ~0.32x


def test_temporal_alpha_is_an_ema_and_skip_reuses_alphas():
    class Fake:
        def __init__(self):
            self.values = iter([0.0, 1.0, 1.0, 1.0])

        def infer(self, rgb):
            return np.full((2, 2), next(self.values), np.float32)

    t = video.TemporalAlpha(Fake(), smooth=0.5, skip=2)
    got = [float(t(None)[0, 0]) for _ in range(6)]
    assert got == [0.0, 0.0, 0.5, 0.5, 0.75, 0.75]
    assert t.inferences == 3 and t.frames == 6
    assert t.mean_change == pytest.approx((0.5 + 0.25) * 255 / 5)
    with pytest.raises(EdgecutError):
        video.TemporalAlpha(Fake(), smooth=1.0)


def test_skip_and_max_side(tiny_session, clip, tmp_path):
    stats = _run(tiny_session, clip, tmp_path / "s.mp4", skip=3, max_side=80)
    assert stats.frames == 12 and stats.inferences == 4
    assert stats.size == (80, 60)
    frames = read_video(tmp_path / "s.mp4")
    assert len(frames) == 12 and frames[0].shape == (60, 80, 3)
    stats = _run(tiny_session, clip, tmp_path / "n.mp4", max_frames=5)
    assert stats.frames == 5 and len(read_video(tmp_path / "n.mp4")) == 5
    stats = _run(tiny_session, clip, tmp_path / "odd.mp4", max_side=81, max_frames=2)   # 81x61 would lose a column
    assert stats.size == (80, 60) and read_video(tmp_path / "odd.mp4")[0].shape == (60, 80, 3)


def test_a_clip_with_odd_sides_is_written_and_reported_at_even_sides(tiny_session, tmp_path):
    # OpenCV here writes no odd-sided file, so the source is a capture that returns 161x121 frames,
    # as a clip made by another encoder does; the writers' 4:2:0 formats would drop a column and a row
    base, _ = synthetic_photo((161, 121))

    class OddCapture:
        def __init__(self):
            self.left = 3

        def read(self):
            self.left -= 1
            return (True, base[..., ::-1].copy()) if self.left >= 0 else (False, None)

        def release(self):
            pass

    stats = video.run_video(tiny_session, video.Source(OddCapture(), "odd", 25.0, False),
                            video.FileSink(tmp_path / "odd.mp4", 25.0), video.VideoConfig(report_every=0))
    assert stats.frames == 3 and stats.size == (160, 120)
    assert read_video(tmp_path / "odd.mp4")[0].shape == (120, 160, 3)


def test_the_default_model_on_a_cpu_without_int8_dot_product_suggests_the_fast_one(clip, tmp_path, monkeypatch,
                                                                                    capsys):
    from edgecut.runtime import cpu

    for dot, model, noted in [("none (AVX2 only)", None, True), ("none", None, True),
                              ("AVX-512 VNNI", None, False), ("none (AVX2 only)", "edgecut-fast", False)]:
        monkeypatch.setattr(cpu, "int8_dot", lambda dot=dot: dot)
        argv = ["video", "-i", str(clip), "-o", str(tmp_path / "o.mp4"), "--frames", "2"]
        assert main(argv + (["--model", model] if model else [])) == 0
        err = capsys.readouterr().err
        assert ("note: this CPU has no int8 dot product" in err) == noted, (dot, model, err)
        assert ("--model edgecut-fast" in err) == noted
    assert main(["video", "-i", str(clip), "-o", str(tmp_path / "o.mp4"), "--frames", "2", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_window_mode_without_gui_is_one_clear_line(tiny_model_dir, clip, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if video.gui_problem() is None:
        pytest.skip("this OpenCV can open windows here")
    assert main(["video", "-i", str(clip), "--model", str(tiny_model_dir)]) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "window" in line and "--output" in line


def test_a_missing_file_is_named_before_the_window(tiny_model_dir, tmp_path, monkeypatch, capsys):
    # Window mode with a mistyped path: the path is the error, not the display or the OpenCV build.
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["video", "-i", str(tmp_path / "nope.mp4"), "--model", str(tiny_model_dir)]) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "nope.mp4: no such file" in line


def test_bad_inputs_fail_with_one_line(tiny_model_dir, clip, tmp_path, capsys):
    cases = [
        (["-i", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4")], "no such file"),
        (["-i", str(clip), "-o", str(tmp_path / "o.gif")], "unsupported video type"),
        (["-i", str(clip), "-o", str(clip)], "refusing to overwrite the input"),
        (["-i", str(clip), "-o", str(tmp_path / "o.mp4"), "--bg", "nonsense"], "not blur, a colour"),
        (["-i", str(tmp_path), "-o", str(tmp_path / "o.mp4")], "is a directory"),
    ]
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    cases.append((["-i", str(tmp_path / "junk.mp4"), "-o", str(tmp_path / "o.mp4")], "junk.mp4"))
    for argv, reason in cases:
        assert main(["video", *argv, "--model", str(tiny_model_dir)]) == 1, argv
        (line,) = _errors(capsys.readouterr().err)
        assert reason in line, (argv, line)
    assert not (tmp_path / "o.mp4").exists()


def test_an_empty_mp4_is_one_line_on_stderr_not_ffmpegs_log_too(tiny_model_dir, tmp_path):
    # FFmpeg writes "moov atom not found" to fd 2 itself, past capsys: so a real process is run.
    (tmp_path / "empty.mp4").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "edgecut.cli", "video", "-i", str(tmp_path / "empty.mp4"),
                           "-o", str(tmp_path / "o.mp4"), "--model", str(tiny_model_dir)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"edgecut video: error: {tmp_path / 'empty.mp4'}: "
                                                "cannot read it as a video"]


def test_an_output_that_is_a_folder_is_named_as_one(tiny_model_dir, clip, tmp_path, capsys):
    assert main(["video", "-i", str(clip), "-o", str(tmp_path), "--model", str(tiny_model_dir)]) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "is a directory" in line and "unsupported" not in line


def test_without_opencv_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(EdgecutError, match=r"edgecut\[video\]"):
        video.require_cv2()


def test_ctrl_c_leaves_a_valid_video(tiny_model_dir, tmp_path):
    src = write_video(tmp_path / "long.avi", 1200, size=(320, 240), noise=3.0)
    out = tmp_path / "out.mp4"
    # A shell that runs this suite in the background (CI under `cmd &`) starts it with SIGINT ignored,
    # which the child would inherit, so the child gives itself Ctrl-C back before the CLI starts. Not
    # by preexec_fn: that runs Python between fork and exec, which deadlocks now and then in a process
    # with threads (one run of the suite here hung in it until the 60 s timeout).
    start = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('edgecut.cli', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", start, "video", "-i", str(src), "-o", str(out),
                             "--model", str(tiny_model_dir), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.*partial.mp4")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)                                   # some frames in, far from the end
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "stopped by Ctrl-C" in err
    frames = read_video(out)
    assert 0 < len(frames) < 1200
    assert frames[0].shape == (240, 320, 3)
    assert not list(tmp_path.glob(".out.*partial.mp4"))


class _FakeCamera:
    """Frames as fast as asked, each filled with its own number; a camera cannot be paused."""

    def __init__(self, n):
        self.n, self.i = n, 0

    def read(self):
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, np.full((24, 32, 3), self.i % 256, np.uint8)

    def release(self):
        pass


class _SlowModel:
    def infer(self, rgb):
        time.sleep(0.004)
        return np.ones((8, 8), np.float32)


class _ListSink:
    def __init__(self):
        self.frames, self.closed = [], False

    def write(self, bgr):
        self.frames.append(int(bgr[0, 0, 0]))

    def close(self):
        self.closed = True

    def discard(self):
        pass


def test_a_camera_drops_stale_frames_instead_of_lagging():
    sink = _ListSink()
    src = video.Source(_FakeCamera(200), "camera 9", 30.0, is_camera=True)
    stats = video.run_video(_SlowModel(), src, sink, video.VideoConfig(bg="black", smooth=0.0, report_every=0))
    assert sink.closed and stats.frames == len(sink.frames)
    assert 0 < stats.frames < 200                      # the slow model never saw most frames
    assert sink.frames == sorted(sink.frames)           # but what is shown stays in order


def test_refine_uses_the_guided_filter_only_for_large_upscales():
    rgb, disk = synthetic_photo((320, 240))
    low = np.zeros((64, 64), np.float32)
    low[16:48, 16:48] = 1.0
    plain = video.upscale_alpha(low, rgb, refine=False)
    refined = video.upscale_alpha(low, rgb, refine=True)           # 320 >= 4 x 64: guided filter
    assert plain.shape == refined.shape == (240, 320) and refined.dtype == np.uint8
    assert not np.array_equal(plain, refined)
    small = rgb[:120, :160].copy()                                 # 160 < 4 x 64: bilinear either way
    assert np.array_equal(video.upscale_alpha(low, small, True), video.upscale_alpha(low, small, False))
