"""bench report: the Pareto front, the merged rows, the markdown and the plot; peers' fetch."""
import io
import tarfile

import pytest

from edgecut.bench import compare
from edgecut.bench.peers import PEERS, fetch_peer, resolve_peer
from edgecut.runtime.errors import EdgecutError
from edgecut.runtime.manifest import Manifest, sha256_of


def test_pareto_front_keeps_only_undominated_points():
    pts = [(5.0, 0.60), (3.0, 0.55), (10.0, 0.80), (6.0, 0.58), (3.0, 0.50), (2000.0, 0.78)]
    assert compare.pareto_front(pts) == [1, 0, 2]   # fastest first; (6, .58), (3, .50) and the slow .78 lose


def test_pareto_front_ties_at_the_tables_precision():
    # two exports of one model: the slower one is 6e-9 "more accurate", which the table cannot show
    pts = [(9.45, 0.7083286832), (10.10, 0.7083286896), (6.51, 0.7076)]
    assert compare.pareto_front(pts) == [2, 0]
    assert compare.pareto_front(pts, decimals=9) == [2, 0, 1]


def _acc(spec, name, ious, fmt="onnx", prec="int8"):
    sets = {k: {"iou": v, "mae": 0.1, "images": 3} for k, v in ious.items()}
    return {"spec": spec, "name": name, "format": fmt, "precision": prec, "file_bytes": 840_000,
            "sets": sets, "mean": {"iou": sum(ious.values()) / len(ious), "mae": 0.1}}


def _lat(spec, p50):
    return {"spec": spec, "params": 600_000, "macs": 2.1e8, "latency": {"1": {"p50_ms": p50}, "2": {"p50_ms": p50 / 2}}}


@pytest.fixture
def rows():
    acc = [_acc("a", "small", {"ccp_person": 0.8, "portrait_eg": 0.7, "horse": 0.6}),
           _acc("b", "peer", {"ccp_person": 0.9, "portrait_eg": 1.0, "horse": 0.1}, "tflite", "fp16"),
           _acc("c", "slow", {"ccp_person": 0.7, "portrait_eg": 0.6, "horse": 0.5})]
    return compare.merge(acc, [_lat("a", 5.0), _lat("b", 3.0), _lat("c", 9.0)])


def test_merge_computes_people_mean_from_the_people_sets_only(rows):
    assert rows[0]["people_iou"] == pytest.approx(0.75)
    assert rows[1]["p50_ms"] == {"1": 3.0, "2": 1.5}
    assert rows[2]["mean_iou"] == pytest.approx(0.6)


def test_markdown_bolds_the_front_and_has_every_set(rows):
    md = compare.markdown(rows, [1, 2], ["ccp_person", "portrait_eg", "horse"])
    lines = md.splitlines()
    assert "IoU horse" in lines[0] and "p50 2t (ms)" in lines[0]
    assert lines[2].startswith("| **small**") and lines[3].startswith("| **peer**")
    assert lines[4].startswith("| slow |")   # slower and less accurate than "small"
    assert "| 0.7000 |" in lines[2]


def test_plot_writes_a_png(rows, tmp_path):
    pytest.importorskip("matplotlib")
    out = compare.plot(rows, tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_run_without_people_sets_warns_of_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    import warnings

    rows = compare.merge([_acc("a", "small", {"horse": 0.6})], [_lat("a", 5.0)])
    assert rows[0]["people_iou"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # matplotlib's "No artists with labels" legend warning
        out = compare.plot(rows, tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tarball(tmp_path, member, data):
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return tgz


def test_fetch_peer_writes_model_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECUT_CACHE", str(tmp_path / "cache"))
    peer = PEERS["mediapipe-selfie"]
    d = fetch_peer("mediapipe-selfie", tarball=_tarball(tmp_path, peer.member, b"\x18\x00\x00\x00TFL3 and then no real flatbuffer"))
    assert d == resolve_peer("peer:mediapipe-selfie")
    m = Manifest.load(d / "manifest.json")
    assert m.format == "tflite" and m.layout == "NHWC" and m.license == "Apache-2.0"
    assert m.sha256 == sha256_of(d / m.file)


def test_peer_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECUT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EdgecutError, match="fetch-peer mediapipe-selfie"):
        resolve_peer("peer:mediapipe-selfie")
    with pytest.raises(EdgecutError, match="unknown peer"):
        resolve_peer("peer:nope")
    with pytest.raises(EdgecutError, match="no package/"):
        fetch_peer("mediapipe-selfie", tarball=_tarball(tmp_path, "package/other.bin", b"x"))
