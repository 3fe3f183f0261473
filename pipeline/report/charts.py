"""Charts as PNG data URIs (matplotlib, Agg): the page needs no network and no script to
show them. Deterministic bytes: no timestamps in the PNG metadata, fixed size and font."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

_WIDTH, _BAR_HEIGHT = 7.0, 0.32
_COLOR, _ALERT = "#3b6ea5", "#c0392b"


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, percent: bool = False) -> str:
    """A horizontal bar chart, largest first as given, as a ``data:image/png`` URI."""
    from matplotlib.ticker import PercentFormatter

    figure, axes = _figure(max(1.6, 0.6 + _BAR_HEIGHT * len(labels)), title)
    positions = range(len(labels))
    colors = [_ALERT if percent and v >= 0.5 else _COLOR for v in values]
    axes.barh(list(positions), list(values), color=colors)
    axes.set_yticks(list(positions), [_short(label) for label in labels])
    axes.invert_yaxis()
    if percent:
        axes.set_xlim(0, 1)
        axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:.0%}" if percent else f" {value:,.0f}", va="center", fontsize=8)
    return _png(figure)


def line_chart(xs: Sequence[float], ys: Sequence[float], title: str, x_label: str, y_label: str) -> str:
    figure, axes = _figure(3.0, title)
    axes.plot(list(xs), list(ys), color=_COLOR)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    return _png(figure)


def _figure(height: float, title: str) -> tuple[Any, Any]:
    """A figure of the page's width, titled, without top and right frame lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(_WIDTH, height), dpi=96)
    axes.set_title(title, loc="left", fontsize=11)
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _png(figure: Any) -> str:
    """The figure as a PNG data URI (no software tag: the same bytes each time), closed."""
    from matplotlib import pyplot as plt

    try:
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(label: str, limit: int = 28) -> str:
    """A tick label: cut to ``limit``, ``$`` escaped (matplotlib reads ``$…$`` as math,
    and a tool name from a log may hold one)."""
    cut = label if len(label) <= limit else label[: limit - 1] + "…"
    return cut.replace("$", r"\$")
