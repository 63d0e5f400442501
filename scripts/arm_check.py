#!/usr/bin/env python3
"""Prove the lean runtime on 64-bit ARM without ARM hardware: `make arm-check`.

Builds a Debian arm64 root file system with debootstrap, runs it through qemu-user (binfmt_misc),
installs the project's own wheel there with pip (so numpy, Pillow and onnxruntime are PyPI's
aarch64 wheels, exactly what a Raspberry Pi 4/5 on 64-bit Raspberry Pi OS gets), cuts out the
sample photos under emulation and compares the alphas with the x86 ones from the host.

Why these tolerances: resizing and upsampling are deterministic numpy/Pillow code, and fp32
onnxruntime agrees bit for bit here, so a difference means an int8 kernel rounds differently on
ARM. Two did before int8 models were quantized "portable" (compress/portable.py): uint8 Resize and
QLinearAdd. One flipped step spread through the network to mean 1.47/255, max 171/255 on the
samples. With Resize in float and one shared scale per residual group, int8 arithmetic is exact
and the alphas are identical (0/255). The limits stay loose enough for a future kernel that
rounds a tie differently, and tight enough to catch anything that changes the answer.

Needs root (debootstrap, chroot, mounts) and Debian's package registry. The root file system
lives in .cache/arm64/ (git-ignored) and is reused: a warm re-run skips debootstrap and only
reinstalls the wheel. Exit status: 0 match, 1 mismatch, 2 the environment could not be built.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEAN_TOL = 1.0      # of 255
MAX_TOL = 8.0       # of 255
LARGE_SCALE = 5     # the enlarged sample: 1200x1600, so the guided filter runs (see add_large_photo)
SUITE = "bookworm"  # Debian 12: python3.11, the Python of Raspberry Pi OS (bookworm) too
MIRROR = "http://deb.debian.org/debian"
READY = ".edgecut-rootfs-ready"   # written after a complete debootstrap
PACKAGES = ("python3", "python3-venv", "ca-certificates")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
IN_ROOT = "/edgecut-check"         # where the wheel, photos and model go inside the rootfs
VENV = "/opt/edgecut-venv"
# The emulated CPUs: qemu models each one's instruction set (a76 has the int8 dot-product
# instructions, a72 does not), so onnxruntime takes the kernels the real board would take.
CPUS = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                            "asimdrdm lrcpc dcpop asimddp", "Raspberry Pi 5"),
}


class Failed(Exception):
    """The environment could not be built (exit 2), as opposed to a mismatch (exit 1)."""


def say(msg: str) -> None:
    print(f"arm-check: {msg}", flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(str(c) for c in cmd))
    r = subprocess.run([str(c) for c in cmd], **kw)
    if r.returncode != 0:
        raise Failed(f"command failed (exit {r.returncode}): {' '.join(str(c) for c in cmd)}")
    return r


class Stopwatch:
    def __init__(self):
        self.stages = []

    def __call__(self, name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.stages.append((name, time.perf_counter() - t))
        return out


# --- the host: tools and binfmt ----------------------------------------------------------------
def ensure_tools() -> None:
    """qemu-user-static and debootstrap from Debian's registry, when missing."""
    missing = [p for p, exe in (("qemu-user-static", "qemu-aarch64-static"), ("debootstrap", "debootstrap"))
               if shutil.which(exe) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Failed(f"install {' '.join(missing)} (no apt-get here)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_binfmt() -> None:
    """aarch64 ELF files run through qemu, also when exec'd from inside the chroot.

    The F flag makes the kernel open the interpreter now, so the rootfs need not contain qemu.
    Containers and machines without systemd-binfmt have binfmt_misc unmounted: mount it.
    """
    if not (BINFMT_DIR / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
    entry = BINFMT_DIR / "qemu-aarch64"
    if entry.exists():
        text = entry.read_text()
        flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags:")), "")
        if "F" in flags:
            if "enabled" not in text:
                entry.write_text("1")
            return
        say("qemu-aarch64 is registered without the F flag (the chroot has no qemu): re-registering")
        entry.write_text("-1")
    if not QEMU_CONF.is_file():
        raise Failed(f"{QEMU_CONF} missing: is qemu-user-static installed?")
    (BINFMT_DIR / "register").write_text(QEMU_CONF.read_text().strip())


# --- the rootfs ----------------------------------------------------------------------------------
def mounted_under(root: Path) -> list:
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == str(root) or p.startswith(str(root) + "/")]


def ensure_rootfs(root: Path, mirror: str) -> bool:
    """debootstrap once; a half-built rootfs (interrupted run) is removed and rebuilt."""
    if (root / READY).is_file():
        return False
    if root.exists():
        if mounted_under(root):
            raise Failed(f"{root} has mounts under it; unmount them before it can be rebuilt")
        say(f"removing incomplete rootfs {root}")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / "debootstrap.log"
    say(f"debootstrap {SUITE} arm64 into {root} (log: {log}; several minutes under emulation)")
    with open(log, "w") as f:
        r = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                            f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
                           stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
        raise Failed(f"debootstrap failed (exit {r.returncode}); last lines of {log}:\n{tail}")
    (root / READY).write_text(f"{SUITE} arm64 minbase +{','.join(PACKAGES)}\n")
    return True


def fake_cpuinfo(cpu: str, path: Path) -> Path:
    """The /proc/cpuinfo the emulated board would show.

    qemu-user 7.2 (Debian 12) passes the host's x86 /proc/cpuinfo through; onnxruntime's cpuinfo
    library then finds no ARM core and crashes at import (SIGSEGV). qemu >= 8.2 emulates the file
    itself; until then the chroot gets this one, bind-mounted over /proc/cpuinfo.
    """
    part, features, board = CPUS[cpu]
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n")
    text = "\n".join(block.format(i=i, features=features, part=part) for i in range(n))
    path.write_text(text + f"\nModel\t\t: {board} ({cpu}, emulated by qemu)\n")
    return path


def chroot(root: Path, script: str, cpu: str = "cortex-a72") -> subprocess.CompletedProcess:
    """A shell script inside the rootfs, in a private mount namespace: /proc, /sys and /dev are
    mounted for it and vanish with it, so no run (even a killed one) leaves mounts behind."""
    cpuinfo = fake_cpuinfo(cpu, root.parent / f"cpuinfo-{cpu}")
    inner = (f"mount -t proc proc '{root}/proc' && mount --bind '{cpuinfo}' '{root}/proc/cpuinfo' && "
             f"mount -t sysfs sys '{root}/sys' && mount --rbind /dev '{root}/dev' && "
             f"exec chroot '{root}' /bin/sh -euc \"$0\"")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8",
           "QEMU_CPU": cpu, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180",
           "PIP_CERT": "/etc/ssl/certs/host-ca.crt"}
    cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner, script]
    say(f"(aarch64, {cpu}) " + " ".join(script.split()))
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        raise Failed(f"command inside the arm64 rootfs failed (exit {r.returncode})")
    return r


