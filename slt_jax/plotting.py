r"""Matplotlib figures for slt_jax results: loss kernels and influence matrices.

matplotlib is an optional dependency (``pip install matplotlib``, or the ``plot`` / ``dev``
extras); it is imported only when a figure is drawn, so ``import slt_jax.plotting`` works
without it. Every plotting function returns its :class:`matplotlib.figure.Figure` and accepts
``ax=`` to draw into an existing axes (e.g. one panel of a grid).

Ordering by clustering
----------------------
Heatmaps of a kernel or an influence matrix show structure only when similar items are
adjacent. :func:`cluster_order` turns a similarity matrix into the leaf order of an
average-linkage hierarchical clustering of its rows (each item's correlation profile, compared
by correlation; a covariance is normalized to a correlation first), using :mod:`scipy.cluster.hierarchy` (scipy
is a dependency of jax). :func:`cluster_labels` cuts the same tree into flat clusters.

Shared style
------------
:func:`_new_figure` (one figure / axes, constrained layout) and the colormap constants
:data:`DIVERGING_COLORMAP` (signed quantities centred at 0) and :data:`SEQUENTIAL_COLORMAP`
are what every figure here uses; later plots (traces, LLC curves) reuse them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DIVERGING_COLORMAP",
    "SEQUENTIAL_COLORMAP",
    "cluster_labels",
    "cluster_order",
    "plot_influence",
    "plot_kernel",
]

#: colormap of signed quantities (kernels, influences): blue < 0 < red, white at 0
DIVERGING_COLORMAP = "RdBu_r"
#: colormap of non-negative quantities
SEQUENTIAL_COLORMAP = "viridis"
#: colors of categorical labels (task ids, classes)
CATEGORICAL_COLORMAP = "tab10"
#: matrices up to this size get one tick per item (its original index)
MAX_TICKED_ITEMS = 30
DEFAULT_FIGURE_SIZE = (5.6, 4.6)


# ----------------------------------------------------------------------------------------------
# shared style


def _pyplot():
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as pyplot
    except ImportError as error:
        raise ImportError(
            "slt_jax.plotting needs matplotlib: `pip install matplotlib` "
            "(or `pip install 'slt_jax[plot]'`)."
        ) from error
    return pyplot


def _new_figure(ax=None, *, figsize: tuple[float, float] = DEFAULT_FIGURE_SIZE):
    """A ``(figure, axes)`` pair: a new constrained-layout figure, or ``ax`` and its figure.

    Args:
      ax: an existing :class:`matplotlib.axes.Axes` to draw into, or ``None``.
      figsize: size in inches of a new figure.

    Returns:
      ``(figure, axes)``.
    """
    pyplot = _pyplot()
    if ax is not None:
        return ax.get_figure(), ax
    figure, ax = pyplot.subplots(figsize=figsize, layout="constrained")
    return figure, ax


def _heatmap(figure, ax, matrix: np.ndarray, *, limit: float, colorbar_label: str):
    """``matrix`` drawn with the diverging colormap on ``[-limit, limit]`` plus a colorbar."""
    image = ax.imshow(matrix, cmap=DIVERGING_COLORMAP, vmin=-limit, vmax=limit,
                      interpolation="nearest", aspect="auto")
    colorbar = figure.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label(colorbar_label)
    return image


def _symmetric_limit(values: np.ndarray) -> float:
    """The largest finite magnitude in ``values`` (1 if there is none or it is 0)."""
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _index_ticks(ax, order: np.ndarray, *, axis: str) -> None:
    """One tick per item, labelled by its original index, when there are few items."""
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    if order.size > MAX_TICKED_ITEMS:
        setter([])
        return
    fontsize = 8 if order.size <= 15 else 6
    setter(np.arange(order.size), [str(index) for index in order], fontsize=fontsize)


# ----------------------------------------------------------------------------------------------
# input checks and clustering


def _as_matrix(values, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(
            f"{name} must be a non-empty 2-D array, got shape {matrix.shape}; reshape per-token "
            "results to (q * T, q * T) or sum over the token axes first."
        )
    return matrix


def _as_square(values, name: str) -> np.ndarray:
    matrix = _as_matrix(values, name)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be square (q, q), got shape {matrix.shape}.")
    return matrix


def _to_correlation(matrix: np.ndarray) -> np.ndarray:
    """Symmetrize and normalize by the diagonal (0 where a diagonal entry is not positive)."""
    matrix = 0.5 * (matrix + matrix.T)
    diagonal = np.diagonal(matrix)
    scale = np.sqrt(np.where(diagonal > 0, diagonal, np.inf))
    correlation = matrix / scale[:, None] / scale[None, :]
    np.fill_diagonal(correlation, 1.0)
    return np.nan_to_num(correlation, nan=0.0, posinf=0.0, neginf=0.0)


def _profile_distance(matrix: np.ndarray) -> np.ndarray:
    """``1 -`` the Pearson correlation between rows of the correlation (1 where a row is flat)."""
    profiles = _to_correlation(matrix)
    profiles = profiles - profiles.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    profiles = profiles / np.where(norms > 0, norms, 1.0)
    distance = np.clip(1.0 - profiles @ profiles.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    return 0.5 * (distance + distance.T)


def _linkage(matrix):
    """Average-linkage tree of the items' correlation profiles (:func:`_profile_distance`)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    return hierarchy.linkage(squareform(_profile_distance(matrix), checks=False), method="average")


