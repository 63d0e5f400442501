"""Quantization-aware fine-tuning: the fake-quantized student behaves like the int8 ONNX model that
onnxruntime makes from it, leaves the checkpoint format alone, and runs end to end from the CLI."""
import json

import numpy as np
import pytest
from conftest import block_photos, labelled_set

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from edgecut.compress import qat  # noqa: E402
from edgecut.compress.export import export_onnx, quantize_int8  # noqa: E402
from edgecut.models.variants import StudentConfig, register  # noqa: E402
from edgecut.runtime.manifest import Manifest  # noqa: E402
from edgecut.runtime.session import Session  # noqa: E402

TINY = register(StudentConfig(name="test-qat", input_size=64, width=0.25, context_channels=16,
                              decoder_channels=(16, 8, 8, 8)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return block_photos(tmp_path_factory.mktemp("qat-photos"), seed=1)


def test_state_dict_untouched_and_disable_restores_float(make_student):
    model = make_student(TINY)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        keys = list(model.state_dict())
        qat.enable(model)
        assert qat.is_enabled(model) and list(model.state_dict()) == keys
        fq = model(x)
        assert not torch.equal(fq, ref) and (fq - ref).abs().mean() < 0.05
        # the head's logits (before the final upsampling) land on a uint8 grid: at most 256 values
        seen = []
        hook = model.decoder.head.register_forward_hook(lambda m, i, o: seen.append(o))
        model(x)
        hook.remove()
        assert torch.unique(seen[0]).numel() <= 256
        qat.disable(model)
        assert not qat.is_enabled(model) and torch.equal(model(x), ref)


def test_fake_quant_weight_matches_onnxruntime_scales(make_student, photos, tmp_path):
    """The per-channel scales QAT rounds with are the ones onnxruntime picks for the folded weights."""
    model = make_student(TINY)
    fp32 = export_onnx(model, tmp_path, "fp32")
    q = quantize_int8(fp32, tmp_path, "int8", photos, compact=False, portable=False)
    graph = onnx.load(str(q / "model.onnx")).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ort_scales = sorted(np.round(init[n.input[1]], 7).tolist() for n in graph.node
                        if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(0)).dtype == np.int8)
    ours = []
    for mod in model.modules():
        if isinstance(mod, qat.ConvBNReLU):
            w, _ = qat._folded(mod[0], mod[1])
        elif mod is model.decoder.head:
            w = mod.weight
        else:
            continue
        ours.append(np.round((w.detach().abs().amax(dim=(1, 2, 3)) / qat.QMAX_W).numpy(), 7).tolist())
    assert len(ours) == len(ort_scales)
    assert np.allclose(np.concatenate(sorted(ours)), np.concatenate(ort_scales), rtol=1e-4)


def test_fake_quant_noise_is_the_size_of_onnxruntime_int8_noise(make_student, photos, tmp_path):
    """Rounding errors compound chaotically, so QAT cannot reproduce int8 bit for bit; what it must
    reproduce is how far int8 moves the alpha from float. (Measured on the default student over 8
    photos: 0.0120 simulated against 0.0122 for onnxruntime; before the decoder's upsampling and
    concatenation were quantized, 0.0076.)"""
    from edgecut.runtime.imageio import load_rgb

    model = make_student(TINY)
    with torch.no_grad():
        model.decoder.head.weight.mul_(40)    # random weights give a near-constant alpha: spread it out
    fp32 = export_onnx(model, tmp_path, "fp32")
    q = quantize_int8(fp32, tmp_path, "int8", photos)     # portable: exact on every CPU, AVX2 included
    x = torch.from_numpy(np.concatenate([Session(fp32).preprocess(load_rgb(p)) for p in photos]))
    int8 = Session(q)
    ort = np.concatenate([int8._backend.run(x[i:i + 1].numpy()) for i in range(len(x))]).reshape(len(x), -1)
    with torch.no_grad():
        flt = model(x).numpy().reshape(len(x), -1)
        qat.enable(model, momentum=1.0)
        model.train()
        model(x)               # observe: with momentum 1 the ranges are this batch's min/max, as minmax calibration
        model.eval()
        fq = model(x).numpy().reshape(len(x), -1)
    ort_noise, qat_noise = np.abs(ort - flt).mean(), np.abs(fq - flt).mean()
    assert ort_noise > 5e-4 and 0.6 < qat_noise / ort_noise < 1.5, (qat_noise, ort_noise)


def test_cli_qat_then_export_int8_at_the_trained_size(tmp_path, capsys):
    from edgecut.cli import main

    data = tmp_path / "train"
    labelled_set(data / "a", 10, size=(48, 56), box=(20, 24))
    run = tmp_path / "float"
    assert main(["distill", "--variant", "test-qat", "--data", str(data), "--out", str(run), "--steps", "2",
                 "--batch-size", "2", "--eval-every", "2", "--threads", "1", "--holdout", "0.3",
                 "--no-progress"]) == 0
    qrun = tmp_path / "qat"
    demo = tmp_path / "demo"   # photos to keep out of training, as `distill --exclude samples` does
    demo.mkdir()
    (demo / "0.jpg").write_bytes(b"")
    assert main(["compress", "qat", str(run / "best.pt"), "--data", str(data), "--out", str(qrun), "--steps", "3",
                 "--batch-size", "2", "--eval-every", "3", "--threads", "1", "--holdout", "0.3",
                 "--input-size", "96", "--exclude", str(demo), "--no-progress"]) == 0
    assert "--input-size 96" in capsys.readouterr().out
    ck = torch.load(qrun / "last.pt", weights_only=False)
    assert ck["qat"] is True and ck["input_size"] == 96 and ck["step"] == 3
    config = json.loads((qrun / "config.json").read_text())
    assert config["qat"] is True and config["exclude"] == ["0.jpg"]
    split = json.loads((qrun / "split.json").read_text())
    assert split["train"] + len(split["holdout"]) == 9 and "a/0.jpg" not in split["holdout"]   # 10 photos, 1 out
    out = tmp_path / "models"
    assert main(["export", str(qrun / "best.pt"), "--name", "m", "--out", str(out), "--int8",
                 "--calib", str(data), "--calib-n", "4"]) == 0
    m = Manifest.load(out / "m-int8" / "manifest.json")
    assert m.input_size == (96, 96) and m.extra["qat"] is True
    from edgecut.compress.model_card import render

    assert "quantization-aware" in render(m)
    assert main(["compress", "qat", str(tmp_path / "nope.pt")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["compress", "qat", str(run / "best.pt"), "--data", str(data), "--input-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["compress", "qat", str(run / "best.pt"), "--data", str(data), "--exclude", str(tmp_path / "no")]) == 1
    assert "--exclude" in capsys.readouterr().err


def test_fake_quant_weight_is_the_shipped_rounding(make_student, photos, tmp_path):
    """What QAT trains against is the weight the int8 file holds: 8-bit steps for the depthwise convs,
    their halves (7-bit, seven_bit.py) for the rest, exactly as the portable export writes them."""
    model = make_student(TINY)
    fp32 = export_onnx(model, tmp_path, "fp32")
    q = quantize_int8(fp32, tmp_path, "int8", photos, compact=False)
    graph = onnx.load(str(q / "model.onnx")).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shipped = [init[n.input[0]].astype(np.float32) * init[n.input[1]].reshape(-1, 1, 1, 1) for n in graph.node
               if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(0)).dtype == np.int8]
    convs = 0
    for mod in model.modules():
        if isinstance(mod, qat.ConvBNReLU):
            conv, (w, _) = mod[0], qat._folded(mod[0], mod[1])
        elif mod is model.decoder.head:
            conv, w = mod, mod.weight
        else:
            continue
        ours = qat.fake_quant_weight(w.detach(), conv.groups).numpy()
        assert any(s.shape == ours.shape and np.allclose(s, ours, rtol=1e-4, atol=1e-7) for s in shipped), conv
        convs += 1
    assert convs == len(shipped)
