"""`edgecut remove` and `edgecut models` end to end, through `edgecut.cli.main` (in-process: fast)."""
from __future__ import annotations

import hashlib
import io
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, jpeg_bytes, synthetic_photo
from edgecut.cli import main
from test_runtime import write_bomb_png


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _errors(err: str):
    return [line for line in err.splitlines() if line.startswith("edgecut remove: error:")]


@pytest.fixture
def photos(tmp_path):
    """A folder of good photos (one in a subfolder)."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    rgb, _ = synthetic_photo()
    Image.fromarray(rgb).save(d / "a.jpg", quality=92)
    Image.fromarray(synthetic_photo((200, 300), seed=1)[0]).save(d / "sub" / "b.png")
    return d


def test_single_file_writes_cutout_beside_it(model_zoo, photo_path, capsys):
    assert main(["remove", str(photo_path)]) == 0
    out = photo_path.with_name("photo_cutout.png")
    im = Image.open(out)
    assert im.mode == "RGBA" and im.size == Image.open(photo_path).size
    assert "processed 1, failed 0" in capsys.readouterr().err


def test_output_file_mask_and_background(model_zoo, photo_path, tmp_path, capsys):
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "m.png"), "--mask"]) == 0
    assert Image.open(tmp_path / "m.png").mode == "L"
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "w.jpg"), "--bg", "white"]) == 0
    white = Image.open(tmp_path / "w.jpg")
    assert white.format == "JPEG" and white.mode == "RGB"
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "b.png"), "--bg", "blur"]) == 0
    assert Image.open(tmp_path / "b.png").mode == "RGB"
    bg = tmp_path / "bg.png"
    Image.new("RGB", (30, 30), "blue").save(bg)
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "i.webp"), "--bg", str(bg)]) == 0
    assert Image.open(tmp_path / "i.webp").format == "WEBP"
    assert main(["remove", str(photo_path), "--model", str(model_zoo / "tiny"), "--no-refine",
                 "--threads", "1", "-q", "-o", str(tmp_path / "q.png")]) == 0
    assert capsys.readouterr().err.count("processed") == 4      # -q: no summary


def test_tta_flag(sample_photos, tmp_path, capsys):
    """--tta reaches the session: the CLI's mask is the API's with tta, not the plain one."""
    from edgecut.runtime import Session, load_image, remove

    fast = REPO / "models" / "embedded" / "edgecut-fast"
    photo = sample_photos[0]
    out = tmp_path / "tta.png"
    assert main(["remove", str(photo), "--model", str(fast), "--mask", "--tta", "-o", str(out)]) == 0
    got = np.asarray(Image.open(out))
    want = np.asarray(remove(load_image(photo), Session(fast, tta=True), mask=True))
    plain = np.asarray(remove(load_image(photo), Session(fast), mask=True))
    assert np.array_equal(got, want) and not np.array_equal(got, plain)


def test_usage_errors_exit_2(model_zoo, photos, photo_path, tmp_path, capsys):
    assert main(["remove", str(photos)]) == 2                               # folder needs -o
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "x.jpg")]) == 2   # RGBA in JPEG
    assert main(["remove", str(photo_path), "--bg", "not-a-colour"]) == 2
    assert main(["remove", "-", str(photo_path)]) == 2
    assert main(["remove", str(photo_path), str(photo_path), "-o", str(tmp_path / "one.png")]) == 2
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "x.gif"), "--mask"]) == 2   # no soft alpha
    err = capsys.readouterr().err
    assert len(_errors(err)) == 6 and "give -o DIR" in err and "GIF holds 256 colours" in err
    assert not (tmp_path / "x.gif").exists()
    with pytest.raises(SystemExit) as e:
        main(["remove", str(photo_path), "--mask", "--bg", "white"])
    assert e.value.code == 2


def test_folder_run_with_bad_inputs(model_zoo, photos, tmp_path, capsys):
    data = jpeg_bytes(synthetic_photo()[0])
    (photos / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (photos / "notes.jpg").write_text("just text\n")
    (photos / "empty.png").write_bytes(b"")
    write_bomb_png(photos / "bomb.png")
    (photos / "readme.txt").write_text("not an image extension: ignored\n")
    before = _digest(photos)
    out = tmp_path / "out"
    missing = tmp_path / "missing.jpg"
    code = main(["remove", str(photos), str(missing), "-o", str(out), "--jobs", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(_digest(out)) == ["a.png", "sub/b.png"]                   # good ones written
    assert Image.open(out / "sub" / "b.png").size == (200, 300)
    errors = _errors(err)
    reasons = {"trunc.jpg": "truncated", "notes.jpg": "not an image", "empty.png": "empty file",
               "bomb.png": "image too large: 400000000 pixels", "missing.jpg": "no such file"}
    assert len(errors) == len(reasons)                                       # one line each
    for name, reason in reasons.items():
        assert sum(name in e and reason in e for e in errors) == 1, (name, errors)
    assert err.strip().splitlines()[-1] == "processed 2, failed 5"
    assert _digest(photos) == before                                         # inputs untouched
    assert not list(tmp_path.rglob("*.tmp"))                                 # no temp files left


def test_a_folder_run_reads_gifs_first_frame(model_zoo, tmp_path, capsys):
    """GIFs are photos too (memes, old web exports): a folder scan picks them up, an animation
    gives its first frame, and the cutout is a PNG like any other."""
    rgb = synthetic_photo()[0]
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[:, ::-1])]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["remove", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 0
    out = Image.open(tmp_path / "out" / "anim.png")
    assert out.mode == "RGBA" and out.size == frames[0].size


def test_a_stickers_transparent_part_stays_transparent(model_zoo, tmp_path, capsys):
    """The CLI keeps a photo's own transparency, as remove() does: cutout, mask and background."""
    rgb, _ = synthetic_photo()
    own = np.full(rgb.shape[:2], 255, np.uint8)
    own[:, :100] = 0
    sticker = tmp_path / "in" / "sticker.png"
    sticker.parent.mkdir()
    Image.fromarray(np.dstack([rgb, own]), "RGBA").save(sticker)
    assert main(["remove", str(sticker.parent), "-o", str(tmp_path / "cut")]) == 0
    assert main(["remove", str(sticker), "--mask", "-o", str(tmp_path / "m.png")]) == 0
    assert main(["remove", str(sticker), "--bg", "#00ff00", "-o", str(tmp_path / "g.png")]) == 0
    cut = np.asarray(Image.open(tmp_path / "cut" / "sticker.png"))
    assert (cut[:, :100] == 0).all() and cut[:, 100:, 3].max() > 0
    assert (np.asarray(Image.open(tmp_path / "m.png"))[:, :100] == 0).all()
    assert (np.asarray(Image.open(tmp_path / "g.png"))[:, :100] == [0, 255, 0]).all()


