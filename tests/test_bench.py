"""`edgecut bench accuracy|latency` end to end on a tiny fake bench folder and a tiny model."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecut.bench import accuracy, gallery, metrics
from edgecut.cli import main
from edgecut.runtime import imageio
from edgecut.runtime.errors import EdgecutError


def _photo_and_mask(h, w, box):
    """A red box on green (conftest's tiny model: red = subject) and its true mask."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (30, 150, 100)
    mask = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = (210, 40, 50)
    mask[y0:y1, x0:x1] = 255
    return img, mask


@pytest.fixture
def fake_bench(tmp_path):
    """bench/grabcut with two photos (one name with spaces), a 128 band, and a mask-less photo."""
    root = tmp_path / "bench"
    (root / "grabcut" / "images").mkdir(parents=True)
    (root / "grabcut" / "masks").mkdir()
    for name, (h, w, box) in {"red fox 01": (64, 96, (16, 48, 24, 72)),
                              "cup": (80, 60, (20, 70, 10, 50))}.items():
        img, mask = _photo_and_mask(h, w, box)
        y0, y1, x0, x1 = box
        mask[y0 - 2:y0 + 2, x0:x1] = 128                   # unknown band along the top edge
        Image.fromarray(img).save(root / "grabcut" / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(mask).save(root / "grabcut" / "masks" / f"{name}.png")
    Image.fromarray(img).save(root / "grabcut" / "images" / "no mask.jpg")
    return root


def test_sets_are_matched_by_stem(fake_bench):
    [s] = accuracy.find_sets(fake_bench)
    assert s.name == "grabcut" and s.unmatched == 1
    assert sorted(i.name for i, _ in s.pairs) == ["cup.jpg", "red fox 01.jpg"]
    with pytest.raises(EdgecutError, match="images/ and masks/"):
        accuracy.find_sets(fake_bench, ["nope"])


def test_two_photos_of_one_name_are_scored_once(fake_bench, capsys):
    """cup.jpg and cup.png were both scored against masks/cup.png: the set counted the photo twice."""
    Image.open(fake_bench / "grabcut" / "images" / "cup.jpg").save(fake_bench / "grabcut" / "images" / "cup.png")
    [s] = accuracy.find_sets(fake_bench)
    assert sorted(i.name for i, _ in s.pairs) == ["cup.jpg", "red fox 01.jpg"] and s.unmatched == 1
    assert "1 photo(s) share a name with another and are not scored: cup.png (cup.jpg is)" in capsys.readouterr().err


def test_a_photo_or_mask_left_unpaired_is_noted(fake_bench, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(fake_bench / "grabcut" / "masks" / "renamed.png")
    accuracy.find_sets(fake_bench)
    assert ("1 photo(s) without a mask and 1 mask(s) without a photo are not scored (2 pairs)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("form", ["L 0/255", "L 0/1", "I;16 0/65535", "I;16 0/1", "P 0/1", "RGBA cut-out",
                                  "LA opaque", "RGB red on black", "RGB grey"])
def test_masks_stored_other_ways_read_as_0_255(tmp_path, form):
    truth = np.zeros((6, 8), np.uint8)
    truth[1:4, 2:6] = 255
    on = truth > 0
    if form == "L 0/255":
        im = Image.fromarray(truth)
    elif form == "L 0/1":
        im = Image.fromarray(on.astype(np.uint8))
    elif form.startswith("I;16"):
        im = Image.fromarray((on * (65535 if "65535" in form else 1)).astype(np.uint16))
    elif form == "P 0/1":
        im = Image.fromarray(on.astype(np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 255, 255])
    elif form == "RGBA cut-out":                     # colours of the photo, the mask in alpha
        rgba = np.zeros((6, 8, 4), np.uint8)
        rgba[..., :3] = 90
        rgba[..., 3] = truth
        im = Image.fromarray(rgba, "RGBA")
    elif form == "RGB red on black":                 # 76 in luma: was scored as all background
        rgb = np.zeros((6, 8, 3), np.uint8)
        rgb[on] = (255, 0, 0)
        im = Image.fromarray(rgb)
    elif form == "RGB grey":
        im = Image.fromarray(truth).convert("RGB")
    else:
        im = Image.fromarray(truth).convert("LA")
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(imageio.load_mask(tmp_path / "m.png"), truth, err_msg=form)


def test_bench_accuracy_end_to_end(tiny_model_dir, fake_bench, tmp_path, capsys):
    out = tmp_path / "acc.json"
    rc = main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir),
               "--model", f"teacher:{tiny_model_dir}", "--json", str(out), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "grabcut" in table and "mean" in table and "IoU" in table
    assert out.with_suffix(".txt").read_text() in table     # the printed table, kept beside the JSON
    res = json.loads(out.read_text())
    assert res["kind"] == "accuracy" and res["machine"]["cores"] >= 1 and res["options"]["limit"] is None
    assert len(res["models"]) == 2
    for m in res["models"]:
        g = m["sets"]["grabcut"]
        assert m["name"] == "tiny" and len(m["sha256"]) == 64
        assert g["images"] == 2 and g["failed"] == []
        assert g["iou"] > 0.8 and g["mae"] < 0.15 and g["max_f"] > 0.9
        assert 0.8 < g["s_measure"] <= 1.0 and 0.5 < g["boundary_f"] <= 1.0
        assert m["mean"]["iou"] == pytest.approx(g["iou"])


def test_bench_accuracy_worst_names_and_draws_the_lowest_iou_photos(tiny_model_dir, fake_bench, tmp_path, capsys):
    """--worst 1: each set names its lowest-IoU photo (with its IoU and MAE) in the JSON and draws it in
    <json>-worst/<model>/<set>.jpg; the same again from the prediction cache (photos re-read)."""
    for cache_pass in (0, 1):
        out = tmp_path / f"acc{cache_pass}.json"
        assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir), "--worst", "1",
                     "--cache", str(tmp_path / "cache"), "--json", str(out), "--no-progress"]) == 0
        g = json.loads(out.read_text())["models"][0]["sets"]["grabcut"]
        scores = {}
        for image, mask in accuracy.find_sets(fake_bench)[0].pairs:
            from edgecut.runtime.session import Session
            pred = accuracy.predict(Session(tiny_model_dir), Image.open(image).convert("RGB"),
                                    imageio.load_mask(mask).shape)
            scores[image.name] = metrics.iou(pred, imageio.load_mask(mask))
        worst = min(scores, key=scores.get)
        assert [w["photo"] for w in g["worst"]] == [worst]
        assert g["worst"][0]["iou"] == pytest.approx(scores[worst])
        sheet = Image.open(tmp_path / f"acc{cache_pass}-worst" / "tiny" / "grabcut.jpg")
        assert sheet.format == "JPEG" and sheet.height > gallery.THUMB_SIDE * 0.5
        assert f"acc{cache_pass}-worst" in capsys.readouterr().out


