"""Forward+backward timing and memory of activations (`tmafbench bench activations`).

For each activation (grid activations once per interval count) and shape, after `warmup`
untimed calls, `repeats` timed calls of `y = act(x); y.backward(g)` (x of std 3, so inputs cover
the default [-5, 5] grid), interleaved across the activations of a shape. We report the median and
interquartile range in milliseconds and each row's median as a ratio to relu and to prelu on the
same shape, measured in the same run; and the median CPU time of the process per call, with its
ratios (on a busy machine, with 1 thread, the better estimate of an idle machine's times).

`under_load=N` measures every shape twice: as the machine is, then with N busy processes of our
own running (each keeps one CPU busy; they stop with the benchmark, or when this process dies),
and gives each loaded row its slowdown against the same row unloaded (`vs_unloaded`): which
operations collapse on a busy machine, ours or PyTorch's.

Memory, per call:
- saved: bytes of the distinct tensors autograd keeps for backward (saved_tensors_hooks);
- peak: the high-water mark of bytes allocated through PyTorch's CPU allocator during forward
  plus backward, read from the profiler's memory events (inputs and the incoming gradient are
  allocated beforehand and are not counted).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from tmafbench import activations
from tmafbench.activations.kernels import backend_for
from tmafbench.activations.tmaf import BandedTMAFBase
from tmafbench.errors import InputError

DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((20000, 20), (4096, 1024), (128, 64, 32, 32))
DEFAULT_INTERVALS: tuple[int, ...] = (10, 100)
BASELINES = ("relu", "prelu")


@dataclass
class BenchRow:
    """One activation configuration on one shape."""

    name: str
    grid: str | None
    shape: str
    backend: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    saved_bytes: int
    peak_bytes: int
    vs_relu: float | None = None
    vs_prelu: float | None = None
    load: int = 0  # busy processes of our own running while this row was timed
    vs_unloaded: float | None = None  # this row's median over the same row's without them
    params: dict = field(default_factory=dict)  # the activation's parameters besides its grid
    first_ms: float | None = None  # the first call (warm-up): lazy set-up, a kernel build or torch.compile
    # The median of the CPU time this process used per call (all its threads), and its ratios: on a
    # busy machine, with 1 thread, the best estimate of the time on an idle one (wall time there
    # includes the waits for a CPU; measured here at load 34: TMAF 19.8 ms wall, 2.5 ms CPU).
    cpu_ms: float | None = None
    cpu_vs_relu: float | None = None
    cpu_vs_prelu: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# A busy process: a pure-Python loop (no torch, no threads of its own) that ends soon after the
# benchmark's process does, even one killed by SIGKILL, because it watches its parent.
_SPIN = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    for _ in range(200000): pass\n"


@contextlib.contextmanager
def busy_processes(n: int):
    """Run `n` processes that each keep one CPU busy, for the duration of the block."""
    if n < 0:
        raise ValueError(f"the number of busy processes must be >= 0, got {n}")
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(0.2 if procs else 0.0)  # let them start spinning
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


#: CPU features that decide which code paths the kernels and PyTorch take.
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_tile", "hypervisor")


def cpu_identity() -> dict[str, str]:
    """Vendor, family, model and stepping from /proc/cpuinfo (a VM's model name can be as short as
    "AMD EPYC"; family 25 model 1 is Zen 3, "Milan"); empty elsewhere."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "stepping") and key not in found:
                    found[key] = value.strip()
                if not line.strip() and found:
                    break
    except OSError:
        pass
    return found


