"""Third round of bad input to `edgecut bench` and `edgecut fetch-peer`: outputs landing on the
bench photos and masks or on each other, a model that fails after the others ran, set names that
are paths, a cache that cannot be written, a rerun over a cache, a download cut short."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgecut.cli import main
from test_bad_input_runtime_bench import _one_error
from test_bench import fake_bench  # noqa: F401  (a fixture)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _accuracy(fake_bench, model, *more):  # noqa: F811
    return ["bench", "accuracy", "--data", str(fake_bench), "--model", str(model), "--no-progress", *more]


# --- no output may be a photo or mask the verb reads ----------------------------------------------
@pytest.mark.parametrize("verb", ["accuracy", "report", "agree", "latency"])
def test_bench_never_writes_over_a_bench_photo_or_mask(tiny_model_dir, fake_bench, verb, capsys):  # noqa: F811
    photo = fake_bench / "grabcut" / "images" / "cup.jpg"
    mask = fake_bench / "grabcut" / "masks" / "cup.png"
    before = {p: _sha(p) for p in (photo, mask)}
    model = str(tiny_model_dir)
    timing = ["--threads", "1", "--runs", "1", "--min-time", "0"]
    argv = {"accuracy": ["bench", "accuracy", "--data", str(fake_bench), "--model", model, "--json", str(mask)],
            "report": ["bench", "report", "--data", str(fake_bench), "--model", model, *timing,
                       "--out", str(mask.with_suffix(""))],             # STEM.png is the mask
            "agree": ["bench", "agree", "--data", str(fake_bench), "--reference", model, "--model", model,
                      "--json", str(photo)],
            "latency": ["bench", "latency", "--model", model, *timing, "--no-rss", "--photo", str(photo),
                        "--json", str(photo)]}[verb]
    assert main(argv + ["--no-progress"]) == 1
    assert "would overwrite the input" in _one_error(capsys.readouterr().err, "bench")
    assert {p: _sha(p) for p in before} == before


@pytest.mark.parametrize("case", ["json is the table", "json is the report's table"])
def test_two_outputs_on_one_file_are_refused(tiny_model_dir, fake_bench, tmp_path, case, capsys):  # noqa: F811
    out = tmp_path / "out"
    if case == "json is the table":       # the JSON was written, then replaced by the .txt beside it
        argv = _accuracy(fake_bench, tiny_model_dir, "--json", str(out / "r.txt"))
    else:                                 # the markdown table was replaced by the JSON
        argv = ["bench", "report", "--data", str(fake_bench), "--model", str(tiny_model_dir), "--threads", "1",
                "--runs", "1", "--min-time", "0", "--out", str(out / "rep"), "--json", str(out / "rep.md"),
                "--no-progress"]
    assert main(argv) == 1
    assert "two outputs of this run would be this one file" in _one_error(capsys.readouterr().err, "bench")
    assert not out.exists() or list(out.iterdir()) == []


# --- models and sets, checked before the work ------------------------------------------------------
def test_a_model_that_cannot_open_stops_the_run_before_any_model_is_scored(tiny_model_dir, fake_bench,  # noqa: F811
                                                                           tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(_accuracy(fake_bench, tiny_model_dir, "--model", str(tmp_path / "gone.onnx"),
                          "--cache", str(cache), "--json", str(tmp_path / "a.json"))) == 1
    assert "gone.onnx" in _one_error(capsys.readouterr().err, "bench")
    assert not list(cache.rglob("*.png"))       # the first model's half hour was spent, then lost


def test_a_repeated_model_is_benchmarked_once(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "a.json"
    assert main(_accuracy(fake_bench, tiny_model_dir, "--model", str(tiny_model_dir), "--json", str(out))) == 0
    assert "is given twice; it is benchmarked once" in capsys.readouterr().err
    assert len(json.loads(out.read_text())["models"]) == 1


@pytest.mark.parametrize("model", ["", "+tta"])
def test_an_empty_model_name_is_named(tiny_model_dir, fake_bench, tmp_path, model, capsys):  # noqa: F811
    argv = ["bench", "accuracy", "--data", str(fake_bench), "--model", model, "--json", str(tmp_path / "a.json")]
    assert main(argv) == 1
    assert "name a model" in _one_error(capsys.readouterr().err, "bench")   # was '.: a folder without manifest.json'


@pytest.mark.parametrize("sets, reason", [(",", "name at least one set"), ("grabcut,", None),
                                          ("grabcut/", None), ("../bench/grabcut", "not a path")])
def test_set_names_are_folder_names(tiny_model_dir, fake_bench, tmp_path, sets, reason, capsys):  # noqa: F811
    out = tmp_path / "a.json"
    rc = main(_accuracy(fake_bench, tiny_model_dir, "--sets", sets, "--json", str(out)))
    if reason:                            # ',' read as --data itself: 'a bench set needs images/ and masks/'
        assert rc == 1 and reason in _one_error(capsys.readouterr().err, "bench")
    else:
        assert rc == 0 and list(json.loads(out.read_text())["models"][0]["sets"]) == ["grabcut"]


def test_data_that_is_one_set_says_how_to_name_it(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    assert main(_accuracy(fake_bench / "grabcut", tiny_model_dir, "--json", str(tmp_path / "a.json"))) == 1
    assert f"--data {fake_bench.resolve()} --sets grabcut" in _one_error(capsys.readouterr().err, "bench")


# --- the prediction cache ----------------------------------------------------------------------------
def test_a_cache_entry_that_cannot_be_written_still_scores_the_photo(tiny_model_dir, fake_bench,  # noqa: F811
                                                                     tmp_path, capsys):
    from edgecut.bench.cache import PredictionCache

    cache = tmp_path / "cache"
    cup = fake_bench / "grabcut" / "images" / "cup.jpg"
    blocked = PredictionCache(cache, tiny_model_dir / "model.onnx")._path("grabcut", cup)
    blocked.mkdir(parents=True)           # stands for a full disk: the photo was skipped, its prediction lost
    out = tmp_path / "a.json"
    assert main(_accuracy(fake_bench, tiny_model_dir, "--cache", str(cache), "--json", str(out))) == 0
    assert "is scored but not cached" in capsys.readouterr().err
    g = json.loads(out.read_text())["models"][0]["sets"]["grabcut"]
    assert g["images"] == 2 and g["failed"] == []


def test_a_rerun_over_the_cache_says_what_it_reused(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    argv = _accuracy(fake_bench, tiny_model_dir, "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "a.json"))
    assert main(argv) == 0
    assert "read from the cache" not in capsys.readouterr().err
    assert main(argv) == 0
    assert "note: 2 prediction(s) of tiny read from the cache" in capsys.readouterr().err


# --- latency and fetch-peer ------------------------------------------------------------------------
def test_latency_photo_that_is_a_device_is_not_called_missing(tiny_model_dir, tmp_path, capsys):
    assert main(["bench", "latency", "--model", str(tiny_model_dir), "--photo", "/dev/null", "--no-rss",
                 "--runs", "1", "--min-time", "0", "--json", str(tmp_path / "l.json"), "--no-progress"]) == 1
    assert "/dev/null: not a regular file" in _one_error(capsys.readouterr().err, "bench")


def test_fetch_peer_with_a_download_cut_short_is_one_line(tmp_path, monkeypatch, capsys):
    import os

    from edgecut.bench.peers import PEERS

    monkeypatch.setenv("EDGECUT_CACHE", str(tmp_path / "cache"))
    whole = tmp_path / "whole.tgz"
    with tarfile.open(whole, "w:gz") as t:
        data = b"\x18\x00\x00\x00TFL3" + os.urandom(300_000)     # random: gzip cannot shrink it
        info = tarfile.TarInfo(PEERS["mediapipe-selfie"].member)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole.read_bytes()[:100_000])
    assert main(["fetch-peer", "mediapipe-selfie", "--tarball", str(cut)]) == 1    # was EOFError's traceback
    assert "truncated or damaged archive" in _one_error(capsys.readouterr().err, "fetch-peer")
    assert not list((tmp_path / "cache").rglob("*.tflite"))


def test_a_mask_with_no_labelled_pixels_is_skipped_not_scored_perfect(tiny_model_dir, fake_bench, tmp_path,  # noqa: F811
                                                                      capsys):
    """An all-128 mask (all 'unknown') scored IoU 1.0 and MAE 0 whatever the model predicted."""
    masks = fake_bench / "grabcut" / "masks"
    Image.fromarray(np.full((80, 60), 128, np.uint8)).save(masks / "cup.png")
    out = tmp_path / "a.json"
    assert main(_accuracy(fake_bench, tiny_model_dir, "--json", str(out))) == 1   # a skipped file, as any
    assert "cup.png: no labelled pixels" in capsys.readouterr().err
    g = json.loads(out.read_text())["models"][0]["sets"]["grabcut"]
    assert g["images"] == 1 and g["failed"] == [str(fake_bench / "grabcut" / "images" / "cup.jpg")]


def test_a_teacher_path_with_no_teacher_model_is_refused(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    """--teacher-path without a --model teacher:SPEC was ignored: the run scored no teacher, exit 0."""
    out = tmp_path / "a.json"
    assert main(_accuracy(fake_bench, tiny_model_dir, "--teacher-path", str(tiny_model_dir / "model.onnx"),
                          "--json", str(out))) == 1
    assert "no --model names one" in _one_error(capsys.readouterr().err, "bench")
    assert not out.exists()


def test_latency_photo_size_with_a_photo_is_refused(tiny_model_dir, fake_bench, tmp_path, capsys):  # noqa: F811
    """--photo-size was ignored beside --photo, and the table showed the photo's own size."""
    photo = fake_bench / "grabcut" / "images" / "cup.jpg"
    assert main(["bench", "latency", "--model", str(tiny_model_dir), "--photo", str(photo), "--photo-size", "64x48",
                 "--no-rss", "--json", str(tmp_path / "l.json"), "--no-progress"]) == 1
    assert "has its own" in _one_error(capsys.readouterr().err, "bench")