# --- the project -----------------------------------------------------------------------------------
def build_wheel(dist: Path) -> Path:
    shutil.rmtree(dist, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", dist])
    (wheel,) = dist.glob("edgecut-*.whl")
    return wheel


def resolve_model(spec: str) -> Path:
    """The model's folder (model file + manifest.json), to copy into the rootfs."""
    from edgecut.models import resolve

    model_file, _ = resolve(spec)
    folder = model_file.parent
    if not (folder / "manifest.json").is_file():
        raise Failed(f"{model_file}: arm-check needs a model folder with manifest.json")
    return folder


def embedded_names() -> list:
    """Every model the package ships: each must give the same alpha on ARM."""
    from edgecut.models import list_models

    return [m.name for m in list_models()]


def add_large_photo(photos: Path, scale: int = LARGE_SCALE) -> None:
    """The samples are 320 px, where the runtime stretches the matte bilinearly; one enlarged copy
    (>= 4x the model's side) makes the guided-filter upsampling run on ARM too."""
    from PIL import Image

    first = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    with Image.open(first) as im:
        big = im.convert("RGB").resize((im.width * scale, im.height * scale), Image.BICUBIC)
    big.save(photos / f"large_{first.stem}.jpg", quality=92)


def stage_inputs(root: Path, wheel: Path, samples: Path) -> Path:
    """Wheel and photos into the rootfs; returns the staged photos (both sides read them)."""
    dst = root / IN_ROOT.lstrip("/")
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "wheel").mkdir(parents=True)
    shutil.copy2(wheel, dst / "wheel" / wheel.name)
    shutil.copytree(samples, dst / "samples")
    add_large_photo(dst / "samples")
    # The host's CA bundle: where PyPI is reached through a TLS proxy, its CA is only in there.
    host_ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if host_ca.is_file():
        shutil.copy2(host_ca, root / "etc/ssl/certs/host-ca.crt")
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    (dst / "constraints.txt").write_text(host_versions())
    return dst / "samples"


