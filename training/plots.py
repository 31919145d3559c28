"""Evaluation plots as PNG bytes: learning curves and confusion matrices.

Each function builds its own `matplotlib.figure.Figure` and renders it with the
Agg canvas, never through pyplot: no figure registry, no backend selection, no
display, so the functions can be called from any thread or Ray worker. The
figure is unreachable once the bytes are returned, so nothing accumulates.

The PNG carries no "Software" text chunk, and PNG output has no timestamp, so
the same input gives the same bytes (on the same matplotlib and fonts).
"""

from __future__ import annotations

import io
import math
import numbers
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FIGURE_SIZE_INCHES = (5.0, 4.0)
DOTS_PER_INCH = 100
CONFUSION_COLOUR_MAP = "Blues"


class PlotInputError(ValueError):
    """The data handed to a plot cannot be drawn as asked."""


def learning_curve_png(
    curves: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str
) -> bytes:
    """One line with markers per named curve, e.g. per-epoch train and validation loss.

    Points are drawn in the order given.
    """
    checked = _checked_curves(curves)
    figure = _new_figure()
    axes = figure.add_subplot()
    for name, points in checked.items():
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        axes.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, label=name)
    if all(float(x).is_integer() for points in checked.values() for x, _ in points):
        # Epochs and training-set sizes are counts: no ticks at 1.5 epochs.
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title, parse_math=False)
    axes.set_xlabel(x_label, parse_math=False)
    axes.set_ylabel(y_label, parse_math=False)
    axes.grid(True, alpha=0.3)
    legend = axes.legend()
    for text in legend.get_texts():
        text.set_parse_math(False)
    return _png_bytes(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str) -> bytes:
    """Counts per (true class, predicted class): rows are true classes, columns predicted ones."""
    return _png_bytes(_confusion_matrix_figure(matrix, classes, title=title))


def _confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str) -> Figure:
    figure = _new_figure()
    axes = figure.add_subplot()
    image = draw_confusion_matrix(axes, matrix, classes, title=title)
    colour_bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colour_bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def draw_confusion_matrix(axes, matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str,
                          scale: float = 1.0, true_label: str = "true"):
    """Counts per (true class, predicted class) drawn on `axes` (rows true, columns predicted), each count in the
    colour that reads best on its cell; returns the image (for a colour bar). `scale` shrinks the text."""
    counts = _checked_matrix(matrix, classes)
    size = len(counts)
    # vmax of at least 1 keeps an all-zero matrix drawable (a zero-width range divides by zero).
    norm = Normalize(vmin=0, vmax=max(1, max(max(row) for row in counts)))
    image = axes.imshow(counts, cmap=CONFUSION_COLOUR_MAP, norm=norm, interpolation="nearest")
    font_size = max(5.0, min(11.0, 80.0 / size)) * scale
    for row, row_counts in enumerate(counts):
        for column, count in enumerate(row_counts):
            cell_colour = image.cmap(norm(count))
            axes.text(
                column, row, str(count),
                ha="center", va="center", fontsize=font_size, parse_math=False,
                color=_readable_text_colour(cell_colour),
            )

    positions = list(range(size))
    labels = [str(name) for name in classes]
    long_names = max(len(label) for label in labels) > 5
    axes.set_xticks(positions, labels, parse_math=False, fontsize=10 * scale,
                    rotation=45 if long_names else 0, ha="right" if long_names else "center",
                    rotation_mode="anchor")
    axes.set_yticks(positions, labels, parse_math=False, fontsize=10 * scale)
    axes.set_xlabel("predicted", fontsize=10 * scale)
    axes.set_ylabel(true_label, fontsize=10 * scale)
    axes.set_title(title, parse_math=False, fontsize=11 * scale)
    return image


def _readable_text_colour(background: Any) -> str:
    """Black or white, whichever contrasts more with the background (WCAG relative luminance)."""

    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(channel) for channel in to_rgb(background))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    contrast_with_white = 1.05 / (luminance + 0.05)
    contrast_with_black = (luminance + 0.05) / 0.05
    return "white" if contrast_with_white > contrast_with_black else "black"


def _checked_curves(curves: Any) -> dict[str, list[tuple[float, float]]]:
    if not isinstance(curves, Mapping):
        raise PlotInputError(f"curves must be a mapping from curve name to points, got {type(curves).__name__}")
    if not curves:
        raise PlotInputError("curves is empty: give at least one named curve")
    checked = {}
    for name, points in curves.items():
        if not isinstance(name, str):
            raise PlotInputError(f"curve names must be strings, got {name!r}")
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
            raise PlotInputError(f"curve {name!r} must be a list of (x, y) points, got {type(points).__name__}")
        if len(points) == 0:
            raise PlotInputError(f"curve {name!r} has no points")
        checked[name] = [_checked_point(name, index, point) for index, point in enumerate(points)]
    return checked


def _checked_point(name: str, index: int, point: Any) -> tuple[float, float]:
    where = f"curve {name!r} point {index}"
    if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
        raise PlotInputError(f"{where} must be an (x, y) pair, got {point!r}")
    for value in point:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise PlotInputError(f"{where} must hold two numbers, got {point!r}")
    x, y = float(point[0]), float(point[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PlotInputError(f"{where} is not finite: {point!r} (x and y must be finite numbers)")
    return x, y


def _checked_matrix(matrix: Any, classes: Any) -> list[list[int]]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise PlotInputError(f"classes must be a list of class names, got {type(classes).__name__}")
    try:
        rows = [list(row) for row in matrix]
    except TypeError:
        raise PlotInputError("matrix must be a list of rows, each a list of counts") from None
    if not rows:
        raise PlotInputError("matrix is empty: a confusion matrix needs at least one class")
    for index, row in enumerate(rows):
        if len(row) != len(rows):
            raise PlotInputError(
                f"matrix is not square: it has {len(rows)} rows but row {index} has {len(row)} columns"
            )
    if len(rows) != len(classes):
        raise PlotInputError(f"matrix is {len(rows)}x{len(rows)} but {len(classes)} class names were given")
    for row_index, row in enumerate(rows):
        for column_index, count in enumerate(row):
            true_class, predicted_class = classes[row_index], classes[column_index]
            where = f"matrix[{row_index}][{column_index}] (true {true_class!r}, predicted {predicted_class!r})"
            if isinstance(count, bool) or not isinstance(count, numbers.Integral):
                raise PlotInputError(f"{where} must be an integer count, got {count!r}")
            if count < 0:
                raise PlotInputError(f"{where} is a negative count: {count}")
    return [[int(count) for count in row] for row in rows]


def _new_figure() -> Figure:
    return Figure(figsize=FIGURE_SIZE_INCHES, dpi=DOTS_PER_INCH, layout="constrained")


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # Printing through the canvas (not savefig) keeps the size at figsize * dpi
    # whatever the user's savefig.bbox / savefig.dpi settings are.
    # A None "Software" drops matplotlib's version string from the file.
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()