def cluster_order(matrix) -> np.ndarray:
    r"""A leaf order of the hierarchical clustering of a symmetric similarity matrix.

    The matrix (a correlation, or a covariance such as a loss kernel, which is first normalized
    to :math:`R_{ij} = K_{ij}/\sqrt{K_{ii}K_{jj}}`, 0 where a variance is 0) is clustered by
    its rows: item :math:`i` is described by its correlation profile :math:`R_{i\cdot}`, two
    items are at distance :math:`1 - \operatorname{corr}(R_{i\cdot}, R_{j\cdot}) \in [0, 2]`,
    and the tree is built by average linkage (UPGMA). Comparing profiles rather than single
    entries (as :math:`1 - R_{ij}` would) lets an item whose correlations are weak but point to
    one block join that block instead of forming a cluster of its own (the choice of
    seaborn's ``clustermap(metric="correlation")``). The leaves of the dendrogram, left to
    right, are the order, so each cluster is contiguous and a block structure becomes
    block-diagonal. Cost :math:`O(q^2)` memory and :math:`O(q^3)` time for the distances:
    seconds at a few thousand items.

    Args:
      matrix: ``(q, q)`` symmetric similarity (correlation or covariance).

    Returns:
      ``(q,)`` integer permutation of ``range(q)``: ``matrix[order][:, order]`` is reordered.

    Example:
      >>> import numpy as np
      >>> blocks = np.kron(np.eye(2), np.ones((2, 2)))[[0, 2, 1, 3]][:, [0, 2, 1, 3]]
      >>> order = cluster_order(blocks)
      >>> sorted(order[:2].tolist()) in ([0, 2], [1, 3])
      True
    """
    matrix = _as_square(matrix, "matrix")
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    from scipy.cluster import hierarchy

    return np.asarray(hierarchy.leaves_list(_linkage(matrix)), dtype=int)


def cluster_labels(matrix, num_clusters: int) -> np.ndarray:
    """Flat clusters: the tree of :func:`cluster_order` cut into ``num_clusters`` clusters.

    Args:
      matrix: ``(q, q)`` symmetric similarity (correlation or covariance).
      num_clusters: the number of clusters, ``1 <= num_clusters <= q``.

    Returns:
      ``(q,)`` integer cluster ids in ``range(num_clusters)`` (arbitrary numbering).
    """
    matrix = _as_square(matrix, "matrix")
    size = matrix.shape[0]
    if not 1 <= int(num_clusters) <= size:
        raise ValueError(f"num_clusters must be in [1, {size}], got {num_clusters!r}.")
    if int(num_clusters) == size:
        return np.arange(size)
    from scipy.cluster import hierarchy

    labels = hierarchy.fcluster(_linkage(matrix), t=int(num_clusters), criterion="maxclust")
    return np.unique(labels, return_inverse=True)[1].astype(int)


def _resolve_order(order: Any, similarity, size: int, name: str) -> np.ndarray:
    """``"cluster"`` → :func:`cluster_order` of ``similarity()``; ``None`` → identity; else checked."""
    if isinstance(order, str):
        if order != "cluster":
            raise ValueError(f"{name} must be 'cluster', None or a permutation, got {order!r}.")
        return cluster_order(similarity())
    if order is None:
        return np.arange(size)
    order = np.asarray(order)
    if order.shape != (size,) or not np.array_equal(np.sort(order), np.arange(size)):
        raise ValueError(f"{name} must be a permutation of range({size}), got {order!r}.")
    return order.astype(int)


def _correlation_of_rows(matrix: np.ndarray) -> np.ndarray:
    """Pearson correlation between rows (0 where a row is constant)."""
    centered = matrix - matrix.mean(axis=1, keepdims=True)
    return _to_correlation(centered @ centered.T)


# ----------------------------------------------------------------------------------------------
# figures


