"""The confusion matrix as the dashboards show it: an image with class names, counts and a colour bar
(scikit-learn's ConfusionMatrixDisplay, drawn off-screen), and a Markdown table of the same counts.

Drawing costs the evaluator time at every checkpoint, so it stays small: counts are written in the
cells up to COUNTS_MAX_CLASSES classes (colours alone above), and past IMAGE_MAX_CLASSES no image is
drawn at all (the table still is). matplotlib is imported on first use: only the recording evaluator
draws.
"""

from __future__ import annotations

import numpy as np

IMAGE_MAX_CLASSES = 20
COUNTS_MAX_CLASSES = 12
DPI = 64


def confusion_image(matrix: list[list[int]], class_names: list[str]) -> np.ndarray | None:
    """The matrix (rows = true class) as an HWC uint8 RGB image, or None past IMAGE_MAX_CLASSES classes."""
    classes = len(class_names)
    if classes > IMAGE_MAX_CLASSES:
        return None
    import matplotlib

    matplotlib.use("Agg")  # off-screen: eval.py runs headless, often in a container
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    side = 2.5 + 0.4 * classes  # inches: room for the names and, up to COUNTS_MAX_CLASSES, the counts
    figure = Figure(figsize=(side + 1, side), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names)
    display.plot(
        ax=figure.add_subplot(),
        cmap="Blues",
        colorbar=True,
        include_values=classes <= COUNTS_MAX_CLASSES,
        values_format="d",
        xticks_rotation="vertical" if classes > 10 else "horizontal",
    )
    # Fixed margins from the longest name: tight_layout would cost a second drawing.
    margin = min(0.4, (1.0 + 0.09 * max(map(len, class_names))) / side)
    figure.subplots_adjust(left=margin, bottom=margin, right=0.97, top=0.97)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_markdown(matrix: list[list[int]], class_names: list[str]) -> str:
    """The confusion matrix as a Markdown table for TensorBoard's text dashboard (rows = true class)."""
    header = "| true \\ predicted | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| **{name}** | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(class_names, matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])
