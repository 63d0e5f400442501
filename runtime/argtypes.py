"""argparse types for the numbers every verb takes, so a bad value is a usage error (exit 2) at the
command line, not a traceback from torch or onnxruntime minutes into a run.

    p.add_argument("--steps", type=integer(1))            # 1, 2, ...
    p.add_argument("--lr", type=number(0, lo_open=True))  # finite and > 0
    p.add_argument("--threads", type=THREADS)
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

# onnxruntime and torch take any thread count, and a typo such as 1000000 makes them spawn threads
# for minutes; no CPU edgecut runs on has more cores than this.
MAX_THREADS = 256


def _range_text(lo, hi, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"<= {hi}"
    return "finite"


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """An int in [lo, hi] (either end open when None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected an integer {_range_text(lo, hi, False)}, got {text!r}")
        return v
    parse.__name__ = "integer"          # argparse names the type in its message
    return parse


def number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False) -> Callable[[str], float]:
    """A finite float in [lo, hi] (or (lo, hi] with lo_open); nan and inf are refused."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        bad = (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
               or (hi is not None and v > hi))
        if bad:
            raise argparse.ArgumentTypeError(f"expected a number {_range_text(lo, hi, lo_open)}, got {text!r}")
        return v
    parse.__name__ = "number"
    return parse


THREADS = integer(1, MAX_THREADS)
