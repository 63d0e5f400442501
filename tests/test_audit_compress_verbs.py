"""Third round of bad input to `edgecut compress prune|quantize|qat|soup|ensemble|rewrite|recover`: an --out
that already holds another run or is no model folder, an --out inside the input, an ensemble where one
student is expected, options that only make sense together, a failure part-way and a full disk. Each
is one line naming the file and a non-zero exit, and nothing of the user's is replaced or left half-made."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import block_photos, labelled_set  # noqa: E402

from edgecut.cli import main  # noqa: E402
from edgecut.compress.export import export_onnx  # noqa: E402
from edgecut.models.student import StudentConfig, create_student  # noqa: E402
from edgecut.models.variants import register  # noqa: E402

TINY = register(StudentConfig(name="test-audit-cv", input_size=32, width=0.25, context_channels=8,
                              decoder_channels=(8, 8, 8, 8)))


def _run(folder: Path, data: Path, seed: int = 0) -> Path:
    """A run folder as distill leaves it: best.pt and a config.json naming its photos."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    torch.save({"model": create_student(TINY).state_dict(), "variant": TINY.name, "step": 1}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps({"variant": TINY.name, "data": str(data), "holdout": 0.0}))
    return folder / "best.pt"


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Shared inputs: a train root, two runs, an ensemble of them, an exported fp32 folder, photos."""
    root = tmp_path_factory.mktemp("audit-cv")
    ns = type("W", (), {})()
    ns.root, ns.data = root, root / "train"
    labelled_set(ns.data / "s", 6)
    ns.a = _run(root / "A", ns.data, seed=0)
    ns.b = _run(root / "B", ns.data, seed=1)
    torch.manual_seed(0)
    ns.fp32 = export_onnx(create_student(TINY).eval(), root / "export", "tiny-fp32")
    ns.photos = root / "photos"
    block_photos(ns.photos, 3)
    ns.ens = root / "ens" / "best.pt"
    assert main(["compress", "ensemble", str(ns.a), str(ns.b), "--out", str(ns.ens.parent),
                 "--no-calibrate-members"]) == 0
    return ns


def fails(capsys, argv, *needles, code=1):
    """main(argv) exits `code` (1, or 2 for a usage error) with one line on stderr naming each needle
    (besides quantize's note of its calibration photos), and no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("calibrating on ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"edgecut {argv[0]}: error: "), lines[0]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def snapshot(folder) -> dict:
    return {f: f.read_bytes() for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def _distill_run(folder: Path, data: Path) -> Path:
    """A distill run's folder with its last.pt (resumable), as a user's earlier training leaves it."""
    assert main(["distill", "--variant", TINY.name, "--data", str(data), "--out", str(folder), "--steps", "2",
                 "--batch-size", "2", "--eval-every", "2", "--threads", "1", "--no-progress"]) == 0
    return folder


# --- soup / ensemble / rewrite: an --out that is someone else's ------------------------------------------
def test_soup_and_ensemble_never_replace_another_runs_checkpoint(w, tmp_path, capsys):
    run = _distill_run(tmp_path / "run", w.data)
    capsys.readouterr()
    before = snapshot(run)
    fails(capsys, ["compress", "soup", str(w.a), str(w.b), "--out", str(run)], run, "holds a training run")
    fails(capsys, ["compress", "ensemble", str(w.a), str(w.b), "--out", str(run), "--no-calibrate-members"],
          run, "holds a training run")
    (run / "last.pt").unlink()   # a finished run kept as best.pt alone
    del before[run / "last.pt"]
    fails(capsys, ["compress", "soup", str(w.a), str(w.b), "--out", str(run)], run / "best.pt", "did not write")
    fails(capsys, ["compress", "soup", str(w.a), str(w.b), "--out", str(w.ens.parent)], w.ens, "did not write")
    assert snapshot(run) == before
    # its own earlier output is replaced: a rerun works
    for _ in range(2):
        assert main(["compress", "soup", str(w.a), str(w.b), "--out", str(tmp_path / "soup")]) == 0
    assert "soup of 2 checkpoints" in capsys.readouterr().out


def test_rewrite_never_replaces_a_folder_that_is_no_model_nor_copies_into_its_input(w, tmp_path, capsys):
    run = _distill_run(tmp_path / "runs" / "r1", w.data)
    (run / "notes.txt").write_text("mine\n")
    (tmp_path / "runs" / "afile").write_text("a file\n")
    capsys.readouterr()
    before = snapshot(tmp_path / "runs")
    out = str(tmp_path / "runs")
    fails(capsys, ["compress", "rewrite", str(w.fp32), "--out", out, "--name", "r1"], run, "not a model folder")
    fails(capsys, ["compress", "rewrite", str(w.fp32), "--out", out, "--name", "afile"], "afile", "not a model folder")
    assert snapshot(tmp_path / "runs") == before
    model = tmp_path / "m"
    shutil.copytree(w.fp32, model)
    for inside in (model, model / "deeper"):   # was a RecursionError traceback from copytree
        fails(capsys, ["compress", "rewrite", str(model), "--out", str(inside), "--name", "sub"],
              inside, "inside the input model folder")
    assert sorted(p.name for p in model.iterdir()) == ["manifest.json", "model.onnx"]
    # an empty folder or an earlier rewrite (a model folder) may be replaced
    (tmp_path / "rw" / "x").mkdir(parents=True)
    for _ in range(2):
        assert main(["compress", "rewrite", str(w.fp32), "--out", str(tmp_path / "rw"), "--name", "x"]) == 0
    assert (tmp_path / "rw" / "x" / "manifest.json").is_file()


# --- failures after --out was made leave no folder --------------------------------------------------------
def test_a_failed_run_leaves_no_out_folder(w, tmp_path, capsys):
    png = tmp_path / "x.png"
    block_photos(tmp_path / "pngs", 1)
    shutil.copyfile(tmp_path / "pngs" / "p0.png", png)
    empty = tmp_path / "empty"
    empty.mkdir()
    o = tmp_path / "o"
    fails(capsys, ["compress", "soup", str(w.a), str(png), "--out", str(o / "s1")], png, "not an edgecut checkpoint")
    fails(capsys, ["compress", "soup", str(w.a), "--out", str(o / "s2")], "at least two")
    fails(capsys, ["compress", "ensemble", str(w.a), "--out", str(o / "e1")], "at least two", code=2)
    fails(capsys, ["compress", "ensemble", str(w.a), str(w.b), "--out", str(o / "e2"), "--heldout-data",
                   str(tmp_path / "nowhere")], "--heldout-data")
    fails(capsys, ["compress", "recover", str(w.fp32), "--out", str(o / "r1"), "--photos", str(empty)],
          "no calibration photos")
    fails(capsys, ["compress", "quantize", str(w.fp32), "--calib", str(empty), "--out", str(o / "q1")],
          "no calibration photos")
    assert not o.exists() or not any(o.iterdir()), sorted(o.iterdir())


def test_the_same_checkpoint_twice_is_refused(w, tmp_path, capsys):
    again = w.a.parent / ".." / w.a.parent.name / "best.pt"   # another spelling of one file
    fails(capsys, ["compress", "soup", str(w.a), str(again), "--out", str(tmp_path / "s")], again, "given twice")
    fails(capsys, ["compress", "ensemble", str(w.a), f"{w.a}@{TINY.input_size}", "--out", str(tmp_path / "e"),
           "--no-calibrate-members"], "given twice at 32 px", code=2)
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()
    # one student at two sizes is an ensemble
    assert main(["compress", "ensemble", str(w.a), f"{w.a}@64", "--out", str(tmp_path / "e2"),
                 "--no-calibrate-members"]) == 0


# --- an ensemble where one student is expected -------------------------------------------------------------
def test_prune_and_qat_refuse_an_ensemble(w, tmp_path, capsys):
    # prune wrote a pruned.pt that nothing could load ("unknown student variant 'ensemble'"); qat a KeyError
    fails(capsys, ["compress", "prune", str(w.ens), "--target-macs", "0.8", "--out", str(tmp_path / "p"),
                   "--no-progress"], w.ens, "an ensemble of 2 students")
    fails(capsys, ["compress", "qat", str(w.ens), "--data", str(w.data), "--steps", "1", "--out",
                   str(tmp_path / "q"), "--no-progress"], w.ens, "an ensemble of 2 students")
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


# --- qat resumes only its own run ------------------------------------------------------------------------
def test_qat_resumes_only_the_run_of_the_same_checkpoint(w, tmp_path, capsys):
    run = _distill_run(tmp_path / "run", w.data)
    capsys.readouterr()
    before = snapshot(run)
    q = ["--data", str(w.data), "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--threads", "1",
         "--no-progress"]
    fails(capsys, ["compress", "qat", str(w.a), *q, "--out", str(run)], run, "not a QAT run")
    assert snapshot(run) == before   # its last.pt and config.json were replaced by a QAT run's
    qat = tmp_path / "qat"
    assert main(["compress", "qat", str(w.a), *q, "--out", str(qat)]) == 0
    capsys.readouterr()
    fails(capsys, ["compress", "qat", str(w.b), *q[:3], "4", *q[4:], "--out", str(qat)], qat, f"QAT run of {w.a}")
    assert main(["compress", "qat", str(w.a), *q[:3], "4", *q[4:], "--out", str(qat)]) == 0
    assert "resumed from" in capsys.readouterr().out


# --- quantize --report-json --------------------------------------------------------------------------------
def test_quantize_report_json_is_written_and_never_into_the_model(w, tmp_path, capsys):
    base = ["compress", "quantize", str(w.fp32), "--calib", str(w.photos)]
    model = tmp_path / "q" / f"{w.fp32.name}-int8"
    for target in (model / "model.onnx", model / "manifest.json", model):
        fails(capsys, [*base, "--out", str(tmp_path / "q"), "--report", "--report-json", str(target)],
              "--report-json", "inside the output model folder")
    assert not model.exists()
    report = tmp_path / "report.json"   # without --report, nothing was written, and exit 0
    assert main([*base, "--out", str(tmp_path / "q2"), "--report-json", str(report)]) == 0
    assert json.loads(report.read_text())["layers"]


# --- a full disk -------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_output(w, tmp_path, capsys, monkeypatch):
    import edgecut.compress.export as export
    import edgecut.compress.soup as soup

    real_copy2 = shutil.copy2

    def full_copy2(src, dst, *a, **k):   # copytree gathers this into a shutil.Error of strings
        if str(src).endswith(".onnx"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy2(src, dst, *a, **k)

    def full_quantize(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_copyfile(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(shutil, "copy2", full_copy2)
    line = fails(capsys, ["compress", "rewrite", str(w.fp32), "--out", str(tmp_path / "rw")],
                 tmp_path / "rw" / w.fp32.name, "cannot write the rewritten model (No space left on device)")
    assert "[(" not in line and not (tmp_path / "rw").exists()
    monkeypatch.setattr(shutil, "copy2", real_copy2)
    monkeypatch.setattr(export, "quantize_int8", full_quantize)
    fails(capsys, ["compress", "quantize", str(w.fp32), "--calib", str(w.photos), "--out", str(tmp_path / "q")],
          tmp_path / "q" / f"{w.fp32.name}-int8", "cannot write the int8 model (No space left on device)")
    monkeypatch.setattr(soup.shutil, "copyfile", full_copyfile)
    line = fails(capsys, ["compress", "soup", str(w.a), str(w.b), "--out", str(tmp_path / "s")],
                 tmp_path / "s" / "config.json", "No space left on device")
    assert str(w.a.parent) not in line and not (tmp_path / "s").exists()   # it named the input's config.json
