"""Bad input to the compression verbs (label, distill, export, fetch-teacher, compress ...): one line
naming the file and the reason and a non-zero exit, never a traceback; outputs never replace inputs;
a folder run carries on past a bad file and says which."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, block_photos, labelled_set  # noqa: E402

from edgecut.cli import main  # noqa: E402
from edgecut.compress.export import export_onnx  # noqa: E402
from edgecut.models.student import StudentConfig, create_student  # noqa: E402
from edgecut.models.variants import register  # noqa: E402
from edgecut.runtime.errors import EdgecutError  # noqa: E402

TINY = register(StudentConfig(name="test-badin", input_size=32, width=0.25, context_channels=8,
                              decoder_channels=(8, 8, 8, 8)))
WIDE = register(StudentConfig(name="test-badin-wide", input_size=32, width=0.5, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))
FAST = REPO / "models" / "embedded" / "edgecut-fast"


def _run(folder: Path, data: Path, cfg=TINY, seed: int = 0, holdout: float = 0.0) -> Path:
    """A run folder as distill leaves it: best.pt and a config.json naming its photos."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    torch.save({"model": create_student(cfg).state_dict(), "variant": cfg.name, "step": 1}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps({"variant": cfg.name, "data": str(data), "holdout": holdout}))
    return folder / "best.pt"


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Shared inputs: a train root, two runs, an exported fp32 folder, photos, a text file."""
    root = tmp_path_factory.mktemp("badin")
    data = root / "train"
    labelled_set(data / "s", 6)
    ns = type("W", (), {})()
    ns.root, ns.data = root, data
    ns.a = _run(root / "A", data, seed=0)
    ns.b = _run(root / "B", data, seed=1)
    torch.manual_seed(0)
    ns.fp32 = export_onnx(create_student(TINY).eval(), root / "export", "tiny-fp32")
    ns.photos = root / "photos"
    block_photos(ns.photos, 4)
    ns.text = root / "notes.txt"
    ns.text.write_text("not a model\n")
    ns.afile = root / "afile"
    ns.afile.write_text("a file where a folder should be\n")
    return ns


def fails(capsys, argv, *needles, code=1):
    """main(argv) exits `code` with one line on stderr naming each needle, and no traceback
    (2: argparse's usage and error line, or our one line for a usage error argparse cannot see)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    if code == 2 and lines and "error: argument" in lines[-1]:   # argparse: usage, then the one error line
        line = lines[-1]
    else:
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith(f"edgecut {argv[0]}: error: "), line
    for n in needles:
        assert str(n) in line, (n, line)
    return line


def snapshot(*paths) -> dict:
    files = [f for p in paths for f in ([p] if Path(p).is_file() else sorted(Path(p).rglob("*"))) if f.is_file()]
    return {f: f.read_bytes() for f in files}


# --- 1. output folders that cannot be made, checked before any work ----------------------------------
def test_outputs_that_cannot_be_written_are_one_line(w, tiny_model_dir, capsys):
    d, f = str(w.data), str(w.afile)
    cases = [
        ["label", str(w.photos), "--teacher", str(tiny_model_dir), "--out", f, "--no-progress"],
        ["distill", "--variant", TINY.name, "--data", d, "--out", f, "--steps", "1", "--no-progress"],
        ["export", str(w.a), "--name", "x", "--out", f],
        ["compress", "qat", str(w.a), "--data", d, "--out", f, "--steps", "1", "--no-progress"],
        ["compress", "prune", str(w.a), "--target-macs", "0.5", "--out", f, "--no-progress"],
        ["compress", "soup", str(w.a), str(w.b), "--out", f],
        ["compress", "ensemble", str(w.a), str(w.b), "--out", f, "--no-calibrate-members"],
        ["compress", "rewrite", str(w.fp32), "--out", f],
        ["compress", "recover", str(w.fp32), "--out", f, "--photos", str(w.photos), "-n", "2"],
        ["compress", "quantize", str(w.fp32), "--calib", str(w.photos), "--out", f],
        ["fetch-teacher", "--dir", f],
    ]
    for argv in cases:
        fails(capsys, argv, f, "is a file")
    fails(capsys, ["export", str(w.a), "--name", "x", "--out", "/proc/edgecut-no/x"], "cannot write")
    fails(capsys, ["compress", "quantize", str(w.fp32), "--calib", str(w.photos), "--out", str(w.root / "q"),
                   "--report", "--report-json", str(w.photos)], "is a directory")
    assert w.afile.read_text().startswith("a file") and not (w.root / "q").exists()


# --- 2. outputs over inputs ---------------------------------------------------------------------------
def test_outputs_never_replace_inputs(w, tmp_path, capsys):
    sh = tmp_path / "sh"
    shutil.copytree(FAST, sh / "good")
    run = tmp_path / "in2"
    best = _run(run, w.data)
    a, b = _run(tmp_path / "A", w.data), _run(tmp_path / "B", w.data, seed=1)
    before = snapshot(sh, run, a, b)
    fails(capsys, ["export", str(sh / "good"), "--out", str(sh), "--name", "good"], "would overwrite the input")
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(w.data), "--init", str(best), "--out", str(run),
                   "--steps", "1", "--no-progress"], "would overwrite the input")
    fails(capsys, ["compress", "soup", str(a), str(b), "--out", str(a.parent)], "would overwrite the input")
    fails(capsys, ["compress", "ensemble", str(a), str(b), "--out", str(a.parent)], "would overwrite the input")
    assert snapshot(sh, run, a, b) == before


