"""`pip install edgecut` is the lean runtime: three dependencies, no torch, the default model inside."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_dependencies_are_numpy_onnxruntime_pillow():
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in _pyproject()["project"]["dependencies"]}
    assert deps == {"numpy", "onnxruntime", "pillow"}


def test_torch_is_pinned_wherever_it_appears():
    extras = _pyproject()["project"]["optional-dependencies"]
    torch_reqs = [r for reqs in extras.values() for r in reqs
                  if re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() == "torch"]
    assert torch_reqs and all(r.replace(" ", "") == "torch==2.13.0" for r in torch_reqs)


def test_runtime_and_cli_never_import_torch_onnx_or_opencv():
    code = (
        "import sys, edgecut, edgecut.runtime, edgecut.cli\n"
        "from edgecut.runtime import Session, remove\n"
        "edgecut.cli.build_parser()\n"
        "import numpy as np\n"
        "s = Session('default', threads=1)\n"
        "a = s.alpha(np.zeros((40, 60, 3), np.uint8))\n"
        "assert a.shape == (40, 60)\n"
        "bad = sorted(m for m in ('torch', 'onnx', 'cv2', 'tqdm') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_wheel_ships_the_embedded_default_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("edgecut-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "edgecut/models/embedded/DEFAULT" in names
    default = (ROOT / "models" / "embedded" / "DEFAULT").read_text().strip()
    for f in ("model.onnx", "manifest.json", "MODEL_CARD.md"):
        assert f"edgecut/models/embedded/{default}/{f}" in names
    assert "edgecut/runtime/session.py" in names and "edgecut/cli.py" in names
    assert not any(n.startswith(("edgecut/tests/", "edgecut/samples/", "edgecut/runs/")) for n in names)
