"""Structured pruning: MACs really drop, channel counts stay multiples of 8 and consistent across
skips, and a pruned checkpoint loads, fine-tunes and exports like any other."""
import json

import numpy as np
import pytest
from conftest import labelled_set

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning", reason="the prune extra is not installed (pip install edgecut[prune])")

from edgecut.compress.export import export_onnx, load_student  # noqa: E402
from edgecut.compress.prune import (Counts, PruneConfig, channel_counts, prune_checkpoint,  # noqa: E402
                                    prune_student, rebuild_pruned, schedule)
from edgecut.models.variants import StudentConfig, register  # noqa: E402

# Wide enough that every layer has channels to lose in steps of 8.
TINY = register(StudentConfig(name="test-prune", input_size=48, width=0.5, context_channels=32,
                              decoder_channels=(32, 16, 16, 16)))


@pytest.fixture
def checkpoint(make_student, tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"model": make_student(TINY).state_dict(), "variant": TINY.name, "step": 7}, path)
    return path


@pytest.fixture
def train_dir(tmp_path):
    labelled_set(tmp_path / "data" / "a", 6, box=(20, 24), at=(10, 12))
    return tmp_path / "data"


def _conv_outs(model):
    return {k: v for k, v in channel_counts(model).items() if k != "decoder.head"}


def test_prune_hits_target_in_multiples_of_8_and_still_runs(make_student):
    model = make_student(TINY)
    base = Counts.of(model)
    after = prune_student(model, target_macs=0.6, importance="l1")
    assert 0.4 * base.macs < after.macs <= 0.6 * base.macs
    assert after.params < base.params
    outs = _conv_outs(model)
    assert all(c % 8 == 0 and c >= 8 for c in outs.values()), outs
    assert any(c < orig for c, orig in zip(outs.values(), _conv_outs(make_student(TINY)).values()))
    assert channel_counts(model)["decoder.head"] == 1
    with torch.no_grad():
        y = model(torch.randn(2, 3, 48, 48))
    assert y.shape == (2, 1, 48, 48) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_params_target_and_other_criteria(make_student):
    model = make_student(TINY)
    base = Counts.of(model)
    after = prune_student(model, target_params=0.7, importance="random")
    assert after.params <= 0.7 * base.params
    bn = make_student(TINY)
    assert prune_student(bn, target_macs=0.9, importance="bn").macs <= 0.9 * base.macs
    with pytest.raises(ValueError, match="taylor"):
        prune_student(make_student(TINY), target_macs=0.5, importance="taylor")
    with pytest.raises(ValueError, match="exactly one"):
        prune_student(make_student(TINY), target_macs=0.5, target_params=0.5)
    with pytest.raises(ValueError, match="fraction"):
        prune_student(make_student(TINY), target_macs=1.5)


def test_schedule_is_linear_in_the_kept_fraction():
    assert schedule(0.6, 1) == [0.6]
    assert np.allclose(schedule(0.6, 2), [0.8, 0.6])
    assert np.allclose(schedule(0.4, 3), [0.8, 0.6, 0.4])


def test_pruned_state_dict_rebuilds_the_same_network(make_student):
    model = make_student(TINY)
    prune_student(model, target_macs=0.5)
    again = rebuild_pruned(TINY.name, model.state_dict()).eval()
    assert channel_counts(again) == channel_counts(model)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_prune_checkpoint_with_finetune_then_export(checkpoint, train_dir, tmp_path):
    from edgecut.compress.distill import TrainConfig
    from edgecut.runtime.manifest import Manifest
    from edgecut.runtime.session import Session

    tcfg = TrainConfig(variant=TINY.name, data=str(train_dir), batch_size=2, lr=1e-3, holdout=0.3, threads=1)
    pcfg = PruneConfig(target_macs=0.6, importance="taylor", steps=2, finetune_steps=2)
    out = prune_checkpoint(checkpoint, tmp_path / "pruned", pcfg, tcfg, progress=False, log=lambda *_: None)
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert record["macs"] <= 0.6 * record["base_macs"] and "loss" in record["rounds"][-1]
    assert record["rounds"][0]["macs"] > record["rounds"][1]["macs"]

    model, ck = load_student(out)
    assert ck["pruned"]["importance"] == "taylor" and ck["step"] == 7
    folder = export_onnx(model, tmp_path / "export", "pruned", extra={"pruned": ck["pruned"]})
    m = Manifest.load(folder / "manifest.json")
    assert m.macs == record["macs"] and m.extra["pruned"]["base_macs"] == record["base_macs"]
    rgb = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    session = Session(folder, threads=1)
    with torch.no_grad():
        want = model(torch.from_numpy(session.preprocess(rgb)))[0, 0].numpy()
    np.testing.assert_allclose(session.infer(rgb), want, atol=1e-4)


