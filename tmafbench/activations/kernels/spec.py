"""What a banded-TMAF kernel call needs besides the tensors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BandSpec:
    """Static description of one banded TMAF evaluation.

    shifts[d]: offset of diagonal d's grid from the base grid; rows[d]: column j of diagonal d feeds
    output row j + rows[d] (0 main, -1 upper/beta, +1 lower/gamma, -2, +2, ...). `uniform` (lo, h)
    is set when the shared base grid is lo + k h, which allows the arithmetic bucket index.
    inv_tau > 0 switches on the relaxed breakpoint gradient (see tmaf.py).
    """

    shifts: tuple[float, ...]
    rows: tuple[int, ...]
    uniform: tuple[float, float] | None = None
    inv_tau: float = 0.0

    def __post_init__(self) -> None:
        if not self.rows or self.rows[0] != 0 or len(self.rows) != len(self.shifts):
            raise ValueError("BandSpec: rows must start with the main diagonal (0) and match shifts")