# --- 3. missing and corrupt checkpoints ----------------------------------------------------------------
def test_checkpoints_that_are_not_checkpoints_are_one_line(w, tmp_path, capsys):
    junk = tmp_path / "x.pt"
    junk.write_text("this is not a checkpoint\n")
    d = str(w.data)
    for bad, why in ((junk, "not an edgecut checkpoint"), (tmp_path / "missing.pt", "no such checkpoint"),
                     (tmp_path, "is a folder")):
        for argv in (["distill", "--variant", TINY.name, "--data", d, "--init", str(bad), "--out",
                      str(tmp_path / "r"), "--steps", "1", "--no-progress"],
                     ["compress", "prune", str(bad), "--target-macs", "0.5", "--out", str(tmp_path / "p")],
                     ["compress", "qat", str(bad), "--data", d, "--out", str(tmp_path / "q"), "--steps", "1"],
                     ["compress", "soup", str(w.a), str(bad), "--out", str(tmp_path / "s")],
                     ["compress", "ensemble", str(w.a), str(bad), "--out", str(tmp_path / "e")]):
            fails(capsys, argv, bad, why)
    fails(capsys, ["export", str(junk), "--name", "x", "--out", str(tmp_path / "o")], junk, "not an edgecut checkpoint")
    assert not (tmp_path / "o" / "x").exists() and not (tmp_path / "p" / "pruned.pt").exists()


