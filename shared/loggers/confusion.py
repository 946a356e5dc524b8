"""The confusion matrix as the dashboards show it: an image with class names, counts and a colour bar,
and a Markdown table of the same counts.

The image is drawn at every checkpoint, so it must cost little beside the evaluation, and drawing it must
not cost the evaluator's start either (matplotlib's import alone took about 1 CPU-second). So it is drawn
with Pillow, which encodes TensorBoard's PNGs anyway: each set of class names gets one frame (names, axis
titles, the colour bar), drawn once; each matrix then fills the cells with NumPy and writes the counts of
the non-zero cells (blank cells are zeros). A cell's colour is its share of the true class (its row), from
0 to 1 on matplotlib's "Blues" scale, which keeps rare classes visible and the colour bar fixed. Counts are
written up to COUNTS_MAX_CLASSES classes (colours alone above); past IMAGE_MAX_CLASSES no image is drawn at
all (the table still is).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import ImageFont

IMAGE_MAX_CLASSES = 20
COUNTS_MAX_CLASSES = 12
CELL = 32  # pixels per class, whatever the class count: the names' room never shrinks
FONT = 12  # pixels
PAD = 8  # pixels between the parts of the image
BAR_WIDTH = 16  # the colour bar's
UPRIGHT_MAX_CHARS = 3  # the longest predicted-class name that fits under its column unrotated (digits do)
INK, PAPER = (0, 0, 0), (255, 255, 255)
# matplotlib's "Blues" (ColorBrewer's nine blues, evenly spaced from 0 to 1), as 256 colours.
BLUES_STOPS = np.array(
    [
        [247, 251, 255],
        [222, 235, 247],
        [198, 219, 239],
        [158, 202, 225],
        [107, 174, 214],
        [66, 146, 198],
        [33, 113, 181],
        [8, 81, 156],
        [8, 48, 107],
    ],
    dtype=float,
)
BLUES = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(BLUES_STOPS)), BLUES_STOPS[:, c]) for c in range(3)],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)


@dataclass(frozen=True)
class Placed:
    """A text drawn into the frame: its top-left corner and its ink (0-255), to check layouts against."""

    left: int
    top: int
    ink: np.ndarray


def text_ink(text: str, font: ImageFont.FreeTypeFont, angle: int = 0) -> np.ndarray:
    """The text's ink as a 0-255 array, turned counter-clockwise by `angle` degrees, cropped to the ink."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=255, font=font)
    if angle:
        canvas = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box) if box else canvas)


