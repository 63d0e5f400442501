"""The lean runtime: model registry, session, image I/O, upsampling, compositing, `remove`."""
from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, synthetic_photo, tiny_manifest
from edgecut import models
from edgecut.runtime import EdgecutError, Session, load_image, load_rgb, new_session, remove
from edgecut.runtime import composite, upsample
from edgecut.runtime.api import compositor, get_session
from edgecut.runtime.imageio import save_image_atomic


# ---------------------------------------------------------------- registry

def test_registry_lists_default_and_resolves_by_name(model_zoo, tiny_model_dir):
    shutil.copytree(tiny_model_dir, model_zoo / "another")
    names = [m.name for m in models.list_models()]
    assert names == ["another", "tiny"]
    assert models.DEFAULT_MODEL == "tiny"          # from the DEFAULT file, not alphabetical
    path, m = models.resolve("default")
    assert path == model_zoo / "tiny" / "model.onnx" and m.name == "tiny"
    (model_zoo / "DEFAULT").unlink()
    assert models.default_model() == "another"      # no DEFAULT file: first by name


def test_short_names_resolve_after_paths(model_zoo, tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, model_zoo / "edgecut-quick")
    path, m = models.resolve("quick")
    assert path == model_zoo / "edgecut-quick" / "model.onnx" and m.name == "edgecut-quick"
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "quick")      # a folder of that name wins over the alias
    assert models.resolve("quick")[0] == Path("quick") / "model.onnx"


def test_resolve_accepts_folder_manifest_and_model_file(tiny_model_dir, tmp_path):
    model_file = tiny_model_dir / "model.onnx"
    assert models.resolve(tiny_model_dir)[0] == model_file
    assert models.resolve(tiny_model_dir / "manifest.json")[0] == model_file
    assert models.resolve(model_file)[0] == model_file             # manifest.json beside it
    own = tmp_path / "mine.onnx"
    shutil.copy(model_file, own)
    tiny_manifest(name="mine", file="mine.onnx").save(tmp_path / "mine.json")   # <stem>.json beside
    path, m = models.resolve(own)
    assert path == own and m.name == "mine"


def test_resolve_errors_name_the_problem(model_zoo, tiny_model_dir, tmp_path):
    with pytest.raises(EdgecutError, match=r"unknown model 'nope'.*available: tiny"):
        models.resolve("nope")
    bare = tmp_path / "bare.onnx"
    shutil.copy(tiny_model_dir / "model.onnx", bare)
    with pytest.raises(EdgecutError, match="no manifest beside"):
        models.resolve(bare)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(EdgecutError, match="manifest.json: not valid JSON"):
        models.resolve(tmp_path / "broken")


def test_no_embedded_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECUT_MODELS_DIR", str(tmp_path))
    assert models.list_models() == [] and models.DEFAULT_MODEL is None
    with pytest.raises(EdgecutError, match="no embedded model"):
        models.resolve("default")


def test_registry_and_runtime_do_not_import_torch():
    import subprocess

    code = "import sys, edgecut.models, edgecut.runtime, edgecut.runtime.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- session

def test_infer_finds_the_red_disk(tiny_session, photo_array):
    rgb, disk = photo_array
    a = tiny_session.infer(rgb)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    small_disk = np.asarray(Image.fromarray(disk).resize((64, 64), Image.NEAREST))
    assert a[small_disk].mean() > 0.9 and a[~small_disk].mean() < 0.05


def test_input_size_arrays_skip_pillow_with_the_same_result(tiny_session, photo_array):
    rgb = np.asarray(Image.fromarray(photo_array[0]).resize((64, 64)))
    direct = tiny_session.preprocess(rgb)                              # no resize: used as it is
    assert np.array_equal(direct, tiny_session.preprocess(Image.fromarray(rgb)))
    assert np.array_equal(direct, tiny_session.preprocess(np.asfortranarray(rgb)))


