"""Fetch the img.ly IS-Net teacher from its npm data package, the one place it is published.

The package ships the model split into 4 MiB chunks named by their SHA-256, listed in
`dist/resources.json`; we verify every chunk and the total size, join them, and write
`model.onnx` + `manifest.json` atomically into the cache, so `Session(that_dir)` loads it and a
half-written model can never be mistaken for a good one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Optional

from ..runtime.errors import EdgecutError
from ..runtime.manifest import Manifest, sha256_of
from ..runtime.outputs import output_folder
from .teachers import IMGLY_PACKAGE, IMGLY_VARIANTS, imgly_dir, teacher_manifest

RESOURCES = "package/dist/resources.json"


def is_fetched(d: Path) -> bool:
    """Present and whole: the manifest records size and hash of the joined model."""
    model, man = d / "model.onnx", d / "manifest.json"
    if not (model.is_file() and man.is_file()):
        return False
    try:
        m = Manifest.load(man)
    except (ValueError, OSError):
        return False
    return model.stat().st_size == m.extra.get("size") and sha256_of(model) == m.sha256


def npm_pack(package: str, workdir: Path) -> Path:
    if not shutil.which("npm"):
        raise EdgecutError("npm not found; install Node.js/npm or pass --tarball to a downloaded "
                           f"`npm pack {package}` file")
    proc = subprocess.run(["npm", "pack", package, "--silent"], cwd=workdir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecutError(f"npm pack {package} failed: {last}")
    tgz = sorted(workdir.glob("*.tgz"))
    if not tgz:
        raise EdgecutError(f"npm pack {package} produced no tarball")
    return tgz[0]


def _chunk_plan(resources: dict, variant: str) -> tuple:
    key = f"/models/{variant}"
    if key not in resources:
        raise EdgecutError(f"resources.json has no {key}")
    entry = resources[key]
    chunks = entry["chunks"]
    if not isinstance(chunks, list) or not chunks:
        raise ValueError(f"{key}: no list of chunks")
    for i, c in enumerate(chunks):   # each chunk is named by its hash and covers [start, end)
        if not isinstance(c, dict) or not isinstance(c.get("hash"), str) or not c["hash"] or "/" in c["hash"]:
            raise ValueError(f"{key}: chunk {i} has no 'hash'")
        off = c.get("offsets")
        if (not isinstance(off, list) or len(off) != 2 or not all(isinstance(o, int) and not isinstance(o, bool)
                                                                  for o in off) or off[1] < off[0]):
            raise ValueError(f"{key}: chunk {i} has no [start, end] 'offsets'")
    pos = 0
    for c in chunks:   # offsets must tile [0, size) with no gap: else the join is not the model
        start, end = c["offsets"]
        if start != pos:
            raise EdgecutError(f"resources.json: chunk {c['hash'][:12]} starts at {start}, expected {pos}")
        pos = end
    if entry.get("size") is not None and pos != entry["size"]:
        raise EdgecutError(f"resources.json: chunks cover {pos} bytes, size says {entry['size']}")
    return chunks, pos


def check_tarball(tarball, package: str = IMGLY_PACKAGE) -> Path:
    """A --tarball that is there, a file and a tar archive, or one line saying which it is not."""
    tarball = Path(tarball)
    if not tarball.exists():
        raise EdgecutError(f"{tarball}: no such file")
    if tarball.is_dir():
        raise EdgecutError(f"{tarball}: is a folder, not an `npm pack` tarball")
    if not tarball.is_file():   # a FIFO waits for a writer forever, /dev/zero never ends; both are read twice
        raise EdgecutError(f"{tarball}: not a regular file (a pipe or device); pass the downloaded .tgz")
    try:
        ok = tarfile.is_tarfile(tarball)
    except OSError as e:
        raise EdgecutError(f"{tarball}: cannot read ({e.strerror or e})") from None
    if not ok:
        raise EdgecutError(f"{tarball}: not a tar archive (expected the .tgz of `npm pack {package}`)")
    return tarball


def assemble_model(tarball: Path, variant: str, dest: Path) -> tuple:
    """Join the variant's chunks from the tarball into `dest`; returns (size, sha256)."""
    try:
        with tarfile.open(tarball, "r:*") as tar:
            try:
                member = tar.getmember(RESOURCES)
            except KeyError:
                raise EdgecutError(f"{tarball}: no {RESOURCES} in it (not the npm pack of {IMGLY_PACKAGE})") from None
            try:
                resources = json.load(tar.extractfile(member))
                chunks, size = _chunk_plan(resources, variant)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise EdgecutError(f"{tarball}: unreadable {RESOURCES} ({type(e).__name__}: {e})") from None
            except EdgecutError as e:   # no such variant, chunks that do not tile: which tarball says so
                raise EdgecutError(f"{tarball}: {e}") from None
            wanted = {f"package/dist/{c['hash']}" for c in chunks}
            data = {}
            for m in tar:          # one pass in archive order: random access into a .tgz re-inflates
                if m.name in wanted:
                    data[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, zlib.error) as e:   # truncated or corrupt archive
        raise EdgecutError(f"{tarball}: corrupt tar archive ({type(e).__name__}: {e})") from None
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for c in chunks:
            name = f"package/dist/{c['hash']}"
            blob = data.get(name)
            if blob is None:
                raise EdgecutError(f"{tarball.name}: chunk {c['hash'][:12]} missing")
            start, end = c["offsets"]
            if len(blob) != end - start or hashlib.sha256(blob).hexdigest() != c["hash"]:
                raise EdgecutError(f"{tarball.name}: chunk {c['hash'][:12]} is corrupt")
            out.write(blob)
            h.update(blob)
    return size, h.hexdigest()


def fetch_teacher(variant: str = "medium", cache: Optional[os.PathLike] = None,
                  tarball: Optional[os.PathLike] = None, force: bool = False) -> Path:
    """Returns the folder holding model.onnx + manifest.json; does nothing if already whole."""
    if variant not in IMGLY_VARIANTS:
        raise EdgecutError(f"unknown variant {variant!r}; choose {', '.join(IMGLY_VARIANTS)}")
    d = imgly_dir(variant, cache)
    if not force and is_fetched(d):
        return d
    if tarball:
        tarball = check_tarball(tarball)
    output_folder(d)
    with tempfile.TemporaryDirectory(prefix="edgecut-fetch-") as tmp:
        tgz = Path(tarball) if tarball else npm_pack(IMGLY_PACKAGE, Path(tmp))
        part = d / "model.onnx.tmp"
        try:
            size, sha = assemble_model(tgz, variant, part)
            part.replace(d / "model.onnx")
        finally:
            part.unlink(missing_ok=True)
    manifest = teacher_manifest(f"isnet-imgly-{variant}")
    manifest = dataclasses.replace(manifest, sha256=sha, extra={**manifest.extra, "size": size})
    manifest.save(d / "manifest.json")
    return d
