"""Where a run ran: software and hardware, hashed so that identical environments share one row.

Beyond the columns (host, platform, torch, CPU model, ...), `details` records what decides whether
a re-run can give the same bits (README, "What reproduces where"): the CPU's vector extensions, the
instruction set PyTorch dispatches to, the MKL and oneDNN builds, torch's build settings, the thread
counts of the process, and the TMAF kernel it uses (native C++ or the PyTorch reference).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

PACKAGES = ("tmafbench", "torch", "torchvision", "numpy", "optuna", "sqlalchemy", "pandas", "scipy", "triton")

# The /proc/cpuinfo flags that change which code paths MKL, oneDNN and PyTorch take (x86), or the
# "Features" of an ARM CPU. Other flags (virtualisation, power, bugs) change no result.
VECTOR_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd",
                "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm")
# Of torch's "Build settings": those that decide the CPU arithmetic (CUDA_FLAGS and the like are left out).
BUILD_SETTINGS = ("TORCH_VERSION", "COMMIT_SHA", "BUILD_TYPE", "BLAS_INFO", "LAPACK_INFO", "CXX_COMPILER", "CXX_FLAGS",
                  "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "PERF_WITH_AVX", "PERF_WITH_AVX2", "PERF_WITH_AVX512")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                    "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "TMAFBENCH_KERNEL")


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
    details: dict[str, Any] = field(default_factory=dict)  # see the module docstring; {} when unknown

    def env_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_vector_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's vector extensions among VECTOR_FLAGS, from the first "flags" (x86) or "Features"
    (ARM) line of /proc/cpuinfo; [] where there is none (macOS, Windows)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return [f for f in VECTOR_FLAGS if f in present]
    return []


def torch_build(config: str) -> dict[str, str]:
    """From `torch.__config__.show()`: the compiler, MKL and oneDNN versions and BUILD_SETTINGS."""
    out: dict[str, str] = {}
    patterns = {"compiler": r"^\s*- (GCC [\w.]+|clang [\w.]+|MSVC [\w.]+)", "mkl": r"Math Kernel Library Version ([\w.\-]+)",
                "onednn": r"(?:MKL-DNN|oneDNN) (v[\w.]+)(?: \(Git Hash (\w+)\))?", "cpu_capability_usage": r"CPU capability usage: (\w+)"}
    for name, pattern in patterns.items():
        found = re.search(pattern, config, re.MULTILINE)
        if found:
            out[name] = " ".join(g for g in found.groups() if g)
    settings = re.search(r"Build settings: (.*)", config)
    if settings:
        for item in re.split(r", (?=[A-Z_0-9]+=)", settings.group(1).strip().rstrip(",")):
            key, _, value = item.partition("=")
            if key.strip() in BUILD_SETTINGS:
                out[key.strip()] = value.strip()
    return out


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


def details(tmaf_kernel: str | None = None) -> dict[str, Any]:
    """What decides a run's bits beyond the versions: see the module docstring."""
    import torch

    return {
        "cpu_flags": cpu_vector_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen dispatches to
        "torch_build": torch_build(torch.__config__.show()),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "tmaf_kernel": tmaf_kernel,
    }


@lru_cache(maxsize=8)
def collect(device: str = "cpu", tmaf_kernel: str | None = None) -> EnvironmentInfo:
    """Describe this process's environment for a run on `device`, whose TMAF layers use `tmaf_kernel`
    ("native", "torch"; None: not known). Call it after the thread count is set."""
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
        details=details(tmaf_kernel),
    )


def differences(stored: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between two environments (as `environment_record` gives them) that can change a
    run's bits: one readable item per difference ("cpu flags: avx512f only there", "threads: 1 -> 2")."""
    out = []
    for key in ("cpu", "torch"):
        if stored.get(key) != here.get(key):
            out.append(f"{key}: {stored.get(key)!r} there, {here.get(key)!r} here")
    a, b = stored.get("details") or {}, here.get("details") or {}
    if not a:
        out.append("the stored run recorded no details (CPU extensions, threads, kernel): run before they were kept")
        return out
    only_there = [f for f in a.get("cpu_flags", []) if f not in b.get("cpu_flags", [])]
    only_here = [f for f in b.get("cpu_flags", []) if f not in a.get("cpu_flags", [])]
    if only_there or only_here:
        out.append("cpu extensions: " + "; ".join(
            part for part in (f"{' '.join(only_there)} only there" if only_there else "",
                              f"{' '.join(only_here)} only here" if only_here else "") if part))
    for key in ("cpu_capability", "threads", "tmaf_kernel"):
        if a.get(key) != b.get(key):
            out.append(f"{key.replace('_', ' ')}: {a.get(key)} there, {b.get(key)} here")
    build_a, build_b = a.get("torch_build", {}), b.get("torch_build", {})
    for key in ("mkl", "onednn", "COMMIT_SHA"):
        if build_a.get(key) != build_b.get(key):
            out.append(f"torch build {key}: {build_a.get(key)} there, {build_b.get(key)} here")
    if a.get("variables", {}).get("MKL_CBWR") != b.get("variables", {}).get("MKL_CBWR"):
        out.append(f"MKL_CBWR: {a.get('variables', {}).get('MKL_CBWR')} there, {b.get('variables', {}).get('MKL_CBWR')} here")
    return out