def test_alpha_is_full_resolution_and_refine_helps(tiny_session, photo_array):
    rgb, disk = photo_array
    refined = tiny_session.alpha(rgb)
    plain = tiny_session.alpha(rgb, refine=False)
    assert refined.shape == plain.shape == rgb.shape[:2] and refined.dtype == np.uint8
    truth = disk * 255.0
    assert np.abs(refined - truth).mean() < 0.75 * np.abs(plain - truth).mean()
    assert np.array_equal(tiny_session.alpha(Image.fromarray(rgb)), refined)   # PIL == array


def test_tta_averages_the_mirror_pass_and_is_mirror_equivariant(sample_photos):
    """A trained student (not mirror-symmetric, unlike the tiny model) with tta: its alpha is the
    logit mean of the photo's pass and its mirror image's pass flipped back, so mirroring the photo
    mirrors the alpha exactly."""
    from edgecut.runtime.session import _logit_mean

    photo = load_image(sample_photos[0])
    mirror = photo.transpose(Image.FLIP_LEFT_RIGHT)
    plain, tta = Session("edgecut-fast", threads=1), Session("edgecut-fast", threads=1, tta=True)
    a = tta.infer(photo)
    assert a.shape == (192, 192) and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_allclose(a, _logit_mean(plain.infer(photo), plain.infer(mirror)[:, ::-1]), atol=1e-6)
    np.testing.assert_allclose(tta.infer(mirror)[:, ::-1], a, atol=1e-6)
    assert np.abs(a - plain.infer(photo)).max() > 0.05       # the second pass changed something
    assert tta.alpha(photo).shape == (photo.height, photo.width)
    assert "tta=True" in repr(tta)


def test_tta_of_a_mirror_symmetric_model_changes_nothing(tiny_model_dir, photo_array):
    """The tiny model looks at one pixel at a time, so both passes agree once flipped back: a pass
    left unflipped would move the disk, here cropped off-centre."""
    rgb = np.ascontiguousarray(photo_array[0][:, :200])       # the disk's centre at x = 160 of 200
    plain, tta = Session(tiny_model_dir, threads=1), Session(tiny_model_dir, threads=1, tta=True)
    np.testing.assert_allclose(tta.infer(rgb), plain.infer(rgb), atol=1e-5)
    assert np.abs(plain.infer(rgb) - plain.infer(rgb)[:, ::-1]).max() > 0.9   # not symmetric itself


def test_logit_mean_is_sure_where_one_pass_is():
    from edgecut.runtime.session import _logit_mean

    a = np.array([0.0, 0.5, 0.9, 1.0], np.float32)
    b = np.array([0.0, 0.5, 0.1, 0.5], np.float32)
    m = _logit_mean(a, b)
    assert m.dtype == np.float32
    np.testing.assert_allclose(m[:3], [0.0, 0.5, 0.5], atol=1e-5)
    assert m[3] > 0.99                  # a sure pass outweighs an unsure one (the alphas' mean: 0.75)
    np.testing.assert_allclose(_logit_mean(b, a), m)


def test_manifest_override_runs_a_bare_model(tiny_model_dir, tmp_path, photo_array):
    bare = tmp_path / "teacher.onnx"
    shutil.copy(tiny_model_dir / "model.onnx", bare)
    s = new_session(bare, manifest=tiny_manifest(name="teacher"), threads=1)
    assert s.model_path == bare and s.manifest.name == "teacher"
    assert s.infer(photo_array[0]).shape == (64, 64)


def test_manifest_must_match_the_model(tiny_model_dir):
    with pytest.raises(EdgecutError, match="manifest says input_size 32x32"):
        Session(tiny_model_dir / "model.onnx", manifest=tiny_manifest(input_size=(32, 32)))
    with pytest.raises(EdgecutError, match="no output named 'nope'"):
        Session(tiny_model_dir / "model.onnx", manifest=tiny_manifest(output_name="nope"))
    with pytest.raises(EdgecutError, match="layout"):
        Session(tiny_model_dir / "model.onnx", manifest=tiny_manifest(layout="CHW"))


