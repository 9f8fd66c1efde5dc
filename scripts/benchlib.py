"""What every benchmark script here shares: the environment row, the plain-text table and the CSV writer.

Each script appends rows to one results file under ``benchmarks/`` with the date, device and versions, so that the
next change can be compared with the last (docs/PERFORMANCE.md). Import it as ``from benchlib import ...``: the
scripts put their own folder on ``sys.path`` (``python scripts/<name>.py`` does so by itself).
"""

from __future__ import annotations

import csv
import datetime
import importlib
import math
import os
import platform
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

__all__ = ["GIB", "REPO", "append_csv", "environment", "exit_on_help", "fmt", "print_table", "sync"]

GIB = float(1 << 30)
REPO = Path(__file__).resolve().parents[1]


def exit_on_help(usage: str, argv: Optional[List[str]] = None) -> None:
    """Print ``usage`` and exit 0 when the command line holds ``-h`` or ``--help``.

    A script calls it before it imports torch, so that asking for help takes a fraction of a second rather than the
    seconds that loading torch takes on a busy machine. ``usage`` is the script's docstring: its purpose and examples.
    """
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(usage.strip())
        raise SystemExit(0)


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return "absent"


def device_name(device: str) -> str:
    """The CUDA device's name, or the CPU's model and core count."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: str, extra: Iterable[str] = ()) -> Dict[str, str]:
    """Date (UTC), device name and the versions of torch, triton and each module named in ``extra``."""
    row = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device),
        "torch": _version("torch"),
        "triton": _version("triton"),
    }
    for module in extra:
        row[module] = _version(module)
    return row


def sync(device: str) -> None:
    """Wait for queued device work (CUDA only) before reading a clock."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def fmt(value: Optional[float], digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or "-" for a missing or NaN value."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_table(rows: List[Dict[str, object]], cols: List[str]) -> None:
    """Print ``rows`` as an aligned plain-text table of ``cols``."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def append_csv(path: Path, rows: List[Dict[str, object]], fields: List[str]) -> None:
    """Append ``rows`` to the results file at ``path`` (header first if the file is new or empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
