r"""Matplotlib figures for slt_jax results: chain traces, calibration evidence, LLC curves over
checkpoints, loss kernels and influence matrices.

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
are what every figure here uses; the trace, calibration and LLC-curve figures add
:data:`CATEGORICAL_COLORMAP` colors per chain / component, grey dashed lines
(:data:`EXCLUDED_COLOR`) for chains excluded from an estimate, and a grey band for burn-in.
Multi-panel figures (:func:`plot_trace`, :func:`plot_calibration`) make their own figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DIVERGING_COLORMAP",
    "SEQUENTIAL_COLORMAP",
    "cluster_labels",
    "cluster_order",
    "plot_calibration",
    "plot_influence",
    "plot_kernel",
    "plot_llc_curves",
    "plot_response",
    "plot_trace",
    "plot_trajectories",
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
    r"""Heatmap of a loss kernel (covariance or correlation, docs/mathematics.md §3).

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
    r"""Heatmap of an ``(n, q)`` influence matrix, e.g. ``slt.bif(train, query)`` (docs/mathematics.md §4).

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


# ----------------------------------------------------------------------------------------------
# traces


#: color and line style of chains excluded from an estimate (diverged or ran away)
EXCLUDED_COLOR = "0.55"
EXCLUDED_LINESTYLE = "--"
#: hatching of the (unrecorded) burn-in steps
BURNIN_COLOR = "0.7"
BURNIN_HATCH = "///"
#: chains up to this many get one legend entry each (above it only excluded chains do)
MAX_LABELLED_CHAINS = 10
TRACE_PANEL_SIZE = (7.2, 2.4)


def _categorical_color(index: int):
    """The ``index``-th color of :data:`CATEGORICAL_COLORMAP` (cycling)."""
    import matplotlib

    palette = matplotlib.colormaps[CATEGORICAL_COLORMAP]
    return palette(index % palette.N)


def _running_mean(values: np.ndarray) -> np.ndarray:
    """Running mean along the last axis (``nan`` from the first non-finite value on)."""
    return np.cumsum(values, axis=-1) / np.arange(1, values.shape[-1] + 1)


class _TraceData:
    """What :func:`plot_trace` draws, taken out of a Trace / LLCResult / BIFResult."""

    def __init__(self, streams, excluded, hyperparameters, llc_result, first_nonfinite_step):
        self.streams = streams  # [(name, y label, (chains, draws) float array)]
        self.excluded = excluded  # {chain: reason}
        self.hyperparameters = hyperparameters
        self.llc_result = llc_result
        self.first_nonfinite_step = first_nonfinite_step


def _trace_data(value, observables) -> _TraceData:
    from slt_jax.estimators.influence import BIFResult
    from slt_jax.estimators.llc import LLCResult
    from slt_jax.sampling import Trace

    if isinstance(value, BIFResult):
        if value.llc is None:
            raise ValueError("this BIFResult has no LLC (result.llc is None) to plot a trace of")
        value = value.llc._replace(
            hyperparameters={**value.hyperparameters, **(value.llc.hyperparameters or {})}
        )
    if isinstance(value, LLCResult):
        if observables:
            raise ValueError("observables= needs a Trace; an LLCResult holds only the LLC draws")
        draws = np.asarray(value.draws, dtype=float)
        if draws.ndim != 2:
            raise ValueError(f"LLCResult.draws must be (num_chains, num_draws), got {draws.shape}")
        excluded = {int(c): "diverged" for c in value.diverged_chains}
        excluded.update({int(c): "ran away" for c in getattr(value, "runaway_chains", ())})
        streams = [("llc", r"$n\beta\,(L_t - L^*)$", draws)]
        return _TraceData(streams, excluded, dict(value.hyperparameters or {}), value, None)
    if not isinstance(value, Trace):
        raise TypeError(
            "plot_trace expects an slt_jax.LLCResult, an slt_jax.Trace or an slt_jax.BIFResult, "
            f"got {type(value).__name__}"
        )
    streams = []
    if value.loss is not None:
        streams.append(("loss", "minibatch loss", np.asarray(value.loss, dtype=float)))
    if observables is True:
        names = [name for name, array in value.observables.items() if np.ndim(array) == 2]
    else:
        names = list(observables or ())
    for name in names:
        if name not in value.observables:
            raise ValueError(
                f"no observable {name!r} in this trace; it records {sorted(value.observables)}"
            )
        array = np.asarray(value.observables[name], dtype=float)
        if array.ndim != 2:
            raise ValueError(
                f"observable {name!r} has shape {array.shape}; plot_trace draws scalar "
                "observables (chains, draws) only"
            )
        streams.append((name, name, array))
    if not streams:
        raise ValueError("this trace records no loss and no scalar observable to plot")
    first = np.asarray(value.first_nonfinite_step).astype(int)
    excluded = {int(c): "diverged" for c in np.flatnonzero(np.asarray(value.diverged))}
    return _TraceData(streams, excluded, dict(value.hyperparameters or {}), None, first)


def _step_axis(num_draws: int, hyperparameters: dict, num_burnin, steps_per_draw):
    """``(x values, x label, burn-in steps or None)``: sampler steps when the run lengths are
    known, else draw indices."""
    from slt_jax.export import draw_steps

    num_burnin = hyperparameters.get("num_burnin") if num_burnin is None else num_burnin
    steps_per_draw = (hyperparameters.get("steps_per_draw") if steps_per_draw is None
                      else steps_per_draw)
    if num_burnin is None and steps_per_draw is None:
        return np.arange(num_draws), "draw", None
    num_burnin, steps_per_draw = int(num_burnin or 0), int(steps_per_draw or 1)
    return draw_steps(num_draws, num_burnin, steps_per_draw), "sampler step", num_burnin


def _chain_style(chain: int, data: _TraceData, burnin) -> dict:
    """Color, line style and legend label of one chain (excluded chains grey and dashed)."""
    reason = data.excluded.get(chain)
    if reason is None:
        return dict(color=_categorical_color(chain), linestyle="-", label=f"chain {chain}")
    where = ""
    if reason == "diverged" and data.first_nonfinite_step is not None:
        step = int(data.first_nonfinite_step[chain])
        if step >= 0:
            where = f" at step {step}" + (" (burn-in)" if burnin and step < burnin else "")
    return dict(color=EXCLUDED_COLOR, linestyle=EXCLUDED_LINESTYLE,
                label=f"chain {chain} ({reason}{where})")


def _diagnostics_text(values: np.ndarray, kept: np.ndarray) -> str:
    """``"R̂ = …, ESS = …"`` of the kept chains (slt_jax.diagnostics)."""
    from slt_jax import diagnostics

    kept_values = values[kept]
    if kept_values.shape[0] == 0:
        return "every chain excluded"
    rhat = diagnostics.split_rhat(kept_values) if kept_values.shape[0] > 1 else float("nan")
    ess = diagnostics.effective_sample_size(kept_values)
    return f"R̂ = {rhat:.3f}, ESS = {ess:.0f}"


def _mark_burnin(ax, burnin, *, label: bool) -> None:
    if burnin:
        ax.axvspan(0, burnin, facecolor="none", edgecolor=BURNIN_COLOR, hatch=BURNIN_HATCH,
                   linewidth=0, zorder=0, label="burn-in (not recorded)" if label else None)
    if burnin is not None:
        ax.set_xlim(left=0)


def plot_trace(result_or_trace, *, observables=False, truth: float | None = None,
               num_burnin: int | None = None, steps_per_draw: int | None = None,
               title: str | None = None):
    r"""Per-chain traces of an LLC estimate or a sampling run, with burn-in and divergences.

    For an :class:`~slt_jax.LLCResult` (or a :class:`~slt_jax.BIFResult`'s ``llc``): the top
    panel shows each chain's per-draw LLC estimates :math:`n\beta(L_t - L^*)`, the bottom
    panel each chain's running mean :math:`\frac1t\sum_{s\le t}` of them, with the pooled
    estimate and its ±MCSE band; the title gives the estimate, split-:math:`\hat R` and ESS.
    For a :class:`~slt_jax.Trace`: one panel per stream (the loss, and the scalar observables
    asked for), each chain's per-draw values thin and its running mean bold, with
    :math:`\hat R` / ESS of the stream in the panel title.

    Only post-burn-in draws are recorded. When the run lengths are known (the result's
    ``hyperparameters`` from :func:`slt_jax.estimate_llc` record ``num_burnin`` and
    ``steps_per_draw``, or pass them) the x axis counts sampler steps from the start and the
    burn-in steps are shaded; otherwise it counts draws. Chains excluded from the estimate
    (diverged, or ran away while finite) are drawn grey and dashed and labelled with the reason
    (and the first non-finite step); the diagnostics use the other chains.

    Args:
      result_or_trace: an :class:`slt_jax.LLCResult`, :class:`slt_jax.Trace` or
        :class:`slt_jax.BIFResult`.
      observables: for a Trace, ``True`` for every scalar observable, or a list of names
        (default: the loss only).
      truth: a known value (e.g. the closed-form learning coefficient) drawn as a dashed black
        line on the LLC panels.
      num_burnin, steps_per_draw: run lengths, overriding the recorded hyperparameters.
      title: figure title (default: the LLC summary for an LLC, none for a Trace).

    Returns:
      The :class:`matplotlib.figure.Figure`: 2 axes for an LLC, one per stream for a Trace.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> losses = np.random.default_rng(0).normal(1.5, 0.1, size=(4, 200))
      >>> result = slt.llc(losses, nbeta=10.0, init_loss=1.0)
      >>> figure = slt.plotting.plot_trace(result, truth=5.0)
      >>> len(figure.axes)
      2
    """
    data = _trace_data(result_or_trace, observables)
    num_chains, num_draws = data.streams[0][2].shape
    x, xlabel, burnin = _step_axis(num_draws, data.hyperparameters, num_burnin, steps_per_draw)
    kept = np.array([chain not in data.excluded for chain in range(num_chains)])
    num_panels = 2 if data.llc_result is not None else len(data.streams)
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(
        num_panels, 1, sharex=True, squeeze=False, layout="constrained",
        figsize=(TRACE_PANEL_SIZE[0], TRACE_PANEL_SIZE[1] * num_panels + 0.4),
    )
    axes = axes[:, 0]
    styles = [_chain_style(chain, data, burnin) for chain in range(num_chains)]
    labelled = num_chains <= MAX_LABELLED_CHAINS

    if data.llc_result is not None:
        _draw_llc_panels(axes, x, data, styles, truth)
    else:
        for ax, (name, ylabel, values) in zip(axes, data.streams):
            running = _running_mean(values)
            for chain in range(num_chains):
                style = styles[chain]
                ax.plot(x, values[chain], color=style["color"], linestyle=style["linestyle"],
                        linewidth=0.6, alpha=0.45)
                ax.plot(x, running[chain], color=style["color"], linestyle=style["linestyle"],
                        linewidth=1.6)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}: {_diagnostics_text(values, kept)} (thin: per draw; bold: "
                         "running mean)", fontsize=9)
    for index, ax in enumerate(axes):
        _mark_burnin(ax, burnin, label=index == 0)
    axes[-1].set_xlabel(xlabel)
    if title is None and data.llc_result is not None:
        result = data.llc_result
        title = (f"LLC = {result.mean:.4g} ± {result.mcse:.2g} (MCSE), R̂ = {result.rhat:.3f}, "
                 f"ESS = {result.ess:.0f}")
    if title:
        figure.suptitle(title, fontsize=10)
    _trace_legend(figure, axes, styles, labelled, data.excluded)
    return figure


def _trace_legend(figure, axes, styles, labelled: bool, excluded: dict) -> None:
    """One figure legend right of the panels: the chains (all of them, or only the excluded
    ones when there are many), then the reference lines and the burn-in of the panels."""
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for chain, style in enumerate(styles):
        if labelled or chain in excluded:
            handles.append(Line2D([], [], color=style["color"], linestyle=style["linestyle"],
                                  linewidth=1.6))
            labels.append(style["label"])
    for ax in axes:
        more_handles, more_labels = ax.get_legend_handles_labels()
        for handle, label in zip(more_handles, more_labels):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)


def _draw_llc_panels(axes, x, data: _TraceData, styles, truth) -> None:
    """Top: per-draw LLC estimates; bottom: running means, pooled mean ± MCSE, truth."""
    result = data.llc_result
    draws = data.streams[0][2]
    running = _running_mean(draws)
    for chain in range(draws.shape[0]):
        style = styles[chain]
        axes[0].plot(x, draws[chain], color=style["color"], linestyle=style["linestyle"],
                     linewidth=0.6, alpha=0.6)
        axes[1].plot(x, running[chain], color=style["color"], linestyle=style["linestyle"],
                     linewidth=1.4)
    mean, mcse = float(result.mean), float(result.mcse)
    if np.isfinite(mean):
        axes[1].axhline(mean, color="k", linewidth=1.2, label=f"pooled mean {mean:.4g}")
        if np.isfinite(mcse):
            axes[1].axhspan(mean - mcse, mean + mcse, color="k", alpha=0.2, linewidth=0,
                            label=f"± MCSE {mcse:.2g}")
    if truth is not None:
        for ax in axes:
            ax.axhline(float(truth), color="k", linestyle=":", linewidth=1.2,
                       label=f"truth {float(truth):.4g}" if ax is axes[1] else None)
    axes[0].set_ylabel("LLC per draw\n" + data.streams[0][1])
    axes[1].set_ylabel("running mean")
    axes[0].set_title("per-draw estimates", fontsize=9)
    axes[1].set_title("per-chain running means", fontsize=9)


# ----------------------------------------------------------------------------------------------
# calibration evidence and LLC curves


def _calibration_of(value):
    from slt_jax.calibration import Calibration

    if isinstance(value, Calibration):
        return value
    hyperparameters = getattr(value, "hyperparameters", None)
    if not isinstance(hyperparameters, dict):
        raise TypeError(
            "plot_calibration expects an slt_jax.calibration.Calibration or a result of "
            f"slt_jax.estimate_llc / estimate_bif, got {type(value).__name__}"
        )
    calibration = hyperparameters.get("calibration")
    if calibration is None:
        raise ValueError(
            "this result was not calibrated (a step size or a ready sampler was given, or it "
            "did not come from estimate_llc / estimate_bif): there is no calibration to plot"
        )
    return calibration


def plot_calibration(result_or_calibration, *, title: str | None = None):
    r"""The evidence behind a calibrated step size.

    What :func:`slt_jax.calibration.calibrate_step_size` measured, round by round. Left: the
    top Hessian eigenvalue :math:`\lambda_{max}(H)` measured in each round (at :math:`w^*`,
    then where each round's pilot chains ended), with the largest, which sets the step size.
    Middle: the step size after each round (log scale; rounds that halve the step after a
    diverged pilot, raise the friction or cut the step for minibatch gradient noise included),
    the chosen step and SGLD's stability bound :math:`4/\lambda_{max}(n\beta H +
    \gamma I)`. Right, when the gradient noise was measured: the pilots' LLC next to the
    predicted gradient-noise heating at the chosen step (the LLC's expected upward bias from
    minibatch noise, :func:`slt_jax.calibration.gradient_noise_heating`), labelled with its
    relative size.

    Args:
      result_or_calibration: a :class:`slt_jax.calibration.Calibration`, or a result of
        :func:`slt_jax.estimate_llc` / :func:`slt_jax.estimate_bif` (its
        ``hyperparameters["calibration"]``).
      title: figure title (default: the sampler, chosen step size and options).

    Returns:
      The :class:`matplotlib.figure.Figure`: 3 axes when the gradient noise was measured,
      else 2.

    Example:
      >>> from slt_jax.calibration import Calibration
      >>> calibration = Calibration(
      ...     step_size=1e-3, sampler="sgld", max_hessian_eigenvalue=2.0, max_curvature=40.0,
      ...     stability_bound=0.1, safety_factor=0.1, nbeta=20.0, localization=1.0,
      ...     rounds=({"round": 0, "where": "w*", "max_hessian_eigenvalue": 2.0,
      ...              "step_size": 2.5e-3},
      ...             {"round": 1, "where": "500-step pilot ends", "max_hessian_eigenvalue": 5.0,
      ...              "step_size": 1e-3}))
      >>> len(plot_calibration(calibration).axes)
      2
    """
    calibration = _calibration_of(result_or_calibration)
    rounds = list(calibration.rounds)
    noise = calibration.gradient_noise_bias is not None and calibration.pilot_llc is not None
    pyplot = _pyplot()
    num_panels = 3 if noise else 2
    figure, axes = pyplot.subplots(
        1, num_panels, layout="constrained",
        figsize=(4.0 * num_panels, 3.6), width_ratios=[1.0, 1.0, 0.7][:num_panels],
    )
    _draw_curvature_rounds(axes[0], calibration, rounds)
    _draw_step_rounds(axes[1], calibration, rounds)
    if noise:
        _draw_noise_budget(axes[2], calibration)
    if title is None:
        options = "".join(f", {name} = {value:.3g}" for name, value in calibration.options)
        title = (f"{calibration.sampler}: step size {calibration.step_size:.3g}{options} "
                 f"(safety factor {calibration.safety_factor:g}, nβ = {calibration.nbeta:.4g})")
    figure.suptitle(title, fontsize=10)
    return figure


def _round_ticks(ax, rounds) -> None:
    ax.set_xticks([row["round"] for row in rounds],
                  [f"{row['round']}: {row['where']}" for row in rounds],
                  rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("calibration round")


def _draw_curvature_rounds(ax, calibration, rounds) -> None:
    measured = [row for row in rounds if row.get("max_hessian_eigenvalue") is not None]
    if measured:
        ax.plot([row["round"] for row in measured],
                [row["max_hessian_eigenvalue"] for row in measured],
                marker="o", color=_categorical_color(0), label="measured")
    ax.axhline(calibration.max_hessian_eigenvalue, color="k", linestyle="--", linewidth=1,
               label=f"used {calibration.max_hessian_eigenvalue:.3g}")
    _round_ticks(ax, rounds)
    ax.set_ylabel(r"$\lambda_{max}(H)$")
    ax.set_title("curvature where the chains go", fontsize=9)
    ax.legend(fontsize=7)


def _draw_step_rounds(ax, calibration, rounds) -> None:
    if rounds:
        ax.plot([row["round"] for row in rounds], [row["step_size"] for row in rounds],
                marker="o", color=_categorical_color(1), label="after round")
    ax.axhline(calibration.step_size, color=_categorical_color(2), linewidth=1.5,
               label=f"chosen {calibration.step_size:.3g}")
    if np.isfinite(calibration.stability_bound):
        ax.axhline(calibration.stability_bound, color="tab:red", linestyle="--", linewidth=1,
                   label=f"SGLD stability bound {calibration.stability_bound:.3g}")
    ax.set_yscale("log")
    _round_ticks(ax, rounds)
    ax.set_ylabel("step size")
    ax.set_title("step size", fontsize=9)
    ax.legend(fontsize=7)


def _draw_noise_budget(ax, calibration) -> None:
    pilot = float(calibration.pilot_llc)
    bias = float(calibration.gradient_noise_bias)
    heating = bias * pilot
    bars = ax.bar(["pilot LLC", "predicted\nheating"], [pilot, heating],
                  color=[_categorical_color(0), _categorical_color(3)])
    ax.bar_label(bars, labels=[f"{pilot:.3g}", f"{heating:.2g} ({100 * bias:+.2g}%)"],
                 fontsize=7)
    ax.set_ylabel("LLC units")
    ax.margins(y=0.15)
    ax.set_title("minibatch gradient noise", fontsize=9)


def _as_curves(name: str, values, num_steps: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != num_steps:
        raise ValueError(
            f"{name} must have shape (num_checkpoints,) or (num_checkpoints, num_components) "
            f"with num_checkpoints = {num_steps}, got {np.shape(values)}"
        )
    return array


def plot_llc_curves(steps, llcs, errors=None, labels=None, *, log_x: bool = False, ax=None,
                    title: str | None = None, xlabel: str = "training step",
                    ylabel: str = r"LLC $\hat\lambda$"):
    r"""LLC estimates over training checkpoints, one line per component, with error bands.

    Each column of ``llcs`` (e.g. the LLC and the refined LLCs of named weight groups,
    or a sweep's ``(num_checkpoints, num_components)`` means) is a line over ``steps``;
    ``errors`` of the same shape (e.g. the MCSEs, or twice them) draw a band
    ``llcs ± errors`` around it. Non-finite values leave gaps. For a checkpoint sweep
    (:func:`slt_jax.llc_over_checkpoints`):
    ``plot_llc_curves(steps, sweep.mean, 2 * sweep.mcse, labels=sweep.labels)``.

    Args:
      steps: ``(num_checkpoints,)`` training steps (or any increasing x values).
      llcs: ``(num_checkpoints,)`` or ``(num_checkpoints, num_components)`` estimates.
      errors: band half-widths, the shape of ``llcs`` (optional).
      labels: ``num_components`` legend labels (optional; a legend is drawn when given).
      log_x: logarithmic x axis (symmetric-log, linear below the smallest positive step,
        when a step is 0, as a checkpoint at initialization is).
      ax: existing axes to draw into (default: a new figure).
      title, xlabel, ylabel: axes labels.

    Returns:
      The :class:`matplotlib.figure.Figure`.

    Example:
      >>> import numpy as np
      >>> steps = np.array([0, 10, 100, 1000])
      >>> means = np.array([[1.0, 0.5], [2.0, 0.7], [4.0, 1.5], [5.0, 2.5]])
      >>> figure = plot_llc_curves(steps, means, 0.1 * means, labels=["all", "layer 1"],
      ...                          log_x=True)
      >>> len(figure.axes)
      1
    """
    steps = np.asarray(steps, dtype=float)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D array, got shape {steps.shape}")
    curves = _as_curves("llcs", llcs, steps.size)
    bands = None if errors is None else _as_curves("errors", errors, steps.size)
    if bands is not None and bands.shape != curves.shape:
        raise ValueError(f"errors must have the shape of llcs {curves.shape}, got {bands.shape}")
    if labels is not None and len(labels) != curves.shape[1]:
        raise ValueError(
            f"labels must have one entry per component ({curves.shape[1]}), got {len(labels)}"
        )
    figure, ax = _new_figure(ax)
    for component in range(curves.shape[1]):
        color = _categorical_color(component)
        ax.plot(steps, curves[:, component], marker="o", markersize=3, color=color,
                label=None if labels is None else str(labels[component]))
        if bands is not None:
            ax.fill_between(steps, curves[:, component] - bands[:, component],
                            curves[:, component] + bands[:, component], color=color, alpha=0.2,
                            linewidth=0)
    if log_x:
        positive = steps[steps > 0]
        if positive.size and positive.size < steps.size:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        else:
            ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if labels is not None:
        ax.legend(fontsize=8)
    if title is not None:
        ax.set_title(title)
    return figure


# ----------------------------------------------------------------------------------------------
# response matrices (susceptibilities)

RESPONSE_FIGURE_SIZE = (10.0, 4.2)


def _response_loadings_panel(ax, pca, num_shown: int) -> None:
    """Grouped bars: the loading of each component (column) on each shown PC."""
    loadings = np.asarray(pca.loadings, dtype=float)
    columns = loadings.shape[0]
    width = 0.8 / num_shown
    positions = np.arange(columns)
    for pc in range(num_shown):
        ratio = float(np.asarray(pca.explained_variance_ratio)[pc])
        ax.bar(positions + (pc - (num_shown - 1) / 2) * width, loadings[:, pc], width=width,
               color=_categorical_color(pc), label=f"PC{pc + 1} ({100 * ratio:.0f}%)")
    ax.axhline(0.0, color="0.3", linewidth=0.6)
    crowded = columns > 6
    ax.set_xticks(positions, [str(label) for label in pca.column_labels],
                  rotation=45 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    ax.set_ylabel("loading")
    ax.set_title("loadings per component")
    ax.legend(fontsize=8)


def _response_scores_panel(figure, ax, pca, labels) -> None:
    """Token scores on PC1/PC2 (PC1 against the row index when there is one PC)."""
    scores = np.asarray(pca.scores, dtype=float)
    x, y = (scores[:, 0], scores[:, 1]) if scores.shape[1] > 1 else (
        np.arange(scores.shape[0]), scores[:, 0])
    ax.set_xlabel("PC1" if scores.shape[1] > 1 else "row")
    ax.set_ylabel("PC2" if scores.shape[1] > 1 else "PC1")
    ax.set_title("scores")
    if labels is None:
        ax.scatter(x, y, s=10, color=_categorical_color(0), alpha=0.7)
        return
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating):
        points = ax.scatter(x, y, s=10, c=labels, cmap=SEQUENTIAL_COLORMAP, alpha=0.8)
        figure.colorbar(points, ax=ax, shrink=0.9)
        return
    for index, value in enumerate(dict.fromkeys(labels.tolist())):
        chosen = labels == value
        ax.scatter(x[chosen], y[chosen], s=10, color=_categorical_color(index), alpha=0.7,
                   label=str(value))
    ax.legend(fontsize=8, markerscale=1.5)


def plot_response(pca, labels=None, *, num_shown: int = 2, title: str | None = None):
    r"""A response PCA (:func:`slt_jax.response_pca`): loadings and token scores.

    Left: the loadings of each component (a column of the response matrix
    :math:`X_{xy,C} = \chi_{C,xy}`, arXiv 2504.18274) on the first ``num_shown`` principal
    components, as grouped bars (the legend gives each PC's explained variance ratio). Right:
    every row's (token's) scores on PC1 and PC2, coloured by ``labels`` (categories get a
    legend, floats a colorbar), e.g. "copy" vs "first occurrence" tokens.

    Args:
      pca: a :class:`slt_jax.ResponsePCA`.
      labels: optional per-row labels (``rows`` entries).
      num_shown: how many PCs to show in the loadings panel (at most the PCA's ``k``).
      title: a figure title.

    Returns:
      The :class:`matplotlib.figure.Figure`.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> X = np.random.default_rng(0).normal(size=(40, 5))
      >>> figure = plot_response(slt.response_pca(X, 2), labels=np.arange(40) % 2 == 0)
      >>> len(figure.axes)
      2
    """
    scores = np.asarray(getattr(pca, "scores", None), dtype=float)
    loadings = np.asarray(getattr(pca, "loadings", None), dtype=float)
    if scores.ndim != 2 or loadings.ndim != 2 or scores.shape[1] != loadings.shape[1]:
        raise ValueError("plot_response expects a ResponsePCA (slt.response_pca) with scores "
                         "(rows, k) and loadings (components, k)")
    if labels is not None and len(labels) != scores.shape[0]:
        raise ValueError(f"labels must have one entry per row ({scores.shape[0]}), got "
                         f"{len(labels)}")
    num_shown = max(1, min(int(num_shown), loadings.shape[1]))
    figure, (left, right) = _pyplot().subplots(1, 2, figsize=RESPONSE_FIGURE_SIZE,
                                               layout="constrained")
    _response_loadings_panel(left, pca, num_shown)
    _response_scores_panel(figure, right, pca, labels)
    if title is not None:
        figure.suptitle(title)
    return figure


# ----------------------------------------------------------------------------------------------
# essential dynamics (trajectory PCA)


def _per_run(value, runs, name: str) -> dict:
    """``value`` as ``{run: value}``: a dict is checked against ``runs``, anything else is shared."""
    if isinstance(value, dict):
        missing = [run for run in runs if run not in value]
        if missing:
            raise ValueError(f"{name} has no entry for the runs {missing}")
        return value
    return {run: value for run in runs}


def _llc_curve(value, count: int, name: str):
    """``(means, errors or None)`` of one run's LLC over checkpoints (an ``LLCSweepResult`` or an
    array)."""
    sweep = hasattr(value, "mcse")  # an LLCSweepResult (arrays have a .mean method too)
    mean, errors = (value.mean, value.mcse) if sweep else (value, None)
    means = np.asarray(mean, dtype=float)
    means = means[:, 0] if means.ndim == 2 else means
    if means.shape != (count,):
        raise ValueError(f"{name} must give one LLC per checkpoint ({count}), got shape "
                         f"{np.shape(mean)}")
    if errors is not None:
        errors = np.asarray(errors, dtype=float)
        errors = 2.0 * (errors[:, 0] if errors.ndim == 2 else errors)
    return means, errors


def _trajectory_panel(ax, ed, pair, runs, turning) -> None:
    first, second = pair
    for index, run in enumerate(runs):
        color = _categorical_color(index)
        scores = ed.scores[run]
        ax.plot(scores[:, first], scores[:, second], color=color, linewidth=1.2, label=str(run))
        ax.plot(scores[:1, first], scores[:1, second], "o", color=color, markersize=4)
        ax.plot(scores[-1:, first], scores[-1:, second], "s", color=color, markersize=5)
        points = turning.get(run)
        if points is not None and len(points.steps):
            ax.plot(points.positions[:, first], points.positions[:, second], "x", color=color,
                    markersize=9, markeredgewidth=2)
    markers = "*Dv^P<>"
    for index, (name, scores) in enumerate(ed.reference_scores.items()):
        ax.plot(scores[first], scores[second], markers[index % len(markers)], color="black",
                markersize=11, markerfacecolor="none", label=str(name))
    ax.set_xlabel(f"PC{first + 1} ({100 * ed.explained_variance_ratio[first]:.1f}%)")
    ax.set_ylabel(f"PC{second + 1} ({100 * ed.explained_variance_ratio[second]:.1f}%)")


def plot_trajectories(ed, llc=None, steps=None, *, turning_points=None, log_x: bool = True,
                      title: str | None = None):
    r"""Essential dynamics: each run's path in PC1–PC2 (and PC1–PC3) space with the references
    and turning points marked, and the LLC over the same checkpoints beside it.

    Paths start at a dot and end at a square; references (projected, never fitted:
    :func:`slt_jax.trajectory_pca`) are open black markers; turning points
    (:func:`slt_jax.trajectory_turning_points`, computed here with its defaults when ``steps``
    is given and ``turning_points`` is not) are crosses. The axis labels give each component's
    explained variance ratio :math:`S_i^2/\sum_j S_j^2`.

    Args:
      ed: a :class:`slt_jax.TrajectoryPCA`.
      llc: the LLC over the checkpoints: an :class:`slt_jax.LLCSweepResult` (first component,
        band ±2 MCSE), a ``(num_checkpoints,)`` array (NaN where a checkpoint was not swept;
        the others are joined), or a dict of those per run.
      steps: ``(num_checkpoints,)`` training steps, or a dict per run (the LLC panel's x axis;
        checkpoint indices when omitted).
      turning_points: ``{run: TurningPoints}`` to mark instead of computing them.
      log_x: logarithmic step axis on the LLC panel.
      title: figure title.

    Returns:
      The :class:`matplotlib.figure.Figure`.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> t = np.geomspace(1, 1000, 30)
      >>> outputs = np.stack([np.tanh(t / 10), np.tanh(t / 300), np.sin(t / 500), t / 1000], 1)
      >>> ed = slt.trajectory_pca({"run": outputs}, num_components=3, references={"end": outputs[-1]})
      >>> figure = plot_trajectories(ed, llc=np.linspace(1, 2, 30), steps=t)
      >>> len(figure.axes)
      3
    """
    pyplot = _pyplot()
    runs = list(ed.scores)
    step_of = None if steps is None else _per_run(steps, runs, "steps")
    if turning_points is None and step_of is not None:
        from slt_jax.estimators.trajectory import trajectory_turning_points

        turning_points = {run: trajectory_turning_points(ed.scores[run], step_of[run])
                          for run in runs}
    turning = _per_run(turning_points, runs, "turning_points") if turning_points else {}
    if ed.components.shape[0] < 2:
        raise ValueError("plot_trajectories needs at least 2 components (num_components >= 2)")
    pairs = [(0, 1), (0, 2)][: 1 + int(ed.components.shape[0] >= 3)]
    figure, axes = pyplot.subplots(1, len(pairs) + int(llc is not None),
                                   figsize=(4.6 * (len(pairs) + int(llc is not None)), 4.2),
                                   layout="constrained", squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        _trajectory_panel(ax, ed, pair, runs, turning)
    axes[0, 0].legend(fontsize=8)
    if llc is not None:
        _llc_panel(axes[0, -1], llc, runs, ed, step_of, log_x)
    if title is not None:
        figure.suptitle(title)
    return figure


def _llc_panel(ax, llc, runs, ed, step_of, log_x) -> None:
    curves = _per_run(llc, runs, "llc")
    for index, run in enumerate(runs):
        count = ed.scores[run].shape[0]
        x = np.arange(count, dtype=float) if step_of is None else np.asarray(step_of[run], float)
        means, errors = _llc_curve(curves[run], count, "llc")
        color = _categorical_color(index)
        shown = np.isfinite(means)  # NaN: a checkpoint the sweep skipped; join the others
        ax.plot(x[shown], means[shown], marker="o", markersize=3, color=color, label=str(run))
        if errors is not None:
            ax.fill_between(x[shown], (means - errors)[shown], (means + errors)[shown],
                            color=color, alpha=0.2, linewidth=0)
    if log_x and step_of is not None:
        every = np.concatenate([np.asarray(step_of[run], float) for run in runs])
        positive = every[every > 0]
        if positive.size == every.size:
            ax.set_xscale("log")
        elif positive.size:  # a checkpoint at step 0: linear below the smallest positive step
            ax.set_xscale("symlog", linthresh=float(positive.min()))
    ax.set_xlabel("training step" if step_of is not None else "checkpoint")
    ax.set_ylabel(r"LLC $\hat\lambda$")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    ax.set_title("LLC over checkpoints", fontsize=9)