def stage_model(root: Path, model: Path) -> None:
    """The model folder to check next, where `remove_in_root` reads it."""
    dst = root / IN_ROOT.lstrip("/") / "model"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(model, dst)


def host_versions() -> str:
    """pip constraints pinning the ARM side to the host's numpy, Pillow and onnxruntime, so the
    comparison measures the architecture, not a version difference."""
    from importlib.metadata import version

    return "".join(f"{name}=={version(name)}\n" for name in ("numpy", "pillow", "onnxruntime"))


def install_in_root(root: Path, wheel_name: str) -> None:
    """The project's wheel with its dependencies from PyPI (aarch64 wheels); the venv is kept, so a
    re-run only reinstalls edgecut itself."""
    chroot(root, f"""
        [ -x {VENV}/bin/python ] || python3 -m venv {VENV}
        [ -f /etc/ssl/certs/host-ca.crt ] || unset PIP_CERT
        {VENV}/bin/pip install -q -c {IN_ROOT}/constraints.txt {IN_ROOT}/wheel/{wheel_name}
        {VENV}/bin/pip install -q --force-reinstall --no-deps {IN_ROOT}/wheel/{wheel_name}
    """)


def remove_in_root(root: Path, threads: int, cpu: str) -> Path:
    """`edgecut remove` on the photos under emulation of `cpu`; returns the host path of the masks."""
    out = f"{IN_ROOT}/out-{cpu}"
    chroot(root, f"""
        {VENV}/bin/python -c 'import platform, onnxruntime, numpy, PIL; \
print("arm-check: inside:", platform.machine(), "Python", platform.python_version(), \
"onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__, "Pillow", PIL.__version__)'
        rm -rf {out}
        {VENV}/bin/edgecut remove {IN_ROOT}/samples -o {out} --mask --model {IN_ROOT}/model \
            --threads {threads} --jobs 1
    """, cpu)
    return root / out.lstrip("/")


