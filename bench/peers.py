"""Peers: other on-device segmenters we benchmark against, run by our own runtime.

A peer is one Manifest plus where its file is published; `edgecut fetch-peer NAME` puts the file
and that manifest in a cache folder, and from then on the folder is a model like any other
(`--model peer:NAME`, or the folder's path) for `bench accuracy`, `bench latency`, `bench report`
and even `edgecut remove`. Nothing of a peer is shipped or committed.

MediaPipe Selfie Segmentation (Apache-2.0) ships its two .tflite files in the npm package
`@mediapipe/selfie_segmentation`: the square one takes 256x256 RGB in [0, 1] (NHWC) and returns
the person probability (sigmoid applied) as `activation_10`; it needs the
Convolution2DTransposeBias custom op, which ai-edge-litert has and tflite-runtime 2.14 lacks.
"""
from __future__ import annotations

import dataclasses
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..runtime.errors import EdgecutError
from ..runtime.manifest import Manifest, sha256_of
from ..runtime.outputs import replace_folder

PEER_PREFIX = "peer:"
MEDIAPIPE_PACKAGE = "@mediapipe/selfie_segmentation@0.1.1675465747"


@dataclass(frozen=True)
class Peer:
    package: str          # npm package@version holding the file
    member: str           # path of the model file inside the package tarball
    manifest: Manifest


def _mediapipe(name: str, member: str, size: tuple) -> Peer:
    return Peer(MEDIAPIPE_PACKAGE, f"package/{member}", Manifest(
        name=name, file=member, format="tflite", precision="fp16",   # fp16 weights, fp32 compute
        input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layout="NHWC",
        output_activation="none", architecture="MediaPipe Selfie Segmentation (MobileNetV3-like)",
        teacher="", data="Google's selfie data (undisclosed); people only",
        license="Apache-2.0", notes=f"From the npm package {MEDIAPIPE_PACKAGE}; a benchmark peer, not shipped.",
        extra={"source": MEDIAPIPE_PACKAGE, "peer": True}))


PEERS = {
    "mediapipe-selfie": _mediapipe("mediapipe-selfie", "selfie_segmentation.tflite", (256, 256)),
    "mediapipe-selfie-landscape": _mediapipe("mediapipe-selfie-landscape",
                                             "selfie_segmentation_landscape.tflite", (144, 256)),
}


def peer_dir(name: str, cache: Optional[Path] = None) -> Path:
    from ..compress.teachers import cache_root   # torch-free, like the rest of teachers.py

    return (Path(cache) if cache else cache_root() / "peers") / name


def _peer(name: str) -> Peer:
    if name.startswith(PEER_PREFIX):
        name = name[len(PEER_PREFIX):]
    try:
        return PEERS[name]
    except KeyError:
        raise EdgecutError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None


def fetch_peer(name: str, cache: Optional[Path] = None, tarball: Optional[Path] = None) -> Path:
    """npm pack the peer's package (or use a downloaded tarball), keep its model file and write a
    manifest beside it; the folder is complete or absent (written to a temp folder, then renamed)."""
    from ..compress.fetch_teacher import check_tarball, npm_pack

    peer = _peer(name)
    dest = peer_dir(peer.manifest.name, cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tgz = check_tarball(tarball, peer.package) if tarball else npm_pack(peer.package, Path(tmp))
        work = Path(tmp) / "out"
        work.mkdir()
        try:
            with tarfile.open(tgz) as tar:
                src = tar.extractfile(peer.member)
                if src is None:
                    raise KeyError(peer.member)
                with open(work / peer.manifest.file, "wb") as f:
                    shutil.copyfileobj(src, f)
        except (KeyError, tarfile.TarError) as e:
            raise EdgecutError(f"{tgz}: no {peer.member} in the package ({e})") from None
        except (EOFError, zlib.error) as e:   # a download cut short passes is_tarfile on its first block
            raise EdgecutError(f"{tgz}: truncated or damaged archive ({e}); download it again") from None
        model = work / peer.manifest.file
        with open(model, "rb") as f:
            head = f.read(8)
        if model.suffix == ".tflite" and head[4:8] != b"TFL3":   # the flatbuffer's file identifier
            raise EdgecutError(f"{tgz}: {peer.member} is not a TFLite model; the cached peer is left as it was")
        dataclasses.replace(peer.manifest, sha256=sha256_of(model)).save(work / "manifest.json")
        replace_folder(work, dest)
    return dest


def resolve_peer(spec: str) -> Path:
    """`peer:NAME` -> its fetched folder, with the command that fetches it when it is missing."""
    peer = _peer(spec)
    d = peer_dir(peer.manifest.name)
    if not (d / "manifest.json").is_file():
        raise EdgecutError(f"peer {peer.manifest.name} is not in {d}; run `edgecut fetch-peer "
                           f"{peer.manifest.name}` first")
    return d
