"""Distillation: data discovery, augmentation, the loss, and a resumable few-step run."""
import json

import numpy as np
import pytest
from conftest import labelled_set
from PIL import Image

torch = pytest.importorskip("torch")

from edgecut.compress.data import (  # noqa: E402
    AugmentConfig,
    BatchAugmenter,
    batch_stream,
    find_pairs,
    is_holdout,
    load_all,
    set_weights,
    split_pairs,
)
from edgecut.compress.distill import TrainConfig, train  # noqa: E402
from edgecut.compress.losses import distill_loss  # noqa: E402
from edgecut.models.variants import StudentConfig, register  # noqa: E402

register(StudentConfig(name="test-distill", input_size=32, width=0.25, context_channels=8,
                       decoder_channels=(8, 8, 8, 8)))


@pytest.fixture
def train_dir(tmp_path):
    """Two sets: one with teacher alphas, one with a human mask and one unlabelled photo."""
    rng = np.random.default_rng(0)
    for set_name, kind, n in [("a", "teacher", 12), ("b", "masks", 3)]:
        labelled_set(tmp_path / set_name, n, kind=kind, rng=rng)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "b" / "images" / "unlabelled.jpg")
    return tmp_path


def test_find_pairs_prefers_human_masks_and_skips_unlabelled(train_dir):
    pairs = find_pairs(train_dir)
    assert len(pairs) == 15
    assert all(p.human for p in pairs if p.set == "b")
    assert not any(p.image.stem == "unlabelled" for p in pairs)
    assert len(find_pairs(train_dir, exclude={"0.jpg"})) == 13  # 0.jpg in both sets


def test_find_pairs_uses_one_photo_of_a_name(train_dir, capsys):
    """0.jpg beside 0.png share the one label 0.png: the first by name trains (the one `edgecut label`
    labels and bench scores), the other is named, not trained on against another photo's alpha."""
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(train_dir / "a" / "images" / "0.png")
    pairs = [p for p in find_pairs(train_dir) if p.set == "a"]
    assert len(pairs) == 12 and [p.image.name for p in pairs if p.image.stem == "0"] == ["0.jpg"]
    err = capsys.readouterr().err
    assert "1 photo(s) share a name" in err and "0.png (0.jpg is)" in err


def test_label_roots_replace_teacher_alphas_not_masks(train_dir, tmp_path):
    """A second teacher's labels (`--label-root`) win over the set's teacher/, never over human masks,
    and fill in photos that had none."""
    second = tmp_path / "second"
    for set_name, stems in [("a", ["0", "1"]), ("b", ["0", "unlabelled"])]:
        (second / set_name / "teacher").mkdir(parents=True)
        for stem in stems:
            Image.fromarray(np.full((40, 48), 200, np.uint8)).save(second / set_name / "teacher" / f"{stem}.png")
    by_key = {(p.set, p.image.stem): p for p in find_pairs(train_dir, label_roots=[second])}
    assert len(by_key) == 16   # the unlabelled photo now has an alpha
    assert by_key["a", "0"].alpha.parent == second / "a" / "teacher"
    assert by_key["a", "2"].alpha.parent == train_dir / "a" / "teacher"
    assert by_key["b", "0"].human and by_key["b", "0"].alpha.parent == train_dir / "b" / "masks"
    assert by_key["b", "unlabelled"].alpha.parent == second / "b" / "teacher"


def test_holdout_split_is_stable(train_dir):
    pairs = find_pairs(train_dir)
    t1, h1 = split_pairs(pairs, 0.3)
    t2, h2 = split_pairs(list(reversed(pairs)), 0.3)
    assert {p.image for p in h1} == {p.image for p in h2}
    assert len(t1) + len(h1) == len(pairs) and h1


