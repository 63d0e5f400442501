"""compress ensemble: students at their own sizes as one graph whose logits are their mean."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from edgecut.cli import main  # noqa: E402
from edgecut.compress.calibrate import fold_into_head  # noqa: E402
from edgecut.compress.export import export_onnx, quantize_int8, student_from_checkpoint  # noqa: E402
from edgecut.models.ensemble import Ensemble  # noqa: E402
from edgecut.models.student import StudentConfig  # noqa: E402
from edgecut.models.variants import register  # noqa: E402
from edgecut.runtime.manifest import Manifest  # noqa: E402
from edgecut.runtime.session import Session  # noqa: E402

from conftest import block_photos  # noqa: E402
from test_portable import _add_scales  # noqa: E402
from PIL import Image  # noqa: E402

BIG = register(StudentConfig(name="test-ens-big", input_size=64, width=0.25, context_channels=16,
                             decoder_channels=(16, 8, 8, 8)))
SMALL = register(StudentConfig(name="test-ens-small", input_size=32, width=0.5, context_channels=16,
                               decoder_channels=(16, 8, 8, 8)))


@pytest.fixture
def members(make_student):
    big, small = make_student(BIG), make_student(SMALL)
    with torch.no_grad():   # distinct heads, so that a swapped or dropped member shows
        small.decoder.head.bias.add_(0.7)
    return big, small


def test_logits_are_the_mean_of_the_members_at_their_sizes(members):
    """Averaged on the big member's logit grid (32 px), the small one's (16 px) brought there by nearest
    neighbours, then upsampled once, bilinearly."""
    big, small = members
    ens = Ensemble([big, small]).eval()
    assert ens.cfg.input_size == 64 and [m.input_size for m in ens.cfg.members] == [64, 32]
    assert ens.grids == [32, 16]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        zs = F.interpolate(small.forward_low(F.interpolate(x, size=(32, 32), mode="nearest-exact")),
                           size=(32, 32), mode="nearest-exact")
        want = F.interpolate((big.forward_low(x) + zs) / 2, size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(ens.forward_logits(x), want)
        fold_into_head(ens, 2.0, -1.0)       # a calibration folds into every member's head
        torch.testing.assert_close(ens.forward_logits(x), 2 * want - 1, atol=1e-5, rtol=1e-5)
        assert ens(x).shape == (2, 1, 64, 64)


def test_members_of_one_size_average_as_their_own_outputs(make_student):
    """Averaging before the last upsampling is the same as after it when no member is resized; and
    building the ensemble (a dry run per member) leaves a training member's batch-norm statistics alone."""
    a, b = make_student(BIG), make_student(BIG)
    with torch.no_grad():
        b.decoder.head.bias.add_(0.7)
    b.train()
    stats = [m.running_mean.clone() for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ens = Ensemble([a, b])
    assert b.training
    assert all(torch.equal(s, m.running_mean) for s, m in
               zip(stats, [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]))
    ens.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ens.forward_logits(x), (a.forward_logits(x) + b.forward_logits(x)) / 2,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_in,n_out", [(256, 192), (192, 256), (320, 192), (64, 32), (7, 5)])
def test_in_graph_resize_picks_the_nearest_pixel_centre(n_in, n_out):
    """The gathers copy what torch's half-pixel nearest resize copies, at whole ratios and at ones that are not."""
    from edgecut.models.ensemble import _nearest_rows, _resized

    x = torch.arange(n_in * n_in, dtype=torch.float32).reshape(1, 1, n_in, n_in)
    torch.testing.assert_close(_resized(x, _nearest_rows(n_in, n_out)),
                               F.interpolate(x, size=(n_out, n_out), mode="nearest-exact"), rtol=0, atol=0)


def _save(folder, model, cfg):
    folder.mkdir()
    torch.save({"model": model.state_dict(), "variant": cfg.name, "step": 3, "holdout": {"iou": 0.5}},
               folder / "best.pt")
    return folder / "best.pt"


def test_cli_ensemble_exports_to_one_int8_graph_with_both_stems_rewritten(members, tmp_path):
    import onnx

    big, small = members
    a, b = _save(tmp_path / "a", big, BIG), _save(tmp_path / "b", small, SMALL)
    out = tmp_path / "ens"
    assert main(["compress", "ensemble", str(a), f"{b}@32", "--out", str(out), "--name", "duo",
                 "--no-calibrate-members"]) == 0
    ck = torch.load(out / "best.pt", weights_only=False)
    model = student_from_checkpoint(ck).eval()
    assert isinstance(model, Ensemble) and model.cfg.name == "duo"

    fp32 = export_onnx(model, tmp_path / "x", "duo")
    session = Session(fp32, threads=1)
    photos = block_photos(tmp_path / "photos", 4)
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        with torch.no_grad():
            want = model(torch.from_numpy(session.preprocess(rgb)))[0, 0].numpy()
        np.testing.assert_allclose(session.infer(rgb), want, atol=1e-4)

    q = quantize_int8(fp32, tmp_path / "x", "duo-int8", photos)
    assert Manifest.load(q / "manifest.json").extra["quantization"]["stem"].startswith("space-to-depth")
    ops = [n.op_type for n in onnx.load(str(q / "model.onnx")).graph.node]
    assert ops.count("SpaceToDepth") == 2      # the big member's stem and the resized small one's
    assert all(len(set(r)) == 1 for r in _add_scales(q / "model.onnx"))   # portable: no Add rescales
    plain = quantize_int8(fp32, tmp_path / "x", "duo-plain", photos, compact=False)   # no rewrite
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32) * 2
    import onnxruntime as ort
    got, ref = (ort.InferenceSession(str(f / "model.onnx"), providers=["CPUExecutionProvider"])
                .run(["alpha"], {"input": x})[0] for f in (q, plain))
    assert np.array_equal(got, ref)            # the rewrite is exact


