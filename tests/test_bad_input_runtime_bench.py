"""Bad input to the runtime and bench verbs: one line naming the file and the reason, a non-zero
exit, no traceback, nothing written over an input (the project's rule, for every verb)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_photo
from edgecut.cli import main
from edgecut.runtime.errors import EdgecutError
from edgecut.runtime.manifest import Manifest
from test_bench import fake_bench  # noqa: F401  (a fixture)


def _one_error(err: str, verb: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"edgecut {verb}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- numbers on the command line: usage errors, before any work ---------------------------------
@pytest.mark.parametrize("argv", [
    ["remove", "x.jpg", "--threads", "1000000"],
    ["remove", "x.jpg", "--threads", "0"],
    ["remove", "x.jpg", "--jobs", "-1"],
    ["video", "-i", "x.mp4", "-o", "o.mp4", "--threads", "99999999999999999999"],
    ["video", "-i", "x.mp4", "-o", "o.mp4", "--max-side", "1"],
    ["bench", "accuracy", "--limit", "0"],
    ["bench", "accuracy", "--threads", "-1"],
    ["bench", "latency", "--threads", "1,100000"],
    ["bench", "latency", "--threads", "1,1"],                  # timed one row without a word
    ["bench", "latency", "--min-time", "nan"],
    ["bench", "latency", "--photo-size", "0x0"],
    ["bench", "latency", "--photo-size", "100000x100000"],
    ["bench", "latency", "--photo-size", "20000x20000"],      # 400 MP: more than remove takes; ran out of memory
    ["bench", "agree", "--reference", "a", "--max-mean", "nan"],
])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected" in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("radius", ["inf", "1e300", "-5", "nan"])
def test_bad_blur_radius_is_one_line(model_zoo, photo_path, tmp_path, radius, capsys):
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "b.jpg"), "--bg", f"blur:{radius}"]) == 2
    assert "bad blur radius" in _one_error(capsys.readouterr().err, "remove")
    assert not (tmp_path / "b.jpg").exists()


def test_a_folder_written_into_itself_fails_per_file_and_keeps_the_photos(model_zoo, tmp_path, capsys):
    d = tmp_path / "ph"
    d.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_photo(seed=i)[0]).save(d / f"p{i}.jpg", quality=90)
    before = _digest(d)
    # --bg writes NAME.jpg: each output would be its own input. Not "skipped (output exists)".
    assert main(["remove", str(d), "-o", str(d), "--bg", "white"]) == 1
    err = capsys.readouterr().err
    assert err.count("refusing to overwrite an input") == 2 and "skipped" not in err
    assert _digest(d) == before


def test_closed_stdout_is_one_line(model_zoo, photo_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": open(photo_path, "rb")})())
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["remove", "-"]) == 2
    assert "standard output is closed" in _one_error(capsys.readouterr().err, "remove")


def test_full_stdout_names_stdout_not_the_input(model_zoo, photo_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": open(photo_path, "rb")})())
    monkeypatch.setattr(sys, "stdout", open("/dev/full", "w"))   # `edgecut remove - > FILE` on a full disk
    assert main(["remove", "-"]) == 1
    line = _one_error(capsys.readouterr().err, "remove")
    assert "<stdout>: cannot write (No space left on device)" in line and "<stdin>" not in line


@pytest.mark.parametrize("out", ["/proc/edgecut-out", "/dev/full"])
def test_uncreatable_output_folder_is_one_line_not_one_per_photo(model_zoo, tmp_path, out, capsys):
    d = tmp_path / "ph"
    d.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_photo(seed=i)[0]).save(d / f"p{i}.jpg", quality=90)
    assert main(["remove", str(d), "-o", out]) == 1
    line = _one_error(capsys.readouterr().err, "remove")
    assert out in line
    if out == "/dev/full":            # was 'is a file, not a folder'
        assert "is a device, pipe or socket, not a folder" in line


# --- hand-edited manifests ------------------------------------------------------------------------
@pytest.mark.parametrize("text, reason", [
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
    ("{}", "'name' must be a non-empty string"),
    ('{"name": "m", "file": 123}', "'file' must be a string"),
    ('{"name": "m", "mean": "abc"}', "'mean' must be a list of 3 numbers"),
    ('{"name": "m", "std": ["a", "b", "c"]}', "'std' must be a list of 3 numbers"),
    ('{"name": "m", "std": [1, 0, 1]}', "'std' must not contain 0"),
    ('{"name": "m", "input_size": [256, -1]}', "'input_size' must be a list of 2 positive integers"),
])
def test_bad_manifests_name_the_field(tiny_model_dir, tmp_path, text, reason, capsys):
    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    (m / "manifest.json").write_text(text)
    with pytest.raises(EdgecutError, match="manifest.json: "):
        Manifest.load(m / "manifest.json")
    photo = tmp_path / "p.png"
    Image.fromarray(synthetic_photo()[0]).save(photo)
    assert main(["remove", str(photo), "--model", str(m), "-o", str(tmp_path / "o.png")]) == 1
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_a_good_manifest_still_loads(tiny_model_dir):
    m = Manifest.load(tiny_model_dir / "manifest.json")
    assert m.name == "tiny" and isinstance(m.input_size, tuple) and len(m.mean) == 3


# --- bench: outputs checked before the work, bad sets named --------------------------------------
@pytest.mark.parametrize("flag", ["--json", "--cache"])
def test_bench_unwritable_output_fails_before_scoring(tiny_model_dir, fake_bench, flag, capsys):  # noqa: F811
    bad = "/proc/edgecut-x.json" if flag == "--json" else "/proc/edgecut-cache"
    rc = main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir), flag, bad,
               "--no-progress"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "/proc" in _one_error(captured.err, "bench")
    assert "grabcut" not in captured.out        # failed before the table


def test_bench_report_refuses_an_empty_stem(tiny_model_dir, fake_bench, capsys):  # noqa: F811
    assert main(["bench", "report", "--data", str(fake_bench), "--model", str(tiny_model_dir), "--out", "",
                 "--no-progress"]) == 1
    assert "give a file stem" in _one_error(capsys.readouterr().err, "bench")


def test_a_set_without_masks_is_named(tiny_model_dir, fake_bench, capsys):  # noqa: F811
    for p in (fake_bench / "grabcut" / "masks").iterdir():
        p.unlink()
    assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir),
                 "--no-progress"]) == 1
    assert "no photo has a mask" in _one_error(capsys.readouterr().err, "bench")


def test_a_mask_of_another_shape_is_skipped_on_stderr(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(fake_bench / "grabcut" / "masks" / "cup.png")
    out = tmp_path / "acc.json"
    assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir),
                 "--json", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "skip" not in captured.out                        # stdout holds the table alone
    (line,) = [x for x in captured.err.splitlines() if x.startswith("skip")]
    assert "cup.jpg" in line and "not the photo's shape" in line and line.count("cup.jpg") == 1
    res = json.loads(out.read_text())
    assert res["models"][0]["sets"]["grabcut"]["images"] == 1


def test_an_os_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    # Any OSError a verb lets out (a disk, a permission) is reported as the user's path and reason.
    from edgecut.runtime import commands

    def boom(args):
        raise PermissionError(13, "Permission denied", "/somewhere/out.png")
    monkeypatch.setattr(commands, "run_models", boom)
    assert main(["models"]) == 1
    line = _one_error(capsys.readouterr().err, "models")
    assert line.endswith("/somewhere/out.png: Permission denied")


def test_a_mistyped_output_suffix_is_a_usage_error_not_a_folder(model_zoo, photo_path, tmp_path, capsys):
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "out" / "cut.pgn")]) == 2
    assert ".pgn is not an image type" in _one_error(capsys.readouterr().err, "remove")
    assert not (tmp_path / "out").exists()
    (tmp_path / "run.v2").mkdir()                      # an existing folder with a dot is still a folder
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "run.v2"), "-q"]) == 0
    assert (tmp_path / "run.v2" / "photo.png").is_file()


# --- second round: inputs that outputs must not replace, odd files, the Python API ---------------
@pytest.mark.parametrize("argv_tail", [
    ["accuracy", "--sets", "grabcut", "--json", "{m}/model.onnx"],
    ["latency", "--runs", "1", "--min-time", "0", "--no-rss", "--json", "{m}/manifest.json"],
    ["report", "--sets", "grabcut", "--runs", "1", "--min-time", "0", "--out", "{m}/manifest"],
])
def test_bench_never_writes_over_the_model_it_reads(tiny_model_dir, fake_bench, tmp_path, argv_tail, capsys):  # noqa: F811
    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    before = _digest(m)
    verb, *rest = argv_tail
    argv = ["bench", verb, "--model", str(m), "--no-progress", *[a.format(m=m) for a in rest]]
    if verb != "latency":
        argv += ["--data", str(fake_bench)]
    assert main(argv) == 1
    assert "would overwrite the input" in _one_error(capsys.readouterr().err, "bench")
    assert _digest(m) == before


def test_remove_never_writes_over_the_background_photo(model_zoo, photo_path, tmp_path, capsys):
    bg = tmp_path / "bg.jpg"
    Image.fromarray(synthetic_photo(seed=3)[0]).save(bg, quality=90)
    before = bg.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["remove", str(photo_path), "--bg", str(bg), "-o", str(bg), *extra]) == 1
        assert "refusing to overwrite an input" in _one_error(capsys.readouterr().err, "remove")
    assert bg.read_bytes() == before


def test_a_pipe_or_broken_link_named_like_a_photo_is_reported_not_opened(model_zoo, tmp_path, capsys):
    import os

    d = tmp_path / "odd"
    d.mkdir()
    Image.fromarray(synthetic_photo()[0]).save(d / "ok.jpg", quality=90)
    os.mkfifo(d / "pipe.jpg")                        # opening it would wait for a writer forever
    assert main(["remove", str(d), "-o", str(tmp_path / "out"), "-q"]) == 1    # was left out unseen
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ok.png"]
    assert "pipe.jpg: not a regular file" in _one_error(capsys.readouterr().err, "remove")
    (d / "pipe.jpg").unlink()
    (d / "moved.jpg").symlink_to(tmp_path / "gone.jpg")
    assert main(["remove", str(d), "-o", str(tmp_path / "out"), "-q"]) == 1
    assert "moved.jpg: broken symbolic link" in _one_error(capsys.readouterr().err, "remove")
    assert main(["remove", str(d / "ok.jpg"), "-o", str(tmp_path / "p.png")]) == 0
    os.mkfifo(d / "pipe.jpg")
    assert main(["remove", str(d / "pipe.jpg"), "-o", str(tmp_path / "p2.png")]) == 1
    assert "not a regular file" in _one_error(capsys.readouterr().err, "remove")


def test_the_python_api_names_bad_arguments(model_zoo):
    from edgecut import remove
    from edgecut.runtime import Session

    s = Session("tiny")
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 0))):
        with pytest.raises(EdgecutError, match="empty image"):
            s.alpha(bad)
    with pytest.raises(EdgecutError, match="empty image"):
        s.infer(np.zeros((0, 0, 3), np.uint8))
    for threads in ("x", 0, -1, 1.5, 10**9, True):
        with pytest.raises(EdgecutError, match="threads must be a whole number"):
            Session("tiny", threads=threads)
    assert Session("tiny", threads=np.int64(2)).threads == 2
    photo = synthetic_photo()[0]
    for color in ((300, 0, 0), (-1, 0, 0), (1, 2, 3, 4, 5), (1.5, 2, 3)):
        with pytest.raises(EdgecutError, match="not a colour"):
            remove(photo, bg=color)
    assert remove(photo, bg=(10, 20, 30)).mode == "RGB"
    assert remove(photo, session="tiny").mode == "RGBA"      # a model name where a session goes
    with pytest.raises(TypeError, match="session must be"):
        remove(photo, session=5)


@pytest.mark.parametrize("field, value", [("params", "x"), ("macs", -3), ("params", 1.5), ("license", 7)])
def test_mistyped_manifest_facts_are_named(tiny_model_dir, tmp_path, field, value):
    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    d = json.loads((m / "manifest.json").read_text())
    d[field] = value
    (m / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(EdgecutError, match=f"'{field}' must be"):
        Manifest.load(m / "manifest.json")


def test_model_card_without_params_or_macs(tiny_model_dir, tmp_path):
    pytest.importorskip("torch")   # model_card lives in the compress extra's package
    from edgecut.compress import model_card

    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    d = json.loads((m / "manifest.json").read_text())
    d.pop("params"), d.pop("macs", None)
    (m / "manifest.json").write_text(json.dumps(d))
    assert "unrecorded" in model_card.write(m).read_text()


def test_a_broken_model_in_the_zoo_hides_no_other(model_zoo, capsys):
    (model_zoo / "broken").mkdir()
    (model_zoo / "broken" / "manifest.json").write_text("{bad")
    assert main(["models"]) == 1
    captured = capsys.readouterr()
    assert "tiny" in captured.out and "broken" not in captured.out
    assert "broken/manifest.json: not valid JSON" in _one_error(captured.err, "models")


def test_a_default_naming_no_model_is_an_error_not_another_model(model_zoo, photo_path, tmp_path, capsys):
    (model_zoo / "DEFAULT").write_text("nope\n")
    assert main(["remove", str(photo_path), "-o", str(tmp_path / "o.png")]) == 1
    assert "names 'nope', which is not an embedded model" in _one_error(capsys.readouterr().err, "remove")
    assert not (tmp_path / "o.png").exists()


def test_fetch_peer_refuses_a_tarball_that_is_no_package_or_holds_no_model(tmp_path, monkeypatch, capsys):
    import io
    import tarfile

    from edgecut.bench.peers import PEERS

    monkeypatch.setenv("EDGECUT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "text.tgz").write_text("hello")
    fake = tmp_path / "fake.tgz"
    with tarfile.open(fake, "w:gz") as t:
        data = b"not a model"
        info = tarfile.TarInfo(PEERS["mediapipe-selfie"].member)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    for tgz, reason in ((tmp_path / "text.tgz", "not a tar archive"), (fake, "is not a TFLite model"),
                        (tmp_path / "none.tgz", "no such")):
        assert main(["fetch-peer", "mediapipe-selfie", "--tarball", str(tgz)]) == 1
        assert reason in _one_error(capsys.readouterr().err, "fetch-peer")
    assert not list((tmp_path / "cache").rglob("*.tflite"))


# --- outputs renamed over a device or pipe would replace the node itself --------------------------
def test_outputs_never_replace_a_pipe_or_device(model_zoo, tiny_model_dir, fake_bench, photo_path, tmp_path,  # noqa: F811
                                                 capsys):
    import os
    import stat

    from edgecut.runtime.imageio import write_text_atomic

    pipe = tmp_path / "results.json"
    os.mkfifo(pipe)                       # stands for /dev/full: renaming a temp file over it replaced it
    assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir),
                 "--json", str(pipe), "--no-progress"]) == 1
    assert "not a regular file" in _one_error(capsys.readouterr().err, "bench")
    cut = tmp_path / "cut.png"
    os.mkfifo(cut)
    assert main(["remove", str(photo_path), "-o", str(cut), "--overwrite"]) == 1
    assert "not a regular file" in _one_error(capsys.readouterr().err, "remove")
    with pytest.raises(EdgecutError, match="not a regular file"):
        write_text_atomic(pipe, "{}")
    assert stat.S_ISFIFO(pipe.stat().st_mode) and stat.S_ISFIFO(cut.stat().st_mode)
    assert not (tmp_path / "results.txt").exists()


def test_latency_photo_that_is_a_folder_is_named_as_one(tiny_model_dir, tmp_path, capsys):
    assert main(["bench", "latency", "--model", str(tiny_model_dir), "--photo", str(tmp_path), "--no-rss",
                 "--json", str(tmp_path / "l.json"), "--no-progress"]) == 1
    assert "is a directory, not a photo" in _one_error(capsys.readouterr().err, "bench")


def test_replacing_a_model_folder_keeps_the_old_one_until_the_new_one_is_in(tmp_path, monkeypatch):
    """rewrite, embed and fetch-peer removed the old folder and then renamed the new one in: a
    rename that failed (or a stop between the two) left no model where there had been one."""
    from edgecut.runtime.outputs import replace_folder

    dest, work = tmp_path / "m", tmp_path / "new"
    for d, text in ((dest, "old"), (work, "new")):
        d.mkdir()
        (d / "manifest.json").write_text(text)
    real = os.rename

    def fails_for_work(src, dst):
        if Path(src) == work:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "rename", fails_for_work)
    with pytest.raises(OSError):
        replace_folder(work, dest)
    monkeypatch.undo()
    assert (dest / "manifest.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m", "new"]
    replace_folder(work, dest)
    assert (dest / "manifest.json").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_dot_folder_in_the_zoo_is_no_model(model_zoo):
    """An embed in progress (.NAME.tmp) or the folder it replaces is not listed as a model."""
    from edgecut import models

    names = {m.name for m in models.list_models()}
    shutil.copytree(model_zoo / "tiny", model_zoo / ".tiny.old-1234")
    assert {m.name for m in models.list_models()} == names == {"tiny"}