def cpu_flags() -> list[str]:
    """The vector features of this CPU (Linux: /proc/cpuinfo; elsewhere an empty list)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _CPU_FLAGS if f in have]
    except OSError:
        pass
    return []


def _parallel_backend(torch) -> str:
    lines = [ln.split(":", 1)[1].strip() for ln in torch.__config__.parallel_info().splitlines()
             if ln.startswith("ATen parallel backend")]
    return lines[0] if lines else "unknown"


def _commit() -> str | None:
    """The checkout's git commit (with '+changes' when the tree differs from it), or None."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, check=False,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def machine_record(threads: int | None = None) -> dict:
    """Where and how a benchmark ran: CPU model and features, cores and the CPUs this process may use,
    load average, torch and its parallel backend, threads, the wait policy, and the TMAF kernel."""
    import torch

    from tmafbench.activations.kernels import native
    from tmafbench.store.environment import collect

    env = collect("cpu")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "commit": _commit(), "cpu": env.cpu, "cpu_identity": cpu_identity(), "cpu_flags": cpu_flags(),
        "cpu_count": env.cpu_count, "cpus_usable": usable,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": env.platform, "python": env.python, "machine": platform.machine(),
        "torch": env.torch, "packages": env.packages,
        "threads": threads or torch.get_num_threads(), "parallel_backend": _parallel_backend(torch),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "tmafbench_compile": os.environ.get("TMAFBENCH_COMPILE", "auto"),
        # glibc's allocator settings: whether large buffers are mapped afresh (first-touch page
        # faults) on every call decides ReLU's time on [20000, 20] (README, reports/benchmarks)
        "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "tmaf_kernel": "native" if native.load() else f"torch ({native.unavailable_reason() or 'TMAFBENCH_KERNEL=torch'})",
    }


def parse_shape(text: str) -> tuple[int, ...]:
    """'128x64x32x32' or '128,64,32,32' -> (128, 64, 32, 32); needs at least [N, C]."""
    parts = text.replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"bad shape {text!r}; write it like 4096x1024 or 128x64x32x32") from None
    if len(shape) < 2 or min(shape) < 1:
        raise InputError(f"bad shape {text!r}: need at least two positive sizes [N, C, ...]")
    return shape


