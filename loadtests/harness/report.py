"""What every benchmark writes: ``<out>/<name>.json`` and ``<out>/<name>.png`` (`save`, `figure`), its
markdown tables (`table`, `num`), and the machine it ran on (`machine`)."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def machine(**extra: Any) -> dict[str, Any]:
    """CPU model, cores and Python version, then ``extra`` (versions, load average, commit...)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
    }


def num(x: float | None, digits: int = 0) -> str:
    """``x`` with thousands separators and ``digits`` decimals; "–" for a missing or NaN value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], rule: str = "") -> list[str]:
    """A markdown table's lines; ``rule`` is the separator line (default: ``|---|`` per column)."""

    def line(cells: Sequence[Any]) -> str:
        return f"| {' | '.join(map(str, cells))} |"

    return [line(header), rule or "|" + "---|" * len(header), *map(line, rows)]


def json_default(o: Any) -> Any:
    """numpy scalars as numbers, tuples as lists, anything else as its text."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def save(
    out: Path, name: str, result: dict[str, Any], plot: Callable[[dict[str, Any], Path], None] | None = None
) -> None:
    """Writes ``out/<name>.json`` (``result``) and, with ``plot``, ``out/<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=json_default))
    if plot is not None:
        plot(result, out / f"{name}.png")


@contextmanager
def figure(path: Path, ncols: int, figsize: tuple[float, float], **kwargs: Any) -> Iterator[Any]:
    """A matplotlib figure of ``ncols`` axes (Agg backend): yields the axes, saves to ``path`` at 110 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, **kwargs)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