def test_packed_copy_keeps_pairs_and_split(train_dir, tmp_path):
    """scripts/pack_data.py's layout: WebP photos and lossless WebP alphas under the same stems are
    found, and every photo stays on its side of the held-out split."""
    packed = tmp_path / "packed"
    for p in find_pairs(train_dir):
        kind = "masks" if p.human else "teacher"
        (packed / p.set / "images").mkdir(parents=True, exist_ok=True)
        (packed / p.set / kind).mkdir(exist_ok=True)
        Image.open(p.image).save(packed / p.set / "images" / (p.image.stem + ".webp"), quality=60)
        Image.open(p.alpha).save(packed / p.set / kind / (p.image.stem + ".webp"), lossless=True)
    orig, new = find_pairs(train_dir), find_pairs(packed)
    assert [(p.set, p.image.stem, p.human) for p in orig] == [(p.set, p.image.stem, p.human) for p in new]
    assert [is_holdout(p, 0.3) for p in orig] == [is_holdout(p, 0.3) for p in new]
    a, b = load_all(orig[:1], progress=False)[0][1], load_all(new[:1], progress=False)[0][1]
    assert torch.equal(a, b)  # lossless alpha


def test_worker_batches_are_reproducible(train_dir):
    samples = load_all(find_pairs(train_dir), progress=False)
    cfg = AugmentConfig(size=32)

    def first(workers):
        it = batch_stream(samples, cfg, (0.5,) * 3, (0.5,) * 3, batch_size=3, seed=5, workers=workers)
        return [next(it) for _ in range(4)]

    a, b = first(2), first(2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert a[0][0].shape == (3, 3, 32, 32)
    # worker 0 draws the in-process stream, worker 1 its own: batches 0 and 1 differ
    inproc = first(0)
    assert torch.equal(a[0][0], inproc[0][0]) and not torch.equal(a[0][0], a[1][0])


def test_augmenter_shapes_ranges_and_determinism(train_dir):
    samples = load_all(find_pairs(train_dir), progress=False)
    cfg = AugmentConfig(size=32, composite_p=1.0)
    x1, y1 = BatchAugmenter(samples, cfg, (0.5,) * 3, (0.5,) * 3, seed=3).batch(4)
    x2, y2 = BatchAugmenter(samples, cfg, (0.5,) * 3, (0.5,) * 3, seed=3).batch(4)
    assert x1.shape == (4, 3, 32, 32) and y1.shape == (4, 1, 32, 32)
    assert float(y1.min()) >= 0 and float(y1.max()) <= 1
    assert float(x1.min()) >= -1 - 1e-6 and float(x1.max()) <= 1 + 1e-6
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_pattern_backgrounds_repeat_a_crop_and_are_background(train_dir):
    samples = load_all(find_pairs(train_dir), progress=False)
    aug = BatchAugmenter(samples, AugmentConfig(size=48), (0.0,) * 3, (1.0,) * 3, seed=0)
    for _ in range(3):   # k tiles of side ceil(48 / k): the pattern repeats with that period
        bg = aug._patterns(2, 48)
        period = next(p for p in range(8, 25) if torch.equal(bg[..., :48 - p], bg[..., p:]))
        assert torch.equal(bg[..., :48 - period, :], bg[..., period:, :]) and bg.shape == (2, 3, 48, 48)
    cfg = AugmentConfig(size=48, composite_p=1.0, pattern_p=1.0)
    aug = BatchAugmenter(samples, cfg, (0.0,) * 3, (1.0,) * 3, seed=1)
    aug._foregrounds = lambda b, size: (torch.zeros(b, 3, size, size), torch.zeros(b, 1, size, size))
    _, y = aug.batch(4)        # nothing pasted: a print is background, whatever its motifs
    assert not y.any()
    aug.cfg = AugmentConfig(size=48, composite_p=1.0, pattern_p=0.0)
    _, y = aug.batch(4)        # over photos, their own subjects stay foreground
    assert y.any()


def test_prints_cover_the_subject_below_a_line_and_leave_the_alpha(train_dir):
    samples = load_all(find_pairs(train_dir), progress=False)
    aug = BatchAugmenter(samples, AugmentConfig(size=48), (0.0,) * 3, (1.0,) * 3, seed=2)
    x = torch.rand(3, 3, 48, 48)
    y = torch.zeros(3, 1, 48, 48)
    y[:, :, 8:, 12:36] = 1                       # a subject standing on the bottom edge
    before = x.clone()
    out = aug._printed(x.clone(), y, torch.tensor([True, False, True]))
    assert torch.equal(out[1], before[1])         # not drawn: untouched
    assert torch.equal(out[:, :, :, :12], before[:, :, :, :12])   # background: untouched
    for i in (0, 2):
        changed = (out[i] != before[i]).any(0)    # H,W
        assert changed[40:, 12:36].all() and not changed[:8].any()   # the subject's lower part only
        assert not changed[:4].any() and changed.any(1).nonzero().min() >= 12   # from 25% down at least
    cfg = AugmentConfig(size=48, composite_p=0.0, print_p=1.0)
    _, y1 = BatchAugmenter(samples, cfg, (0.0,) * 3, (1.0,) * 3, seed=4).batch(3)
    cfg = AugmentConfig(size=48, composite_p=0.0, print_p=0.0)
    _, y0 = BatchAugmenter(samples, cfg, (0.0,) * 3, (1.0,) * 3, seed=4).batch(3)
    assert torch.equal(y1, y0)                    # the alpha is the photo's own, print or not


def test_loss_prefers_the_right_answer_and_sharp_edges():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:24, 8:24] = 1
    good, _ = distill_loss((target - 0.5) * 20, target)
    blurred = torch.nn.functional.avg_pool2d(target, 7, 1, 3)
    soft, _ = distill_loss(torch.logit(blurred.clamp(0.01, 0.99)), target)
    bad, _ = distill_loss((0.5 - target) * 20, target)
    assert float(good) < float(soft) < float(bad)


