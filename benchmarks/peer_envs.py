"""The peers' virtual environments for ``benchmarks/peers.py``: one per peer under ``benchmarks/.peers/<peer>/``
(git-ignored), created once from PyPI and marked with a stamp holding a hash of its specification (a changed
specification rebuilds it). Every environment pins torch 2.13.0, and pip must resolve it to a CPU build (checked
with a dry run before anything is installed: an unpinned or CUDA torch is never downloaded).

Standard library only: the peers' own interpreters import this module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PEERS_DIR = ROOT / "benchmarks" / ".peers"
STAMP = ".assignlab-peer-stamp"
TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # tried only when pip's own sources lack a CPU build

# `--malloc keep` (the default): glibc keeps freed memory for reuse instead of unmapping it. Without it every
# tensor above glibc's mmap threshold (32 MiB at most; one image's N x M IoU here is 73 MB) is a fresh mmap whose
# pages fault in on first touch, and on these VMs page faults are slow and vary with the load: the same eager
# IoU + max took 450-1650 ms/img with about 2/3 of it in the kernel, and a steady 110-145 ms/img with this setting.
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(16 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
CHILD_ENV: dict[str, str] = {}  # set by main() for every measurement subprocess



# ----------------------------------------------------------------------------------------------
# Peer environments
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerEnv:
    """One peer's virtual environment under ``benchmarks/.peers/<name>/``.

    ``steps`` are ``pip install`` argument lists run in order after torch (every step runs with a
    constraint file pinning torch, so nothing can pull another torch). ``fake_dists`` are
    metadata-only distributions ``(name, version)`` written into site-packages afterwards.
    ``versions`` are the distributions whose versions go into the tables.
    """

    name: str
    title: str
    steps: tuple[tuple[str, ...], ...]
    versions: tuple[str, ...]
    fake_dists: tuple[tuple[str, str], ...] = ()

    @property
    def dir(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.dir / "bin" / "python"

    def spec_hash(self) -> str:
        spec = {"torch": TORCH, "steps": self.steps, "fake": self.fake_dists, "python": sys.version_info[:2]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


ENVS: dict[str, PeerEnv] = {
    "mmdet": PeerEnv(
        name="mmdet",
        title="mmdetection",
        # mmdet 3.3 rejects mmcv 2.2 at import; mmcv-lite 2.1 has no compiled mmcv._ext (stubbed at import).
        steps=(("mmdet==3.3.0", "mmengine==0.10.7", "mmcv-lite==2.1.0"),),
        versions=("torch", "mmdet", "mmengine", "mmcv-lite", "numpy"),
    ),
    "ultralytics": PeerEnv(
        name="ultralytics",
        title="ultralytics",
        steps=(
            ("--no-deps", "ultralytics==8.4.190"),
            ("numpy", "pyyaml", "pillow", "opencv-python-headless", "psutil", "tqdm", "requests", "scipy",
             "polars", "ultralytics-thop", "matplotlib", TORCH),
        ),
        versions=("torch", "ultralytics", "numpy"),
        # ultralytics reads torchvision's version at import; ultralytics.utils.tal never calls torchvision.
        fake_dists=(("torchvision", "0.28.0"),),
    ),
}


class SetupError(RuntimeError):
    pass


def _pip(python: Path, args: list[str], log: Path) -> int:
    with log.open("a") as f:
        f.write(f"\n$ {python} -m pip {' '.join(args)}\n")
        f.flush()
        return subprocess.run([str(python), "-m", "pip", *args], stdout=f, stderr=subprocess.STDOUT).returncode


def _log_tail(log: Path, n: int = 15) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      " + ln for ln in lines[-n:])


def _torch_source(python: Path, log: Path) -> list[str]:
    """Extra pip arguments under which ``torch==2.13.0`` resolves to a CPU build (dry run, nothing downloaded)."""
    why = []
    for extra, where in (([], "pip's configured sources"), (["--index-url", TORCH_CPU_INDEX], TORCH_CPU_INDEX)):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            rc = _pip(python, ["install", "--dry-run", "--quiet", "--retries", "2", "--report", str(report),
                               TORCH, *extra], log)
            if rc != 0 or not report.exists():
                why.append(f"{where}: pip could not resolve it (network? see the log)")
                continue
            items = json.loads(report.read_text()).get("install", [])
        found = {it["metadata"]["name"].lower(): it["metadata"]["version"] for it in items}
        if "+cpu" in found.get("torch", "") and not any(n.startswith("nvidia") for n in found):
            return extra
        why.append(f"{where}: resolves to torch {found.get('torch')} with CUDA packages, not installed")
    raise SetupError(f"no CPU build of {TORCH}: {'; '.join(why)}")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _write_fake_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("assignlab-benchmarks-peers (metadata only)\n")


def ensure_env(env: PeerEnv, rebuild: bool = False) -> Path:
    """Create ``env`` if its stamp is missing or stale; return its python. Raises SetupError."""
    stamp = env.dir / STAMP
    want = env.spec_hash()
    if not rebuild and env.python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return env.python
    if env.dir.exists():
        shutil.rmtree(env.dir)
    env.dir.mkdir(parents=True)
    log = env.dir / "setup.log"
    print(f"  {env.name}: creating {env.dir.relative_to(ROOT)} (pip log: {log.relative_to(ROOT)}) ...", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, "-m", "venv", str(env.dir)], capture_output=True, text=True)
        if rc.returncode != 0:
            raise SetupError(f"python -m venv failed: {rc.stderr.strip()[-500:]}")
        constraints = env.dir / "constraints.txt"
        constraints.write_text(f"{TORCH}\n")
        extra = _torch_source(env.python, log)
        if _pip(env.python, ["install", "--quiet", "--retries", "2", TORCH, *extra], log) != 0:
            raise SetupError(f"pip install {TORCH} failed")
        for step in env.steps:
            if _pip(env.python, ["install", "--quiet", "--retries", "2", "-c", str(constraints), *step], log) != 0:
                raise SetupError(f"pip install {' '.join(step)} failed")
        if env.fake_dists:
            site = _site_packages(env.python)
            for name, version in env.fake_dists:
                _write_fake_dist(site, name, version)
        from peer_child import _spawn  # the child imports this module: import it when first needed

        smoke = _spawn(env.python, {"kind": "smoke", "env": env.name}, timeout=600)
        if "+cpu" not in smoke.get("versions", {}).get("torch", "") or smoke.get("cuda"):
            raise SetupError(f"torch in the environment is not the CPU build: {smoke}")
    except (SetupError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise SetupError(f"{e}\n    last lines of {log}:\n{_log_tail(log)}") from e
    stamp.write_text(want + "\n")
    print(f"  {env.name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return env.python