def test_a_member_calibration_that_was_rejected_says_so(members, tmp_path, monkeypatch, capsys):
    """It printed the identity formula with the rejected fit's IoU, as if the member had been fitted."""
    import edgecut.compress.calibrate as calibrate

    rejected = {"scale": 1.0, "shift": 0.0, "applied": False, "photos_fit": 1,
                "before": {"iou": 0.472, "mae": 0.1}, "after": {"iou": 0.0, "mae": 0.5}}
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: dict(rejected))
    big, small = members
    a, b = _save(tmp_path / "a", big, BIG), _save(tmp_path / "b", small, SMALL)
    assert main(["compress", "ensemble", str(a), f"{b}@32", "--out", str(tmp_path / "ens")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " px: " in line]
    assert len(lines) == 2 and all("calibration not applied" in line and "worse than none" in line for line in lines)


def test_cli_ensemble_refuses_bad_members(members, tmp_path, capsys):
    big, _ = members
    a = _save(tmp_path / "a", big, BIG)
    assert main(["compress", "ensemble", str(a), "--out", str(tmp_path / "e")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compress", "ensemble", str(a), f"{a}@big", "--out", str(tmp_path / "e")]) == 2
    assert "must be a number" in capsys.readouterr().err
    assert main(["compress", "ensemble", str(a), f"{a}@48", "--out", str(tmp_path / "e"),
                 "--no-calibrate-members"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["compress", "ensemble", str(a), str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "e" / "best.pt").exists()


def test_the_gathered_logits_join_the_mean_s_scale_group(tmp_path):
    """onnxruntime's quantizer gives a Gather's or Transpose's output the scale of its input, so the
    tensor the small member's logits are gathered from must share the mean's scale too; the shipped
    edgecut-duo's mean once met them on their own scale (0.246 against 0.411), a rescale in QLinearAdd."""
    import onnx
    from onnx import TensorProto, helper

    from edgecut.compress.portable import residual_groups

    idx = helper.make_tensor("idx", TensorProto.INT64, [4], [0, 0, 1, 1])
    nodes = [helper.make_node("Gather", ["small", "idx"], ["rows"], axis=2),
             helper.make_node("Transpose", ["rows"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("Gather", ["t", "idx"], ["cols"], axis=2),
             helper.make_node("Transpose", ["cols"], ["gathered"], perm=[0, 1, 3, 2]),
             helper.make_node("Add", ["big", "gathered"], ["mean"])]
    value = lambda name, n: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, n, n])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [value("big", 4), value("small", 2)], [value("mean", 4)], [idx])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert residual_groups(tmp_path / "m.onnx") == [sorted(["big", "small", "rows", "t", "cols", "gathered", "mean"])]



@pytest.mark.parametrize("small_first", [False, True])
def test_recover_members_gives_back_each_member_uncalibrated(members, tmp_path, small_first):
    """A shipped int8 ensemble -> one checkpoint per member, in the manifest's order, each with the
    raw logits it had before its own calibration and the ensemble's were folded into its head."""
    from edgecut.compress.recover import conv_members, recover_members

    big, small = members
    raw = [small, big] if small_first else [big, small]
    cals = [{"scale": 2.0, "shift": -0.5}, {"scale": 0.5, "shift": 1.0}]
    calibrated = []
    for m, cal in zip(raw, cals):
        c = student_from_checkpoint({"model": m.state_dict(), "variant": m.cfg.name}).eval()
        fold_into_head(c, cal["scale"], cal["shift"])
        calibrated.append(c)
    ens = Ensemble(calibrated, name="duo").eval()
    fold_into_head(ens, 1.25, 0.75)
    extra = {"ensemble": [{"input_size": m.cfg.input_size, "pruned": False, "calibration": cal}
                          for m, cal in zip(raw, cals)],
             "calibration": {"scale": 1.25, "shift": 0.75}}
    photos = block_photos(tmp_path / "photos", 6)
    q = quantize_int8(export_onnx(ens, tmp_path / "x", "duo", extra=extra), tmp_path / "x", "duo-int8", photos)

    owner, sizes = conv_members(q / "model.onnx")
    assert sorted(sizes, key=str) == [32, None] and sorted(set(owner)) == [0, 1]
    cks = recover_members(q, photos)
    assert [ck["variant"] for ck in cks] == [m.cfg.name for m in raw]
    session = Session(q, threads=1)
    x_in = torch.from_numpy(np.concatenate([session.preprocess(np.asarray(Image.open(p).convert("RGB"))) for p in photos]))
    for ck, m in zip(cks, raw):
        got = student_from_checkpoint(ck).eval()
        x = F.interpolate(x_in, size=(m.cfg.input_size,) * 2, mode="nearest-exact")
        with torch.no_grad():
            assert (got(x) - m(x)).abs().mean() < 0.03   # int8 rounding of weights only

    # joined again as they are (no runs, so no held-out photos): each keeps the calibration it shipped with
    from edgecut.compress.ensemble import build

    paths = []
    for k, ck in enumerate(cks):
        (tmp_path / f"m{k}").mkdir()
        torch.save(ck, tmp_path / f"m{k}" / "best.pt")
        paths.append((tmp_path / f"m{k}" / "best.pt", ck["input_size"]))
    again = torch.load(build(paths, tmp_path / "again", "duo"), weights_only=False)
    assert [e["calibration"] for e in again["ensemble"]] == cals
    rebuilt = student_from_checkpoint(again).eval()
    fold_into_head(rebuilt, 1.25, 0.75)
    with torch.no_grad():
        assert (rebuilt(x_in) - ens(x_in)).abs().mean() < 0.03


def test_recover_cli_writes_one_run_per_member(members, tmp_path, capsys):
    big, small = members
    a, b = _save(tmp_path / "a", big, BIG), _save(tmp_path / "b", small, SMALL)
    assert main(["compress", "ensemble", str(a), f"{b}@32", "--out", str(tmp_path / "ens"), "--name", "duo",
                 "--no-calibrate-members"]) == 0
    photos = block_photos(tmp_path / "photos", 4)
    assert main(["export", str(tmp_path / "ens" / "best.pt"), "--name", "duo", "--out", str(tmp_path / "x"),
                 "--int8", "--calib", str(tmp_path / "photos"), "--calib-n", "4"]) == 0
    capsys.readouterr()
    assert main(["compress", "recover", str(tmp_path / "x" / "duo-int8"), "--out", str(tmp_path / "r"),
                 "--photos", str(tmp_path / "photos"), "-n", "4"]) == 0
    assert "compress ensemble R0/best.pt@64 R1/best.pt@32" in capsys.readouterr().out
    for name, cfg in (("member0-64", BIG), ("member1-32", SMALL)):
        ck = torch.load(tmp_path / "r" / name / "best.pt", weights_only=False)
        assert ck["variant"] == cfg.name and ck["recovered_from"]["model"] == "duo-int8"


def test_the_shipped_default_recovers_into_its_members(sample_photos):
    """edgecut-duo's own graph (members interleaved by onnxruntime's sort, pruned, channel-padded,
    7-bit): its members, re-calibrated and joined again in torch, give the int8 file's alpha."""
    from edgecut.compress.recover import recover_members
    from edgecut.models import resolve

    path, _ = resolve("edgecut-duo")
    man = Manifest.load(path.parent / "manifest.json")
    cks = recover_members(path.parent, sample_photos[:4])
    assert [ck["input_size"] for ck in cks] == [m["input_size"] for m in man.extra["ensemble"]]
    joined = []
    for ck, entry in zip(cks, man.extra["ensemble"]):
        m = student_from_checkpoint(ck).eval()
        fold_into_head(m, entry["calibration"]["scale"], entry["calibration"]["shift"])
        joined.append(m)
    ens = Ensemble(joined).eval()
    fold_into_head(ens, man.extra["calibration"]["scale"], man.extra["calibration"]["shift"])
    session = Session(path.parent, threads=1)
    for p in sample_photos[4:7]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        with torch.no_grad():
            got = ens(torch.from_numpy(session.preprocess(rgb)))[0, 0].numpy()
        assert np.abs(got - session.infer(rgb)).mean() < 6 / 255   # int8 activations only (1-5/255 from fp32 on the bench)


def test_export_writes_the_shipped_default_again_with_its_calibrations(sample_photos, tmp_path, capsys):
    """`edgecut export edgecut-duo` (no checkpoint, no training photos): an fp32 graph whose alpha is
    the int8 file's up to its activation rounding, so every calibration (each member's and the
    ensemble's) went back in, and a manifest that says what the shipped one said."""
    from edgecut.models import resolve

    path, shipped = resolve("edgecut-duo")
    assert main(["export", "edgecut-duo", "--out", str(tmp_path), "--calib", str(sample_photos[0].parent)]) == 0
    man = Manifest.load(tmp_path / "edgecut-duo" / "manifest.json")
    assert man.precision == "fp32" and man.extra["recovered_from"]["sha256"] == shipped.sha256
    for field in ("teacher", "data", "license", "notes"):
        assert getattr(man, field) == getattr(shipped, field)
    assert man.extra["calibration"] == shipped.extra["calibration"]
    assert [e["source"] for e in man.extra["ensemble"]] == [e["source"] for e in shipped.extra["ensemble"]]
    card = (tmp_path / "edgecut-duo" / "MODEL_CARD.md").read_text()   # the licence points to it
    assert "precision: fp32" in card and shipped.license in card and "every calibration left folded in" in card
    fp32, int8 = Session(tmp_path / "edgecut-duo", threads=1), Session(path.parent, threads=1)
    gaps = [np.abs(fp32.infer(rgb) - int8.infer(rgb)).mean()
            for rgb in (np.asarray(Image.open(p).convert("RGB")) for p in sample_photos[:3])]
    # measured: 1.0, 3.9 and 1.0/255; with the calibrations left out 5.2, 10.1 and 4.9
    assert np.mean(gaps) < 2.5 / 255
    # the shipped model file itself names the model too (it is no torch checkpoint)
    assert main(["export", str(path), "--out", str(tmp_path / "by-file"), "--calib", str(sample_photos[0].parent)]) == 0
    assert (Manifest.load(tmp_path / "by-file" / "edgecut-duo" / "manifest.json").extra["recovered_from"]["sha256"]
            == shipped.sha256)


def test_export_of_a_shipped_model_refuses_what_it_cannot_do(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from edgecut.models import resolve

    assert main(["export", "edgecut-fast", "--calibrate", "--out", str(tmp_path)]) != 0
    assert "calibrated already" in capsys.readouterr().err
    monkeypatch.setenv("EDGECUT_DATA", str(tmp_path / "no-data"))   # a clone without the shared photos
    assert main(["export", "edgecut-fast", "--int8", "--out", str(tmp_path)]) != 0
    assert "pass --calib DIR" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing.pt"), "--out", str(tmp_path)]) != 0
    assert "no such checkpoint, embedded model or model folder" in capsys.readouterr().err
    _, manifest = resolve("edgecut-fast")
    tflite = tmp_path / "fast-tflite"   # a TFLite folder of a student: its weights cannot be read back
    tflite.mkdir()
    (tflite / "model.tflite").write_bytes(b"TFL3")
    replace(manifest, file="model.tflite", format="tflite").save(tflite / "manifest.json")
    assert main(["export", str(tflite), "--out", str(tmp_path / "o")]) != 0
    assert "weights are recovered from the model's ONNX file" in capsys.readouterr().err