def test_train_checkpoints_logs_and_resumes(train_dir, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(variant="test-distill", data=str(train_dir), out=str(out), steps=4, batch_size=2,
                      warmup=1, eval_every=2, ckpt_every=2, holdout=0.3, threads=1)
    best = train(cfg, progress=False)
    assert best.exists() and (out / "last.pt").exists()
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 4
    cfg.steps = 6
    with open(out / "log.jsonl", "a") as f:     # what a run killed after step 4's checkpoint leaves
        f.write(json.dumps({"step": 5, "loss": 1.0}) + '\n{"step": 6, "lo')
    train(cfg, progress=False)  # resumes at 4, runs 2 more
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in log if "holdout" in r]
    assert evals == [2, 4, 6]
    steps = [r["step"] for r in log]
    assert steps == sorted(set(steps)) and [r for r in log if r["step"] == 5] != [{"step": 5, "loss": 1.0}]
    assert 0 <= log[-1]["holdout"]["iou"] <= 1
    # another --holdout would move trained-on photos into the held-out split best.pt is chosen on
    from edgecut.runtime.errors import EdgecutError
    with pytest.raises(EdgecutError, match="holds out --holdout 0.3 of its photos, not 0.5"):
        train(TrainConfig(**{**cfg.__dict__, "steps": 8, "holdout": 0.5}), progress=False)
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 6
    # A second cycle starts from given weights (marked here) with a fresh schedule in its own folder.
    marked = torch.load(out / "last.pt", weights_only=False)
    key = "encoder.stem.0.weight"
    marked["model"][key].fill_(0.5)
    torch.save(marked, tmp_path / "marked.pt")
    cycle2 = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "cycle2"), "steps": 1,
                            "init": str(tmp_path / "marked.pt")})
    train(cycle2, progress=False)
    after = torch.load(tmp_path / "cycle2" / "last.pt", weights_only=False)
    assert after["step"] == 1
    assert torch.allclose(after["model"][key], torch.full_like(after["model"][key], 0.5), atol=0.01)


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_whole(train_dir, tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError ('file write failed'): it escaped as a traceback
    and left a half-written last.pt.tmp beside the checkpoint a resume needs."""
    from edgecut.runtime.errors import EdgecutError

    out = tmp_path / "run"
    cfg = TrainConfig(variant="test-distill", data=str(train_dir), out=str(out), steps=2, batch_size=2,
                      warmup=1, eval_every=2, ckpt_every=2, holdout=0.3, threads=1)
    train(cfg, progress=False)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(100)          # what a full disk leaves behind
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nmore")

    monkeypatch.setattr(torch, "save", full_disk)
    cfg.steps = 4
    with pytest.raises(EdgecutError, match=r"last\.pt: cannot write \(\[enforce fail.*\)$"):
        train(cfg, progress=False)
    monkeypatch.undo()
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_batch_size_follows_the_device_unless_asked():
    from edgecut.compress.distill import batch_size_for

    assert batch_size_for(torch.device("cpu")) == 16
    assert batch_size_for(torch.device("cuda")) == 128   # no GPU needed to name one
    assert batch_size_for(torch.device("cuda"), 32) == 32


def test_cli_distill_then_export_int8(train_dir, tmp_path, capsys, monkeypatch):
    from edgecut.cli import main
    from edgecut.runtime.manifest import Manifest
    from edgecut.runtime.session import Session

    run = tmp_path / "cli-run"
    assert main(["distill", "--variant", "test-distill", "--data", str(train_dir), "--out", str(run),
                 "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--ckpt-every", "2",
                 "--threads", "1"]) == 0
    out = tmp_path / "models"
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setenv("EDGECUT_MODELS_DIR", str(zoo))
    assert main(["export", str(run / "best.pt"), "--name", "m", "--out", str(out), "--int8",
                 "--calib", str(train_dir), "--calib-n", "4", "--embed", "--default",
                 "--notes", "two test steps on CPU"]) == 0
    assert Manifest.load(out / "m-int8" / "manifest.json").precision == "int8"
    embedded = Manifest.load(zoo / "m" / "manifest.json")
    assert embedded.name == "m" and embedded.precision == "int8"
    assert embedded.notes == "two test steps on CPU" and "two test steps" in (zoo / "m" / "MODEL_CARD.md").read_text()
    assert (zoo / "DEFAULT").read_text().strip() == "m" and (zoo / "m" / "MODEL_CARD.md").is_file()
    alpha = Session("default").alpha(np.zeros((40, 50, 3), np.uint8))  # resolved through the zoo
    assert alpha.shape == (40, 50) and alpha.dtype == np.uint8
    assert main(["export", str(tmp_path / "missing.pt"), "--name", "x"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err


def test_calibration_folds_exactly_into_the_head(train_dir, tmp_path):
    from edgecut.compress.calibrate import calibrate, fold_into_head
    from edgecut.models.student import create_student

    model = create_student("test-distill").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = model.forward_logits(x)
        fold_into_head(model, 1.7, -0.4)
        np.testing.assert_allclose(model.forward_logits(x).numpy(), (1.7 * z - 0.4).numpy(), rtol=1e-4, atol=1e-4)
    run = tmp_path / "run"
    cfg = TrainConfig(variant="test-distill", data=str(train_dir), out=str(run), steps=2, batch_size=2,
                      warmup=1, eval_every=2, ckpt_every=2, holdout=0.5, threads=1)
    train(cfg, progress=False)
    report = calibrate(create_student("test-distill"), run)
    assert report["photos_fit"] == report["photos_checked"] >= 2 and report["check"] == "2-fold"
    # Cross-validated numbers are reported, not asserted: a fit need not help photos it did not see.
    assert set(report["after"]) == {"iou", "mae"} and 0 <= report["after"]["mae"] <= 1
    # A run trained elsewhere: its data path is not here until given.
    conf = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**conf, "data": "/gpu-box/data/train"}))
    with pytest.raises(FileNotFoundError, match="heldout-data"):
        calibrate(create_student("test-distill"), run)
    assert calibrate(create_student("test-distill"), run, data=train_dir)["photos_fit"] >= 1
    # A recovered checkpoint has no run folder: distill's default split of the photos given.
    from edgecut.compress.calibrate import heldout_tensors
    from edgecut.compress.data import find_pairs, split_pairs

    bare = tmp_path / "recovered"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        calibrate(create_student("test-distill"), bare)
    x, _ = heldout_tensors(bare, 32, (0.5,) * 3, (0.25,) * 3, data=train_dir)
    assert len(x) == len(split_pairs(find_pairs(train_dir), 0.03)[1]) >= 1


def test_calibration_that_cross_validates_worse_than_none_is_not_folded(train_dir, tmp_path, monkeypatch):
    from edgecut.compress import calibrate as cal
    from edgecut.models.student import create_student

    run = tmp_path / "run"
    train(TrainConfig(variant="test-distill", data=str(train_dir), out=str(run), steps=2, batch_size=2, warmup=1,
                      eval_every=2, ckpt_every=2, holdout=0.5, threads=1), progress=False)
    model = create_student("test-distill").eval()
    head = model.decoder.head.weight.clone()
    monkeypatch.setattr(cal, "_cross_checked", lambda z, y: {"iou": 0.0, "mae": 1.0})   # the worst possible
    report = cal.calibrate(model, run)
    assert report["applied"] is False and (report["scale"], report["shift"]) == (1.0, 0.0)
    assert torch.equal(model.decoder.head.weight, head)
    monkeypatch.setattr(cal, "_cross_checked", lambda z, y: {"iou": 1.0, "mae": 0.0})   # the best possible
    report = cal.calibrate(model, run)
    assert "applied" not in report and (report["scale"] == 1.0 and report["shift"] == 0.0
                                        or not torch.equal(model.decoder.head.weight, head))


def test_calibration_fit_finds_a_known_logit_shift():
    from edgecut.compress.calibrate import fit_logits

    y = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    logits = torch.logit(y) + 2    # 2 too high: too much foreground, as composites teach
    assert fit_logits(logits, y) == (1.0, -2.0)


def test_calibration_cross_check_scores_each_half_with_the_other_halfs_fit():
    from edgecut.compress.calibrate import _cross_checked, _scores

    y = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    same = torch.logit(y) + 2                                   # one bias: either half's fit undoes it
    assert _cross_checked(same, y)["mae"] < 1e-5
    split = same.clone()
    split[1::2] -= 4                                            # halves biased +2 and -2
    in_sample = _scores(torch.sigmoid(split[0::2] - 2), y[0::2])
    crossed = _cross_checked(split, y)
    assert in_sample[1] < 1e-5 < 0.1 < crossed["mae"]           # each half gets the other's (wrong) shift


def test_minutes_budget_sizes_the_run_and_resumes_with_it(train_dir, tmp_path):
    out = tmp_path / "timed"
    cfg = TrainConfig(variant="test-distill", data=str(train_dir), out=str(out), minutes=0.05, batch_size=2,
                      warmup=1, eval_every=10**6, ckpt_every=5, holdout=0.3, threads=1)
    train(cfg, progress=False)
    last = torch.load(out / "last.pt", weights_only=False)
    assert 21 <= last["step"] == last["steps"] < 10**9  # past the probe, then stopped by the budget
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "holdout" in log[-1]  # the last step still evaluates and saves best.pt
    assert (out / "best.pt").exists()


def test_cli_distill_refuses_a_pattern_fraction_outside_0_1(train_dir, tmp_path, capsys):
    from edgecut.cli import main

    for flag, bad in (("--pattern-bg", "1.5"), ("--print-fg", "-0.1")):
        with pytest.raises(SystemExit) as e:        # a usage error, as a non-number is
            main(["distill", "--variant", "test-distill", "--data", str(train_dir), "--out", str(tmp_path / "r"),
                  flag, bad, "--steps", "1"])
        assert e.value.code == 2
        assert f"argument {flag}: expected a number in [0, 1], got '{bad}'" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_cli_distill_refuses_a_bad_set_weight(train_dir, tmp_path, capsys):
    from edgecut.cli import main

    for bad in ("b=0", "b=x", "=2", "b=inf"):
        assert main(["distill", "--variant", "test-distill", "--data", str(train_dir), "--out", str(tmp_path / "r"),
                     "--set-weight", bad, "--steps", "1"]) == 2
        assert f"--set-weight {bad}" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["distill", "--variant", "test-distill", "--data", str(train_dir), "--out", str(tmp_path / "r"),
                 "--set-weight", "nope=2", "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgecut distill: error: --set-weight: ") and "no photos: nope" in err