def test_two_models_of_one_name_are_told_apart_in_the_table_and_sheets(tiny_model_dir, fake_bench, tmp_path,
                                                                       capsys):
    import dataclasses
    import shutil

    from edgecut.runtime.manifest import Manifest

    other = tmp_path / "reexport"
    shutil.copytree(tiny_model_dir, other)
    m = Manifest.load(other / "manifest.json")
    dataclasses.replace(m, output_activation="sigmoid").save(other / "manifest.json")   # another alpha
    out = tmp_path / "acc.json"
    assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir), "--model",
                 str(other), "--worst", "1", "--json", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert f"tiny ({other})" in table and table.count("tiny ") >= 4
    sheets = sorted(p.name for p in (tmp_path / "acc-worst").iterdir())
    assert len(sheets) == 2 and sheets[0] == "tiny"          # the second no longer replaced the first's


def test_worst_keeps_the_n_lowest_in_order():
    w = gallery.Worst(2)
    rgb, gt = np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8)
    for name, iou in [("a", 0.9), ("b", 0.2), ("c", 0.5), ("d", 0.2), ("e", 0.95)]:
        if w.wants(iou):
            w.add(Path(name), iou, 0.1, rgb, gt, gt)
    assert [(e["photo"], e["iou"]) for e in w.summary()] == [("b", 0.2), ("d", 0.2)]
    assert not gallery.Worst(2).rows() and not w.wants(0.3)


