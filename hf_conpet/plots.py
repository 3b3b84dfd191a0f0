"""Figures for model cards and reports.

Built on matplotlib's object API (`Figure` + the Agg canvas), never `pyplot`: no global figure
state, no GUI backend, safe in a training process and in threads.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._io import atomic_write

__all__ = ["accuracy_matrix_array", "plot_accuracy_matrix"]


def accuracy_matrix_array(matrix: Sequence[Sequence[float | None]] | np.ndarray, n_tasks: int | None = None) -> np.ndarray:
    """The matrix as a square float array with NaN for cells not evaluated (None, missing, NaN).

    Rows may be ragged (row j holding only the tasks seen after task j) and there may be fewer rows
    than tasks (a stream still running): both are padded with NaN.
    """
    rows = [list(row) if row is not None else [] for row in matrix]
    size = max([n_tasks or 0, len(rows)] + [len(row) for row in rows])
    out = np.full((size, size), np.nan, dtype=float)
    for j, row in enumerate(rows):
        for i, value in enumerate(row):
            if value is None:
                continue
            value = float(value)
            if not math.isnan(value):
                out[j, i] = value
    return out


def plot_accuracy_matrix(
    matrix: Sequence[Sequence[float | None]] | np.ndarray,
    task_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    score_name: str = "accuracy",
) -> Path:
    """Write the accuracy matrix a[j][i] (score on task i after training task j) as a PNG heatmap.

    Rows are "after training task j", columns "evaluated on task i", both in training order; each
    evaluated cell carries its value, unseen cells stay blank. Scores in [0, 1] share one colour
    scale across cards; larger scores (percentages) are scaled to 0-100. The file is written to a
    temporary name beside `path` and renamed, so a reader never sees half a PNG. `score_name` says
    what the cells measure ("accuracy", "ROUGE-L", "score").
    """
    names = [str(name) for name in task_names]
    values = accuracy_matrix_array(matrix, len(names))
    if values.shape[0] != len(names):
        raise ValueError(
            f"accuracy matrix covers {values.shape[0]} tasks but {len(names)} task names were given"
        )
    n = len(names)
    if n == 0:
        raise ValueError("cannot plot an empty accuracy matrix")
    finite = values[np.isfinite(values)]
    vmax = 100.0 if finite.size and finite.max() > 1.0 else 1.0
    percent = vmax == 100.0

    side = min(2.2 + 0.75 * n, 16.0)
    fig = Figure(figsize=(side + 1.4, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = _colormap()
    norm = Normalize(vmin=0.0, vmax=vmax)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")

    fontsize = max(5.0, min(10.0, 70.0 / n))
    for j in range(n):
        for i in range(n):
            value = values[j, i]
            if math.isnan(value):
                continue
            r, g, b, _ = cmap(norm(value))
            luminance = 0.299 * r + 0.587 * g + 0.114 * b
            label = f"{value:.1f}" if percent else f"{value:.2f}"
            ax.text(i, j, label, ha="center", va="center", fontsize=fontsize,
                    color="black" if luminance > 0.5 else "white")

    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                  fontsize=fontsize + 1)
    ax.set_yticks(ticks, labels=[f"{k + 1}. {name}" for k, name in enumerate(names)], fontsize=fontsize + 1)
    ax.set_xlabel("evaluated on task i")
    ax.set_ylabel("after training task j")
    # Thin white grid between cells keeps a large matrix readable.
    ax.set_xticks(ticks[:-1] + 0.5, minor=True)
    ax.set_yticks(ticks[:-1] + 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title or f"{score_name.capitalize() if score_name.islower() else score_name} matrix a[j][i]")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label(f"{score_name} (%)" if percent else score_name)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # No "Software" entry: the bytes then depend on the data, not on the matplotlib version.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write(path, buffer.getvalue())
    return path


def _colormap():
    from matplotlib import colormaps

    # unseen cells: blank, not a colour that reads as a score
    return colormaps["viridis"].with_extremes(bad="white")
