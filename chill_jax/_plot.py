# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Drawing a mask and its analytic ranges with matplotlib (optional dependency)."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from chill_jax.masks import ChillMask

_ALLOWED_COLOR = "#c9c9c9"
_BLOCKED_COLOR = "#ffffff"
_K_LO_COLOR = "tab:blue"
_K_HI_COLOR = "tab:orange"
_Q_LO_COLOR = "tab:green"
_Q_HI_COLOR = "tab:red"
_FULL_COLOR = "tab:purple"


def _import_matplotlib():
    try:
        from matplotlib.colors import ListedColormap  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.patches import Patch, Rectangle  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "plotting a mask needs matplotlib: pip install 'chill-jax[plot]' "
            f"(or pip install matplotlib); import failed with: {e}") from e
    return ListedColormap, Figure, Patch, Rectangle


def _check_tile(tile: Any) -> tuple[int, int]:
    if (not isinstance(tile, (tuple, list)) or len(tile) != 2 or any(
            isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1 for t in tile)):
        raise ValueError(f"plot_mask: tile must be a pair of positive ints (query tile, key tile), got {tile!r}")
    return int(tile[0]), int(tile[1])


def _row_steps(values: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Staircase through cells: position ``i`` spans ``[i - 0.5, i + 0.5]`` on
    its own axis and sits at ``values[i] + offset`` on the other."""
    n = values.shape[0]
    along = np.empty(2 * n)
    along[0::2] = np.arange(n) - 0.5
    along[1::2] = np.arange(n) + 0.5
    across = np.repeat(values.astype(np.float64) + offset, 2)
    return along, across


def plot_mask(mask: "ChillMask", q_len: int, kv_len: int | None = None, *,
              show_full_blocks: bool = False, tile: tuple[int, int] = (64, 64), example: int = 0) -> "Figure":
    """Draws a mask with its analytic ranges over it.

    The image is ``mask.make_mask(q_len, kv_len)``, bool ``[q_len, kv_len]``
    (queries on the y axis, growing downwards; keys on the x axis); allowed
    entries are grey. The outputs of the range methods,
    ``mask.ranges(q_len, kv_len)``, are drawn as cell edges so a correct mask
    has every grey cell inside all four lines:

    * ``k_range_for_q``: int32 ``[q_len, 2]``; for each query row, a line
      left of key ``lo`` and a line right of key ``hi``.
    * ``q_range_for_k``: int32 ``[kv_len, 2]``; for each key column, a line
      above query ``lo`` and a line below query ``hi`` (dashed).

    Args:
      mask: a :class:`~chill_jax.ChillMask` instance.
      q_len: number of query positions (>= 1).
      kv_len: number of key positions (default ``q_len``). The methods
        receive ``seq_len = kv_len`` (``q_range_for_k``: ``q_len``).
      show_full_blocks: also outline every tile that ``is_full_block`` claims
        full, from ``mask.full_blocks(q_len, kv_len, tile[0], tile[1])``
        (bool ``[cdiv(q_len, tile[0]), cdiv(kv_len, tile[1])]``), over a faint
        grid of the tile boundaries.
      tile: ``(query tile, key tile)`` sizes for ``show_full_blocks``.
      example: the batch element of the mask's arrays to draw (masks with
        runtime arrays).

    Returns:
      A ``matplotlib.figure.Figure`` (no pyplot, no GUI backend needed); save
      it with ``fig.savefig("mask.png")``.

    Raises:
      ImportError: matplotlib is not installed (``pip install 'chill-jax[plot]'``).
      ValueError: ``q_len``, ``kv_len`` or ``tile`` are not positive ints.
    """
    ListedColormap, Figure, Patch, Rectangle = _import_matplotlib()
    tile = _check_tile(tile)
    dense = np.asarray(mask.make_mask(q_len, kv_len, example=example), dtype=bool)
    q_len, kv_len = dense.shape
    k_ranges, q_ranges = (np.asarray(r) for r in mask.ranges(q_len, kv_len, example=example))

    longest = max(q_len, kv_len)
    ratio = longest / min(q_len, kv_len)
    width = 6.0 * kv_len / longest if ratio <= 4 else 6.0
    height = 6.0 * q_len / longest if ratio <= 4 else 6.0
    fig = Figure(figsize=(max(width, 2.5) + 3.2, max(height, 2.5) + 0.9), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(dense, cmap=ListedColormap([_BLOCKED_COLOR, _ALLOWED_COLOR]), vmin=0, vmax=1,
              interpolation="nearest", extent=(-0.5, kv_len - 0.5, q_len - 0.5, -0.5),
              aspect="equal" if ratio <= 4 else "auto")

    handles = [Patch(facecolor=_ALLOWED_COLOR, edgecolor="0.4", label="mask allows")]
    # Exact ranges make a k line and a q line coincide: draw the k lines wide
    # and the q lines thin and dashed on top so both stay visible.
    ys, xs = _row_steps(k_ranges[:, 0], -0.5)
    handles += ax.plot(xs, ys, color=_K_LO_COLOR, lw=3.0, alpha=0.8, label="k_range_for_q lo")
    ys, xs = _row_steps(k_ranges[:, 1], 0.5)
    handles += ax.plot(xs, ys, color=_K_HI_COLOR, lw=3.0, alpha=0.8, label="k_range_for_q hi")
    xs, ys = _row_steps(q_ranges[:, 0], -0.5)
    handles += ax.plot(xs, ys, color=_Q_LO_COLOR, lw=1.2, ls="--", label="q_range_for_k lo")
    xs, ys = _row_steps(q_ranges[:, 1], 0.5)
    handles += ax.plot(xs, ys, color=_Q_HI_COLOR, lw=1.2, ls="--", label="q_range_for_k hi")

    if show_full_blocks:
        q_tile, k_tile = tile
        for y in range(q_tile, q_len, q_tile):
            ax.axhline(y - 0.5, color="0.6", lw=0.5, zorder=1.5)
        for x in range(k_tile, kv_len, k_tile):
            ax.axvline(x - 0.5, color="0.6", lw=0.5, zorder=1.5)
        claims = np.asarray(mask.full_blocks(q_len, kv_len, q_tile, k_tile, example=example), dtype=bool)
        for tq, tk in zip(*np.nonzero(claims)):
            q0, k0 = tq * q_tile, tk * k_tile
            ax.add_patch(Rectangle(
                (k0 - 0.5, q0 - 0.5), min(k_tile, kv_len - k0), min(q_tile, q_len - q0),
                fill=False, edgecolor=_FULL_COLOR, lw=2.0, hatch="//", alpha=0.9, zorder=3))
        handles.append(Patch(fill=False, edgecolor=_FULL_COLOR, hatch="//", lw=2.0,
                             label=f"full block ({q_tile}x{k_tile} tiles)"))

    ax.set_xlim(-0.5, kv_len - 0.5)
    ax.set_ylim(q_len - 0.5, -0.5)
    ax.set_xlabel("key position k")
    ax.set_ylabel("query position q")
    ax.set_title(repr(mask))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig
