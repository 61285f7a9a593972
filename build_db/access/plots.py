"""A named query's natural picture (its `-- plot:` line): heatmap, dotplot, UMAP scatter or bar chart.

Rows and columns keep the order of the query's result (queries sort by taxonomy order); `facet=COL` draws
one panel per value of COL on shared axes and one color scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HmbaError
from .queries import Plot


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return matplotlib, plt


def _ordered(values: pd.Series) -> list:
    return list(dict.fromkeys(values.dropna()))


def _panels(df: pd.DataFrame, facet: str | None) -> list[tuple[str, pd.DataFrame]]:
    return [(str(k), df[df[facet] == k]) for k in _ordered(df[facet])] if facet else [("", df)]


def plot_path(out: Path | str) -> Path:
    """Where a picture will be written: `out` as given (no suffix means .png, said so in the returned path);
    an unknown format or a place that cannot be written is a one-line error, checked before any work."""
    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    matplotlib, plt = _plt()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if out.suffix[1:].lower() not in formats:
        known = ", ".join("." + f for f in sorted(formats))
        raise HmbaError(f"{out}: cannot draw a {out.suffix!r} file; use one of {known}")
    if out.is_dir():
        raise HmbaError(f"{out}: a folder is there; give a file name such as {out / 'plot.png'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(out, e) from e
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise _unwritable(out, PermissionError(13, "Permission denied"))
    return out


def _unwritable(out: Path, e: OSError) -> HmbaError:
    return HmbaError(f"{out}: cannot write the picture there ({e.strerror}); choose another path")


def draw(df: pd.DataFrame, plot: Plot, title: str, out: Path) -> Path:
    """Draw `df` as `plot` into `out` (the format follows the suffix: .png, .svg, .pdf); returns the path
    written."""
    missing = [c for k, c in plot.options.items() if k != "facet" and c not in df.columns]
    if plot.options.get("facet") and plot.options["facet"] not in df.columns:
        missing.append(plot.options["facet"])
    if missing:
        raise HmbaError(f"cannot plot: the result has no column {', '.join(missing)}")
    if df.empty:
        raise HmbaError("cannot plot: the query returned no rows")
    out = plot_path(out)
    fig = {"heatmap": _grid, "dotplot": _grid, "scatter": _scatter, "bar": _bar}[plot.kind](df, plot)
    fig.suptitle(title, y=1.0 + 0.3 / fig.get_figheight())  # above any panel titles
    try:
        fig.savefig(out, dpi=150, bbox_inches="tight")
    except OSError as e:
        raise _unwritable(out, e) from e
    finally:
        _plt()[1].close(fig)
    return out


def _grid(df: pd.DataFrame, plot: Plot):
    """Heatmap (value as color) or dotplot (color and dot size) of y rows x x columns, per facet."""
    matplotlib, plt = _plt()
    o = plot.options
    x, y = o["x"], o["y"]
    color = o.get("value") or o["color"]
    panels = _panels(df, o.get("facet"))
    rows, cols = _ordered(df[y]), _ordered(df[x])
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(3.0, 0.28 * len(cols)) * len(panels) + 2.5, 0.18 * len(rows) + 1.8),
        squeeze=False,
        sharey=True,
    )
    vmax = float(np.nanmax(df[color].to_numpy(dtype=float))) or 1.0
    cmap = matplotlib.colormaps["magma_r" if plot.kind == "dotplot" else "magma"].with_extremes(bad="#dddddd")
    for i, (ax, (name, part)) in enumerate(zip(axes[0], panels, strict=True)):
        grid = part.pivot_table(index=y, columns=x, values=color, aggfunc="first", dropna=False)
        values = grid.reindex(index=rows, columns=cols).to_numpy(dtype=float)
        if plot.kind == "heatmap":
            im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        else:
            size = part.pivot_table(index=y, columns=x, values=o["size"], aggfunc="first", dropna=False)
            sizes = size.reindex(index=rows, columns=cols).fillna(0).to_numpy(dtype=float)
            yy, xx = np.mgrid[0 : len(rows), 0 : len(cols)]
            im = ax.scatter(
                xx.ravel(), yy.ravel(), s=sizes.ravel() * 60, c=values.ravel(), cmap=cmap, vmin=0, vmax=vmax
            )
            ax.set_xlim(-0.5, len(cols) - 0.5)
            ax.set_ylim(len(rows) - 0.5, -0.5)
        if name:
            ax.set_title(name)
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        if i == 0:
            ax.set_yticks(range(len(rows)), rows, fontsize=6 if len(rows) < 80 else 4)
    fig.colorbar(im, ax=axes[0].tolist(), label=color, shrink=0.6)
    if plot.kind == "dotplot":
        for f in (0.25, 0.5, 1.0):
            axes[0][-1].scatter([], [], s=f * 60, c="grey", label=f"{f:g}")
        axes[0][-1].legend(
            title=o["size"], loc="upper left", bbox_to_anchor=(1.35, 1.0), fontsize=7, frameon=False
        )
    return fig


def _scatter(df: pd.DataFrame, plot: Plot):
    """Cells at (x, y), colored by a value, highest drawn last so expressing cells stay visible."""
    matplotlib, plt = _plt()
    o = plot.options
    panels = _panels(df, o.get("facet"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 5), squeeze=False)
    vmax = float(np.nanmax(df[o["color"]].to_numpy(dtype=float))) or 1.0
    for ax, (name, part) in zip(axes[0], panels, strict=True):
        part = part.sort_values(o["color"])
        sc = ax.scatter(
            part[o["x"]],
            part[o["y"]],
            c=part[o["color"]],
            s=2,
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            linewidths=0,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(o["x"])
        ax.set_ylabel(o["y"])
        if name:
            ax.set_title(name)
    fig.colorbar(sc, ax=axes[0].tolist(), label=o["color"], shrink=0.7)
    return fig


def _bar(df: pd.DataFrame, plot: Plot):
    """Horizontal bars of y per x (in result order), colored by a color column when the plot names one."""
    _, plt = _plt()
    o = plot.options
    panels = _panels(df, o.get("facet"))
    labels = _ordered(df[o["x"]])
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.0 * len(panels) + 2.5, 0.18 * len(labels) + 1.5),
        squeeze=False,
        sharey=True,
    )
    for i, (ax, (name, part)) in enumerate(zip(axes[0], panels, strict=True)):
        part = part.drop_duplicates(o["x"]).set_index(o["x"]).reindex(labels)
        colors = part[o["color"]].fillna("#888888").tolist() if o.get("color") else None
        ax.barh(range(len(labels)), part[o["y"]].fillna(0), color=colors)
        ax.set_xlabel(o["y"])
        if name:
            ax.set_title(name)
        if i == 0:
            ax.set_yticks(range(len(labels)), labels, fontsize=6 if len(labels) < 80 else 4)
    axes[0][0].invert_yaxis()
    return fig
