"""Evaluation plots: real PNG rendering, pixel sizes, readable counts, and the input they refuse."""

from __future__ import annotations

import gc
import io
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.figure import Figure

from training.plots import (
    DOTS_PER_INCH,
    FIGURE_SIZE_INCHES,
    _confusion_matrix_figure,
    confusion_matrix_png,
    learning_curve_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_HEIGHT_WIDTH = (400, 500)

LOSS_CURVES = {
    "train loss": [(1, 0.70), (2, 0.50), (3, 0.41), (4, 0.35)],
    "validation loss": [(1, 0.75), (2, 0.60), (3, 0.55), (4, 0.56)],
}
FRUIT = ["apple", "banana", "cherry"]


def loss_plot(curves=LOSS_CURVES) -> bytes:
    return learning_curve_png(curves, title="loss per epoch", x_label="epoch", y_label="loss")


def fruit_matrix_plot(matrix, classes=FRUIT) -> bytes:
    return confusion_matrix_png(matrix, classes, title="fruit")


def decoded(png: bytes):
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_learning_curve_is_a_png():
    assert loss_plot().startswith(PNG_SIGNATURE)


def test_confusion_matrix_is_a_png():
    assert fruit_matrix_plot([[5, 1, 0], [0, 4, 2], [1, 0, 6]]).startswith(PNG_SIGNATURE)


def test_both_plots_are_five_by_four_inches_at_100_dpi():
    assert FIGURE_SIZE_INCHES == (5.0, 4.0) and DOTS_PER_INCH == 100
    for png in (loss_plot(), fruit_matrix_plot([[5, 1, 0], [0, 4, 2], [1, 0, 6]])):
        assert decoded(png).shape[:2] == EXPECTED_HEIGHT_WIDTH


def test_learning_curve_of_scores_against_training_set_size_renders():
    scores = {"training score": [(100, 0.91), (400, 0.88), (1600, 0.86)],
              "cross-validation score": [(100, 0.72), (400, 0.80), (1600, 0.84)]}
    png = learning_curve_png(scores, title="surf", x_label="training examples", y_label="R²")
    assert decoded(png).shape[:2] == EXPECTED_HEIGHT_WIDTH


def test_different_curves_give_different_images():
    flatter = {name: [(x, 0.5) for x, _ in points] for name, points in LOSS_CURVES.items()}
    assert loss_plot() != loss_plot(flatter)


def test_diagonal_and_off_diagonal_matrices_give_different_images():
    diagonal = decoded(fruit_matrix_plot([[9, 0, 0], [0, 9, 0], [0, 0, 9]]))
    off_diagonal = decoded(fruit_matrix_plot([[0, 9, 0], [0, 0, 9], [9, 0, 0]]))
    assert (diagonal != off_diagonal).any()


def test_all_zero_matrix_renders():
    assert fruit_matrix_plot([[0, 0, 0], [0, 0, 0], [0, 0, 0]]).startswith(PNG_SIGNATURE)


# Between two dollar signs matplotlib parses mathtext, where an unknown command is a ValueError at rendering time:
# these names render only if every text of the plot is drawn literally.
NOT_MATH = r"$\notacommand$"


def test_names_with_dollar_signs_are_drawn_literally_not_as_math():
    curves = {f"cost {NOT_MATH}": [(1, 2.0)], "$x$ and $y": [(1, 3.0)]}
    for labels in ({"title": NOT_MATH}, {"x_label": NOT_MATH}, {"y_label": NOT_MATH}, {}):
        arguments = {"title": "t", "x_label": "x", "y_label": "y", **labels}
        assert learning_curve_png(curves, **arguments).startswith(PNG_SIGNATURE)
    assert confusion_matrix_png([[1, 0], [0, 1]], [NOT_MATH, "$10 or $20"], title=NOT_MATH).startswith(PNG_SIGNATURE)


def test_the_mathtext_check_above_can_fail():
    """The names above do fail to render where a text is parsed as math."""
    figure = Figure()
    figure.add_subplot().set_title(NOT_MATH)
    with pytest.raises(ValueError, match="notacommand"):
        figure.savefig(io.BytesIO(), format="png")


def test_every_cell_shows_its_count():
    matrix = [[50, 2, 0], [3, 41, 7], [0, 5, 12]]
    figure = _confusion_matrix_figure(matrix, FRUIT, title="fruit")
    image_axes = figure.axes[0]
    cell_texts = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text()
                  for text in image_axes.texts}
    assert cell_texts == {(row, column): str(matrix[row][column]) for row in range(3) for column in range(3)}


def test_counts_are_white_on_dark_cells_and_black_on_light_cells():
    figure = _confusion_matrix_figure([[100, 0], [0, 100]], ["a", "b"], title="t")
    colours = {text.get_text(): text.get_color() for text in figure.axes[0].texts}
    assert colours == {"100": "white", "0": "black"}