def test_distill_resume_refuses_a_junk_last_pt_or_another_variant(w, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", "--variant", TINY.name, "--data", str(w.data), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--eval-every", "2", "--ckpt-every", "2", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    last = (out / "last.pt").read_bytes()
    fails(capsys, [*argv[:2], WIDE.name, *argv[3:]], out / "last.pt", "another variant", "same --variant")
    assert (out / "last.pt").read_bytes() == last
    for junk in (b"", b"junk junk junk"):
        (out / "last.pt").write_bytes(junk)
        fails(capsys, argv, out / "last.pt", "not an edgecut checkpoint")
    # --init of another variant's shapes: the size mismatch in one line
    fails(capsys, ["distill", "--variant", WIDE.name, "--data", str(w.data), "--init", str(w.a), "--out",
                   str(tmp_path / "wide"), "--steps", "1", "--no-progress"], w.a, "another variant/shape")


# --- 4. one bad training photo -------------------------------------------------------------------------
def test_a_bad_training_photo_is_skipped_with_one_warning(w, tmp_path, capsys):
    data = tmp_path / "train"
    shutil.copytree(w.data, data)
    bad = data / "s" / "images" / "9.jpg"
    bad.write_text("not a jpeg\n")
    shutil.copyfile(data / "s" / "teacher" / "0.png", data / "s" / "teacher" / "9.png")
    common = ["--data", str(data), "--batch-size", "2", "--threads", "1", "--holdout", "0", "--no-progress"]
    for argv in (["distill", "--variant", TINY.name, "--out", str(tmp_path / "d"), "--steps", "1", *common],
                 ["compress", "qat", str(w.a), "--out", str(tmp_path / "q"), "--steps", "1", *common],
                 ["compress", "prune", str(w.a), "--target-macs", "0.9", "--importance", "taylor",
                  "--out", str(tmp_path / "p"), *common]):
        assert main(argv) == 0, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: skip") and str(bad) in err[0], err
    for img in (data / "s" / "images").iterdir():   # none usable: an error, not an empty run
        img.write_text("not a jpeg\n")
    out = capsys.readouterr()
    assert main(["distill", "--variant", TINY.name, "--out", str(tmp_path / "d2"), "--steps", "1", *common]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: no usable (photo, alpha) pairs" in err.strip().splitlines()[-1]
    del out


# --- 5. numeric options, devices, folders ----------------------------------------------------------------
@pytest.mark.parametrize("opt", [["--eval-every", "0"], ["--ckpt-every", "0"], ["--batch-size", "-1"],
                                 ["--batch-size", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--holdout", "1"],
                                 ["--holdout", "2"], ["--holdout", "-1"], ["--threads", "-1"], ["--workers", "-1"],
                                 ["--warmup", "-1"], ["--steps", "0"], ["--steps", "-1"]])
def test_distill_refuses_bad_numbers_as_usage_errors(w, tmp_path, capsys, opt):
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(w.data), "--out", str(tmp_path / "r"), *opt],
          opt[0], code=2)
    assert not (tmp_path / "r").exists()


def test_other_verbs_refuse_bad_numbers(w, tmp_path, tiny_model_dir, capsys):
    d = str(w.data)
    for argv in (["compress", "qat", str(w.a), "--data", d, "--eval-every", "0"],
                 ["compress", "qat", str(w.a), "--data", d, "--lr", "nan"],
                 ["compress", "qat", str(w.a), "--data", d, "--holdout", "1"],
                 ["compress", "prune", str(w.a), "--target-macs", "0.5", "--threads", "-1"],
                 ["compress", "prune", str(w.a), "--target-macs", "1.5"],      # was exit 1, past argparse
                 ["compress", "prune", str(w.a), "--target-params", "0"],
                 ["compress", "prune", str(w.a), "--target-macs", "0.5", "--batch-size", "0"],
                 ["export", str(w.a), "--name", "x", "--calib-n", "0"],
                 ["export", str(w.a), "--name", "x", "--calib-n", "-1"],
                 ["label", str(w.photos), "--teacher", str(tiny_model_dir), "--limit", "-1"],
                 ["label", str(w.photos), "--teacher", str(tiny_model_dir), "--threads", "-1"],
                 ["compress", "recover", str(w.fp32), "--out", str(tmp_path / "r"), "-n", "0"]):
        fails(capsys, argv, code=2)
    run = ["distill", "--variant", TINY.name, "--data", d, "--out", str(tmp_path / "r"), "--steps", "1"]
    fails(capsys, [*run, "--input-size", "100000"], "--input-size 100000", "at most 2048", code=2)
    fails(capsys, [*run, "--device", "bogus"], "--device bogus", "not a torch device", code=2)
    fails(capsys, [*run, "--device", "meta"], "--device meta", "use auto, cpu, cuda", code=2)
    if not torch.cuda.is_available():
        fails(capsys, [*run, "--device", "cuda"], "--device cuda: torch sees no CUDA device")
        fails(capsys, ["compress", "qat", str(w.a), "--data", d, "--device", "cuda", "--out", str(tmp_path / "q")],
              "torch sees no CUDA device")
    fails(capsys, [*run, "--label-root", str(tmp_path / "nope")], "--label-root", "no such folder")
    fails(capsys, ["export", str(w.a), "--name", "x", "--out", str(tmp_path / "o"), "--input-size", "4096"],
          "at most 2048", code=2)
    assert not (tmp_path / "r").exists()


# --- 6. nothing held out to calibrate on ---------------------------------------------------------------
def test_calibrating_without_held_out_photos_is_one_line(w, tmp_path, capsys):
    fails(capsys, ["export", str(w.a), "--name", "c", "--calibrate", "--out", str(tmp_path / "o")],
          "no held-out photos to calibrate on")
    fails(capsys, ["compress", "ensemble", str(w.a), str(w.b), "--out", str(tmp_path / "e")],
          "no held-out photos to calibrate on")
    assert not (tmp_path / "e" / "best.pt").exists()


# --- 7. a text file as model.onnx ----------------------------------------------------------------------
def test_a_text_file_as_model_onnx_is_one_line(w, tmp_path, capsys):
    fake = tmp_path / "fake"
    shutil.copytree(w.fp32, fake)
    (fake / "model.onnx").write_text("this is not an onnx model, just text\n")
    before = snapshot(fake)
    for argv in (["export", str(fake), "--name", "y", "--out", str(tmp_path / "o"), "--calib", str(w.photos)],
                 ["compress", "rewrite", str(fake), "--out", str(tmp_path / "o")],
                 ["compress", "recover", str(fake), "--out", str(tmp_path / "r"), "--photos", str(w.photos)],
                 ["compress", "quantize", str(fake), "--calib", str(w.photos), "--out", str(tmp_path / "o")]):
        fails(capsys, argv, fake / "model.onnx", "not an ONNX model")
    assert snapshot(fake) == before


# --- 8. label: a write failure, where its messages go, an empty folder ------------------------------------
def test_label_carries_on_past_a_label_it_cannot_write(w, tiny_model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    block_photos(photos, 3)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "labels"
    (out / "p1.png").mkdir(parents=True)    # where p1's label should go
    assert main(["label", str(photos), "--teacher", str(tiny_model_dir), "--out", str(out), "--no-progress"]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert "Traceback" not in cap.err and len(err) == 2, err
    assert all(line.startswith("skip ") for line in err)
    broken = next(line for line in err if "broken.jpg" in line)
    assert broken.count("broken.jpg") == 1
    assert any("p1.png" in line and "cannot write" in line for line in err)
    assert "skip" not in cap.out and "2 written" in cap.out and "2 failed" in cap.out
    assert (out / "p0.png").is_file() and (out / "p2.png").is_file() and (out / "p1.png").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, ["label", str(empty), "--teacher", str(tiny_model_dir), "--out", str(tmp_path / "l2")],
          empty, "no images found")


# --- 9. fetch-teacher --tarball ------------------------------------------------------------------------
def test_fetch_teacher_tarball_problems_are_one_line(w, tmp_path, capsys):
    no_res = tmp_path / "other.tgz"
    with tarfile.open(no_res, "w:gz") as tar:
        blob = b'{"name": "something else"}'
        info = tarfile.TarInfo("package/package.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    cache = tmp_path / "cache"
    for tgz, why in ((tmp_path / "missing.tgz", "no such file"), (tmp_path, "is a folder"),
                     (w.text, "not a tar archive"), (no_res, "package/dist/resources.json")):
        fails(capsys, ["fetch-teacher", "--dir", str(cache), "--tarball", str(tgz)], tgz, why)
    assert not any(cache.rglob("model.onnx*"))


# --- 10. export: names, --default, a failed int8 step ------------------------------------------------------
def test_export_refuses_bad_names_and_cleans_up_a_failed_int8(w, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    for name in ("../../escape", "", "a/b", ".."):
        fails(capsys, ["export", str(w.a), "--name", name, "--out", str(out)], "--name")
    assert not (tmp_path / "escape").exists()
    fails(capsys, ["export", str(w.a), "--name", "x", "--out", str(out), "--default"], "--default", "--embed",
          code=2)
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "bad.jpg").write_text("not a photo\n")
    # no readable calibration photo: one line before anything is exported
    line = fails(capsys, ["export", str(w.a), "--name", "q", "--out", str(out), "--int8", "--calib", str(calib),
                          "--calib-n", "1"], "bad.jpg", "no readable calibration photo")
    assert "not an image" in line and not (out / "q").exists()
    # an int8 step that fails removes the q-int8 folder it made, and keeps the fp32 one
    import edgecut.compress.seven_bit as seven_bit

    def boom(*a, **k):
        raise EdgecutError("int8 step failed")

    monkey = pytest.MonkeyPatch()
    monkey.setattr(seven_bit, "seven_bit_weights", boom)
    try:
        fails(capsys, ["export", str(w.a), "--name", "q", "--out", str(out), "--int8", "--calib", str(w.photos),
                       "--calib-n", "2"], "int8 step failed")
    finally:
        monkey.undo()
    assert (out / "q" / "model.onnx").is_file() and not (out / "q-int8").exists()


# --- 11. --sets naming no set ------------------------------------------------------------------------------
def test_distill_names_the_missing_sets(w, tmp_path, capsys):
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(w.data), "--sets", "nosuch,s,other",
                   "--out", str(tmp_path / "r"), "--steps", "1"], "--sets nosuch,other", "no such set", "(sets there: s)")
    empty = tmp_path / "empty-train"
    empty.mkdir()
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(empty), "--out", str(tmp_path / "r"),
                   "--steps", "1"], "no (photo, alpha) pairs")


