"""torch.compile for the trainable-activation family (PAU, APL, the KAN spline): one switch.

Each of these activations writes its function once as plain tensor operations (no custom autograd)
and runs it either eagerly or through torch.compile (inductor: fused C++ loops on the CPU, Triton
on a GPU), which fuses the whole forward into one loop over the input and the backward, parameter
sums included, into one more. Results agree with eager to about 1e-7 relative (tested to 1e-6);
they are not the same bits, so a study run with compilation on and one with it off differ in the
last bits, as they do across thread counts.

TMAFBENCH_COMPILE chooses:
- "auto" (the default): compile the activations whose `compile_by_default` is set (those where it
  was measured to reach 3x PReLU or better, README), for inputs of AUTO_MIN_ELEMENTS elements or
  more, where it can run: a C++ compiler on the CPU, Triton on a GPU;
- "on": compile every activation that has a compiled form, wherever torch.compile can run;
- "off": never (eager PyTorch).
Where it cannot run (no C++ compiler for inductor, no Triton for a GPU), one line on stderr says
why, once per process, and eager takes over.

The compiled function is shared by every instance, so a process compiles each graph once:
`dynamic=None` compiles the first shape it sees as static and, on the first call with another
shape, once more with symbolic sizes. Compile time (measured, README): tens of seconds the first
time on a machine; inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR) makes later processes faster.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch

from tmafbench.errors import InputError

MODES = ("auto", "on", "off")
#: "auto" compiles inputs of at least this many elements: below it a call is mostly per-call
#: overhead, which compiling hardly changes (a sine-sum MLP epoch at batch 64, width 20: 2.07 s
#: compiled against 2.25 s eager, after a 38 s first compile; README).
AUTO_MIN_ELEMENTS = 1 << 16
_LOCK = threading.Lock()
_WARNED: set[str] = set()


def mode() -> str:
    """TMAFBENCH_COMPILE, checked: auto (default), on or off."""
    value = os.environ.get("TMAFBENCH_COMPILE", "auto").strip().lower() or "auto"
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
    value = aliases.get(value, value)
    if value not in MODES:
        raise InputError(f"TMAFBENCH_COMPILE must be one of {', '.join(MODES)}; got {value!r}")
    return value


def unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot run for tensors on `device` here, or None when it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    if device.type != "cpu":
        return f"no compiled path for {device.type} tensors"
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    return None if cxx else "no C++ compiler for inductor (set CXX, or install g++ or clang++)"


class Compiled:
    """`fn` run through torch.compile when the switch says so (see the module docstring), else eagerly."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str):
        self.fn = fn
        self.name = name
        self._compiled: Callable[..., torch.Tensor] | None = None

    def enabled(self, default: bool, x: torch.Tensor) -> bool:
        """Whether a call on x compiles, for an activation whose default is `default`."""
        chosen = mode()
        if chosen == "off" or (chosen == "auto" and (not default or x.numel() < AUTO_MIN_ELEMENTS)):
            return False
        device = x.device
        reason = unavailable_reason(device)
        if reason is not None:
            key = f"{device.type}: {reason}"
            with _LOCK:
                if key not in _WARNED:
                    _WARNED.add(key)
                    print(f"tmafbench: torch.compile unavailable for the trainable activations ({reason}); "
                          "running them eagerly. TMAFBENCH_COMPILE=off selects that quietly.", file=sys.stderr)
            return False
        return True

    def __call__(self, default: bool, *args: Any) -> torch.Tensor:
        """fn(*args), compiled when enabled for the first argument (the input)."""
        if not self.enabled(default, args[0]):
            return self.fn(*args)
        if self._compiled is None:
            with _LOCK:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, fullgraph=True, dynamic=None)
        return self._compiled(*args)
