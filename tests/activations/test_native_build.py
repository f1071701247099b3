"""Building and loading the native TMAF kernel: a cache key that cannot mix toolchains, many first
users at once, one clear line when it cannot be built, and errors instead of corrupt memory."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kernel_choice import native_expected
from processes import spawn
import torch

from tmafbench.activations.kernels import native

# Native wherever a compiler exists: a kernel that does not build there fails (see
# test_the_kernel_builds_wherever_a_compiler_exists), its tests are not skipped.
NATIVE = native_expected()
if NATIVE:
    native.load()  # at import, as the tests below expect
needs_native = pytest.mark.skipif(not NATIVE, reason="no C++ compiler here")
FALLBACK_LINE = "tmafbench: TMAF CPU kernel unavailable"


def child_env(**env: str) -> dict[str, str]:
    """This environment with the checkout importable, no kernel forced, and `env` on top."""
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    full.pop("TMAFBENCH_KERNEL", None)
    return {**full, **env}


def python(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter (see child_env)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=child_env(**env),
                          capture_output=True, text=True, timeout=900)


def test_cache_key_covers_source_compiler_flags_platform_and_torch(tmp_path, monkeypatch):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("TMAFBENCH_CACHE", str(tmp_path))
    cxx, flags = native.compiler(), native.compile_flags()
    base = native.library_path(cxx, flags)
    assert base.parent == tmp_path / "kernels" and base == native.library_path(cxx, flags)
    assert native.library_path(cxx, flags + ["-DEXTRA"]) != base
    wrapper = tmp_path / "other-c++"  # the same compiler binary with another identity
    wrapper.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo other 1.0 && exit 0\nexec {cxx} \"$@\"\n")
    wrapper.chmod(0o755)
    assert native.library_path(str(wrapper), flags) != base
    edited = tmp_path / "tmaf_cpu.cpp"
    edited.write_text(native.SOURCE.read_text() + "\n// edited\n")
    with monkeypatch.context() as patch:
        patch.setattr(native, "SOURCE", edited)
        assert native.library_path(cxx, flags) != base
    with monkeypatch.context() as patch:
        patch.setattr(platform, "machine", lambda: "aarch64")
        assert native.library_path(cxx, flags) != base
    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "0.0.1")
        assert native.library_path(cxx, flags) != base


def test_without_a_compiler_one_line_says_so_once_and_results_stay_exact(tmp_path):
    done = python("""
        import torch, torch.nn.functional as F
        from tmafbench import activations
        from tmafbench.activations.kernels import backend_for, native
        x = torch.randn(50, 4) * 3
        for _ in range(3):
            assert torch.equal(activations.create('tmaf', 4)(x), F.relu(x))
            activations.create('tmaf-tridiag', 4)(x).sum()
        assert backend_for(x) == 'torch' and not native.load()
        print(native.unavailable_reason())
    """, CXX="false", TMAFBENCH_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(FALLBACK_LINE), done.stderr
    assert "same results" in lines[0] and "false" in done.stdout


def test_choosing_the_torch_kernel_is_quiet(tmp_path):
    done = python("""
        import torch
        from tmafbench import activations
        activations.create('tmaf', 4)(torch.randn(8, 4))
    """, TMAFBENCH_KERNEL="torch", CXX="false", TMAFBENCH_CACHE=str(tmp_path))
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow  # one real compile (about 10 s on two cores)
@needs_native
def test_many_processes_using_it_first_at_once_compile_it_once(tmp_path):
    script = """
        import torch, torch.nn.functional as F
        from tmafbench import activations
        from tmafbench.activations.kernels import native
        assert native.load(), native.unavailable_reason()
        x = torch.randn(300, 8) * 3
        assert torch.equal(activations.create('tmaf', 8)(x), F.relu(x))
    """
    env = child_env(TMAFBENCH_CACHE=str(tmp_path))
    workers = [spawn([sys.executable, "-c", textwrap.dedent(script)], env=env, stderr=subprocess.PIPE,
                                text=True) for _ in range(4)]
    errors = [w.communicate(timeout=900)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, errors
    assert sum(e.count("compiling the TMAF CPU kernel") for e in errors) == 1
    built = sorted(p.name for p in (tmp_path / "kernels").iterdir() if not p.name.endswith(".lock"))
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary files left behind


@needs_native
def test_running_out_of_scratch_memory_raises(tmp_path):
    """The kernel's own scratch is checked: with the address space capped, a call whose scratch does
    not fit raises a Python error (the old C kernel never checked malloc)."""
    done = python("""
        import resource, torch
        from tmafbench.activations.kernels import native
        assert native.load()
        K = 1 << 24  # a 16M-value table: the kernel's per-task scratch is 4 lanes x K doubles = 512 MiB
        x = torch.zeros(1, 1, 2)
        tables, thresholds = torch.zeros(1, 1, K), torch.zeros(1, 1, K + 1)
        gx, gtab, partial = torch.empty_like(x), torch.empty_like(tables), torch.empty(1, K, dtype=torch.float64)
        none = torch.empty(0, dtype=torch.float64)
        size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), resource.RLIM_INFINITY))
        try:
            torch.ops.tmafbench.tmaf_backward(x, x, tables, thresholds, [], [], 0.0, [0], 1, gx, gtab, partial,
                                              none, 0.0, 0.0, none, none)
        except RuntimeError as exc:
            print('raised:', str(exc).splitlines()[0])
    """, TMAFBENCH_CACHE=str(native.cache_dir()))
    assert done.returncode == 0, done.stderr
    assert "raised: tmaf: out of memory allocating" in done.stdout, done.stdout + done.stderr


@needs_native
def test_wrong_arguments_raise_instead_of_corrupting_memory():
    ops = torch.ops.tmafbench
    x, tables = torch.randn(4, 3, 1), torch.randn(1, 3, 12)
    thresholds = torch.linspace(-5, 5, 11).view(1, 1, 11)
    thresholds = torch.cat([torch.tensor([[[-float("inf")]]]), thresholds, torch.tensor([[[float("inf")]]])], dim=2)
    out = torch.empty_like(x)
    ops.tmaf_forward(x, tables, thresholds, [], [], 0.0, [0], out)  # well formed
    with pytest.raises(RuntimeError, match="tmaf: out must be"):
        ops.tmaf_forward(x, tables, thresholds, [], [], 0.0, [0], torch.empty(4, 3, 2))
    with pytest.raises(RuntimeError, match="tmaf: tables must be"):
        ops.tmaf_forward(x, tables.double(), thresholds, [], [], 0.0, [0], out)
    with pytest.raises(RuntimeError, match="thresholds must be"):
        ops.tmaf_forward(x, tables, thresholds[:, :, :-1], [], [], 0.0, [0], out)
    with pytest.raises(RuntimeError, match="tables must have 1 or C rows"):
        ops.tmaf_forward(x, torch.randn(1, 2, 12), thresholds, [], [], 0.0, [0], out)
    with pytest.raises(RuntimeError, match="rows must list D offsets"):
        ops.tmaf_forward(x, tables, thresholds, [], [], 0.0, [1], out)
    with pytest.raises(RuntimeError, match="x must be a contiguous CPU"):
        ops.tmaf_forward(x.transpose(0, 1), tables, thresholds, [], [], 0.0, [0], out)
    with pytest.raises(RuntimeError):  # a type the schema does not allow: refused before the kernel runs
        ops.tmaf_forward(x, tables, thresholds, [], [], "h", [0], out)


def test_x86_only_attributes_are_guarded():
    """target_clones exists only on x86-64 builds; other architectures must never see it."""
    source = native.SOURCE.read_text()
    guarded = source.split("#if defined(__x86_64__)", 1)[1].split("#else\n#define TMAF_CLONES\n#endif", 1)[0]
    attribute = "__attribute__((target_clones"
    assert source.count(attribute) == guarded.count(attribute) == 2
    assert "-march=native" not in " ".join(native.compile_flags())


@pytest.mark.slow  # about 20 s; runs where an arm64 cross compiler is installed (g++-aarch64-linux-gnu)
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no arm64 cross compiler")
def test_the_source_compiles_for_arm64(tmp_path):
    """arm64 gets no x86 attribute and still compiles (to an object: linking needs an arm64 torch)."""
    flags = [f for f in native.compile_flags() if f.startswith(("-I", "-D", "-O", "-std", "-f"))]
    done = subprocess.run(["aarch64-linux-gnu-g++", *flags, "-c", str(native.SOURCE), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_kernels_estimate_tolerance_is_the_one_spec_proves_safe():
    # spec._uniform_estimate proves the native kernel's fast interval estimate exact for tol1 =
    # ESTIMATE_TOL1_UNITS units of rounding (eps / 2); the kernel writes tol1 in units of epsilon.
    import re

    from tmafbench.activations.kernels import spec

    source = (Path(native.__file__).parent / "tmaf_cpu.cpp").read_text()
    found = re.findall(r"tol1 = (\d+) \* std::numeric_limits<T>::epsilon\(\)", source)
    assert found and {2 * int(n) for n in found} == {spec.ESTIMATE_TOL1_UNITS}


def test_the_kernel_builds_wherever_a_compiler_exists():
    """A compile error fails the suite: it must never turn the native kernel's tests into skips."""
    if not native_expected():
        pytest.skip("no C++ compiler here, or TMAFBENCH_KERNEL=torch")
    assert native.load(), f"the native TMAF kernel did not build: {native.unavailable_reason()}"
