"""Third round of bad input to label, fetch-teacher, distill, export and model-card: odd file names,
pipes, EXIF-rotated and extreme photos, reruns, options that make no sense. Each test failed on the
code before its fix."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from conftest import block_photos, labelled_set  # noqa: E402
from test_compress_bad_input import TINY, _run, fails  # noqa: E402
from test_label import _fake_tarball, photo  # noqa: E402

from edgecut.cli import main  # noqa: E402
from edgecut.compress.data import Pair, find_pairs, open_pair  # noqa: E402

DISTILL = ["distill", "--variant", TINY.name, "--batch-size", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit3") / "train"
    labelled_set(root / "s", 6)
    return root


# --- label ---------------------------------------------------------------------------------------
def test_label_summary_names_a_non_utf8_file_without_a_traceback(tiny_model_dir, tmp_path, capsys):
    """pytest's stdout, like LANG=en_US.UTF-8's, is strict UTF-8: a surrogate in the summary raised."""
    photos = tmp_path / "photos"
    block_photos(photos, 1)
    with open(os.fsencode(photos) + b"/bad\xffname.jpg", "wb") as f:
        f.write(b"not a jpeg")
    assert main(["label", str(photos), "--teacher", str(tiny_model_dir), "--out", str(tmp_path / "l"),
                 "--no-progress"]) == 1
    cap = capsys.readouterr()
    assert "1 written" in cap.out and "bad\\udcffname.jpg" in cap.out
    assert "Traceback" not in cap.err and "bad\\udcffname.jpg" in cap.err


def test_an_empty_teacher_is_named_not_read_as_the_current_folder(tmp_path, capsys):
    """--teacher '' and --model teacher: read as Path(''), the current folder: '.: no manifest.json'."""
    photos = tmp_path / "photos"
    block_photos(photos, 1)
    fails(capsys, ["label", str(photos), "--teacher", "", "--out", str(tmp_path / "l")], "no teacher named")
    block_photos(tmp_path / "b" / "s" / "images", 1)
    block_photos(tmp_path / "b" / "s" / "masks", 1)
    fails(capsys, ["bench", "accuracy", "--data", str(tmp_path / "b"), "--model", "teacher:"], "no teacher named")
    assert not (tmp_path / "l").exists()


def test_label_teacher_that_is_a_photo_or_a_renamed_manifest(tiny_model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    block_photos(photos, 2)
    fails(capsys, ["label", str(photos), "--teacher", str(photos / "p0.png"), "--out", str(tmp_path / "a")],
          photos / "p0.png", "not a model")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "model.onnx").write_bytes((tiny_model_dir / "model.onnx").read_bytes())
    (tmp_path / "t" / "tiny.json").write_text((tiny_model_dir / "manifest.json").read_text())
    assert main(["label", str(photos), "--teacher", str(tmp_path / "t" / "tiny.json"), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert "2 written" in capsys.readouterr().out
    (tmp_path / "t" / "model.onnx").unlink()
    fails(capsys, ["label", str(photos), "--teacher", str(tmp_path / "t" / "tiny.json"), "--out", str(tmp_path / "c")],
          "tiny.json", "model.onnx not found")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_label_out_holding_colour_photos_is_not_taken_as_done(tiny_model_dir, tmp_path, capsys):
    """--out a folder of photos with the same names said '0 written, 2 already done'."""
    photos, other = tmp_path / "photos", tmp_path / "other"
    block_photos(photos, 2)
    block_photos(other, 2, seed=1)
    before = {p: p.read_bytes() for p in other.iterdir()}
    assert main(["label", str(photos), "--teacher", str(tiny_model_dir), "--out", str(other), "--no-progress"]) == 1
    cap = capsys.readouterr()
    assert "0 already done, 2 failed" in cap.out and cap.err.count("not a grey label") == 2
    assert {p: p.read_bytes() for p in other.iterdir()} == before


# --- fetch-teacher ---------------------------------------------------------------------------------
class Hung(Exception):
    pass


def _hung(*_):
    raise Hung


def test_fetch_teacher_refuses_a_pipe_or_device_as_tarball(tmp_path, capsys):
    """A FIFO without a writer hung for ever in tarfile.is_tarfile (here: an alarm ends the wait)."""
    fifo = tmp_path / "pkg.tgz"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, _hung)
    try:
        for tgz in (fifo, Path("/dev/zero")):
            signal.alarm(10)
            fails(capsys, ["fetch-teacher", "--dir", str(tmp_path / "cache"), "--tarball", str(tgz)],
                  tgz, "not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fetch_teacher_names_the_tarball_missing_a_variant_and_leaves_no_folder(tmp_path, capsys):
    tgz = _fake_tarball(tmp_path / "pkg.tgz", b"model bytes", chunk=4)
    cache = tmp_path / "cache"
    fails(capsys, ["fetch-teacher", "--dir", str(cache), "--tarball", str(tgz), "--variant", "small"],
          tgz, "/models/small")
    assert not (cache / "isnet-imgly-small").exists()


# --- distill ---------------------------------------------------------------------------------------
def test_distill_resumed_past_its_steps_without_best_pt_says_so(data, tmp_path, capsys):
    """An interrupted run (last.pt, no best.pt yet) rerun with a smaller --steps printed 'best
    checkpoint: .../best.pt', a file that did not exist, and exited 0."""
    out = tmp_path / "run"
    assert main([*DISTILL, "--data", str(data), "--out", str(out), "--steps", "4", "--ckpt-every", "2",
                 "--eval-every", "100"]) == 0
    (out / "best.pt").unlink()   # as an interrupt after the step-2 save leaves it
    capsys.readouterr()
    fails(capsys, [*DISTILL, "--data", str(data), "--out", str(out), "--steps", "2"],
          out / "last.pt", "step 4", "--steps 2", "no best.pt")


