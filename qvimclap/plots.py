"""Figures without pyplot (no global backend or figure state), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qvimclap.files import atomic_path


def new_figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` with constrained layout; ``kwargs`` as for ``Figure`` (e.g. figsize)."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (PNG) through a temporary file, so a crash never leaves half an image."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
