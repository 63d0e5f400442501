"""TFLite export: `edgecut export --format tflite [--int8]` writes models the runtime runs through
the same Session as ONNX, giving the same alpha. Needs the tflite extra (CI installs it)."""
import numpy as np
import pytest
from conftest import block_photos
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch", reason="the tflite extra is not installed (pip install 'edgecut[tflite]')")
pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed (pip install 'edgecut[tflite]')")

from edgecut.compress.export import export_onnx, load_student  # noqa: E402
from edgecut.models.variants import StudentConfig, register  # noqa: E402
from edgecut.runtime.manifest import Manifest, sha256_of  # noqa: E402
from edgecut.runtime.session import Session  # noqa: E402

TINY = register(StudentConfig(name="test-tflite", input_size=48, width=0.25, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))


def _photos(folder, n=6):
    return block_photos(folder, n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_student):
    """One `edgecut export --format tflite --int8` run (two conversions) shared by the tests."""
    import contextlib
    import io

    from edgecut.cli import main

    root = tmp_path_factory.mktemp("tflite")
    model = make_student(TINY)
    torch.save({"model": model.state_dict(), "variant": TINY.name, "step": 3}, root / "best.pt")
    photos = _photos(root / "calib")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["export", str(root / "best.pt"), "--name", "t", "--out", str(root / "models"),
                   "--format", "tflite", "--int8", "--calib", str(root / "calib"), "--calib-n", "6"])
    return {"rc": rc, "stdout": out.getvalue(), "models": root / "models", "photos": photos,
            "checkpoint": root / "best.pt"}


def test_cli_writes_both_and_prints_the_summary(exported):
    assert exported["rc"] == 0, exported["stdout"]
    table = exported["stdout"].splitlines()
    head = next(i for i, line in enumerate(table) if line.startswith("Format"))
    rows = [line.split() for line in table[head + 1:head + 3]]
    assert [r[:3] for r in rows] == [["tflite", "fp32", "ok"], ["tflite", "int8", "ok"]]
    assert all(float(r[3]) > 0 and float(r[5]) > 0 for r in rows)   # size MB, ms/img
    for name, precision in (("t-tflite", "fp32"), ("t-tflite-int8", "int8")):
        folder = exported["models"] / name
        m = Manifest.load(folder / "manifest.json")
        assert (m.format, m.precision, m.layout, m.file) == ("tflite", precision, "NHWC", "model.tflite")
        assert m.sha256 == sha256_of(folder / "model.tflite") and m.input_size == (48, 48)
        assert m.extra["checkpoint_step"] == 3 and m.extra["converter"].startswith("litert-torch")


def test_tflite_matches_onnx_through_the_same_session(exported, tmp_path):
    model, _ = load_student(exported["checkpoint"])
    onnx_session = Session(export_onnx(model, tmp_path, "t-onnx"), threads=1)
    tfl = Session(exported["models"] / "t-tflite", threads=1)
    for p in exported["photos"][:3]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        assert tfl.preprocess(rgb).shape == (1, 48, 48, 3)
        a, b = tfl.infer(rgb), onnx_session.infer(rgb)
        assert a.shape == b.shape == (48, 48)
        assert np.abs(a - b).mean() <= 2 / 255 and np.abs(a - b).max() < 1e-3
        full = tfl.alpha(rgb)
        assert full.shape == rgb.shape[:2] and full.dtype == np.uint8


def test_int8_tflite_runs_and_stays_close(exported):
    fp, i8 = Session(exported["models"] / "t-tflite", threads=1), Session(exported["models"] / "t-tflite-int8", threads=1)
    assert np.dtype(i8._backend.inp["dtype"]) == np.int8   # full-integer input, quantized by the runtime
    for p in exported["photos"]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        assert np.abs(fp.infer(rgb) - i8.infer(rgb)).mean() < 0.03


def test_missing_extra_is_one_clear_line(exported, monkeypatch, capsys, tmp_path):
    from edgecut.cli import main
    from edgecut.compress import tflite

    monkeypatch.setattr(tflite, "available", lambda: False)
    assert main(["export", str(exported["checkpoint"]), "--name", "x", "--out", str(tmp_path),
                 "--format", "tflite"]) == 1
    assert "pip install 'edgecut[tflite]'" in capsys.readouterr().err


def test_a_failed_conversion_is_a_table_row_and_a_non_zero_exit(exported, monkeypatch, capsys, tmp_path):
    from edgecut.cli import main
    from edgecut.compress import tflite

    def fake(model, out_dir, name, int8=False, calib_photos=None, **kw):
        if int8:
            raise RuntimeError("unsupported op: aten.hardswish\nmore detail")
        return exported["models"] / "t-tflite"

    monkeypatch.setattr(tflite, "export_tflite", fake)
    assert main(["export", str(exported["checkpoint"]), "--name", "x", "--out", str(tmp_path), "--format", "tflite",
                 "--int8", "--calib", str(exported["photos"][0].parent), "--embed"]) == 1
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines() if line.startswith("tflite")]
    assert rows[0][:3] == ["tflite", "fp32", "ok"] and rows[1][:3] == ["tflite", "int8", "failed"]
    assert "RuntimeError: unsupported op: aten.hardswish" in captured.out
    assert "nothing to embed" in captured.err


SMALL = register(StudentConfig(name="test-tflite-32", input_size=32, width=0.25, context_channels=16,
                               decoder_channels=(16, 8, 8, 8)))


def test_an_ensemble_with_a_fractional_in_graph_resize_matches_onnx(exported, make_student, tmp_path):
    """48 -> 32 px and back is a ratio of 1.5: LiteRT's own nearest resize picked other pixels than
    onnxruntime's there (the first edgecut-duo's TFLite file was 3.21/255 off); the gathers must not.
    Its int8 conversion once failed: the quantizer observed the gathers' integer index arithmetic."""
    from edgecut.compress.tflite import export_tflite
    from edgecut.models.ensemble import Ensemble

    big, small = make_student(TINY), make_student(SMALL)
    with torch.no_grad():
        small.decoder.head.bias.add_(0.7)
    ens = Ensemble([big, small]).eval()
    onnx_session = Session(export_onnx(ens, tmp_path, "e-onnx"), threads=1)
    tfl = Session(export_tflite(ens, tmp_path, "e-tflite"), threads=1)
    i8 = Session(export_tflite(ens, tmp_path, "e-tflite-int8", int8=True, calib_photos=exported["photos"]),
                 threads=1)   # the gathers' indices are constants, not integer arithmetic to observe
    for p in exported["photos"][:3]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        a, b = tfl.infer(rgb), onnx_session.infer(rgb)
        assert a.shape == b.shape == (48, 48)
        assert np.abs(a - b).max() < 1e-3
        assert np.abs(i8.infer(rgb) - a).mean() < 0.03
