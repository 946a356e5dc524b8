"""The confusion matrix as the dashboards show it: an image with class names, counts and a colour bar
(scikit-learn's ConfusionMatrixDisplay, drawn off-screen), and a Markdown table of the same counts.

The image is drawn at every checkpoint, so it must cost little beside the evaluation. Most of a full
matplotlib drawing is laying out the tick labels and one text per cell; so each set of class names gets one
figure, drawn in full once, and each matrix after that redraws only the cells: the colours, and the counts
of the non-zero cells (blank cells are zeros). That needs a colour scale that never changes: a cell's colour
is its share of the true class (its row), from 0 to 1, which also keeps rare classes visible. Counts are
written up to COUNTS_MAX_CLASSES classes (colours alone above); past IMAGE_MAX_CLASSES no image is drawn at
all (the table still is). matplotlib is imported on first use: only the recording evaluator draws.
"""

from __future__ import annotations

import functools

import numpy as np

IMAGE_MAX_CLASSES = 20
COUNTS_MAX_CLASSES = 12
DPI = 64
CELL_INCHES = 0.4  # each class's row and column, whatever the class count: the labels' room never shrinks
UPRIGHT_MAX_CHARS = 3  # the longest predicted-class name that fits under its column unrotated (digits do)


class ConfusionPlot:
    """One figure for one list of class names; `render` draws a matrix of counts into it."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        import matplotlib

        matplotlib.use("Agg")  # off-screen: eval.py runs headless, often in a container
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from sklearn.metrics import ConfusionMatrixDisplay

        classes, longest = len(class_names), max(map(len, class_names))
        side = 2.5 + CELL_INCHES * classes  # inches: room for the names and, up to COUNTS_MAX_CLASSES, the counts
        self.figure = Figure(figsize=(side + 1.4, side), dpi=DPI)
        self.canvas = FigureCanvasAgg(self.figure)
        display = ConfusionMatrixDisplay(np.zeros((classes, classes)), display_labels=list(class_names))
        self.axes = self.figure.add_subplot()
        display.plot(
            ax=self.axes,
            cmap="Blues",
            colorbar=True,
            include_values=False,
        )
        if longest > UPRIGHT_MAX_CHARS:  # slanted, each name ending under its column: no name overlaps the next
            for label in self.axes.get_xticklabels():
                label.set(rotation=45, horizontalalignment="right", rotation_mode="anchor")
        self.cells = display.im_
        self.cells.set_clim(0.0, 1.0)
        display.figure_.axes[-1].set_ylabel("share of the true class")
        # Fixed margins from the longest name: tight_layout would cost a second drawing.
        margin = min(0.4, (1.0 + 0.09 * longest) / side)
        self.figure.subplots_adjust(left=margin, bottom=margin, right=0.9, top=0.95)
        self.counts = [
            [self.axes.text(j, i, "", ha="center", va="center") for j in range(classes)] for i in range(classes)
        ]
        self.show_counts = classes <= COUNTS_MAX_CLASSES
        self.cells.set_visible(False)
        self.canvas.draw()  # everything that never changes: axes, names, labels, the colour bar
        self.frame = self.canvas.copy_from_bbox(self.figure.bbox)
        self.cells.set_visible(True)

    def render(self, counts: np.ndarray) -> np.ndarray:
        """The matrix (rows = true class) as an HWC uint8 RGB image."""
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        self.canvas.restore_region(self.frame)
        self.cells.set_data(shares)
        self.axes.draw_artist(self.cells)
        if self.show_counts:
            for (i, j), count in np.ndenumerate(counts):
                if count:
                    text = self.counts[i][j]
                    text.set_text(str(count))
                    text.set_color("white" if shares[i, j] > 0.5 else "black")
                    self.axes.draw_artist(text)
        for spine in self.axes.spines.values():  # the cells were drawn over the frame's edges
            self.axes.draw_artist(spine)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


@functools.lru_cache(maxsize=8)
def plot_for(class_names: tuple[str, ...]) -> ConfusionPlot:
    """The figure of these class names, drawn once per process (an evaluator meets one or two lists)."""
    return ConfusionPlot(class_names)


def confusion_image(matrix: list[list[int]], class_names: list[str]) -> np.ndarray | None:
    """The matrix (rows = true class) as an HWC uint8 RGB image, or None past IMAGE_MAX_CLASSES classes."""
    if len(class_names) > IMAGE_MAX_CLASSES:
        return None
    return plot_for(tuple(class_names)).render(np.asarray(matrix, dtype=np.int64))


def confusion_markdown(matrix: list[list[int]], class_names: list[str]) -> str:
    """The confusion matrix as a Markdown table for TensorBoard's text dashboard (rows = true class)."""
    header = "| true \\ predicted | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| **{name}** | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(class_names, matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])