def test_output_activation_and_minmax_norm(tiny_model_dir):
    s = Session(tiny_model_dir / "model.onnx", threads=1,
                manifest=tiny_manifest(output_activation="sigmoid", output_norm="minmax"))
    y = s.postprocess(np.array([[[[-50.0, 0.0], [2.0, 50.0]]]], dtype=np.float32))
    assert y.shape == (2, 2) and y.min() == 0.0 and y.max() == 1.0 and np.isfinite(y).all()
    assert np.all(s.postprocess(np.ones((1, 1, 4, 4))) == 0)   # flat output: no division by zero


def test_corrupt_model_file_is_an_edgecut_error(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    tiny_manifest().save(tmp_path / "manifest.json")
    with pytest.raises(EdgecutError, match="cannot load ONNX model"):
        Session(tmp_path)


class _FakeInterpreter:
    """LiteRT's interface, int8 in / uint8 out: alpha = the red channel of an NHWC input."""
    def __init__(self, model_path=None, num_threads=None):
        self.inp = {"name": "x", "index": 0, "shape": np.array([1, 64, 64, 3]), "dtype": np.int8,
                    "quantization": (1 / 255.0, -128)}
        self.out = {"name": "y", "index": 1, "shape": np.array([1, 64, 64, 1]), "dtype": np.uint8,
                    "quantization": (1 / 255.0, 0)}

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [self.inp]

    def get_output_details(self):
        return [self.out]

    def set_tensor(self, index, value):
        assert value.dtype == np.int8 and value.shape == (1, 64, 64, 3)
        self.x = value

    def invoke(self):
        self.y = (self.x[..., :1].astype(np.int16) + 128).astype(np.uint8)

    def get_tensor(self, index):
        return self.y


def test_tflite_backend_dequantizes(tmp_path, monkeypatch):
    (tmp_path / "m.tflite").write_bytes(b"fake")
    tiny_manifest(file="m.tflite", format="tflite", layout="NHWC", output_name=None,
                  precision="int8").save(tmp_path / "manifest.json")
    pkg = types.ModuleType("ai_edge_litert")
    mod = types.ModuleType("ai_edge_litert.interpreter")
    mod.Interpreter = _FakeInterpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert", pkg)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", mod)
    rgb = np.zeros((50, 80, 3), np.uint8)
    rgb[..., 0] = 200
    a = Session(tmp_path / "m.tflite").infer(rgb)
    assert a.shape == (64, 64) and np.allclose(a, 200 / 255.0, atol=1 / 255.0)


def test_tflite_without_litert_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "m.tflite").write_bytes(b"fake")
    tiny_manifest(file="m.tflite", format="tflite").save(tmp_path / "manifest.json")
    # The submodules too: once imported (by a TFLite test), `import a.b` finds them without `a`.
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EdgecutError, match="pip install ai-edge-litert"):
        Session(tmp_path)


# ---------------------------------------------------------------- image loading

def test_every_input_type_loads_the_same_pixels(tmp_path):
    rgb, _ = synthetic_photo((40, 30))
    png = tmp_path / "p.png"
    Image.fromarray(rgb).save(png)
    data = png.read_bytes()
    with open(png, "rb") as f:
        from_file = load_rgb(f)
    sources = [str(png), png, data, bytearray(data), memoryview(data), io.BytesIO(data),
               Image.open(png), rgb, np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])]
    for src in sources:
        assert np.array_equal(load_rgb(src), rgb), type(src)
    assert np.array_equal(from_file, rgb)


@pytest.mark.parametrize("arr, expect", [
    (np.full((4, 5), 200, np.uint8), 200),
    (np.full((4, 5, 1), 200, np.uint8), 200),
    (np.full((4, 5), 65535, np.uint16), 255),
    (np.full((4, 5, 3), 257 * 100, np.uint16), 100),
    (np.full((4, 5, 3), 0.5, np.float32), 128),
    (np.full((4, 5), 300.0, np.float64), 255),
    (np.ones((4, 5), bool), 255),
])
def test_arrays_of_other_types_are_scaled(arr, expect):
    out = load_rgb(arr)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == expect).all()


