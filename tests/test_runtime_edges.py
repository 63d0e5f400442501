"""Edge cases of the runtime found by an audit (2026-12-04): each of these failed before its fix,
with a traceback, a silently wrong file or a wrong pixel."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_INPUT, synthetic_photo, tiny_manifest
from edgecut.cli import main
from edgecut.runtime.errors import EdgecutError


def _errors(err: str) -> list:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("edgecut remove: error:")]


def test_a_webp_too_tall_for_the_format_is_one_line_and_the_folder_run_goes_on(model_zoo, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.full((16400, 4, 3), 200, np.uint8)).save(d / "scroll.png")   # a long screenshot
    Image.fromarray(synthetic_photo((40, 30))[0]).save(d / "ok.png")
    assert main(["remove", str(d), "-o", str(tmp_path / "out"), "--format", "webp", "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    [line] = _errors(err)
    assert "scroll.webp: WEBP holds at most 16383 pixels a side" in line and "processed 1, failed 1" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.webp"]    # and no temp file left


def _cmyk_profile() -> bytes:
    """A 128-byte ICC header claiming a CMYK colour space: all that decides whether it may be copied."""
    head = bytearray(128)
    head[0:4] = (128).to_bytes(4, "big")
    head[12:20] = b"prtrCMYK"
    head[36:40] = b"acsp"
    return bytes(head)


def test_only_an_rgb_colour_profile_is_copied_onto_the_rgb_output(model_zoo, tmp_path):
    from PIL import ImageCms

    rgb = synthetic_photo((48, 40))[0]
    cmyk = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, icc_profile=_cmyk_profile())
    srgb = tmp_path / "web.jpg"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(srgb, icc_profile=profile)
    for src, bg in ((cmyk, []), (cmyk, ["--bg", "white"]), (srgb, [])):
        out = tmp_path / f"{src.stem}{len(bg)}.{'jpg' if bg else 'png'}"
        assert main(["remove", str(src), "-o", str(out), *bg]) == 0
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == (profile if src == srgb else None), (src, bg)


def test_a_dark_16_bit_photo_stays_dark(tiny_session):
    from edgecut.runtime.imageio import load_image

    levels = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (8, 1))      # 16-bit, all levels <= 255: near black
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode == "I;16"
    grey = np.asarray(load_image(buf.getvalue()))[..., 0]
    assert grey.max() == 1 and np.array_equal(grey, (levels.astype(np.uint32) + 128) // 257)


@pytest.mark.parametrize("mode", ["I;16", "1"])
def test_a_transparent_grey_level_is_kept_in_16_bit_and_1_bit_pngs(mode):
    from edgecut.runtime.imageio import load_photo

    rgb, _ = synthetic_photo((64, 64))
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257 + 1      # no pixel is 0
    grey[:20, :20] = 0                                                            # the transparent corner
    im = Image.fromarray(grey) if mode == "I;16" else Image.fromarray(grey > 0)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    with Image.open(io.BytesIO(buf.getvalue())) as check:
        assert check.mode == mode and check.info.get("transparency") == 0
    rgb, own = load_photo(buf.getvalue())       # what remove() multiplies the model's alpha by
    own = np.asarray(own)
    assert own[:20, :20].max() == 0 and own[20:, 20:].min() == 255 and own.shape == (64, 64)


def test_a_premultiplied_la_image_is_read(tiny_session):
    from edgecut import remove

    im = Image.new("La", (32, 24), (100, 128))
    assert remove(im, tiny_session).size == (32, 24)


def _left_looking_model(folder):
    """alpha = sigmoid(20 (R - G) - 8) of the pixel to the left: not mirror-symmetric, so a
    mirrored pass differs (the shared tiny model looks at one pixel and cannot tell)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    h, w = TINY_INPUT
    weight = np.zeros((1, 3, 1, 3), np.float32)
    weight[0, 0, 0, 0], weight[0, 1, 0, 0] = 20.0, -20.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["z"], pads=[0, 1, 0, 1]),
         helper.make_node("Sigmoid", ["z"], ["alpha"])], "left",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, h, w])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([-8.0], np.float32), "b")])
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    tiny_manifest().save(folder / "manifest.json")
    return folder


