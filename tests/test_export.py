"""Export round trip: torch student -> ONNX (fp32, int8) -> the lean runtime gives the same alpha."""
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from edgecut.compress.export import compact_onnx, export_onnx, float_ops, quantize_int8  # noqa: E402
from edgecut.models.variants import StudentConfig, register  # noqa: E402
from edgecut.runtime.manifest import Manifest, sha256_of  # noqa: E402
from edgecut.runtime.session import Session  # noqa: E402

TINY = register(StudentConfig(name="test-tiny", input_size=64, width=0.25, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_student):
    model = make_student(TINY)
    out = tmp_path_factory.mktemp("export")
    return model, export_onnx(model, out, "tiny-fp32"), out


def _photos(tmp_path, n=4):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        a = np.zeros((90, 120, 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[20:70, 30 + 5 * i:90] = rng.integers(0, 255, 3)
        p = tmp_path / f"p{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def test_manifest_is_complete(exported):
    _, folder, _ = exported
    m = Manifest.load(folder / "manifest.json")
    assert m.input_size == (64, 64) and m.output_name == "alpha" and m.precision == "fp32"
    assert m.sha256 == sha256_of(folder / "model.onnx")
    assert m.params > 0 and m.macs > 0 and m.teacher and m.data and m.license


def test_onnx_matches_torch(exported, tmp_path):
    model, folder, _ = exported
    session = Session(folder, threads=1)
    for p in _photos(tmp_path):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        x = session.preprocess(rgb)
        with torch.no_grad():
            want = model(torch.from_numpy(x))[0, 0].numpy()
        got = session.infer(rgb)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_int8_runs_and_stays_close(exported, tmp_path):
    _, folder, out = exported
    photos = _photos(tmp_path, 6)
    q = quantize_int8(folder, out, "tiny-int8", photos)
    m = Manifest.load(q / "manifest.json")
    assert m.precision == "int8" and m.sha256 == sha256_of(q / "model.onnx")
    assert (q / "model.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    fp, i8 = Session(folder, threads=1), Session(q, threads=1)
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        assert np.abs(fp.infer(rgb) - i8.infer(rgb)).mean() < 0.03


def test_compacting_changes_size_not_arithmetic(exported, tmp_path):
    _, folder, out = exported
    photos = _photos(tmp_path, 4)
    full = quantize_int8(folder, out, "tiny-int8-names", photos, compact=False) / "model.onnx"
    small = tmp_path / "compact.onnx"
    compact_onnx(full, small)
    assert small.stat().st_size < 0.95 * full.stat().st_size
    import onnxruntime as ort
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (full, small))
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    assert [i.name for i in b.get_inputs()] == [i.name for i in a.get_inputs()]
    assert np.array_equal(a.run(["alpha"], {"input": x})[0], b.run(["alpha"], {"input": x})[0])


def test_space_to_depth_stem_gives_the_same_alpha(exported, tmp_path):
    from edgecut.compress.space_to_depth import has_space_to_depth_stem, rewrite_stem, stem_weights

    _, folder, out = exported
    full = quantize_int8(folder, out, "tiny-int8-stem", _photos(tmp_path, 4), compact=False) / "model.onnx"
    plain, s2d = tmp_path / "plain.onnx", tmp_path / "s2d.onnx"
    compact_onnx(full, plain)
    assert rewrite_stem(plain, s2d) and has_space_to_depth_stem(s2d) and not has_space_to_depth_stem(plain)
    assert not rewrite_stem(s2d, tmp_path / "twice.onnx")   # the pattern is gone: a no-op
    import onnxruntime as ort
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (plain, s2d))
    for seed in range(3):   # different int8 stems would differ somewhere among these pixels
        x = np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32) * 2
        assert np.array_equal(a.run(["alpha"], {"input": x})[0], b.run(["alpha"], {"input": x})[0])
    # the weight mapping itself, in float: conv3x3/s2 == conv2x2 over SpaceToDepth(2)
    w = np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32))
    want = torch.nn.functional.conv2d(x, torch.from_numpy(w), stride=2, padding=1)
    blocks = torch.nn.functional.pad(torch.nn.functional.pixel_unshuffle(x, 2), (1, 0, 1, 0))
    blocks = blocks.view(1, 3, 4, 9, 9).transpose(1, 2).reshape(1, 12, 9, 9)   # torch: c-major; ONNX: offset-major
    got = torch.nn.functional.conv2d(blocks, torch.from_numpy(stem_weights(w)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_shipped_int8_uses_the_faster_stem(exported, tmp_path):
    _, folder, out = exported
    q = quantize_int8(folder, out, "tiny-int8-shipped", _photos(tmp_path, 4))
    assert Manifest.load(q / "manifest.json").extra["quantization"]["stem"].startswith("space-to-depth")


def test_float_ops_finds_unquantized_nodes(exported):
    _, folder, _ = exported
    ops = float_ops(folder / "model.onnx")  # the fp32 model: everything is float
    assert ops.get("Conv", 0) > 0


def test_model_card_carries_provenance_and_measured_table(exported):
    from edgecut.compress import model_card

    _, folder, _ = exported
    bench = {"command": "edgecut bench accuracy", "machine": {"cpu": "test cpu"}, "models": [
        {"name": "tiny-fp32", "sets": {"horse": {"images": 2, "iou": 0.5, "mae": 0.1, "max_f": 0.6,
                                                  "s_measure": 0.7, "boundary_f": 0.2}},
         "mean": {"iou": 0.5, "mae": 0.1, "max_f": 0.6, "s_measure": 0.7, "boundary_f": 0.2, "images": 2}}]}
    text = model_card.render(Manifest.load(folder / "manifest.json"), bench)
    assert "AGPL-3.0" in text and "research" in text and "sha256" in text
    assert "horse" in text and "0.5000" in text and "edgecut bench accuracy" in text
    souped = Manifest.load(folder / "manifest.json")
    souped.extra = {**souped.extra, "checkpoint_step": 0, "soup": ["a/best.pt", "b/best.pt"]}
    souped.data = "training sets clothing (clothing: CC0 1.0), labelled by the teacher"
    text = model_card.render(souped)
    assert "weight soup (mean of the weights) of 2 runs: a/best.pt, b/best.pt" in text
    assert "step 0" not in text and "CC0 clothing photos add no restriction" in text
    duo = Manifest.load(folder / "manifest.json")
    cal = {"scale": 2.5, "shift": -3.0, "before": {"iou": 0.6, "mae": 0.2}, "after": {"iou": 0.7, "mae": 0.1}}
    duo.extra = {**duo.extra, "checkpoint_step": 0,
                 "ensemble": [{"source": "a/best.pt", "input_size": 64, "pruned": True, "calibration": cal},
                              {"source": "s/best.pt", "input_size": 32, "soup": ["x", "y", "z"]}],
                 "calibration": {**cal, "photos_fit": 9, "check": "2-fold", "applied": False}}
    text = model_card.render(duo)
    assert text.count("An ensemble of 2 students") == 1 and "step 0" not in text
    assert "member 1: `a/best.pt`, run at 64x64, pruned graph; own calibration alpha = sigmoid(2.500 z -3.000)" in text
    assert "member 2: weight soup of 3 runs, run at 32x32" in text
    assert "logit calibration: none" in text and "folded into the head" not in text


def test_model_card_says_a_recovered_member_was_not_trained_since():
    """An ensemble member exported on its own after `compress recover`: its card says where its
    weights came from and counts its pruned graph at the size the counts were taken."""
    from edgecut.compress.model_card import _pruning_line, _training_line
    from edgecut.runtime.manifest import Manifest

    m = Manifest(name="x", input_size=(256, 256), architecture="edgecut-medium", extra={
        "checkpoint_step": 0, "holdout": None,
        "recovered_from": {"model": "edgecut-duo", "sha256": "53da58c7aaaa", "member": 1, "photos": 256},
        "pruned": {"source": "edgecut-duo member 1 (runs/x/best.pt)", "macs": 131e6, "params": 603137,
                   "base_macs": 227e6, "base_params": 1166745, "input_size": 192, "recovered": True}})
    assert _training_line(m) == ("- training: weights recovered from the int8 file of `edgecut-duo` (member 1) "
                                 "(`edgecut compress recover`, sha256 53da58c7), no training since")
    line = _pruning_line(m)
    assert "131M MACs at 192x192 against 227M" in line and "None" not in line and "recovered by" not in line


def test_manifest_data_names_the_sets_a_run_saw(tmp_path):
    from edgecut.compress.export import DEFAULT_DATA, describe_data

    assert describe_data(tmp_path) == DEFAULT_DATA            # a folder that does not say
    (tmp_path / "split.json").write_text(json.dumps({"sets": ["caltech101", "clothing", "imagenette"]}))
    said = describe_data(tmp_path)
    assert said.startswith("training sets caltech101, clothing, imagenette")
    assert "caltech101: research use" in said and "clothing: CC0 1.0" in said and "imagenette: ImageNet" in said
    other = tmp_path / "other"                                 # an ensemble: the union of its runs' sets
    other.mkdir()
    (other / "split.json").write_text(json.dumps({"sets": ["horses", "caltech101"]}))
    assert describe_data(tmp_path, other).startswith("training sets caltech101, clothing, horses, imagenette (")
    assert describe_data(tmp_path, tmp_path / "nothing") == DEFAULT_DATA


def test_stem_rewrite_inverts():
    from edgecut.compress.recover import unstem
    from edgecut.compress.space_to_depth import stem_weights

    w = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(unstem(stem_weights(w)), w)


def test_recover_gives_back_a_trainable_student(exported, tmp_path):
    """A shipped int8 model -> checkpoint -> torch: the int8 model's alpha again, and BatchNorms
    whose batch statistics (training) match their running ones (eval) on the photos they saw."""
    from edgecut.compress.export import student_from_checkpoint
    from edgecut.compress.recover import recover

    model, folder, out = exported
    photos = _photos(tmp_path, 6)
    q = quantize_int8(folder, out, "tiny-int8-rec", photos)
    ck = recover(q, photos)
    assert ck["variant"] == "test-tiny" and ck["input_size"] == 64
    got = student_from_checkpoint(ck).eval()
    i8 = Session(q, threads=1)
    xs = []
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        x = i8.preprocess(rgb)
        xs.append(x)
        with torch.no_grad():
            alpha = got(torch.from_numpy(x))[0, 0].numpy()
            want = model(torch.from_numpy(x))[0, 0].numpy()
        assert np.abs(alpha - i8.infer(rgb)).mean() < 0.03   # int8 rounding of activations only
        assert np.abs(alpha - want).mean() < 0.03            # and of weights
    x = torch.from_numpy(np.concatenate(xs))
    with torch.no_grad():
        eval_out = got(x)
        m2 = student_from_checkpoint(ck).eval()   # statistics measured on these very photos
        m2(x)
        m2.train()
        # photos resized by the recovery as the runtime does: train mode on them = eval mode
        assert torch.allclose(m2(x), eval_out, atol=0.02)


def test_recover_refuses_what_is_not_a_student(tiny_model_dir, tmp_path, capsys):
    from edgecut.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    _photos(photos, 2)
    assert main(["compress", "recover", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                 "--photos", str(photos)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no student variant" in err[0]
    assert not (tmp_path / "r").exists()


def _depthwise_channels(path) -> list:
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    out = []
    for n in g.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1:
            w = init.get(n.input[1])
            if w is None:
                w = init[producers[n.input[1]].input[0]]
            assert w.shape[0] == group
            out.append(group)
    return out


def test_padding_widens_depthwise_streams_with_the_same_sums(exported, tmp_path):
    """The tiny student's stem stream has 8 channels: widened to 16 (stem, depthwise, residual Add,
    expand conv, and a Slice back to 8 for the decoder's Concat), the alpha unchanged."""
    import onnxruntime as ort

    from edgecut.compress.pad_channels import pad_channels, unpad
    from edgecut.compress.recover import onnx_convs
    from edgecut.compress.space_to_depth import rewrite_stem

    _, folder, out = exported
    full = quantize_int8(folder, out, "tiny-int8-pad", _photos(tmp_path, 4), compact=False) / "model.onnx"
    plain, wide = tmp_path / "plain.onnx", tmp_path / "wide.onnx"
    compact_onnx(full, plain)
    rewrite_stem(plain)
    padding = pad_channels(plain, wide)
    before, after = _depthwise_channels(plain), _depthwise_channels(wide)
    assert 8 in before and 8 not in after and len(before) == len(after)
    assert all(a == b or (a % 16 == 0 and a - b < 16) for a, b in zip(after, before))
    assert pad_channels(wide, tmp_path / "twice.onnx") == {}     # nothing left to widen: a no-op
    assert float_ops(wide) == float_ops(plain)                     # the Slice runs on uint8
    # weights cut back by the record equal the unwidened ones
    for (w0, b0), (w1, b1) in zip(onnx_convs(plain), unpad(onnx_convs(wide), padding)):
        assert np.array_equal(w0, w1) and np.array_equal(b0, b1)
    runs = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        a, b = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (plain, wide))
        xs = [np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32) * 2 for seed in range(3)]
        runs[level] = [(a.run(["alpha"], {"input": x})[0], b.run(["alpha"], {"input": x})[0]) for x in xs]
    # the QDQ graph as written (float convolutions between quantize steps): the zero channels add 0
    assert all(np.array_equal(y0, y1) for y0, y1 in runs["ORT_DISABLE_ALL"])
    # onnxruntime's fused uint8 kernels: the same integer sums; a requantization that lands within
    # float rounding of .5 may go either way between kernels of different widths
    assert all(np.abs(y0 - y1).mean() < 2e-3 for y0, y1 in runs["ORT_ENABLE_ALL"])


def test_cli_rewrite_writes_a_faster_copy_once(exported, tmp_path, capsys):
    """A model quantized before the rewrites existed (the plain compact form) gets all three, with its
    manifest brought up to date; a second run finds nothing to do and writes nothing."""
    from edgecut.cli import main

    _, folder, out = exported
    plain = quantize_int8(folder, out, "tiny-int8-old", _photos(tmp_path, 4), compact=False)
    compact_onnx(plain / "model.onnx", plain / "model.onnx")
    from dataclasses import replace

    replace(Manifest.load(plain / "manifest.json"), sha256=sha256_of(plain / "model.onnx")).save(plain / "manifest.json")
    assert main(["compress", "rewrite", str(plain), "--out", str(tmp_path / "p"), "--name", "tiny-new"]) == 0
    assert "convolutions widened: " in capsys.readouterr().out
    new = tmp_path / "p" / "tiny-new"
    m = Manifest.load(new / "manifest.json")
    assert m.sha256 == sha256_of(new / "model.onnx") and m.extra["padding"]["multiple"] == 16
    assert m.extra["quantization"]["stem"].startswith("space-to-depth") and m.extra["quantization"]["uint8_moves"] >= 1
    assert "SpaceToDepth" not in m.extra["quantization"]["float_ops"]   # it moves uint8 now
    assert 8 not in _depthwise_channels(new / "model.onnx")
    a, b = Session(plain, threads=1), Session(new, threads=1)
    rgb = np.asarray(Image.open(_photos(tmp_path, 1)[0]).convert("RGB"))
    assert np.abs(a.infer(rgb) - b.infer(rgb)).mean() < 2e-3
    assert main(["compress", "rewrite", str(new), "--out", str(tmp_path / "q")]) == 0
    assert "nothing to rewrite" in capsys.readouterr().out and not (tmp_path / "q" / "tiny-new").exists()


def test_quantize_before_moves_keeps_every_integer(tmp_path):
    """Q(Transpose(Gather(DQ(Q(x))))) and a SpaceToDepth before a Q: rewritten so that the moves run on
    uint8, the duplicate Q of the input merged, and the output identical to the bit."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgecut.compress.uint8_moves import integer_tensors, quantize_before_moves

    s, z = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z")
    idx = numpy_helper.from_array(np.array([0, 2, 3, 5], np.int64), "idx")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Gather", ["xd", "idx"], ["g"], axis=2),
             helper.make_node("Transpose", ["g"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"]),
             helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["a"]),
             helper.make_node("SpaceToDepth", ["x"], ["sd"], blocksize=2),
             helper.make_node("QuantizeLinear", ["sd", "s", "z"], ["sq"]),
             helper.make_node("DequantizeLinear", ["sq", "s", "z"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 6, 4]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 3, 3])], [s, z, idx])
    src, dst = tmp_path / "m.onnx", tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_before_moves(src, dst) >= 3
    g = onnx.load(str(dst)).graph
    assert [n.op_type for n in g.node].count("QuantizeLinear") == 1        # one Q of the photo
    movers = [n for n in g.node if n.op_type in ("Gather", "Transpose", "SpaceToDepth")]
    assert len(movers) == 3 and all(n.output[0] in integer_tensors(g) for n in movers)
    x = (np.random.default_rng(0).standard_normal((1, 2, 6, 6)) * 4).astype(np.float32)
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x}) for p in (src, dst))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert quantize_before_moves(dst, tmp_path / "again.onnx") == 0


def test_export_widens_and_recover_cuts_back(exported, tmp_path):
    from edgecut.compress.recover import recover

    _, folder, out = exported
    photos = _photos(tmp_path, 4)
    q = quantize_int8(folder, out, "tiny-int8-wide", photos)
    m = Manifest.load(q / "manifest.json")
    assert m.extra["padding"]["convs"] and 8 not in _depthwise_channels(q / "model.onnx")
    ck = recover(q, photos)
    assert ck["model"]["encoder.stem.0.weight"].shape[0] == 8   # the variant's own channel count