def configurations(names: Sequence[str | tuple[str, dict]] | None, intervals: Sequence[int]) -> list[tuple[str, dict]]:
    """(name, params) for every activation to time; grid activations once per interval count (unless
    an entry, given as (name, params), sets its own grid)."""
    chosen = [n if isinstance(n, tuple) else (n, {}) for n in (names or activations.available())]
    for name, params in chosen:
        activations.create(name, 1, **params)  # unknown names and parameters fail here, with the valid choices
    configs = []
    for name, params in chosen:
        if activations.grid_info(name, params)[0] is None or {"intervals", "breakpoints"} & set(params):
            configs.append((name, dict(params)))
        else:
            configs += [(name, {**params, "intervals": int(k)}) for k in intervals]
    return configs


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines on fd 2 (Python's sys.stderr is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    xx = x.detach().requires_grad_(True)
    module(xx).backward(grad)


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    xx = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(xx)
    return sum(seen.values())


def peak_bytes(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> int:
    """High-water mark of CPU-allocator bytes during one forward+backward (profiler memory events);
    on a GPU, of the CUDA caching allocator's allocated bytes."""
    if x.is_cuda:
        _sync(x)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        _fwd_bwd(module, x, grad)
        _sync(x)
        return torch.cuda.max_memory_allocated(x.device) - base
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _fwd_bwd(module, x, grad)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def time_ms(modules: Sequence[torch.nn.Module], x: torch.Tensor, grad: torch.Tensor, repeats: int,
            warmup: int, first: list[float] | None = None, cpu: list[list[float]] | None = None) -> list[list[float]]:
    """Wall-clock milliseconds of `repeats` forward+backward calls of each module, after `warmup`
    untimed ones (at least one; on a GPU, synchronised before and after each call). Interleaved:
    each round times every module once, so a change in the machine's load during the run hits all
    of them alike and the ratios between them stay fair. `first` receives each module's first call,
    `cpu` each module's series of process CPU milliseconds."""
    first = [] if first is None else first
    cpu = [] if cpu is None else cpu
    first.clear()
    for module in modules:
        for i in range(max(warmup, 1)):  # (at least one: the first call, timed on its own)
            _sync(x)
            start = time.perf_counter()
            _fwd_bwd(module, x, grad)
            _sync(x)
            if i == 0:
                first.append((time.perf_counter() - start) * 1e3)
    times: list[list[float]] = [[] for _ in modules]
    cpu[:] = [[] for _ in modules]
    for _ in range(repeats):
        for module, series, cpu_series in zip(modules, times, cpu):
            module.zero_grad(set_to_none=True)
            _sync(x)
            start, start_cpu = time.perf_counter(), time.process_time()
            _fwd_bwd(module, x, grad)
            _sync(x)
            series.append((time.perf_counter() - start) * 1e3)
            cpu_series.append((time.process_time() - start_cpu) * 1e3)
    return times


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def bench_shape(configs: Sequence[tuple[str, dict]], shape: Sequence[int], repeats: int, warmup: int,
                seed: int = 0, device: str = "cpu") -> list[BenchRow]:
    """Time and measure every configuration on one input shape (float32), interleaved (time_ms)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen) * 3.0).to(device)
    grad = torch.randn(*shape, generator=gen).to(device)
    modules = [activations.create(name, shape[1], **params).to(device) for name, params in configs]
    rows = []
    first: list[float] = []
    cpu: list[list[float]] = []
    timed = time_ms(modules, x, grad, repeats, warmup, first, cpu)
    for (name, params), module, series, first_ms, cpu_series in zip(configs, modules, timed, first, cpu):
        q1, median, q3 = _quartiles(series)
        rows.append(BenchRow(
            name=name,
            params={k: v for k, v in params.items() if k not in ("intervals", "lo", "hi", "breakpoints")},
            first_ms=first_ms,
            cpu_ms=statistics.median(cpu_series),
            grid=activations.grid_info(name, params)[0],
            shape="x".join(map(str, shape)),
            backend=backend_for(x, module.spec) if isinstance(module, BandedTMAFBase) else "torch",
            median_ms=median,
            q1_ms=q1,
            q3_ms=q3,
            saved_bytes=saved_bytes(module, x),
            peak_bytes=peak_bytes(module, x, grad),
        ))
    return rows


def bench_activations(
    names: Sequence[str | tuple[str, dict]] | None = None,
    shapes: Iterable[Sequence[int]] = DEFAULT_SHAPES,
    intervals: Sequence[int] = DEFAULT_INTERVALS,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    under_load: int = 0,
    device: str = "cpu",
) -> list[BenchRow]:
    """Benchmark every configuration on every shape; relu and prelu are always measured for the ratios.

    `threads` sets torch's (and the native kernel's) thread count for the run; on a shared machine
    1 thread gives steadier figures, because a parallel region waits for its slowest thread.
    `under_load` > 0 adds the same rows measured beside that many busy processes (module docstring).
    """
    if repeats < 1 or warmup < 0:
        raise InputError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    if under_load < 0:
        raise InputError(f"--under-load must be >= 0, got {under_load}")
    configs = configurations(names, intervals)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        rows = _bench_all(configs, list(shapes), repeats, warmup, device)
        if not under_load:
            return rows
        with busy_processes(under_load):
            loaded = _bench_all(configs, list(shapes), repeats, warmup, device)
        for quiet, row in zip(rows, loaded):
            row.load, row.vs_unloaded = under_load, row.median_ms / quiet.median_ms
        return rows + loaded
    finally:
        torch.set_num_threads(previous)


def _bench_all(configs: list[tuple[str, dict]], shapes: list[Sequence[int]], repeats: int, warmup: int,
               device: str = "cpu") -> list[BenchRow]:
    baselines: list[tuple[str, dict]] = [(b, {}) for b in BASELINES if (b, {}) not in configs]
    rows: list[BenchRow] = []
    for shape in shapes:
        measured = bench_shape(baselines + configs, shape, repeats, warmup, device=device)
        base = {r.name: r for r in measured if r.name in BASELINES and not r.params}
        for row in measured:
            row.vs_relu = row.median_ms / base["relu"].median_ms
            row.vs_prelu = row.median_ms / base["prelu"].median_ms
            if row.cpu_ms and base["relu"].cpu_ms and base["prelu"].cpu_ms:
                row.cpu_vs_relu = row.cpu_ms / base["relu"].cpu_ms
                row.cpu_vs_prelu = row.cpu_ms / base["prelu"].cpu_ms
        rows += [r for r in measured if (r.name, {}) not in baselines]
    return rows