def test_tta_is_honoured_with_the_callers_own_session(tmp_path, photo_array):
    from edgecut import remove
    from edgecut.runtime import Session

    model = _left_looking_model(tmp_path / "left")
    rgb, _ = photo_array
    plain, mirrored = Session(model, threads=1), Session(model, threads=1, tta=True)
    expected = np.asarray(remove(rgb, mirrored, mask=True))
    assert not np.array_equal(np.asarray(remove(rgb, plain, mask=True)), expected)
    assert np.array_equal(np.asarray(remove(rgb, plain, mask=True, tta=True)), expected)
    assert not plain.tta                                        # the caller's session is left as it was


def _one_channel_model(path, channels):
    """An ONNX model taking 1-channel input (or a channel count left open, `channels` a name)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    h, w = TINY_INPUT
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, h, w])
    y = helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, h, w])
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["z"]),
                               helper.make_node("Sigmoid", ["z"], ["alpha"])], "one", [x], [y], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    tiny_manifest().save(path.parent / "manifest.json")


def test_a_model_that_does_not_take_rgb_is_one_line(tmp_path, photo_path, capsys):
    from edgecut.runtime import Session

    (tmp_path / "grey").mkdir()
    _one_channel_model(tmp_path / "grey" / "model.onnx", 1)
    with pytest.raises(EdgecutError, match=r"model input has 1 channel\(s\); edgecut feeds it RGB"):
        Session(tmp_path / "grey")
    (tmp_path / "open").mkdir()                              # the count left open: caught when it runs
    _one_channel_model(tmp_path / "open" / "model.onnx", "c")
    assert main(["remove", str(photo_path), "--model", str(tmp_path / "open"), "-o", str(tmp_path / "c.png")]) == 1
    assert "inference failed" in _errors(capsys.readouterr().err)[0]


def test_a_folder_where_an_output_goes_is_a_failure_not_skipped(model_zoo, photo_path, tmp_path, capsys):
    (tmp_path / "out" / "photo.png").mkdir(parents=True)
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "photo.png: is a directory" in _errors(err)[0] and "skipped" not in err


def test_closed_stdin_is_one_line(model_zoo):
    run = subprocess.run([sys.executable, "-c", "import sys; from edgecut.cli import main; sys.exit(main(sys.argv[1:]))",
                          "remove", "-", "-o", "x.png"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         preexec_fn=lambda: __import__("os").close(0))
    assert run.returncode == 2 and "standard input is closed" in run.stderr and "Traceback" not in run.stderr


def test_a_long_strip_is_upsampled_in_memory_of_its_tiles_not_its_side():
    """The bilinear weights were one (H, guide rows) matrix: 214 MB for a 2 x 200,000 strip, 1.6 GB
    of RSS at 2 x 1,200,000. Now only a tile's block, with the same weights to the bit."""
    import tracemalloc

    from edgecut.runtime.upsample import _bilinear_block, guided_upsample

    n_out, n_in = 1000, 37
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5                 # the dense matrix, written out
    dense = np.zeros((n_out, n_in), np.float32)
    i0 = np.floor(src).astype(int)
    frac = (src - i0).astype(np.float32)
    np.add.at(dense, (np.arange(n_out), np.clip(i0, 0, n_in - 1)), 1.0 - frac)
    np.add.at(dense, (np.arange(n_out), np.clip(i0 + 1, 0, n_in - 1)), frac)
    for p0, p1, c0, c1 in ((0, 128, 0, 7), (384, 512, 12, 21), (896, 1000, 30, 37)):
        assert np.array_equal(_bilinear_block(p0, p1, n_out, n_in, c0, c1), dense[p0:p1, c0:c1])
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 255, (200000, 2, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        out = guided_upsample(rng.random((64, 64)).astype(np.float32), strip)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (200000, 2) and peak < 20e6, peak