def test_existing_outputs_are_skipped_unless_overwrite(model_zoo, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["remove", str(photos), "-o", str(out)]) == 0
    first = (out / "a.png").stat().st_mtime_ns
    assert main(["remove", str(photos), "-o", str(out)]) == 0
    assert (out / "a.png").stat().st_mtime_ns == first
    assert "processed 0, failed 0, skipped 2" in capsys.readouterr().err
    assert main(["remove", str(photos), "-o", str(out), "--overwrite"]) == 0
    assert "processed 2, failed 0" in capsys.readouterr().err


def test_never_overwrites_an_input(model_zoo, photos, capsys):
    src = photos / "sub" / "b.png"
    before = src.read_bytes()
    assert main(["remove", str(src), "-o", str(src), "--overwrite"]) == 1
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert src.read_bytes() == before
    # An output folder inside the input folder is not scanned as input on the next run.
    assert main(["remove", str(photos), "-o", str(photos / "out")]) == 0
    assert main(["remove", str(photos), "-o", str(photos / "out"), "--overwrite"]) == 0
    assert not (photos / "out" / "out").exists()
    assert "processed 2, failed 0" in capsys.readouterr().err


def test_same_stem_inputs_get_distinct_outputs(model_zoo, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    rgb, _ = synthetic_photo((64, 48))
    Image.fromarray(rgb).save(d / "x.png")
    out = tmp_path / "out"
    assert main(["remove", str(d), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.png"]
    # a resumed run finds x.jpg beside x.png: x.png's cutout was taken for x.jpg's, and x.jpg skipped
    Image.fromarray(np.ascontiguousarray(rgb[::-1])).save(d / "x.jpg", quality=95)
    capsys.readouterr()
    assert main(["remove", str(d), "-o", str(out)]) == 0
    assert "processed 2, failed 0" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "x_jpg.png", "x_png.png"]
    first, again, flipped = (np.asarray(Image.open(out / n))[..., 3] for n in ("x.png", "x_png.png", "x_jpg.png"))
    assert np.array_equal(first, again) and not np.array_equal(first, flipped)


def test_unwritable_output_is_reported(model_zoo, photo_path, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["remove", str(photo_path), "-o", str(blocker / "cut.png")]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "cut.png" in errors[0]


def test_stdin_to_stdout(model_zoo, monkeypatch, capsysbinary):
    rgb, _ = synthetic_photo()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(jpeg_bytes(rgb))))
    assert main(["remove", "-", "--mask"]) == 0
    out = capsysbinary.readouterr().out
    mask = Image.open(io.BytesIO(out))
    assert mask.format == "PNG" and mask.mode == "L" and mask.size == (320, 240)


def test_format_chooses_what_a_folder_run_and_stdout_write(model_zoo, photos, tmp_path, monkeypatch,
                                                           capsysbinary):
    """--format webp: WebP files under -o DIR and beside the input, with the PNG run's alpha exactly
    (cutouts) and lossless masks; --format jpg needs --bg or --mask; it may not contradict -o FILE."""
    assert main(["remove", str(photos), "-o", str(tmp_path / "png"), "-q"]) == 0
    assert main(["remove", str(photos), "-o", str(tmp_path / "webp"), "--format", "webp", "-q"]) == 0
    assert main(["remove", str(photos), "-o", str(tmp_path / "mask"), "--mask", "--format", "webp", "-q"]) == 0
    assert main(["remove", str(photos), "-o", str(tmp_path / "jpg"), "--bg", "white", "--format", "jpg", "-q"]) == 0
    for rel in ("a", "sub/b"):
        png = np.asarray(Image.open(tmp_path / "png" / f"{rel}.png"))
        webp = Image.open(tmp_path / "webp" / f"{rel}.webp")
        assert webp.format == "WEBP" and webp.mode == "RGBA"
        assert np.array_equal(np.asarray(webp)[..., 3], png[..., 3])
        mask = Image.open(tmp_path / "mask" / f"{rel}.webp")
        assert np.array_equal(np.asarray(mask.convert("L")), png[..., 3])
        assert Image.open(tmp_path / "jpg" / f"{rel}.jpg").format == "JPEG"
    one = photos / "a.jpg"
    assert main(["remove", str(one), "--format", "webp", "-q"]) == 0
    assert Image.open(photos / "a_cutout.webp").format == "WEBP"
    capsysbinary.readouterr()
    assert main(["remove", str(photos), "-o", str(tmp_path / "j2"), "--format", "jpg"]) == 2
    assert main(["remove", str(one), "-o", str(tmp_path / "x.png"), "--format", "webp"]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert "--format jpg cannot hold transparency" in err and "names another type" in err
    assert not (tmp_path / "j2").exists() and not (tmp_path / "x.png").exists()
    assert main(["remove", str(one), "-o", str(tmp_path / "x.webp"), "--format", "webp", "-q"]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(one.read_bytes())))
    capsysbinary.readouterr()
    assert main(["remove", "-", "--format", "webp", "-q"]) == 0
    assert Image.open(io.BytesIO(capsysbinary.readouterr().out)).format == "WEBP"


def test_real_photos_folder(model_zoo, sample_photos, tmp_path, capsys):
    d = tmp_path / "real"
    d.mkdir()
    for p in sample_photos[:3]:
        shutil.copy(p, d / p.name)
    assert main(["remove", str(d), "-o", str(tmp_path / "out")]) == 0
    for p in sample_photos[:3]:
        assert Image.open(tmp_path / "out" / (p.stem + ".png")).size == Image.open(p).size


def test_models_table(model_zoo, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "tiny" in line)
    assert row.startswith("*") and "onnx" in row and "fp32" in row and "64x64" in row and "KB" in row
    assert "default" in out


@pytest.mark.parametrize("flags, says, hint", [({"avx2", "avx512_vnni"}, "AVX-512 VNNI", False),
                                               ({"avx2", "fma"}, "none (AVX2 only)", True),
                                               ({"fp", "asimd", "asimddp"}, "ARM dot product", False)])
def test_models_says_what_the_cpu_offers_int8(model_zoo, monkeypatch, capsys, flags, says, hint):
    from edgecut.runtime import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: set(flags))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"this CPU: int8 dot product {says}" in out
    assert ("edgecut-fast (4-7 ms) are the models for live use" in out) == hint


def test_models_without_any(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECUT_MODELS_DIR", str(tmp_path))
    assert main(["models"]) == 0
    assert "no embedded models" in capsys.readouterr().err
    rgb, _ = synthetic_photo((32, 32))
    Image.fromarray(rgb).save(tmp_path / "p.png")
    assert main(["remove", str(tmp_path / "p.png")]) == 1
    assert "no embedded model" in capsys.readouterr().err


def test_colour_profile_is_kept(model_zoo, tmp_path, capsys):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "p3.jpg"
    Image.fromarray(synthetic_photo()[0]).save(src, icc_profile=icc)
    assert main(["remove", str(src)]) == 0
    assert Image.open(tmp_path / "p3_cutout.png").info.get("icc_profile") == icc
