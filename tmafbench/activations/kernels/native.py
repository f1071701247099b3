"""The fused CPU kernel for banded TMAF: tmaf_cpu.cpp, registered as torch.ops.tmafbench.*.

Why not eager PyTorch: bucketize + gather + scatter make 6 to 10 passes over memory and allocate
index tensors; this kernel makes one pass each way. Its operator schemas are declared once, in the
C++ file, and PyTorch checks them against the C++ signatures when the library registers and
against every call's arguments; the C++ side checks shapes and dtypes.

Build: on first use, the system C++ compiler (CXX, else c++ / g++ / clang++) compiles the source
against this torch's headers, about 10 s on two cores, once per machine. The shared object is
cached as `$TMAFBENCH_CACHE/kernels/tmaf_cpu-<key>.so` (default ~/.cache/tmafbench), where the
key hashes the source, the compiler's identity, the flags, the platform and the torch build: a
cached object is never reused by another toolchain or torch. Workers that start at once take a
file lock: one compiles into a temporary file that is renamed into place, the others wait and load
it. When the kernel cannot be built or loaded, one line on stderr says why, once per process, and
the PyTorch reference (reference.py: the same numbers, slower) takes over.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import torch

from tmafbench.activations.kernels.spec import BandSpec, GridTensors, chunk_samples

SOURCE = Path(__file__).with_name("tmaf_cpu.cpp")
COMPILE_TIMEOUT_S = 900  # a waiting worker gives up (and falls back) after this long
DTYPES = (torch.float32, torch.float64)

_LOCK = threading.Lock()
_STATE: dict = {"tried": False, "ok": False, "reason": None, "library": None}


def cache_dir() -> Path:
    """$TMAFBENCH_CACHE, else ~/.cache/tmafbench."""
    return Path(os.environ.get("TMAFBENCH_CACHE") or Path.home() / ".cache" / "tmafbench")


def compiler() -> str:
    """The C++ compiler: $CXX, else the first of c++, g++, clang++ on PATH."""
    found = os.environ.get("CXX") or next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)
    if not found:
        raise OSError("no C++ compiler found (set CXX, or install g++ or clang++)")
    return found


def compile_flags() -> list[str]:
    """Everything but the compiler, source and output: exact IEEE arithmetic (no FMA contraction; not
    trapping on FP exceptions changes no result but lets selects vectorise), no -march=native (a cached
    object must run on any CPU of its architecture; x86-64 gets AVX-512/AVX2 clones chosen at load time),
    and torch's headers, libraries and C++ ABI."""
    root = Path(torch.__file__).resolve().parent
    flags = ["-O3", "-std=c++20", "-fPIC", "-shared", "-ffp-contract=off", "-fno-trapping-math", "-DNDEBUG",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
             f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}"]
    if platform.machine().lower() in ("x86_64", "amd64"):  # tuning only: no instruction set is assumed
        flags.append("-mtune=haswell")
    if sys.platform != "darwin":  # Apple's clang has no OpenMP: the kernel then runs on one thread
        flags.append("-fopenmp")
    return flags


def _compiler_identity(cxx: str) -> str:
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OSError(f"C++ compiler {cxx!r} does not run: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"C++ compiler {cxx!r} does not run: {(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


def library_path(cxx: str, flags: list[str]) -> Path:
    """Where the shared object for this source, compiler, flags, platform and torch is cached."""
    parts = [SOURCE.read_text(), cxx, _compiler_identity(cxx), *flags, platform.system(), platform.machine(),
             torch.__version__, str(torch.version.git_version)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return cache_dir() / "kernels" / f"tmaf_cpu-{key}.so"


def build(target: Path, cxx: str, flags: list[str]) -> None:
    """Compile SOURCE into `target` unless it is there; safe when many processes do this at once."""
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{target}.lock", timeout=COMPILE_TIMEOUT_S):
            if target.exists():  # another process built it while we waited
                return
            print(f"tmafbench: compiling the TMAF CPU kernel into {target} (once per machine and torch)", file=sys.stderr)
            tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.tmp")
            cmd = [cxx, str(SOURCE), "-o", str(tmp), *flags]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
                if done.returncode != 0:
                    errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines()
                    raise OSError(f"{Path(cxx).name} failed: {' | '.join(errors[:2])[:300]}")
                os.replace(tmp, target)  # atomic: readers see no file or the whole file
            finally:
                tmp.unlink(missing_ok=True)
    except Timeout:
        raise OSError(f"gave up after {COMPILE_TIMEOUT_S} s waiting for another process to compile {target}") from None


def _register(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    register = library.tmafbench_register
    register.argtypes, register.restype = [ctypes.c_char_p, ctypes.c_int64], ctypes.c_int
    message = ctypes.create_string_buffer(2048)
    if register(message, len(message)) != 0:
        raise OSError(f"registering {path.name} failed: {message.value.decode(errors='replace')[:300]}")
    return library


def load() -> bool:
    """True when torch.ops.tmafbench is ready; False when TMAFBENCH_KERNEL=torch or it cannot be built."""
    if os.environ.get("TMAFBENCH_KERNEL", "").lower() == "torch":
        return False
    if _STATE["ok"]:
        return True
    with _LOCK:
        if not _STATE["tried"]:
            _STATE["tried"] = True
            try:
                cxx, flags = compiler(), compile_flags()
                target = library_path(cxx, flags)
                if not target.exists():
                    build(target, cxx, flags)
                _STATE["library"] = _register(target)
                _STATE["ok"] = True
            except Exception as exc:  # any failure: say why once, then use the reference
                _STATE["reason"] = " ".join(str(exc).split())
                print(f"tmafbench: TMAF CPU kernel unavailable ({_STATE['reason']}); using the PyTorch "
                      "implementation: same results, slower. TMAFBENCH_KERNEL=torch selects it quietly.",
                      file=sys.stderr)
    return _STATE["ok"]


def unavailable_reason() -> str | None:
    """Why the native kernel could not be loaded in this process (None if it loaded or was not tried)."""
    return _STATE["reason"]


def supports(x: torch.Tensor) -> bool:
    """True when the native kernel can run on x (CPU, float32/float64, kernel built)."""
    return x.is_cpu and x.dtype in DTYPES and load()


def banded_tmaf(x: torch.Tensor, tables: list[torch.Tensor], breakpoints: torch.Tensor, grid: GridTensors,
                spec: BandSpec) -> torch.Tensor:
    """torch.ops.tmafbench.tmaf: the same contract and the same bits as the reference, with its
    backward registered in C++ (no Python runs per call). Saves only x and the small tables."""
    n = x.shape[0]
    chunk = chunk_samples(n, x.numel() // n if n else 1, len(tables) * tables[0].numel())
    return torch.ops.tmafbench.tmaf(x, tables, breakpoints, grid.thresholds, grid.positions, grid.lows, grid.tols,
                                    grid.inv_h, spec.rows, chunk, *spec.bump)
