"""Shared fixtures: a tiny real ONNX model with a known right answer, and photos to feed it.

The tiny model is a real exported conv net whose weights are set by hand so that it means
something: alpha = sigmoid(20 * relu(R - G) - 8) on [0, 1] inputs, i.e. "red things are the
subject". Tests can then check not just shapes but that the cutout is where the red disk is,
without waiting for the trained default model.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecut.runtime.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
TINY_INPUT = (64, 64)


def _export_tiny(path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()
        net[0].weight[0, 0, 1, 1] = 1.0    # channel 0 = R - G at the centre tap
        net[0].weight[0, 1, 1, 1] = -1.0
        net[2].weight.zero_()
        net[2].weight[0, 0] = 20.0
        net[2].bias.fill_(-8.0)
    torch.onnx.export(net, torch.zeros(1, 3, *TINY_INPUT), str(path), opset_version=17,
                      input_names=["input"], output_names=["alpha"], dynamo=False)


def tiny_manifest(**kw) -> Manifest:
    base = dict(name="tiny", input_size=TINY_INPUT, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                output_name="alpha", architecture="2-layer conv (test fixture)", params=21,
                license="Apache-2.0")
    base.update(kw)
    return Manifest(**base)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import warnings

    d = tmp_path_factory.mktemp("tiny_model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
        _export_tiny(d / "model.onnx")
    tiny_manifest().save(d / "manifest.json")
    (d / "MODEL_CARD.md").write_text("# tiny\nTest fixture, not a real model.\n")
    return d


@pytest.fixture(scope="session")
def tiny_session(tiny_model_dir):
    from edgecut.runtime import Session

    return Session(tiny_model_dir, threads=1)


@pytest.fixture
def model_zoo(tiny_model_dir, tmp_path, monkeypatch) -> Path:
    """An embedded-models folder holding the tiny model as the default (EDGECUT_MODELS_DIR)."""
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_model_dir, zoo / "tiny")
    (zoo / "DEFAULT").write_text("tiny\n")
    monkeypatch.setenv("EDGECUT_MODELS_DIR", str(zoo))
    return zoo


def synthetic_photo(size=(320, 240), seed=0) -> tuple:
    """A red disk on a green-blue gradient with mild noise -> (RGB uint8 array, true mask bool)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = w * 0.5, h * 0.5, min(w, h) * 0.3
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    rng = np.random.default_rng(seed)
    rgb = np.empty((h, w, 3), np.float32)
    rgb[..., 0] = 30
    rgb[..., 1] = 120 + 100 * xx / w
    rgb[..., 2] = 60 + 120 * yy / h
    rgb[disk] = (210, 40, 50)
    rgb += rng.normal(0, 4, rgb.shape)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), disk


def block_photos(folder, n: int = 6, name: str = "p{}.png", seed: int = 0) -> list:
    """n small noisy photos of a coloured block on a flat background, saved as PNGs: calibration
    photos for the quantization tests (a block that slides across them varies the activations)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = np.zeros((60, 80, 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[15:45, 20 + 4 * i:70] = rng.integers(0, 255, 3)
        a = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
        paths.append(folder / name.format(i))
        Image.fromarray(a).save(paths[-1])
    return paths


def labelled_set(folder, n: int, size=(40, 48), box=(15, 20), at=None, kind: str = "teacher", rng=None) -> Path:
    """A training set in `edgecut distill`'s layout: folder/images/{i}.jpg, dark noise with a bright box,
    and folder/<kind>/{i}.png, the box's alpha. The box sits at `at` (y, x), or where rng puts it."""
    rng = rng if rng is not None else np.random.default_rng(0)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True)
    (folder / kind).mkdir()
    h, w = box
    for i in range(n):
        img = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
        alpha = np.zeros(size, np.uint8)
        y, x = at if at is not None else rng.integers(5, 20, 2)
        img[y:y + h, x:x + w] += 150
        alpha[y:y + h, x:x + w] = 255
        Image.fromarray(img).save(folder / "images" / f"{i}.jpg")
        Image.fromarray(alpha).save(folder / kind / f"{i}.png")
    return folder


@pytest.fixture
def photo_array():
    return synthetic_photo()


@pytest.fixture
def photo_path(tmp_path) -> Path:
    rgb, _ = synthetic_photo()
    p = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(p, quality=95)
    return p


@pytest.fixture(scope="session")
def sample_photos() -> list:
    """Real CC0 photos in samples/ at the repo root (skipped where absent)."""
    d = REPO / "samples"
    photos = sorted(p for p in d.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")) if d.is_dir() else []
    if not photos:
        pytest.skip("no sample photos in samples/")
    return photos


def jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def make_student():
    """Factory: a student of a (tiny, registered) variant in eval mode with seeded weights and
    non-trivial BatchNorm statistics, so exports really fold BN instead of an identity."""
    torch = pytest.importorskip("torch")
    from edgecut.models.student import create_student

    def make(cfg):
        torch.manual_seed(0)
        model = create_student(cfg).eval()
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        return model

    return make
