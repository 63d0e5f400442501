"""Where a verb writes, checked before it starts the work: a folder it cannot create or a file it
cannot write is one line at the start, not a traceback after an hour of labelling or benchmarking,
and an output that is one of the verb's own inputs is refused rather than replaced."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Union

from .errors import EdgecutError

PathLike = Union[str, os.PathLike]


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def output_folder(path: PathLike) -> Path:
    """Create the folder (and its parents) or say in one line why it cannot be."""
    path = Path(path).expanduser()
    if str(path) in ("", "."):
        return Path(".")
    if path.exists() and not path.is_dir():
        kind = "a file" if path.is_file() else "a device, pipe or socket"
        raise EdgecutError(f"{path}: is {kind}, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".edgecut-write-check.{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise EdgecutError(f"{path}: cannot write into this folder ({_reason(e)})") from None
    return path


def refuse_special(path: PathLike) -> Path:
    """Refuse a target that exists and is not a regular file. Outputs are written to a temp file
    and renamed over the target, and renaming over /dev/full or a named pipe replaces the device
    node itself (as root, in /dev) with a file of results instead of writing into it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        if path.is_dir():
            raise EdgecutError(f"{path}: is a directory, not a file")
        raise EdgecutError(f"{path}: is a device, pipe or socket, not a regular file (name a file)")
    return path


def output_file(path: PathLike) -> Path:
    """Check that a file can be written here (its folder created if need be), before the work."""
    path = Path(path).expanduser()
    if path.name == "":
        raise EdgecutError(f"{path}: names a folder, not a file")
    refuse_special(path)
    output_folder(path.parent)
    return path


def same_file(a: PathLike, b: PathLike) -> bool:
    """os.path.samefile, False where either path is missing or unreadable."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(targets: Iterable[PathLike], inputs: Iterable[PathLike], hint: str = "pass another --out") -> None:
    """Refuse to start when a file the verb will write (`targets`) is one of its inputs: a model
    folder written over itself, a run folder whose best.pt is the --init checkpoint."""
    inputs = [Path(p).expanduser() for p in inputs]
    for t in targets:
        t = Path(t).expanduser()
        for src in inputs:
            if same_file(t, src) or (src.is_dir() and t.exists() and same_file(t.parent, src)):
                raise EdgecutError(f"{t}: would overwrite the input {src}; {hint}")


def copy_folder(src: PathLike, dst: PathLike) -> Path:
    """shutil.copytree that fails with the first file's OSError itself (errno, strerror, file name),
    so a full disk is said in one line: copytree gathers failures into a shutil.Error of strings."""
    failures = []

    def copy(s, d):
        try:
            return shutil.copy2(s, d)
        except OSError as e:
            failures.append(e)
            raise

    try:
        shutil.copytree(src, dst, copy_function=copy)
    except shutil.Error:
        if failures:
            raise failures[0] from None
        raise
    return Path(dst)


def replace_folder(work: PathLike, dest: PathLike) -> Path:
    """Put a finished folder in place of `dest` (same file system), keeping the old one until the
    new one is there: removing `dest` first left no model at all when the rename then failed (or
    the run was stopped between the two), where a user had a working one before."""
    work, dest = Path(work), Path(dest)
    aside = None
    if dest.exists() or dest.is_symlink():
        aside = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, aside)
    try:
        os.rename(work, dest)
    except OSError:
        if aside is not None:
            os.rename(aside, dest)
        raise
    if aside is not None and aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    elif aside is not None:
        aside.unlink()
    return dest
