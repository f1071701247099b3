"""Where a run ran: software and hardware, hashed so that identical environments share one row."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata

PACKAGES = ("tmafbench", "torch", "torchvision", "numpy", "optuna", "sqlalchemy", "pandas", "scipy", "triton")


@dataclass(frozen=True)
class EnvironmentInfo:
    hostname: str
    platform: str
    python: str
    torch: str
    cuda: str | None
    cpu: str
    cpu_count: int
    gpu: str | None
    packages: dict[str, str]

    def env_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def gpu_model(device: str) -> str | None:
    """The GPU's name when `device` is a CUDA device (visible to this process), else None."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return torch.cuda.get_device_name(index)


@lru_cache(maxsize=8)
def collect(device: str = "cpu") -> EnvironmentInfo:
    """Describe this process's environment for a run on `device`."""
    import torch

    return EnvironmentInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cpu=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        gpu=gpu_model(device),
        packages=package_versions(),
    )
