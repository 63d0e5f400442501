"""`edgecut compress quantize`: int8 that stays close to float, a per-layer report that points at
real tensors, and mixed precision that really leaves the worst ones in float."""
import json

import pytest
from conftest import block_photos

torch = pytest.importorskip("torch")

from edgecut.compress.export import export_onnx, float_ops  # noqa: E402
from edgecut.compress.quantize import layer_errors, nodes_touching, quantize_model, report_table  # noqa: E402
from edgecut.models.variants import StudentConfig, register  # noqa: E402
from edgecut.runtime.manifest import Manifest  # noqa: E402

TINY = register(StudentConfig(name="test-quant", input_size=48, width=0.25, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, make_student):
    model = make_student(TINY)
    return export_onnx(model, tmp_path_factory.mktemp("fp32"), "q-fp32")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return block_photos(tmp_path_factory.mktemp("calib"), name="p {}.png")   # a space, as in the bench sets


def test_report_names_real_tensors_worst_first(fp32, photos, tmp_path):
    res = quantize_model(fp32, tmp_path, "q-int8", photos, report_photos=photos[:3])
    assert Manifest.load(res.folder / "manifest.json").precision == "int8" and res.excluded == []
    errs = res.errors
    assert len(errs) > 10
    assert [e.local_db for e in errs] == sorted(e.local_db for e in errs)
    assert all(e.node for e in errs if e.op != "input")
    assert sum(e.cumulative_db is not None for e in errs) > len(errs) // 2
    assert errs[0].local_db < errs[-1].local_db
    assert all(e.local_db > 10 for e in errs)   # ReLUs fused into convs are not read as noise
    assert 0 <= res.output_mae < 0.03
    table = report_table(errs, limit=5)
    assert errs[0].node in table and "more" in table and len(table.splitlines()) == 7


def test_auto_exclude_leaves_the_worst_in_float(fp32, photos, tmp_path):
    full = quantize_model(fp32, tmp_path, "full", photos, report_photos=photos[:3])
    worst = [e.tensor for e in full.errors[:2]]
    mixed = quantize_model(fp32, tmp_path, "mixed", photos, auto_exclude=2, report_photos=photos[:3])
    assert mixed.excluded and set(mixed.excluded) == set(nodes_touching(fp32 / "model.onnx", worst))
    m = Manifest.load(mixed.folder / "manifest.json")
    assert m.extra["quantization"]["float_nodes"] == mixed.excluded
    n_float = sum(float_ops(mixed.folder / "model.onnx").values())
    assert n_float > sum(float_ops(full.folder / "model.onnx").values())
    # the tensors that were worst are no longer quantized at all
    assert not set(worst) & {e.tensor for e in mixed.errors}


def test_exclude_by_name_is_recorded(fp32, photos, tmp_path):
    import onnx

    conv = next(n.name for n in onnx.load(str(fp32 / "model.onnx")).graph.node if n.op_type == "Conv")
    res = quantize_model(fp32, tmp_path, "ex", photos[:3], exclude=[conv])
    assert Manifest.load(res.folder / "manifest.json").extra["quantization"]["float_nodes"] == [conv]


def test_cli_quantize_with_report(fp32, photos, tmp_path, capsys):
    from edgecut.cli import main

    report = tmp_path / "report.json"
    assert main(["compress", "quantize", str(fp32), "--calib", str(photos[0].parent), "--calib-n", "4",
                 "--method", "percentile", "--report", "--report-n", "2", "--report-json", str(report),
                 "--out", str(tmp_path), "--name", "cli-int8"]) == 0
    text = capsys.readouterr().out
    assert "local dB" in text and "alpha mean abs diff vs fp32" in text
    data = json.loads(report.read_text())
    assert data["layers"] and data["output_mae"] < 0.03
    m = Manifest.load(tmp_path / "cli-int8" / "manifest.json")
    assert m.extra["quantization"]["calibration"] == "percentile"
    assert m.extra["quantization"]["calibration_photos"] == 4


def test_cli_quantize_bad_input(fp32, photos, tmp_path, capsys):
    from edgecut.cli import main

    assert main(["compress", "quantize", str(tmp_path), "--calib", str(photos[0].parent)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["compress", "quantize", str(fp32), "--calib", str(photos[0].parent), "--name", fp32.name,
                 "--out", str(fp32.parent)]) == 1
    assert "overwrite the input" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compress", "quantize", str(fp32), "--calib", str(empty), "--out", str(tmp_path)]) == 1
    assert "no calibration photos" in capsys.readouterr().err


def test_depthwise_bench_script_times_each_channel_count(capsys):
    """scripts/depthwise_bench.py builds valid int8 depthwise chains and prints one timing per count."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "depthwise_bench.py"
    spec = importlib.util.spec_from_file_location("depthwise_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--size", "8", "--channels", "8,16", "--layers", "3", "--runs", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["8", "16"] and all(len(r) == 3 for r in rows)
