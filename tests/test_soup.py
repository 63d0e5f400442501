"""compress soup: the mean of same-architecture checkpoints, refused across architectures."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from edgecut.cli import main  # noqa: E402
from edgecut.compress.export import student_from_checkpoint  # noqa: E402
from edgecut.models.student import StudentConfig  # noqa: E402
from edgecut.models.variants import register  # noqa: E402

TINY = register(StudentConfig(name="test-soup", input_size=48, width=0.25, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))
OTHER = register(StudentConfig(name="test-soup-wide", input_size=48, width=0.5, context_channels=16,
                               decoder_channels=(16, 8, 8, 8)))


def _run(folder, cfg, seed):
    from edgecut.models.student import create_student

    torch.manual_seed(seed)
    folder.mkdir()
    torch.save({"model": create_student(cfg).state_dict(), "variant": cfg.name, "step": 7,
                "holdout": {"iou": 0.5}}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps({"variant": cfg.name, "holdout": 0.03}))
    return folder / "best.pt"


def test_soup_averages_weights_and_keeps_the_run_files(tmp_path, capsys):
    a, b, c = (_run(tmp_path / n, TINY, s) for n, s in (("a", 0), ("b", 1), ("c", 2)))
    out = tmp_path / "soup"
    assert main(["compress", "soup", str(a), str(b), str(c), "--out", str(out)]) == 0
    got = torch.load(out / "best.pt", weights_only=False)
    sds = [torch.load(p, weights_only=False)["model"] for p in (a, b, c)]
    key = "encoder.stem.0.weight"
    assert torch.allclose(got["model"][key], (sds[0][key] + sds[1][key] + sds[2][key]) / 3, atol=1e-7)
    assert not torch.allclose(got["model"][key], sds[0][key])
    assert got["soup"] == [str(a), str(b), str(c)] and "holdout" not in got
    assert (out / "config.json").read_text() == (tmp_path / "a" / "config.json").read_text()
    student_from_checkpoint(got)(torch.zeros(1, 3, 48, 48))       # loads and runs as a student


def test_soup_refuses_other_architectures_and_single_runs(tmp_path, capsys):
    a, wide = _run(tmp_path / "a", TINY, 0), _run(tmp_path / "w", OTHER, 0)
    assert main(["compress", "soup", str(a), str(wide), "--out", str(tmp_path / "s")]) == 1
    assert "checkpoint 2 is test-soup-wide" in capsys.readouterr().err
    assert main(["compress", "soup", str(a), "--out", str(tmp_path / "s")]) == 1
    assert "at least two" in capsys.readouterr().err
    assert not (tmp_path / "s" / "best.pt").exists()