def _label_strips(ax, labels: np.ndarray, *, legend: bool = True) -> None:
    """Colored strips of categorical ``labels`` (already in display order) along both axes."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names, codes = np.unique(labels, return_inverse=True)
    palette = _pyplot().get_cmap(CATEGORICAL_COLORMAP)
    colors = ListedColormap([palette(index % palette.N) for index in range(names.size)])
    top = ax.inset_axes((0.0, 1.01, 1.0, 0.035))
    left = ax.inset_axes((-0.045, 0.0, 0.035, 1.0))
    for strip, image in ((top, codes[None, :]), (left, codes[:, None])):
        strip.imshow(image, cmap=colors, vmin=-0.5, vmax=names.size - 0.5, aspect="auto",
                     interpolation="nearest")
        strip.set_axis_off()
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        handles = [Patch(color=colors(index), label=str(name)) for index, name in enumerate(names)]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01),
                  ncol=min(names.size, 5), frameon=False, fontsize=8)


def plot_kernel(kernel, *, labels=None, order="cluster", title: str | None = None, ax=None,
                vmax: float | None = None, colorbar_label: str | None = None):
    r"""Heatmap of a loss kernel (covariance or correlation, MATH.md §3).

    Rows and columns are permuted by the same ``order`` (by default :func:`cluster_order` of
    the kernel), so examples the posterior couples are adjacent and a task structure shows as
    diagonal blocks. Diverging colormap centred at 0; the color scale is symmetric and set by
    the largest *off-diagonal* magnitude (the diagonal, variances or ones, may saturate).

    Args:
      kernel: ``(q, q)`` kernel, e.g. ``slt.loss_kernel(losses, normalize=True)``.
      labels: optional ``(q,)`` categorical labels (e.g. task ids) drawn as color strips along
        the top and left edges, with a legend.
      order: ``"cluster"``, ``None`` (as given) or a permutation of ``range(q)``.
      title: axes title.
      ax: existing axes to draw into (default: a new figure).
      vmax: color scale limit (default: the largest off-diagonal magnitude).
      colorbar_label: default ``"loss correlation"`` when the diagonal is all ones, else
        ``"loss covariance"``.

    Returns:
      The :class:`matplotlib.figure.Figure`.
    """
    kernel = _as_square(kernel, "kernel")
    size = kernel.shape[0]
    if labels is not None and np.shape(labels) != (size,):
        raise ValueError(f"labels must have shape ({size},), got {np.shape(labels)}.")
    order = _resolve_order(order, lambda: kernel, size, "order")
    shown = kernel[np.ix_(order, order)]
    if vmax is None:
        off_diagonal = shown[~np.eye(size, dtype=bool)]
        vmax = _symmetric_limit(off_diagonal if off_diagonal.size else shown)
    if colorbar_label is None:
        is_correlation = np.allclose(np.diagonal(kernel), 1.0, atol=1e-5)
        colorbar_label = "loss correlation" if is_correlation else "loss covariance"
    figure, ax = _new_figure(ax)
    _heatmap(figure, ax, shown, limit=float(vmax), colorbar_label=colorbar_label)
    if labels is not None:
        _label_strips(ax, np.asarray(labels)[order])
    else:
        _index_ticks(ax, order, axis="x")
        _index_ticks(ax, order, axis="y")
        ax.set_xlabel("query example" + (" (clustered order)" if size > 2 else ""))
    if title is not None:
        ax.set_title(title, pad=18 if labels is not None else 6)
    return figure


def plot_influence(scores, *, row_order="cluster", column_order="cluster",
                   title: str | None = None, ax=None, vmax: float | None = None,
                   colorbar_label: str = "influence (negative = helpful)"):
    r"""Heatmap of an ``(n, q)`` influence matrix, e.g. ``slt.bif(train, query)`` (MATH.md §4).

    Rows (training examples) are ordered by :func:`cluster_order` of the Pearson correlation
    between rows, columns (queries) by that between columns, so training examples with the
    same influence profile, and queries influenced alike, are adjacent. Diverging colormap
    centred at 0 on a symmetric scale: blue (negative) = helpful, upweighting the training
    example lowers the query's loss; red = harmful.

    Args:
      scores: ``(n, q)`` influences (per-token ``(n, T, q, T')``: reshape or sum first).
      row_order, column_order: ``"cluster"``, ``None`` (as given) or a permutation.
      title: axes title.
      ax: existing axes to draw into (default: a new figure).
      vmax: color scale limit (default: the largest magnitude).
      colorbar_label: label of the colorbar.

    Returns:
      The :class:`matplotlib.figure.Figure`.
    """
    scores = _as_matrix(scores, "scores")
    num_rows, num_columns = scores.shape
    rows = _resolve_order(row_order, lambda: _correlation_of_rows(scores), num_rows, "row_order")
    columns = _resolve_order(column_order, lambda: _correlation_of_rows(scores.T), num_columns,
                             "column_order")
    shown = scores[np.ix_(rows, columns)]
    figure, ax = _new_figure(ax)
    limit = _symmetric_limit(shown) if vmax is None else float(vmax)
    _heatmap(figure, ax, shown, limit=limit, colorbar_label=colorbar_label)
    _index_ticks(ax, columns, axis="x")
    _index_ticks(ax, rows, axis="y")
    ax.set_xlabel("query example")
    ax.set_ylabel("training example")
    if title is not None:
        ax.set_title(title)
    return figure