@pytest.mark.parametrize("text", ["", "{bad", '{"x": 1}', "[1]", '{"models": [{}]}'])
def test_model_card_refuses_a_file_that_is_not_bench_results(tmp_path, text, capsys):
    folder = tmp_path / "m"
    shutil.copytree(FAST, folder)
    card = (folder / "MODEL_CARD.md").read_bytes()
    (tmp_path / "b.json").write_text(text)
    assert main(["model-card", str(folder), "--bench", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "b.json: not" in err
    assert (folder / "MODEL_CARD.md").read_bytes() == card


# --- re-audit ------------------------------------------------------------------------------------------
def _skip_lines(err: str, needle: str) -> list:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if needle in line]


def test_a_bad_calibration_photo_is_skipped_with_one_warning(w, tmp_path, capsys):
    calib = tmp_path / "calib"
    shutil.copytree(w.photos, calib)
    (calib / "bad.jpg").write_text("not a photo\n")
    out = tmp_path / "o"
    assert main(["export", str(w.a), "--name", "q", "--out", str(out), "--int8", "--calib", str(calib)]) == 0
    lines = _skip_lines(capsys.readouterr().err, "bad.jpg")
    assert len(lines) == 1 and lines[0].startswith("warning: skip") and "not an image" in lines[0], lines
    assert (out / "q-int8" / "model.onnx").is_file()
    assert main(["compress", "quantize", str(w.fp32), "--calib", str(calib), "--out", str(tmp_path / "qz"),
                 "--report", "--report-n", "5"]) == 0
    assert len(_skip_lines(capsys.readouterr().err, "bad.jpg")) == 1   # in both samples, named once
    assert main(["compress", "recover", str(w.fp32), "--out", str(tmp_path / "r"), "--photos", str(calib),
                 "-n", "5"]) == 0
    assert len(_skip_lines(capsys.readouterr().err, "bad.jpg")) == 1
    assert (tmp_path / "r" / "best.pt").is_file()


def test_label_refuses_an_out_folder_inside_the_images(w, tiny_model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    block_photos(photos, 2)
    fails(capsys, ["label", str(photos), "--teacher", str(tiny_model_dir), "--out", str(photos / "teacher"),
                   "--no-progress"], "inside the images folder")
    assert sorted(p.name for p in photos.iterdir()) == ["p0.png", "p1.png"]
    from edgecut.compress.label import label_folder
    with pytest.raises(EdgecutError, match="inside the images folder"):
        label_folder(None, photos, photos / "sub" / "labels", progress=False)


@pytest.mark.parametrize("name,text,why", [
    ("split.json", "{bad", "not valid JSON"), ("split.json", "[1]", "bad run config"),
    ("split.json", '{"sets": 5}', "bad run config"), ("config.json", "{bad", "not valid JSON"),
    ("config.json", "[1]", "bad run config"), ("config.json", '{"data": 5}', "bad run config")])
def test_corrupt_run_files_are_one_line(w, tmp_path, capsys, name, text, why):
    run = tmp_path / "run"
    best = _run(run, w.data, holdout=0.5)
    (run / name).write_text(text)
    cmds = [["export", str(best), "--name", "x", "--out", str(tmp_path / "o"), "--calibrate"],
            ["compress", "ensemble", str(best), str(w.b), "--out", str(tmp_path / "e")]]
    if name == "split.json":
        cmds = [["export", str(best), "--name", "x", "--out", str(tmp_path / "o")]]
    for argv in cmds:
        fails(capsys, argv, run / name, why)
    assert not (tmp_path / "e" / "best.pt").exists()


def test_export_names_why_a_path_is_no_model(w, tmp_path, capsys):
    (tmp_path / "x.onnx").write_text("text, not a model\n")
    (tmp_path / "x.json").write_text(json.dumps({"file": "x.onnx"}))   # even with a manifest beside it
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "m.tflite").write_bytes(b"TFL3 not really")
    badman = tmp_path / "badman"
    shutil.copytree(w.fp32, badman)
    (badman / "manifest.json").write_text("{bad")
    run = w.a.parent
    o = ["--out", str(tmp_path / "o"), "--name", "n"]
    fails(capsys, ["export", str(tmp_path / "x.onnx"), *o], "x.onnx", "not an ONNX model")
    fails(capsys, ["export", str(lone / "m.tflite"), *o], "m.tflite", "no manifest beside")
    fails(capsys, ["export", str(badman), *o], badman / "manifest.json", "not valid JSON")
    fails(capsys, ["export", str(run), *o], run, f"pass {run / 'best.pt'}")
    fails(capsys, ["export", str(tmp_path / "nope"), *o], "no such checkpoint, embedded model or model folder")


def test_distill_says_when_holdout_took_every_photo(w, tmp_path, capsys):
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(w.data), "--out", str(tmp_path / "r"),
                   "--holdout", "0.99", "--steps", "1", "--no-progress"],
          "all 6 photos went to the held-out split", "lower --holdout")