class ConfusionPlot:
    """One frame for one list of class names; `render` draws a matrix of counts into it."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        from PIL import ImageFont

        self.font = ImageFont.load_default(size=FONT)
        classes = len(class_names)
        side = classes * CELL
        slanted = max(map(len, class_names)) > UPRIGHT_MAX_CHARS
        # Slanted, each name ends under its column: no name overlaps the next.
        names_x = [text_ink(name, self.font, 45 if slanted else 0) for name in class_names]
        names_y = [text_ink(name, self.font) for name in class_names]
        title_x, title_y = text_ink("Predicted label", self.font), text_ink("True label", self.font, 90)
        bar_title = text_ink("share of the true class", self.font, 90)
        ticks = [text_ink(f"{tick / 5:.1f}", self.font) for tick in range(6)]
        overhang = max(ink.shape[1] - CELL // 2 - j * CELL for j, ink in enumerate(names_x))  # slanted, past the left
        self.left = PAD + title_y.shape[1] + PAD + max(max(ink.shape[1] for ink in names_y) + PAD, overhang)
        self.top = PAD
        under = max(ink.shape[0] for ink in names_x)
        bar_left = self.left + side + 2 * PAD
        width = bar_left + BAR_WIDTH + PAD // 2 + max(ink.shape[1] for ink in ticks) + PAD + bar_title.shape[1] + PAD
        height = self.top + side + PAD // 2 + under + PAD + title_x.shape[0] + PAD
        frame = np.full((height, width, 3), PAPER, dtype=np.uint8)
        self.placed: list[Placed] = []

        def put(ink: np.ndarray, left: int, top: int) -> Placed:
            blend(frame, ink, left, top, INK)
            return Placed(left, top, ink)

        bottom = self.top + side
        for i, ink in enumerate(names_y):
            put(ink, self.left - PAD - ink.shape[1], self.top + i * CELL + (CELL - ink.shape[0]) // 2)
        for j, ink in enumerate(names_x):
            centre = self.left + j * CELL + CELL // 2
            left = centre - ink.shape[1] if slanted else centre - ink.shape[1] // 2
            self.placed.append(put(ink, left, bottom + PAD // 2))
        put(title_x, self.left + (side - title_x.shape[1]) // 2, bottom + PAD // 2 + under + PAD)
        put(title_y, PAD, self.top + (side - title_y.shape[0]) // 2)
        # The colour bar: 1 at the top, 0 at the bottom, a tick and its value every 0.2.
        levels = np.linspace(255, 0, side).round().astype(int)
        frame[self.top : bottom, bar_left : bar_left + BAR_WIDTH] = BLUES[levels][:, None, :]
        for tick, ink in enumerate(ticks):
            y = bottom - 1 - round(tick / 5 * (side - 1))
            frame[y, bar_left + BAR_WIDTH : bar_left + BAR_WIDTH + PAD // 2] = INK
            put(ink, bar_left + BAR_WIDTH + PAD // 2 + 2, min(max(y - ink.shape[0] // 2, 0), height - ink.shape[0]))
        put(bar_title, width - PAD - bar_title.shape[1], self.top + (side - bar_title.shape[0]) // 2)
        for left, right in ((self.left, self.left + side), (bar_left, bar_left + BAR_WIDTH)):  # the outlines
            frame[self.top - 1, left - 1 : right + 1] = frame[bottom, left - 1 : right + 1] = INK
            frame[self.top - 1 : bottom + 1, left - 1] = frame[self.top - 1 : bottom + 1, right] = INK
        self.frame = frame
        self.show_counts = classes <= COUNTS_MAX_CLASSES
        self.digits = digit_inks(self.font)

    def render(self, counts: np.ndarray) -> np.ndarray:
        """The matrix (rows = true class) as an HWC uint8 RGB image."""
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = self.frame.copy()
        side = len(counts) * CELL
        cells = BLUES[np.rint(shares * 255).astype(int)]
        image[self.top : self.top + side, self.left : self.left + side] = cells.repeat(CELL, 0).repeat(CELL, 1)
        if self.show_counts:
            for (i, j), count in np.ndenumerate(counts):
                if count:
                    ink = np.concatenate([self.digits[digit] for digit in str(count)], axis=1)
                    left = self.left + j * CELL + (CELL - ink.shape[1]) // 2
                    top = self.top + i * CELL + (CELL - ink.shape[0]) // 2
                    blend(image, ink, left, top, PAPER if shares[i, j] > 0.5 else INK)
        return image


def digit_inks(font: ImageFont.FreeTypeFont) -> dict[str, np.ndarray]:
    """Each digit's ink (0-255) at its advance width, all of one height on one baseline: a number's ink is
    its digits' side by side, spaced as the font spaces them."""
    from PIL import Image, ImageDraw

    _, top, _, bottom = font.getbbox("0123456789")
    inks = {}
    for digit in "0123456789":
        canvas = Image.new("L", (round(font.getlength(digit)), bottom - top))
        ImageDraw.Draw(canvas).text((0, -top), digit, fill=255, font=font)
        inks[digit] = np.asarray(canvas)
    return inks


def blend(image: np.ndarray, ink: np.ndarray, left: int, top: int, colour: tuple[int, int, int]) -> None:
    """Ink (0-255) of `colour` over the image at (left, top); what falls outside the image is left out."""
    height, width = image.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + ink.shape[1], width), min(top + ink.shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return
    alpha = ink[y0 - top : y1 - top, x0 - left : x1 - left, None] / 255.0
    region = image[y0:y1, x0:x1]
    region[:] = (region * (1 - alpha) + np.asarray(colour) * alpha).round().astype(np.uint8)


@functools.lru_cache(maxsize=8)
def plot_for(class_names: tuple[str, ...]) -> ConfusionPlot:
    """The frame of these class names, drawn once per process (an evaluator meets one or two lists)."""
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