def test_distill_refuses_to_resume_at_another_input_size(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*DISTILL, "--data", str(data), "--out", str(out), "--steps", "1"]) == 0
    capsys.readouterr()
    fails(capsys, [*DISTILL, "--data", str(data), "--out", str(out), "--steps", "2", "--input-size", "64"],
          out / "last.pt", "32 px, not 64")
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 1


def test_distill_names_an_exclude_that_is_a_file(data, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    fails(capsys, [*DISTILL, "--data", str(data), "--out", str(tmp_path / "r"), "--exclude", str(f)],
          "--exclude", "not a folder")


def test_training_photos_are_read_upright_as_labelled(tmp_path):
    """A photo stored sideways with an EXIF orientation was trained sideways against its upright
    label (`edgecut label` and the runtime turn it upright), the label stretched to fit."""
    d = tmp_path / "e"
    (d / "images").mkdir(parents=True)
    (d / "teacher").mkdir()
    up = photo(box=(0, 25, 0, 30))                          # 60x80, the subject at the top left
    exif = Image.Exif()
    exif[0x0112] = 6                                        # view: turn the stored pixels back upright
    Image.fromarray(up).transpose(Image.ROTATE_90).save(d / "images" / "e.jpg", exif=exif, quality=95)
    alpha = np.zeros(up.shape[:2], np.uint8)
    alpha[0:25, 0:30] = 255
    Image.fromarray(alpha).save(d / "teacher" / "e.png")   # the upright label, as `edgecut label` writes it
    img, al = open_pair(find_pairs(tmp_path)[0])
    im, a = np.asarray(img).astype(int), np.asarray(al)
    assert img.size == (80, 60)
    red = (im[..., 0] > 150) & (im[..., 1] < 100)
    assert (red & (a > 127)).sum() > 0.9 * red.sum()


def test_a_strip_photo_trains_instead_of_blaming_its_alpha(tmp_path):
    """3000x2 shrunk to 320 px rounded to 0 rows: 'skip .../teacher/x.png: not a readable image'."""
    for name, size in (("wide", (3000, 2)), ("tall", (1, 3000))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / f"{name}.png")
        Image.new("L", size, 255).save(tmp_path / f"{name}-a.png")
        img, al = open_pair(Pair("s", tmp_path / f"{name}.png", tmp_path / f"{name}-a.png", False))
        assert img.size == al.size and max(img.size) == 320 and min(img.size) == 1


def test_human_masks_stored_as_label_maps_train_as_masks(tmp_path):
    """A 0/1 label map (or a 16-bit PNG) in masks/ trained as an empty alpha; the benchmark reads them."""
    Image.fromarray(photo()).save(tmp_path / "p.png")
    m = np.zeros((60, 80), np.uint8)
    m[15:45, 20:60] = 1
    Image.fromarray(m).save(tmp_path / "m01.png")
    Image.fromarray(m.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    for mask in ("m01.png", "m16.png"):
        _, al = open_pair(Pair("s", tmp_path / "p.png", tmp_path / mask, True))
        a = np.asarray(al)
        assert a[30, 40] == 255 and a[0, 0] == 0, mask


# --- export ----------------------------------------------------------------------------------------
def test_export_refuses_options_it_would_ignore(data, tmp_path, capsys):
    best = _run(tmp_path / "A", data)
    o = ["--name", "x", "--out", str(tmp_path / "o")]
    fails(capsys, ["export", str(best), *o, "--heldout-data", str(data)], "--heldout-data", "needs --calibrate", code=2)
    fails(capsys, ["export", str(best), *o, "--not-portable"], "--not-portable", "needs --int8", code=2)
    assert not (tmp_path / "o").exists()


def test_export_onnx_into_a_folder_whose_name_is_not_utf8(tmp_path):
    """torch.onnx.export's C++ writer raised a TypeError traceback for such a path."""
    from edgecut.compress.export import export_onnx
    from edgecut.models.student import create_student

    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/out\xff"))
    folder = export_onnx(create_student(TINY).eval(), out, "x")
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load_from_string((folder / "model.onnx").read_bytes()))
    assert json.loads((folder / "manifest.json").read_text())["name"] == "x"


def test_export_calib_that_is_a_photo_or_missing_is_named(data, tmp_path, capsys):
    best = _run(tmp_path / "A", data)
    photos = tmp_path / "photos"
    block_photos(photos, 1)
    o = ["--name", "x", "--out", str(tmp_path / "o"), "--int8"]
    fails(capsys, ["export", str(best), *o, "--calib", str(photos / "p0.png")], photos / "p0.png", "not a folder")
    fails(capsys, ["export", str(best), *o, "--calib", str(tmp_path / "nope")], tmp_path / "nope", "no such folder")


def test_export_embed_into_no_folder_fails_before_the_export(data, tmp_path, monkeypatch, capsys):
    best = _run(tmp_path / "A", data)
    zoo = tmp_path / "zoo"
    zoo.write_text("a file where the embedded models should be")
    monkeypatch.setenv("EDGECUT_MODELS_DIR", str(zoo))
    fails(capsys, ["export", str(best), "--name", "x", "--out", str(tmp_path / "o"), "--embed"], zoo, "is a file")
    assert not (tmp_path / "o" / "x").exists()


def test_export_quick_iou_finds_its_bench_sets_before_the_export(data, tmp_path, monkeypatch, capsys):
    """An empty bench set failed only after the model was written; no bench folder gave IoU '-' unsaid."""
    best = _run(tmp_path / "A", data)
    (tmp_path / "d" / "bench" / "emptyset" / "images").mkdir(parents=True)
    (tmp_path / "d" / "bench" / "emptyset" / "masks").mkdir()
    o = ["--name", "x", "--out", str(tmp_path / "o"), "--quick-iou", "2"]
    monkeypatch.setenv("EDGECUT_DATA", str(tmp_path / "d"))
    fails(capsys, ["export", str(best), *o], "--quick-iou 2", "no photo has a mask")
    monkeypatch.setenv("EDGECUT_DATA", str(tmp_path / "none"))
    fails(capsys, ["export", str(best), *o], "--quick-iou 2", "no such bench folder")
    assert not (tmp_path / "o").exists()


def test_export_of_a_run_without_held_out_photos_writes_strict_json(data, tmp_path, capsys):
    """--holdout 0 scores NaN; the manifest said "iou": NaN (no JSON outside Python) and the card 'IoU nan'."""
    run = tmp_path / "run"
    assert main([*DISTILL, "--data", str(data), "--out", str(run), "--steps", "1", "--holdout", "0"]) == 0
    assert main(["export", str(run / "best.pt"), "--name", "x", "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / "x" / "manifest.json").read_text()
    manifest = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the manifest"))
    assert manifest["extra"]["holdout"] is None
    assert main(["model-card", str(tmp_path / "o" / "x")]) == 0
    assert "IoU nan" not in (tmp_path / "o" / "x" / "MODEL_CARD.md").read_text()


def test_calibrate_names_a_heldout_folder_without_the_runs_photos(data, tmp_path, capsys):
    best = _run(tmp_path / "A", data, holdout=0.5)
    photos = tmp_path / "photos"
    block_photos(photos, 2)
    fails(capsys, ["export", str(best), "--name", "x", "--out", str(tmp_path / "o"), "--calibrate",
                   "--heldout-data", str(photos)], photos, "none of the run's training photos")


# --- model-card ------------------------------------------------------------------------------------
def test_model_card_bench_json_of_the_wrong_shape_and_paths_that_are_not_folders(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"models": [{"name": "a", "sets": {"x": {"iou": 0.5}}, "mean": {"iou": 0.5}}],
                                 "machine": "box", "command": "edgecut bench accuracy"}))
    fails(capsys, ["model-card", str(folder), "--bench", str(bench)], bench, "'machine'")
    fails(capsys, ["model-card", str(folder / "manifest.json")], "a file, not a model folder", f"pass {folder}")
    fails(capsys, ["model-card", str(folder), "--bench", str(tmp_path)], tmp_path, "is a folder")
    fails(capsys, ["model-card", str(folder), "--bench", "/dev/null"], "/dev/null", "not a regular file")
    fails(capsys, ["model-card", str(tmp_path / "nope")], "no such folder")