def test_recover_refuses_to_replace_a_run_and_soup_takes_the_default_size(w, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(w.a.parent, run)
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    before = snapshot(run)
    fails(capsys, ["compress", "recover", str(w.fp32), "--out", str(run), "--photos", str(w.photos), "-n", "2"],
          run, "pass a new --out")
    (run / "last.pt").unlink()
    fails(capsys, ["compress", "recover", str(w.fp32), "--out", str(run), "--photos", str(w.photos), "-n", "2"],
          run / "best.pt", "did not write")
    assert snapshot(run) == {k: v for k, v in before.items() if k.name != "last.pt"}
    # None (the variant's size) and the same size said explicitly are one size
    ck = torch.load(w.b, weights_only=False)
    ck["input_size"] = TINY.input_size
    sized = tmp_path / "sized" / "best.pt"
    sized.parent.mkdir()
    torch.save(ck, sized)
    assert main(["compress", "soup", str(w.a), str(sized), "--out", str(tmp_path / "soup")]) == 0
    capsys.readouterr()
    ck["input_size"] = 64
    torch.save(ck, sized)
    fails(capsys, ["compress", "soup", str(w.a), str(sized), "--out", str(tmp_path / "soup2")],
          f"at 64 px, the first {TINY.name} at {TINY.input_size} px")


def test_quantize_checks_exclusions_first(w, tmp_path, capsys):
    q = ["compress", "quantize", str(w.fp32), "--calib", str(w.photos), "--out", str(tmp_path / "q")]
    fails(capsys, [*q, "--auto-exclude", "100000"], "--auto-exclude 100000", "has only")
    fails(capsys, [*q, "--exclude", "nosuchnode", "othernode"], "--exclude nosuchnode othernode", "no such node")
    assert not (tmp_path / "q").exists()
    # K within the node count, but the nodes around the K worst activations are all there are
    assert main([*q, "--auto-exclude", "60"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("calibrating on ") and len(err) == 2, err
    assert "--auto-exclude 60" in err[1] and "leaves nothing in int8; pass a smaller K" in err[1]
    assert not (tmp_path / "q").exists()
    import edgecut.compress.quantize as quantize

    def boom(*a, **k):
        raise EdgecutError("report failed")

    monkey = pytest.MonkeyPatch()
    monkey.setattr(quantize, "layer_errors", boom)
    try:
        assert main([*q, "--report"]) == 1
    finally:
        monkey.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("error: report failed")
    assert not (tmp_path / "q" / f"{w.fp32.name}-int8").exists()


def test_huge_numbers_and_a_diverged_run(w, tmp_path, capsys):
    d = ["--variant", TINY.name, "--data", str(w.data), "--out", str(tmp_path / "r")]
    for opt in (["--lr", "1e300"], ["--lr", "11"], ["--seed", "99999999999999999999"], ["--seed", "-1"]):
        fails(capsys, ["distill", *d, *opt], opt[0], code=2)
        fails(capsys, ["compress", "qat", str(w.a), "--data", str(w.data), *opt], opt[0], code=2)
    import edgecut.compress.distill as distill

    real = distill.distill_loss

    def nan_loss(logits, y):
        loss, parts = real(logits, y)
        return loss * float("nan"), parts

    monkey = pytest.MonkeyPatch()
    monkey.setattr(distill, "distill_loss", nan_loss)
    try:
        fails(capsys, ["distill", *d, "--steps", "3", "--batch-size", "2", "--threads", "1", "--no-progress"],
              "loss became NaN or inf at step 1", "lower --lr")
    finally:
        monkey.undo()
    assert not (tmp_path / "r" / "best.pt").exists() and not (tmp_path / "r" / "last.pt").exists()


def test_fetch_teacher_chunk_without_a_hash_is_one_line(tmp_path, capsys):
    tgz = tmp_path / "t.tgz"
    blob = json.dumps({"/models/medium": {"chunks": [{"offsets": [0, 4]}], "size": 4}}).encode()
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/dist/resources.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    fails(capsys, ["fetch-teacher", "--dir", str(tmp_path / "c"), "--tarball", str(tgz)], tgz, "no 'hash'")
    assert not any((tmp_path / "c").rglob("model.onnx*"))


def test_input_sizes_from_checkpoints_and_members_are_checked(w, tmp_path, capsys):
    ck = torch.load(w.a, weights_only=False)
    for size in ("x", 33, -32, 4096):
        bad = tmp_path / f"s{size}.pt"
        torch.save({**ck, "input_size": size}, bad)
        fails(capsys, ["export", str(bad), "--name", "n", "--out", str(tmp_path / "o")], bad, "input_size")
    assert not (tmp_path / "o" / "n").exists()
    fails(capsys, ["distill", "--variant", TINY.name, "--data", str(w.data), "--out", str(tmp_path / "r"),
                   "--input-size", "0"], "--input-size 0", "positive multiple of 32", code=2)
    fails(capsys, ["compress", "qat", str(w.a), "--data", str(w.data), "--out", str(tmp_path / "q"),
                   "--input-size", "0"], "--input-size 0", "positive multiple of 32", code=2)
    ens = ["compress", "ensemble", "--out", str(tmp_path / "e")]
    fails(capsys, [*ens, f"{w.a}@0", str(w.b)], f"{w.a}@0", "positive multiple of 32", code=2)   # typed: usage
    fails(capsys, [*ens, f"{w.a}@big", str(w.b)], f"{w.a}@big", "number of pixels", code=2)
    fails(capsys, [*ens, f"{w.a}@4096", str(w.b)], "at most 2048", code=2)
    fails(capsys, [*ens, str(w.a)], "at least two checkpoints", code=2)
    fails(capsys, [*ens, str(w.a), str(w.a)], "given twice", code=2)
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_a_path_that_is_not_utf8_prints_escaped_on_stdout(w, tmp_path, capsys):
    """recover printed its --out on a strict UTF-8 stdout and ended in a UnicodeEncodeError traceback;
    every verb's stdout now escapes such names, as stderr does."""
    out = os.fsdecode(os.fsencode(tmp_path) + b"/rec\xff")
    assert main(["compress", "recover", str(w.fp32), "--out", out, "--photos", str(w.photos), "-n", "2"]) == 0
    assert "rec\\udcff" in capsys.readouterr().out
    assert (Path(out) / "best.pt").is_file()