def test_bad_array_shapes_are_refused():
    with pytest.raises(EdgecutError, match="expected an HxW"):
        load_rgb(np.zeros((3, 4, 5, 6), np.uint8))
    with pytest.raises(EdgecutError, match="expected an HxW"):
        load_rgb(np.zeros((3, 4, 2), np.uint8))


def _mode_images():
    rgb, _ = synthetic_photo((24, 16))
    base = Image.fromarray(rgb)
    p = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    i16 = Image.fromarray(np.full((16, 24), 257 * 180, np.uint16))
    return {
        "RGB": base, "RGBA": base.convert("RGBA"), "L": base.convert("L"), "LA": base.convert("LA"),
        "1": base.convert("1"), "P": p, "CMYK": base.convert("CMYK"), "I;16": i16,
        "I": Image.fromarray(np.full((16, 24), 40000, np.int32)),
        "F": Image.fromarray(np.full((16, 24), 0.25, np.float32)),
    }


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "1", "P", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb_via_file_roundtrip(mode, tmp_path):
    im = _mode_images()[mode]
    assert im.mode == mode
    ext = {"CMYK": "tif", "I": "tif", "F": "tif"}.get(mode, "png")
    path = tmp_path / f"x.{ext}"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (24, 16)
    if mode == "I;16":
        assert (np.asarray(out) == 180).all()          # 16-bit scaled down, not truncated
    if mode == "F":
        assert (np.asarray(out) == 64).all()           # [0, 1] floats scaled to 0..255


def test_exif_orientation_is_applied(tmp_path):
    rgb, _ = synthetic_photo((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6                                   # rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif)
    assert load_image(path).size == (40, 60)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path, side=20000) -> None:
    """A real 1-bit side x side PNG of zeros, ~40 KB on disk (decoding it would need 400 MB)."""
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_bomb_png(bomb)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(EdgecutError, match=r"bomb.png: image too large: 400000000 pixels"):
        load_image(bomb)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(EdgecutError, match=r"image too large: 10000 pixels \(limit 5000\)"):
        load_image(small, max_pixels=5000)


def test_broken_inputs_name_the_file_and_reason(tmp_path):
    rgb, _ = synthetic_photo()
    data = jpeg_bytes(rgb)
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello, not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {"trunc.jpg": "truncated", "text.jpg": "not an image", "empty.png": "empty file",
             "missing.jpg": "no such file", ".": "is a directory"}
    for name, reason in cases.items():
        with pytest.raises(EdgecutError, match=reason) as e:
            load_image(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name))
    with pytest.raises(EdgecutError, match="empty input"):
        load_image(b"")


# ---------------------------------------------------------------- saving

