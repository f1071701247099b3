"""The fused CPU kernel for banded TMAF, compiled once with the system C compiler and loaded via ctypes.

Why not eager PyTorch: bucketize + gather + scatter make 6 to 10 passes over memory and
allocate index tensors; this kernel makes one pass each way (see native_src.py). Compiling
plain C (no torch headers) takes well under a second; the shared object is cached under
$TMAFBENCH_CACHE (default ~/.cache/tmafbench) keyed by the source hash. If no compiler works,
`load()` returns None and callers use the PyTorch reference implementation.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from tmafbench.activations.kernels.native_src import SOURCE
from tmafbench.activations.kernels.spec import BandSpec

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False

_P, _L, _I, _D = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
_FWD_ARGS = [_P, _P, _P, _L, _L, _P, _L, _I, _I, _D, _D, _P, _P, _I, _L, _L, _L, _P, _I]
_BWD_ARGS = [_P, _P, _P, _P, _L, _L, _P, _L, _I, _I, _D, _D, _P, _P, _I, _L, _L, _L, _L, _P, _P, _L, _D, _P, _I]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def cache_dir() -> Path:
    return Path(os.environ.get("TMAFBENCH_CACHE") or Path.home() / ".cache" / "tmafbench")


def _compile(target: Path) -> None:
    """Compile SOURCE into `target` atomically (parallel test workers may race here)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "tmaf.c", Path(tmp) / "tmaf.so"
        src.write_text(SOURCE)
        # No -march=native: the cached object must run on any x86-64/arm64 this cache moves to.
        cmd = [cc, "-O3", "-ffp-contract=off", "-fPIC", "-shared", "-fopenmp", "-o", str(out), str(src), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")
        os.replace(out, target)


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built (or TMAFBENCH_KERNEL=torch)."""
    global _LIB, _TRIED
    if os.environ.get("TMAFBENCH_KERNEL", "").lower() == "torch":
        return None
    with _LOCK:
        if _TRIED:
            return _LIB
        _TRIED = True
        if sys.platform == "win32":
            return None
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
        target = cache_dir() / f"tmaf_kernels_{digest}.so"
        try:
            if not target.exists():
                _compile(target)
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            warnings.warn(f"TMAF native CPU kernel unavailable, using the PyTorch path: {exc}", stacklevel=2)
            return None
        for suffix in _SUFFIX.values():
            getattr(lib, f"tmaf_forward_{suffix}").argtypes = _FWD_ARGS
            getattr(lib, f"tmaf_backward_{suffix}").argtypes = _BWD_ARGS
        _LIB = lib
        return lib


def supports(x: torch.Tensor) -> bool:
    """True when the native kernel can run on x (CPU, float32/float64)."""
    return x.device.type == "cpu" and x.dtype in _SUFFIX and load() is not None


def _rows_shifts(spec: BandSpec) -> tuple[ctypes.Array, ctypes.Array]:
    return (ctypes.c_int * len(spec.rows))(*spec.rows), (ctypes.c_double * len(spec.shifts))(*spec.shifts)


def _grid_args(bp: torch.Tensor, spec: BandSpec) -> tuple[torch.Tensor, list]:
    """Padded double breakpoints [Cb, m+2] (kept alive by the caller) and the C grid arguments."""
    cb, m = bp.shape
    bp64 = bp.detach().to(torch.float64)
    inf = torch.full((cb, 1), float("inf"), dtype=torch.float64, device=bp.device)
    padded = torch.cat([-inf, bp64, inf], dim=1).contiguous()
    uniform = spec.uniform is not None and cb == 1
    lo, h = spec.uniform if uniform else (0.0, 1.0)
    return padded, [padded.data_ptr(), m + 2 if cb > 1 else 0, m, int(uniform), lo, 1.0 / h]


def _thresholds(padded: torch.Tensor, spec: BandSpec, dtype: torch.dtype) -> torch.Tensor:
    """[D, m+2] shifted breakpoints in the input dtype, rounded down, so that for every value v of
    that dtype `v <= thr` holds exactly when `v <= s + shift` holds in double (uniform grids only)."""
    exact = padded[:1] + torch.tensor(spec.shifts, dtype=torch.float64).view(-1, 1)  # [D, m+2]
    thr = exact.to(dtype)
    too_high = thr.double() > exact
    thr[too_high] = torch.nextafter(thr[too_high], torch.full_like(thr[too_high], -float("inf")))
    return thr.contiguous()


# Below this many elements one thread wins: an OpenMP team costs microseconds when idle and
# milliseconds when a core is busy (a spinning thread waits for its descheduled partner).
# Measured on 2 loaded cores: [128, 20] fwd+bwd took 16 ms with 2 threads, far below 1 ms with 1.
PARALLEL_MIN_ELEMENTS = 1 << 16


def _threads_for(numel: int) -> int:
    return torch.get_num_threads() if numel >= PARALLEL_MIN_ELEMENTS else 1


def _prepared(bp: torch.Tensor, spec: BandSpec, dtype: torch.dtype) -> tuple:
    """(padded, grid args, thresholds, rows, shifts) for one call, cached on bp while it is unchanged.

    Building them takes about ten small tensor ops, which dominated small calls ([128, 20]).
    The cache lives on the tensor object itself, so it dies with it and can never be confused
    with another tensor at a reused address; bp's version counter moves with every in-place change.
    """
    key = (bp._version, spec, dtype)
    cached = getattr(bp, "_tmaf_prepared", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    padded, grid = _grid_args(bp, spec)
    prepared = (padded, grid, _thresholds(padded, spec, dtype), *_rows_shifts(spec))
    bp._tmaf_prepared = (key, prepared)
    return prepared


class NativeBandedTMAF(torch.autograd.Function):
    """Same contract as ReferenceBandedTMAF; saves only x (and the small tables) for backward."""

    @staticmethod
    def forward(ctx, x3, tables, bp, spec: BandSpec):  # x3 [N,C,S] contiguous, tables [D,Cf,K]
        lib = load()
        ctx.spec = spec
        ctx.save_for_backward(x3, tables, bp)
        n, c, s = x3.shape
        d, cf, k = tables.shape
        tab = tables.detach().contiguous()
        padded, grid, thr, rows, shifts = _prepared(bp, spec, x3.dtype)
        out = torch.empty_like(x3)
        getattr(lib, f"tmaf_forward_{_SUFFIX[x3.dtype]}")(
            x3.data_ptr(), out.data_ptr(), tab.data_ptr(), k if cf > 1 else 0, cf * k,
            *grid, shifts, rows, d, n, c, s, thr.data_ptr(), _threads_for(x3.numel()),
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        lib = load()
        x3, tables, bp = ctx.saved_tensors
        spec: BandSpec = ctx.spec
        n, c, s = x3.shape
        d, cf, k = tables.shape
        grad = grad.contiguous()
        tab = tables.detach().contiguous()
        padded, grid, thr, rows, shifts = _prepared(bp, spec, x3.dtype)
        gx = torch.empty_like(x3) if ctx.needs_input_grad[0] else None
        gtab = torch.zeros(tables.shape, dtype=torch.float64)
        want_bp = ctx.needs_input_grad[2] and spec.inv_tau > 0
        gbp = torch.zeros(bp.shape, dtype=torch.float64) if want_bp else None
        getattr(lib, f"tmaf_backward_{_SUFFIX[x3.dtype]}")(
            x3.data_ptr(), grad.data_ptr(), gx.data_ptr() if gx is not None else None, tab.data_ptr(),
            k if cf > 1 else 0, cf * k, *grid, shifts, rows, d, n, c, s, cf,
            gtab.data_ptr(), gbp.data_ptr() if gbp is not None else None, bp.shape[0],
            spec.inv_tau, thr.data_ptr(), _threads_for(x3.numel()),
        )
        return gx, gtab.to(tables.dtype), (gbp.to(bp.dtype) if gbp is not None else None), None