def test_axes_are_labelled_true_and_predicted_with_class_names_as_ticks():
    figure = _confusion_matrix_figure([[1, 0, 0], [0, 1, 0], [0, 0, 1]], FRUIT, title="t")
    axes = figure.axes[0]
    assert axes.get_ylabel() == "true"
    assert axes.get_xlabel() == "predicted"
    assert [label.get_text() for label in axes.get_xticklabels()] == FRUIT
    assert [label.get_text() for label in axes.get_yticklabels()] == FRUIT


def test_same_input_gives_identical_bytes():
    assert loss_plot() == loss_plot()
    matrix = [[5, 1, 0], [0, 4, 2], [1, 0, 6]]
    assert fruit_matrix_plot(matrix) == fruit_matrix_plot(matrix)


def test_png_does_not_name_the_matplotlib_version():
    assert b"Matplotlib" not in loss_plot()
    assert b"Software" not in fruit_matrix_plot([[1, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_plots_rendered_on_several_threads_match_plots_rendered_serially():
    matrices = [[[count, 1, 0], [0, count, 2], [1, 0, count]] for count in range(8)]
    serial = [fruit_matrix_plot(matrix) for matrix in matrices]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(fruit_matrix_plot, matrices))
    assert threaded == serial


def test_rendering_leaves_no_figure_behind():
    def live_figures() -> int:
        gc.collect()
        return sum(isinstance(thing, Figure) for thing in gc.get_objects())

    before = live_figures()
    for _ in range(3):
        loss_plot()
        fruit_matrix_plot([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert live_figures() == before


def test_plotting_neither_imports_pyplot_nor_needs_a_backend_choice():
    script = (
        "import sys\n"
        "from training.plots import learning_curve_png, confusion_matrix_png\n"
        "learning_curve_png({'a': [(1, 1.0)]}, title='t', x_label='x', y_label='y')\n"
        "confusion_matrix_png([[1]], ['a'], title='t')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    no_display = {key: value for key, value in os.environ.items()
                  if key not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", script], check=True, env=no_display, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize(
    ("curves", "message"),
    [
        ({}, "curves is empty"),
        ([("train loss", [(1, 0.5)])], "curves must be a mapping"),
        ({"train loss": []}, "curve 'train loss' has no points"),
        ({"train loss": [(1, 0.5)], "validation loss": [(1, 0.6), (2, math.nan)]},
         r"curve 'validation loss' point 1 is not finite: \(2, nan\)"),
        ({"train loss": [(math.inf, 0.5)]}, r"curve 'train loss' point 0 is not finite: \(inf, 0.5\)"),
        ({"train loss": [(1, 0.5, 7)]}, r"curve 'train loss' point 0 must be an \(x, y\) pair"),
        ({"train loss": [(1, "low")]}, "curve 'train loss' point 0 must hold two numbers"),
        ({"train loss": [(True, 0.5)]}, "curve 'train loss' point 0 must hold two numbers"),
        ({3: [(1, 0.5)]}, "curve names must be strings"),
    ],
    ids=["empty", "not-a-mapping", "no-points", "nan", "infinity", "triple", "text-value", "boolean", "name-not-text"],
)
def test_learning_curve_refuses_bad_curves_naming_the_problem(curves, message):
    with pytest.raises(ValueError, match=message):
        loss_plot(curves)


@pytest.mark.parametrize(
    ("matrix", "classes", "message"),
    [
        ([], [], "matrix is empty"),
        ([[1, 2, 3], [4, 5, 6]], ["a", "b"], "matrix is not square: it has 2 rows but row 0 has 3 columns"),
        ([[1, 2], [3]], ["a", "b"], "matrix is not square: it has 2 rows but row 1 has 1 columns"),
        ([[1, 2], [3, 4]], ["a", "b", "c"], "matrix is 2x2 but 3 class names were given"),
        ([[1, -2], [3, 4]], ["a", "b"], r"matrix\[0\]\[1\] \(true 'a', predicted 'b'\) is a negative count: -2"),
        ([[1, 2], [3.5, 4]], ["a", "b"], r"matrix\[1\]\[0\] \(true 'b', predicted 'a'\) must be an integer count"),
        ([[1, 2], [3, "4"]], ["a", "b"], r"matrix\[1\]\[1\] .* must be an integer count, got '4'"),
        ([[True, 0], [0, 1]], ["a", "b"], r"matrix\[0\]\[0\] .* must be an integer count, got True"),
        ([1, 2], ["a", "b"], "matrix must be a list of rows"),
    ],
    ids=["empty", "wide", "ragged", "too-many-classes", "negative", "fraction", "text", "boolean", "flat"],
)
def test_confusion_matrix_refuses_bad_input_naming_the_problem(matrix, classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix_png(matrix, classes, title="t")