def test_bench_accuracy_limit(tiny_model_dir, fake_bench, tmp_path):
    out = tmp_path / "acc.json"
    assert main(["bench", "accuracy", "--data", str(fake_bench), "--model", str(tiny_model_dir),
                 "--model", f"{tiny_model_dir}+tta", "--sets", "grabcut", "--limit", "1",
                 "--json", str(out), "--no-progress"]) == 0
    plain, tta = json.loads(out.read_text())["models"]
    assert plain["sets"]["grabcut"]["images"] == tta["sets"]["grabcut"]["images"] == 1
    assert (plain["name"], plain["tta"], tta["name"], tta["tta"]) == ("tiny", False, "tiny+tta", True)


def test_bench_latency_small(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", "--model", str(tiny_model_dir), "--threads", "1,2", "--runs", "3",
               "--min-time", "0", "--photo-size", "320x240", "--json", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "p50(ms)" in text and "Decode(ms)" in text
    assert "p50(ms)" in out.with_suffix(".txt").read_text()
    res = json.loads(out.read_text())
    assert text.startswith(f"Machine: {res['machine']['cpu']}, ") and "int8 dot product:" in text
    [m] = res["models"]
    assert m["params"] == 21 and m["macs"] is None and m["file_bytes"] > 0 and m["load_ms"] > 0
    assert set(m["latency"]) == {"1", "2"}
    assert all(v["runs"] == 3 and 0 < v["p50_ms"] <= v["p90_ms"] for v in m["latency"].values())
    e = m["end_to_end"]
    assert e["megapixels"] == pytest.approx(0.08, abs=0.01)
    assert all(e[k] > 0 for k in ("decode_ms", "rgba_ms", "encode_ms"))
    assert m["peak_rss_mb"] > 10                          # a real process: python + onnxruntime


def test_int8_dot_names_the_instructions_that_set_int8_speed():
    from edgecut.runtime.cpu import int8_dot

    assert int8_dot({"avx2", "avx512f", "avx512_vnni"}) == "AVX-512 VNNI"
    assert int8_dot({"avx2", "avx_vnni"}) == "AVX-VNNI"
    assert int8_dot({"fma", "avx2"}) == "none (AVX2 only)"
    assert int8_dot({"fp", "asimd", "asimddp"}) == "ARM dot product"     # a Raspberry Pi 5 (Cortex-A76)
    assert int8_dot({"fp", "asimd"}) == "none"                          # a Pi 4 (Cortex-A72)
    assert int8_dot(set()) == "unknown"


def test_bench_latency_counts_params_from_onnx(tiny_model_dir):
    from edgecut.bench.latency import count_params

    # conv 3->4 3x3 (108 + 4 bias) and conv 4->1 1x1 (4 + 1 bias)
    assert count_params(tiny_model_dir / "model.onnx") == 117


def test_prediction_cache_is_keyed_by_model_and_reused(tmp_path, tiny_model_dir):
    import numpy as np

    from edgecut.bench.cache import PredictionCache

    model_file = tiny_model_dir / "model.onnx"
    photo, twin = tmp_path / "a b.jpg", tmp_path / "a b.png"
    photo.write_bytes(b"photo one")
    twin.write_bytes(b"photo two")
    cache = PredictionCache(tmp_path / "c", model_file)
    assert cache.get("s", photo) is None
    alpha = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cache.put("s", photo, alpha)
    np.testing.assert_array_equal(cache.get("s", photo), alpha)
    assert PredictionCache(tmp_path / "c", model_file, refine=False).get("s", photo) is None
    assert PredictionCache(tmp_path / "c", model_file, tta=True).get("s", photo) is None
    other = tmp_path / "other.onnx"
    other.write_bytes(model_file.read_bytes() + b"x")
    assert PredictionCache(tmp_path / "c", other).get("s", photo) is None
    assert cache.get("s", twin) is None            # the same stem, another photo
    photo.write_bytes(b"photo one, replaced")      # the same name, another photo: read stale before
    assert cache.get("s", photo) is None


def test_prediction_cache_hashes_a_missed_photo_once(tmp_path, tiny_model_dir, monkeypatch):
    """A miss then its put hash the photo once; the entry is the one a later get finds."""
    import numpy as np

    from edgecut.bench import cache as cache_mod

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"photo")
    c = cache_mod.PredictionCache(tmp_path / "c", tiny_model_dir / "model.onnx")
    hashed = []
    real = cache_mod.sha256_of
    monkeypatch.setattr(cache_mod, "sha256_of", lambda p: hashed.append(p) or real(p))
    assert c.get("s", photo) is None
    c.put("s", photo, np.zeros((2, 2), np.uint8))
    assert hashed == [photo]
    assert c.get("s", photo) is not None