def test_a_pruned_checkpoint_keeps_the_size_it_was_trained_at(make_student, tmp_path, capsys):
    """Pruned at 32 px (a distill --input-size 32 run), exported at the variant's 48 px: it was."""
    from edgecut.cli import main
    from edgecut.runtime.manifest import Manifest

    torch.save({"model": make_student(TINY).state_dict(), "variant": TINY.name, "step": 3, "input_size": 32},
               tmp_path / "best.pt")
    assert main(["compress", "prune", str(tmp_path / "best.pt"), "--target-macs", "0.7", "--out",
                 str(tmp_path / "p"), "--no-progress"]) == 0
    assert torch.load(tmp_path / "p" / "pruned.pt", weights_only=False)["input_size"] == 32
    assert main(["export", str(tmp_path / "p" / "pruned.pt"), "--name", "small", "--out", str(tmp_path / "e")]) == 0
    assert Manifest.load(tmp_path / "e" / "small" / "manifest.json").input_size == (32, 32)


def test_cli_prune_then_export(checkpoint, tmp_path, capsys):
    from edgecut.cli import main
    from edgecut.runtime.manifest import Manifest

    out = tmp_path / "p"
    assert main(["compress", "prune", str(checkpoint), "--target-macs", "0.7", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "before:" in text and "after:" in text
    assert main(["export", str(out / "pruned.pt"), "--name", "small", "--out", str(tmp_path / "e")]) == 0
    m = Manifest.load(tmp_path / "e" / "small" / "manifest.json")
    assert m.extra["pruned"]["target_macs"] == 0.7
    assert m.macs <= 0.7 * m.extra["pruned"]["base_macs"]
    # the same weights at a smaller input: the manifest and the runtime follow
    assert main(["export", str(out / "pruned.pt"), "--name", "fast", "--out", str(tmp_path / "e"),
                 "--input-size", "32", "--teacher", "IS-Net and MediaPipe Selfie"]) == 0
    fast = Manifest.load(tmp_path / "e" / "fast" / "manifest.json")
    assert fast.teacher == "IS-Net and MediaPipe Selfie" and "IS-Net, img.ly" in m.teacher   # default when not named
    assert fast.input_size == (32, 32) and fast.extra["trained_input_size"] == 48 and fast.macs < m.macs
    from edgecut.runtime.session import Session
    assert Session(tmp_path / "e" / "fast").infer(np.zeros((20, 30, 3), np.uint8)).shape == (32, 32)
    assert main(["export", str(out / "pruned.pt"), "--name", "bad", "--input-size", "7"]) == 2
    assert "--input-size 7" in capsys.readouterr().err
    # bad input: one clear line, non-zero exit
    assert main(["compress", "prune", str(tmp_path / "nope.pt"), "--target-macs", "0.5"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["compress", "prune", str(checkpoint), "--target-macs", "0.5", "--finetune-steps", "3",
                 "--data", str(tmp_path / "missing")]) == 1
    assert "training folder" in capsys.readouterr().err


def test_counter_matches_a_real_forward_count(make_student):
    from edgecut.compress.prune import _Counter

    model = make_student(TINY)
    counter = _Counter(model)
    prune_student(model, target_macs=0.7)
    assert counter.counts() == Counts.of(model)


def test_cli_lists_every_criterion():
    from edgecut.compress import compress_commands, prune

    assert compress_commands.IMPORTANCES == prune.IMPORTANCES


def test_distill_fine_tunes_and_resumes_a_pruned_checkpoint(checkpoint, train_dir, tmp_path):
    """The long recovery after pruning runs through `distill --init pruned.pt`: its checkpoints keep
    the pruned shapes and record, so a stop resumes and export rebuilds the pruned network."""
    from edgecut.compress.distill import TrainConfig, train

    pruned = prune_checkpoint(checkpoint, tmp_path / "p", PruneConfig(target_macs=0.6), progress=False,
                              log=lambda *_: None)
    shapes = {k: v.shape for k, v in torch.load(pruned, weights_only=False)["model"].items()}
    cfg = TrainConfig(variant=TINY.name, data=str(train_dir), out=str(tmp_path / "ft"), steps=2, batch_size=2,
                      holdout=0.3, eval_every=1, ckpt_every=1, threads=1, init=str(pruned))
    best = train(cfg, progress=False)
    cfg.steps = 3                       # resume from last.pt (pruned shapes) for one more step
    train(cfg, progress=False)
    last = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)
    assert last["step"] == 3 and last["pruned"]["target_macs"] == 0.6
    assert {k: v.shape for k, v in last["model"].items()} == shapes
    model, ck = load_student(best)
    assert ck["pruned"] and Counts.of(model).macs <= 0.6 * Counts.of(load_student(checkpoint)[0]).macs