def remove_on_host(samples: Path, out: Path, model: Path, threads: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    exe = [sys.executable, "-m", "edgecut.cli"]
    run([*exe, "remove", samples, "-o", out, "--mask", "--model", model,
         "--threads", threads, "--jobs", "1"])


# --- the comparison --------------------------------------------------------------------------------
def compare(x86: Path, arm: Path, label: str, mean_tol: float = MEAN_TOL, max_tol: float = MAX_TOL) -> bool:
    """Per photo and overall mean/max |alpha difference| (0..255); True when within the limits."""
    import numpy as np
    from PIL import Image

    names = sorted(p.relative_to(x86) for p in x86.rglob("*.png"))
    if not names:
        raise Failed(f"no x86 masks in {x86}")
    ok, total_abs, total_px, worst, beyond = True, 0.0, 0, 0, 0
    width = max(len(str(n)) for n in names + ["overall"])
    print(f"\n{label} vs x86  (|alpha difference| of 255; limits: mean {mean_tol:g}, max {max_tol:g})")
    print(f"{'photo'.ljust(width)}  {'mean':>8}  {'max':>4}")
    for name in names:
        a_path = arm / name
        if not a_path.is_file():
            print(f"{str(name).ljust(width)}  missing on aarch64")
            ok = False
            continue
        a = np.asarray(Image.open(x86 / name), dtype=np.int16)
        b = np.asarray(Image.open(a_path), dtype=np.int16)
        if a.shape != b.shape:
            print(f"{str(name).ljust(width)}  shape {b.shape} != {a.shape}")
            ok = False
            continue
        d = np.abs(a - b)
        mean, mx = float(d.mean()), int(d.max())
        total_abs += float(d.sum())
        total_px += d.size
        worst = max(worst, mx)
        beyond += int((d > max_tol).sum())
        flag = "" if mean <= mean_tol and mx <= max_tol else "  MISMATCH"
        ok = ok and not flag
        print(f"{str(name).ljust(width)}  {mean:8.4f}  {mx:4d}{flag}")
    overall = total_abs / max(1, total_px)
    ok = ok and overall <= mean_tol and worst <= max_tol
    print(f"{'overall'.ljust(width)}  {overall:8.4f}  {worst:4d}  ({len(names)} photos, {total_px} pixels, "
          f"{100.0 * beyond / max(1, total_px):.2f}% beyond {max_tol:g})\n")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="model to check: embedded name or model folder; repeatable "
                         "(default: $ARM_CHECK_MODEL, else every embedded model)")
    ap.add_argument("--samples", type=Path, default=REPO / "samples")
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "arm64",
                    help="rootfs and work files (default: .cache/arm64)")
    ap.add_argument("--mirror", default=os.environ.get("ARM_CHECK_MIRROR", MIRROR))
    ap.add_argument("--cpus", default="cortex-a72,cortex-a76",
                    help=f"emulated CPUs, comma-separated, from {', '.join(CPUS)} (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mean-tol", type=float, default=MEAN_TOL, help="mean |diff| limit, of 255 (default: %(default)s)")
    ap.add_argument("--max-tol", type=float, default=MAX_TOL, help="max |diff| limit, of 255 (default: %(default)s)")
    args = ap.parse_args(argv)
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    unknown = [c for c in cpus if c not in CPUS]
    if unknown or not cpus:
        ap.error(f"--cpus: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(CPUS)}")
    if os.geteuid() != 0:
        print("arm-check: error: needs root (debootstrap, chroot, binfmt_misc); run it with sudo",
              file=sys.stderr)
        return 2
    root = args.cache / "rootfs"
    clock = Stopwatch()
    t0 = time.perf_counter()
    try:
        specs = args.model or ([os.environ["ARM_CHECK_MODEL"]] if os.environ.get("ARM_CHECK_MODEL")
                               else embedded_names())
        models = [resolve_model(spec) for spec in specs]
        say(f"models {', '.join(str(m) for m in models)}; photos {args.samples}; rootfs {root}")
        clock("host tools", ensure_tools)
        clock("binfmt", ensure_binfmt)
        fresh = clock("debootstrap", ensure_rootfs, root, args.mirror)
        say("rootfs built" if fresh else "rootfs present, debootstrap skipped")
        wheel = clock("wheel", build_wheel, args.cache / "dist")
        photos = clock("stage", stage_inputs, root, wheel, args.samples)
        clock("pip (aarch64)", install_in_root, root, wheel.name)
        x86, ok = args.cache / "x86-out", True
        for model in models:
            stage_model(root, model)
            clock("remove (x86)", remove_on_host, photos, x86, model, args.threads)
            for cpu in cpus:
                arm = clock(f"remove ({cpu})", remove_in_root, root, args.threads, cpu)
                ok = compare(x86, arm, f"{model.name}: aarch64 {cpu} ({CPUS[cpu][2]})",
                             args.mean_tol, args.max_tol) and ok
    except Failed as e:
        print(f"arm-check: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the model could not be resolved, a file could not be read, ...
        print(f"arm-check: error: {e}", file=sys.stderr)
        return 2
    totals: dict = {}
    for n, sec in clock.stages:
        totals[n] = totals.get(n, 0.0) + sec
    print("arm-check: timings: " + ", ".join(f"{n} {sec:.0f}s" for n, sec in totals.items() if sec >= 0.5)
          + f"; total {time.perf_counter() - t0:.0f}s")
    say("PASS: aarch64 alphas match x86" if ok else "FAIL: aarch64 alphas differ from x86 beyond tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
