"""`edgecut bench latency --profile`: the per-stage split of one photo."""
import json

import pytest
from PIL import Image

from conftest import synthetic_photo
from edgecut.bench.profile import STAGES, profile_stages, profile_table
from edgecut.cli import main


def test_profile_stages_cover_the_whole_photo_path(tiny_session, tmp_path):
    photo = tmp_path / "p.jpg"
    Image.fromarray(synthetic_photo((400, 300))[0]).save(photo, quality=90)
    p = profile_stages(tiny_session, photo, runs=2)
    assert p["runs"] == 2
    assert all(p[f"{s}_ms"] > 0 for s in STAGES)
    assert p["total_ms"] == pytest.approx(sum(p[f"{s}_ms"] for s in STAGES))
    text = profile_table([{"name": "tiny", "profile": p, "end_to_end": {"megapixels": 0.12, "threads": 1}}])
    assert "Inference(ms)" in text and "Upsample(ms)" in text and "tiny" in text


def test_bench_latency_profile_flag(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", "--model", str(tiny_model_dir), "--threads", "1", "--runs", "2",
               "--photo-size", "320x240", "--no-rss", "--profile", "--json", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    for header in ("Decode(ms)", "Resize(ms)", "Inference(ms)", "Upsample(ms)", "Composite(ms)", "Encode(ms)"):
        assert header in text.split("Per-stage split")[1]
    [m] = json.loads(out.read_text())["models"]
    assert set(m["profile"]) == {f"{s}_ms" for s in STAGES} | {"total_ms", "runs"}


def test_without_profile_flag_there_is_no_split(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "lat.json"
    assert main(["bench", "latency", "--model", str(tiny_model_dir), "--threads", "1", "--runs", "1",
                 "--photo-size", "64x48", "--no-rss", "--json", str(out), "--no-progress"]) == 0
    assert "Per-stage split" not in capsys.readouterr().out
    assert "profile" not in json.loads(out.read_text())["models"][0]