def test_save_is_atomic_and_never_replaces_an_input(tmp_path):
    img = Image.new("RGB", (8, 8), "red")
    out = save_image_atomic(img, tmp_path / "out.png")
    assert Image.open(out).size == (8, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    src = tmp_path / "in.png"
    img.save(src)
    before = src.read_bytes()
    with pytest.raises(EdgecutError, match="refusing to overwrite an input"):
        save_image_atomic(Image.new("RGB", (8, 8)), src, inputs=[src])
    assert src.read_bytes() == before


def test_failed_save_leaves_no_temp_and_keeps_the_old_file(tmp_path, monkeypatch):
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    img = Image.new("RGB", (8, 8))

    def broken_save(fp, format=None, **kw):
        fp.write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(img, "save", broken_save)
    with pytest.raises(EdgecutError, match="out.png: cannot write .No space left"):
        save_image_atomic(img, dst)
    assert dst.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_unwritable_output_is_an_edgecut_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(EdgecutError, match="cannot write"):
        save_image_atomic(Image.new("L", (2, 2)), blocker / "out.png")
    with pytest.raises(EdgecutError, match="JPEG cannot hold transparency"):
        save_image_atomic(Image.new("RGBA", (2, 2)), tmp_path / "x.jpg")


# ---------------------------------------------------------------- upsampling

def test_box_mean_matches_brute_force():
    rng = np.random.default_rng(0)
    for shape in ((9, 11), (2, 3), (1, 1)):   # windows wider than the grid too
        x = rng.random((2,) + shape)
        for r in (1, 2):
            got = upsample.box_mean(x, r)
            want = np.array([[[x[c, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
                               for j in range(shape[1])] for i in range(shape[0])] for c in range(2)])
            assert np.allclose(got, want)


def test_guided_filter_sharpens_edges_and_tiles_are_exact():
    rgb, disk = synthetic_photo((512, 384))
    low = np.asarray(Image.fromarray(disk.astype(np.uint8) * 255).resize((32, 32), Image.BILINEAR),
                     dtype=np.float32) / 255.0
    guided = upsample.guided_upsample(low, rgb)
    plain = upsample.bilinear_upsample(low, (512, 384))
    truth = disk * 255.0
    err_g, err_b = np.abs(guided - truth).mean(), np.abs(plain - truth).mean()
    assert err_g < 0.6 * err_b, (err_g, err_b)
    # The edge profile is steeper: fewer pixels stuck in between.
    assert ((guided > 25) & (guided < 230)).sum() < 0.6 * ((plain > 25) & (plain < 230)).sum()
    # Skipping tiles proven constant changes nothing (up to rounding).
    untiled = upsample.guided_upsample(low, rgb, upsample.GuidedUpsample(tile=10_000))
    assert np.abs(guided.astype(int) - untiled).max() <= 1


def test_small_upscales_use_bilinear():
    low = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    rgb = np.zeros((100, 120, 3), np.uint8)    # < 4x the model: bilinear wins there
    assert np.array_equal(upsample.upsample_alpha(low, rgb), upsample.bilinear_upsample(low, (120, 100)))


def test_real_photos_cut_out_at_full_size(tiny_session, sample_photos):
    for p in sample_photos[:2]:
        photo = load_image(p)
        cut = remove(p, tiny_session)
        assert cut.mode == "RGBA" and cut.size == photo.size
        assert np.array_equal(np.asarray(cut)[..., 3], tiny_session.alpha(photo))


# ---------------------------------------------------------------- compositing and remove()

def test_composites(photo_array, tmp_path):
    rgb, disk = photo_array
    alpha = (disk * 255).astype(np.uint8)
    cut = composite.to_rgba(rgb, alpha)
    assert cut.mode == "RGBA" and cut.size == (320, 240)
    arr = np.asarray(cut)
    assert np.array_equal(arr[..., 3], alpha)
    assert np.array_equal(arr[disk][:, :3], rgb[disk]) and (arr[~disk][:, :3] == 0).all()
    kept = np.asarray(composite.to_rgba(rgb, alpha, clear_hidden=False))
    assert np.array_equal(kept[..., :3], rgb)
    on_white = np.asarray(composite.onto_color(rgb, alpha, "white"))
    assert (on_white[~disk] == 255).all() and np.array_equal(on_white[disk], rgb[disk])
    assert np.asarray(composite.onto_color(rgb, alpha, "#00ff00"))[0, 0].tolist() == [0, 255, 0]
    bg = Image.new("RGB", (50, 200), "blue")           # other aspect: scaled to cover, cropped
    on_img = composite.onto_image(rgb, alpha, bg)
    assert on_img.size == (320, 240) and np.asarray(on_img)[0, 0].tolist() == [0, 0, 255]
    blurred = np.asarray(composite.onto_blur(rgb, alpha, radius=8)).astype(int)
    assert np.array_equal(blurred[disk], rgb[disk])
    assert blurred[~disk].std() < rgb[~disk].astype(int).std()   # the noise is blurred away
    with pytest.raises(EdgecutError, match="not a colour"):
        composite.onto_color(rgb, alpha, "no-such-colour")
    with pytest.raises(EdgecutError, match="does not match"):
        composite.to_rgba(rgb, alpha[:10])


def test_remove_outputs(tiny_session, photo_path, tmp_path):
    photo = load_image(photo_path)
    alpha = tiny_session.alpha(photo)
    cut = remove(photo_path, tiny_session)
    assert cut.mode == "RGBA" and cut.size == photo.size
    assert np.array_equal(np.asarray(cut)[..., 3], alpha)
    assert np.array_equal(np.asarray(remove(photo_path.read_bytes(), tiny_session, mask=True)), alpha)
    assert remove(photo, tiny_session, bg="white").mode == "RGB"
    assert remove(np.asarray(photo), tiny_session, bg="blur:5").mode == "RGB"
    bg_path = tmp_path / "bg.png"
    Image.new("RGB", (10, 10), "blue").save(bg_path)
    assert remove(photo, tiny_session, bg=str(bg_path)).getpixel((0, 0)) == (0, 0, 255)
    assert remove(photo, tiny_session, bg=(0, 0, 0), refine=False).getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(EdgecutError, match="not both"):
        remove(photo, tiny_session, mask=True, bg="white")
    with pytest.raises(EdgecutError, match="not a colour, 'blur', or an image file"):
        compositor(bg="nonexistent-thing")


def test_a_photos_own_transparency_stays_transparent(tiny_session, photo_array, tmp_path):
    """An RGBA sticker's transparent half is transparent in the cutout, the mask and on a background;
    a half-transparent band scales the matte (a x own / 255); an opaque alpha band changes nothing.
    The same for a file, a PIL image, a numpy HxWx4 array and a palette PNG's transparency."""
    rgb, _ = photo_array
    alpha = tiny_session.alpha(Image.fromarray(rgb))
    own = np.full(rgb.shape[:2], 255, np.uint8)
    own[:, :100], own[:, 100:140] = 0, 128
    rgba = np.dstack([rgb, own])
    sticker = tmp_path / "sticker.png"
    Image.fromarray(rgba, "RGBA").save(sticker)
    expect = (alpha.astype(np.uint32) * own + 127) // 255
    for src in (sticker, Image.open(sticker), rgba, sticker.read_bytes()):
        got = np.asarray(remove(src, tiny_session, mask=True)).astype(np.int64)
        assert np.abs(got - expect).max() <= 1
        assert (got[:, :100] == 0).all() and np.array_equal(got[:, 140:], alpha[:, 140:])
    assert (np.asarray(remove(sticker, tiny_session))[:, :100] == 0).all()        # cutout: clear
    assert (np.asarray(remove(sticker, tiny_session, bg="white"))[:, :100] == 255).all()
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(np.asarray(remove(opaque, tiny_session, mask=True)), alpha)
    pal = Image.fromarray(rgb).quantize(16)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    hidden = np.asarray(pal) == 0
    assert (np.asarray(remove(pal, tiny_session, mask=True))[hidden] == 0).all()


def test_remove_caches_one_session_per_model(tiny_model_dir, photo_path):
    s1 = get_session(str(tiny_model_dir))
    assert get_session(str(tiny_model_dir)) is s1
    assert remove(photo_path, model=str(tiny_model_dir)).mode == "RGBA"


def test_reuse_image_memory_keeps_blocks_unless_the_user_chose(monkeypatch):
    from edgecut.runtime.imageio import reuse_image_memory

    before = Image.core.get_blocks_max()
    try:
        monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
        reuse_image_memory(12)
        assert Image.core.get_blocks_max() == 12
        monkeypatch.setenv("PILLOW_BLOCKS_MAX", "3")
        reuse_image_memory(40)
        assert Image.core.get_blocks_max() == 12  # the user's setting is left alone
    finally:
        Image.core.set_blocks_max(before)


def test_a_model_in_a_folder_whose_name_is_not_utf8_loads(tiny_model_dir, tmp_path):
    """onnxruntime takes its path as a UTF-8 string: such a folder failed with 'incompatible
    constructor arguments'; the model is now read as bytes and gives the same alpha."""
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/m\xff"))
    shutil.copytree(tiny_model_dir, odd)
    photo, _ = synthetic_photo((40, 30))
    a = Session(tiny_model_dir, threads=1).alpha(photo)
    b = Session(odd, threads=1).alpha(photo)
    assert np.array_equal(a, b)