def test_latency_times_for_at_least_min_seconds(tiny_session):
    """A fast model gets more than `runs` timed runs until the time floor (or the cap on runs) is
    reached; without a floor, exactly `runs`. (The tiny model can reach the cap first on a fast CPU.)"""
    from edgecut.bench.latency import MAX_RUNS, time_infer

    assert time_infer(tiny_session, runs=3, warmup=1)["runs"] == 3
    t = time.perf_counter()
    r = time_infer(tiny_session, runs=3, warmup=1, min_seconds=0.2)
    assert r["runs"] > 3 and (time.perf_counter() - t >= 0.2 or r["runs"] == MAX_RUNS)
    assert r["runs"] <= MAX_RUNS


def test_bench_report_writes_table_plot_and_json(tiny_model_dir, fake_bench, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    stem = tmp_path / "rep" / "report"
    rc = main(["bench", "report", "--data", str(fake_bench), "--model", str(tiny_model_dir),
               "--threads", "1", "--runs", "2", "--min-time", "0", "--out", str(stem), "--no-progress"])
    assert rc == 0
    md = stem.with_suffix(".md").read_text()
    assert "IoU grabcut" in md and "| **tiny** |" in md   # a lone model is its own Pareto front
    assert stem.with_suffix(".png").stat().st_size > 1000
    [row] = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert row["iou"]["grabcut"] > 0.8 and row["p50_ms"]["1"] > 0 and row["people_iou"] is None


def test_bench_agree_is_zero_for_the_same_model_and_flags_a_different_one(tiny_model_dir, fake_bench,
                                                                          tmp_path, capsys):
    import dataclasses
    import shutil

    from edgecut.runtime.manifest import Manifest

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    m = Manifest.load(other / "manifest.json")
    dataclasses.replace(m, output_activation="sigmoid").save(other / "manifest.json")   # squashes the alpha
    out = tmp_path / "agree.json"
    rc = main(["bench", "agree", "--data", str(fake_bench), "--reference", str(tiny_model_dir),
               "--model", str(tiny_model_dir), "--model", str(other), "--json", str(out), "--no-progress",
               "--max-mean", "0.5"])
    assert rc == 1 and "beyond --max-mean 0.5: tiny" in capsys.readouterr().out
    same, shifted = json.loads(out.read_text())["models"]
    assert same["all"]["photos"] == 3 and same["all"]["mean"] == 0 and same["all"]["max"] == 0  # masks unneeded
    assert shifted["all"]["mean"] > 0.5 and shifted["all"]["max"] >= shifted["all"]["p99"] > 0


def test_bench_agree_takes_a_plain_folder_of_ones_own_photos(tiny_model_dir, fake_bench, tmp_path, capsys):
    """A conversion is checked on the photos it will meet: no bench layout, no masks."""
    import shutil

    mine = tmp_path / "holiday"
    (mine / "day 2").mkdir(parents=True)
    photos = sorted((fake_bench / "grabcut" / "images").iterdir())
    shutil.copy(photos[0], mine)
    shutil.copy(photos[1], mine / "day 2")
    out = tmp_path / "agree.json"
    args = ["bench", "agree", "--data", str(mine), "--reference", str(tiny_model_dir), "--model",
            str(tiny_model_dir), "--json", str(out), "--no-progress"]
    assert main(args) == 0
    [r] = json.loads(out.read_text())["models"]
    assert list(r["sets"]) == ["holiday"] and r["all"]["photos"] == 2 and r["all"]["mean"] == 0
    capsys.readouterr()
    assert main(args + ["--sets", "grabcut"]) == 1      # a plain folder has no sets to choose from
    assert "no <set>/images folders" in capsys.readouterr().err
    assert main(args[:3] + [str(tmp_path / "day 2")] + args[4:]) == 1
    assert "no such folder of photos" in capsys.readouterr().err
