r"""Essential dynamics: joint PCA of training trajectories in output space (docs/mathematics.md §6).

A checkpoint :math:`w_t` is represented by what the model *does* on one fixed probe set
:math:`P = (p_1, \dots, p_q)`: the flattened outputs :math:`f_t = \mathrm{vec}\,f(w_t; P) \in
\mathbb R^m` (:func:`trajectory_outputs`). Rows of all checkpoints of all runs are stacked into
:math:`X \in \mathbb R^{N \times m}` and centred with **one** mean
:math:`\mu = \tfrac1N \sum_r f_r`; the thin SVD :math:`X - \mathbf 1\mu^\top = U S V^\top`
gives the principal directions (rows of :math:`V^\top`) of the joint trajectory
(:func:`trajectory_pca`; arXiv 2402.02364, 2501.17745):

.. math::

    \text{scores}_t = V_k^\top (f_t - \mu),\qquad
    \text{explained variance}_i = \frac{S_i^2}{N - 1},\qquad
    \text{ratio}_i = \frac{S_i^2}{\sum_j S_j^2} = \frac{S_i^2}{\lVert X - \mathbf 1\mu^\top\rVert_F^2}.

Reference predictors (ridge, dMMSE, a teacher, ...) are outputs :math:`g \in \mathbb R^m` on the
same probe set; they are *projected*, :math:`V_k^\top(g - \mu)`, never fitted, so adding one
changes nothing else. When :math:`m` is much larger than :math:`N` the same components come from
the :math:`N \times N` Gram matrix :math:`G = (X - \mathbf 1\mu^\top)(X - \mathbf 1\mu^\top)^\top
= U S^2 U^\top`, :math:`V_k = (X - \mathbf 1\mu^\top)^\top U_k S_k^{-1}`, accumulated over
column blocks (memory :math:`O(N^2 + N \cdot \text{block})` beyond the outputs).
**Sign convention (ours):** each component's entry of largest magnitude is positive.

Turning points (:func:`trajectory_turning_points`) are read from the curvature of the smoothed
path :math:`\gamma(u)` in PC space, with :math:`u = \ln(1 + t)` (checkpoints are log-spaced) or
:math:`u = t`:

.. math::

    \kappa(u) = \frac{\sqrt{\lVert\gamma'\rVert^2\lVert\gamma''\rVert^2 - (\gamma'\cdot\gamma'')^2}}
                     {\lVert\gamma'\rVert^3},\qquad
    \omega(u) = \kappa(u)\,\lVert\gamma'(u)\rVert,

:math:`\kappa` being the turning angle per unit path length and :math:`\omega` the turning
angle per unit of :math:`u`. **(ours)** A turning point is a peak of :math:`\omega` (not of
:math:`\kappa`, which diverges wherever the path stalls — at a small initialization and on
plateaus — so its maxima mark stalls rather than turns) where the path moves
(:math:`\lVert\gamma'\rVert \ge` ``min_speed`` :math:`\times` its maximum) and whose prominence
is at least ``min_prominence`` :math:`\times \max\omega` (and :math:`\omega h \ge`
``min_angle``). :math:`\gamma, \gamma', \gamma''` come
from a Gaussian-weighted local quadratic fit (bandwidth ``smoothing`` in units of :math:`u`) at
each point of a uniform grid in :math:`u`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._checks import check_int
from slt_jax._structural import StructuralKey
from slt_jax.adapters import as_params
from slt_jax.training import TrainResult

PyTree = Any

__all__ = [
    "TrajectoryPCA",
    "TurningPoints",
    "trajectory_outputs",
    "trajectory_pca",
    "trajectory_turning_points",
]

#: output bytes of one vmapped chunk of checkpoints when ``checkpoints_per_chunk`` is not given
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: columns per block of the Gram-matrix path
GRAM_BLOCK_COLUMNS = 8192
#: points of the uniform grid in u on which turning points are computed
TURNING_GRID_SIZE = 1024


# --------------------------------------------------------------------------------------------
# outputs over checkpoints


class _OutputProgram(NamedTuple):
    """Static description of the vmapped output program (hashable: the jit cache key)."""

    apply: StructuralKey
    graphdef: Any


def _flat_outputs(program: _OutputProgram, params, rest, probe):
    apply_fn = program.apply.value
    if program.graphdef is not None:
        from flax import nnx

        params = nnx.merge(program.graphdef, params, rest)
    leaves = jax.tree.leaves(apply_fn(params, probe))
    return jnp.concatenate([jnp.reshape(leaf, (-1,)) for leaf in leaves])


@functools.partial(jax.jit, static_argnames=("program",))
def _outputs_program(checkpoints, index, rest, probe, *, program: _OutputProgram):
    chunk = jax.tree.map(lambda leaf: jnp.take(leaf, index, axis=0), checkpoints)
    return jax.vmap(lambda params: _flat_outputs(program, params, rest, probe))(chunk)


def _stacked_checkpoints(apply_fn, checkpoints):
    """``(stacked, rest, graphdef, count)``: the checkpoints in the form ``apply_fn`` takes."""
    rest = graphdef = None
    if isinstance(checkpoints, TrainResult):
        checkpoints, rest, graphdef = checkpoints.checkpoints, checkpoints.rest, checkpoints.graphdef
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(checkpoints)}
    if not sizes:
        raise ValueError("checkpoints hold no arrays (expected a stacked parameter pytree or a "
                         "TrainResult)")
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            "checkpoints must be a stacked pytree whose leaves share a non-empty leading "
            f"checkpoint axis; got leading sizes {sorted(map(str, sizes))}"
        )
    count = sizes.pop()
    if getattr(apply_fn, "params_structure", None) is not None:  # an adapter's function
        each = [as_params(apply_fn, jax.tree.map(lambda leaf, i=i: leaf[i], checkpoints), rest=rest)
                for i in range(count)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *each), None, None, count
    return checkpoints, rest, graphdef, count


def trajectory_outputs(
    apply_fn: Callable[[PyTree, PyTree], Any],
    checkpoints: PyTree,
    probe: PyTree,
    *,
    checkpoints_per_chunk: int | None = None,
) -> np.ndarray:
    r"""The flattened outputs :math:`f_t = \mathrm{vec}\,f(w_t; P)` of every checkpoint on one
    probe set: the rows of :func:`trajectory_pca` (arXiv 2402.02364).

    ``apply_fn(params, probe)`` is vmapped over the stacked checkpoints in one compiled program
    (chunks of ``checkpoints_per_chunk`` checkpoints, the last one padded, so every chunk reuses
    it; a new probe of the same shape or other checkpoints compile nothing).

    Args:
      apply_fn: ``apply_fn(params, probe)`` returning an array (or a pytree of arrays,
        concatenated). For a :class:`~slt_jax.training.TrainResult` of an NNX model it takes the
        module, as :func:`slt_jax.training.train`'s ``loss`` does; a function from an adapter
        (it has ``params_structure``) gets each checkpoint through
        :func:`slt_jax.adapters.as_params`.
      checkpoints: a ``TrainResult`` or a pytree stacked along a leading checkpoint axis.
      probe: the fixed probe inputs (any pytree ``apply_fn`` takes).
      checkpoints_per_chunk: checkpoints per vmapped call (default: as many as keep a chunk's
        outputs under 64 MiB).

    Returns:
      ``(num_checkpoints, m)`` NumPy array.

    Example:
      >>> import jax.numpy as jnp
      >>> checkpoints = {"w": jnp.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])}
      >>> apply_fn = lambda params, x: x @ params["w"]
      >>> trajectory_outputs(apply_fn, checkpoints, jnp.eye(2)).tolist()
      [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, probe), got {apply_fn!r}")
    stacked, rest, graphdef, count = _stacked_checkpoints(apply_fn, checkpoints)
    program = _OutputProgram(StructuralKey(apply_fn), graphdef)
    shape = jax.eval_shape(functools.partial(_outputs_program, program=program), stacked,
                           np.zeros((1,), np.int32), rest, probe)
    width = shape.shape[1]
    if checkpoints_per_chunk is None:
        per_row = max(width * np.dtype(shape.dtype).itemsize, 1)
        checkpoints_per_chunk = max(1, min(count, DEFAULT_CHUNK_BYTES // per_row))
    chunk = min(check_int("checkpoints_per_chunk", checkpoints_per_chunk, 1), count)
    rows = []
    for start in range(0, count, chunk):
        index = np.minimum(np.arange(start, start + chunk), count - 1).astype(np.int32)  # padded
        rows.append(np.asarray(_outputs_program(stacked, index, rest, probe, program=program)))
    return np.concatenate(rows, axis=0)[:count]


# --------------------------------------------------------------------------------------------
# joint PCA


class TrajectoryPCA(NamedTuple):
    r"""The joint PCA of one or more training trajectories (:func:`trajectory_pca`).

    Attributes:
      mean: ``(m,)`` the one mean :math:`\mu` of all rows.
      components: ``(k, m)`` orthonormal principal directions :math:`V_k^\top` (largest entry
        of each positive).
      singular_values: ``(k,)`` :math:`S_1 \ge \dots \ge S_k`.
      explained_variance: ``(k,)`` :math:`S_i^2/(N-1)`.
      explained_variance_ratio: ``(k,)`` :math:`S_i^2/\sum_j S_j^2` (all components, not
        only the first ``k``).
      scores: ``{run: (num_checkpoints, k)}`` :math:`V_k^\top(f_t - \mu)`.
      reference_scores: ``{name: (k,)}`` the references projected with the same mean and
        components (never fitted).
      reference_residuals: ``{name: float}`` :math:`\lVert (g - \mu) - V_k V_k^\top(g - \mu)\rVert`,
        how far each reference lies off the PCA subspace (in output units).
      total_variance: :math:`\lVert X - \mathbf 1\mu^\top\rVert_F^2/(N-1)`.
      method: ``"svd"`` or ``"gram"``.
    """

    mean: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    scores: dict
    reference_scores: dict
    reference_residuals: dict
    total_variance: float
    method: str

    def project(self, outputs) -> np.ndarray:
        r"""Scores :math:`V_k^\top(f - \mu)` of outputs ``(m,)`` or ``(rows, m)`` (not fitted)."""
        outputs = np.asarray(outputs, np.float64)
        if outputs.shape[-1:] != self.mean.shape:
            raise ValueError(
                f"outputs must have m = {self.mean.shape[0]} columns (the probe outputs the PCA "
                f"was fitted on), got shape {outputs.shape}"
            )
        return (outputs - self.mean) @ self.components.T


def _as_rows(name: str, value, what: str) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} {name!r} holds non-finite values (NaN or inf)")
    return array


def _runs(trajectories) -> dict:
    if isinstance(trajectories, Mapping):
        runs = dict(trajectories)
    elif np.ndim(trajectories) == 2:
        runs = {0: trajectories}
    else:
        raise TypeError(
            "trajectories must be a dict {run: outputs (num_checkpoints, m)} or one 2-D array, "
            f"got {type(trajectories).__name__} of shape {np.shape(trajectories)}"
        )
    if not runs:
        raise ValueError("trajectories must hold at least one run")
    runs = {name: _as_rows(name, value, "run") for name, value in runs.items()}
    bad = {name: value.shape for name, value in runs.items() if value.ndim != 2 or 0 in value.shape}
    if bad:
        raise ValueError(f"every run must be a non-empty (num_checkpoints, m) array; got {bad}")
    widths = {name: value.shape[1] for name, value in runs.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(
            "every run's outputs must have the same number of columns m (the same probe set and "
            f"model output shape); got m per run {widths}"
        )
    return runs


def _sign_convention(components: np.ndarray) -> np.ndarray:
    """+1/−1 per component so that its entry of largest magnitude is positive."""
    largest = components[np.arange(components.shape[0]), np.argmax(np.abs(components), axis=1)]
    return np.where(largest < 0, -1.0, 1.0)


def _direct_svd(centred: np.ndarray, k: int):
    """Top ``k`` right singular vectors and all singular values of the centred rows."""
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    return right[:k], singular


def _gram_svd(rows: np.ndarray, mean: np.ndarray, k: int):
    """The same from the ``N × N`` Gram matrix, accumulated over column blocks."""
    count, width = rows.shape
    gram = np.zeros((count, count))
    blocks = [slice(start, min(start + GRAM_BLOCK_COLUMNS, width))
              for start in range(0, width, GRAM_BLOCK_COLUMNS)]
    for block in blocks:
        part = rows[:, block] - mean[block]
        gram += part @ part.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    scale = np.sqrt(np.maximum(eigenvalues[:k], np.finfo(float).tiny))
    components = np.empty((k, width))
    for block in blocks:
        components[:, block] = (eigenvectors[:, :k].T @ (rows[:, block] - mean[block])) / scale[:, None]
    # orthonormalize (exact for well-separated components; fixes round-off in near-null ones)
    q, r = np.linalg.qr(components.T)
    components = (q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]).T
    return components, np.sqrt(eigenvalues)


def trajectory_pca(
    trajectories: Mapping[Any, Any] | Any,
    num_components: int = 3,
    *,
    references: Mapping[Any, Any] | None = None,
    method: str = "auto",
) -> TrajectoryPCA:
    r"""Joint PCA of the output trajectories of one or more runs ("essential dynamics",
    arXiv 2402.02364, 2501.17745; docs/mathematics.md §6).

    Rows = every checkpoint of every run (:func:`trajectory_outputs`), centred with one mean
    :math:`\mu`; :math:`X - \mathbf 1\mu^\top = U S V^\top`; scores
    :math:`V_k^\top (f_t - \mu)`, explained variance :math:`S_i^2/(N-1)` and ratio
    :math:`S_i^2/\sum_j S_j^2`. References are projected with the same :math:`\mu, V_k`, never
    fitted.

    Args:
      trajectories: ``{run: (num_checkpoints, m)}`` (runs may have different numbers of
        checkpoints, never different ``m``), or one ``(num_checkpoints, m)`` array (run ``0``).
      num_components: ``k``, at most ``min(N - 1, m)`` (centring removes one dimension).
      references: ``{name: (m,)}`` outputs of reference predictors on the same probe set.
      method: ``"svd"`` (thin SVD of the centred rows), ``"gram"`` (eigendecomposition of the
        ``N × N`` Gram matrix, for ``m ≫ N``) or ``"auto"`` (Gram when ``m > 4N``). Both give
        the same result up to round-off.

    Returns:
      a :class:`TrajectoryPCA`.

    Example:
      >>> import numpy as np
      >>> t = np.linspace(0.0, 1.0, 20)[:, None]
      >>> line = np.array([[3.0, 4.0, 0.0]]) * t + np.array([[1.0, 1.0, 1.0]])
      >>> ed = trajectory_pca({"run": line}, num_components=1, references={"end": line[-1]})
      >>> ed.components.round(3).tolist(), ed.explained_variance_ratio.round(6).tolist()
      ([[0.6, 0.8, 0.0]], [1.0])
      >>> float(ed.reference_scores["end"][0].round(3))
      2.5
    """
    runs = _runs(trajectories)
    rows = np.concatenate(list(runs.values()), axis=0)
    count, width = rows.shape
    k = check_int("num_components", num_components, 1)
    if k > min(count - 1, width):
        raise ValueError(
            f"num_components={k} is too large: {count} rows (checkpoints of all runs) and m = "
            f"{width} outputs allow at most min(rows - 1, m) = {min(count - 1, width)} components"
        )
    if method not in ("auto", "svd", "gram"):
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
    method = ("gram" if width > 4 * count else "svd") if method == "auto" else method
    mean = rows.mean(axis=0)
    if method == "gram":
        components, singular = _gram_svd(rows, mean, k)
    else:
        components, singular = _direct_svd(rows - mean, k)
    components = components * _sign_convention(components)[:, None]
    power = np.square(singular)
    total = float(power.sum())
    ratio = power[:k] / total if total > 0 else np.zeros(k)
    scores = {name: (value - mean) @ components.T for name, value in runs.items()}
    reference_scores, reference_residuals = _project_references(references, mean, components)
    return TrajectoryPCA(
        mean=mean, components=components, singular_values=singular[:k],
        explained_variance=power[:k] / (count - 1), explained_variance_ratio=ratio,
        scores=scores, reference_scores=reference_scores,
        reference_residuals=reference_residuals, total_variance=total / (count - 1),
        method=method,
    )


def _project_references(references, mean, components):
    if references is None:
        return {}, {}
    if not isinstance(references, Mapping):
        raise TypeError(f"references must be a dict {{name: (m,) outputs}}, got "
                        f"{type(references).__name__}")
    scores, residuals = {}, {}
    for name, value in references.items():
        value = _as_rows(name, value, "reference").reshape(-1)
        if value.shape != mean.shape:
            raise ValueError(
                f"reference {name!r} has {value.size} outputs; expected m = {mean.size} (the "
                "flattened outputs on the same probe set as the runs)"
            )
        deviation = value - mean
        scores[name] = components @ deviation
        residuals[name] = float(np.linalg.norm(deviation - components.T @ scores[name]))
    return scores, residuals


# --------------------------------------------------------------------------------------------
# turning points


class TurningPoints(NamedTuple):
    r"""Turning points of a trajectory in PC space (:func:`trajectory_turning_points`).

    Attributes:
      steps: ``(p,)`` training steps of the turning points (peaks of :math:`\omega`, refined
        between grid points by a parabola).
      indices: ``(p,)`` the nearest checkpoint of each.
      positions: ``(p, k)`` the smoothed trajectory :math:`\gamma` there.
      turning_rate: ``(p,)`` :math:`\omega` at the peaks (radians per unit of the axis).
      grid_steps: ``(G,)`` steps of the evaluation grid (uniform in :math:`u`).
      curvature: ``(G,)`` :math:`\kappa` on the grid (per unit path length).
      rate: ``(G,)`` :math:`\omega = \kappa\lVert\gamma'\rVert` on the grid.
      speed: ``(G,)`` :math:`\lVert\gamma'\rVert` on the grid.
      smoothing: the bandwidth used (units of :math:`u`).
      axis: ``"log"`` (:math:`u = \ln(1+t)`) or ``"linear"`` (:math:`u = t`).
    """

    steps: np.ndarray
    indices: np.ndarray
    positions: np.ndarray
    turning_rate: np.ndarray
    grid_steps: np.ndarray
    curvature: np.ndarray
    rate: np.ndarray
    speed: np.ndarray
    smoothing: float
    axis: str


def _axis(steps: np.ndarray, axis: str):
    """``(to_u, from_u)`` for the chosen axis."""
    if axis == "log":
        if np.any(steps < 0):
            raise ValueError("axis='log' needs non-negative steps (u = log(1 + step))")
        return np.log1p, np.expm1
    if axis == "linear":
        return (lambda x: np.asarray(x, float)), (lambda x: np.asarray(x, float))
    raise ValueError(f"axis must be 'log' or 'linear', got {axis!r}")


def _local_quadratic(u: np.ndarray, points: np.ndarray, grid: np.ndarray, bandwidth: float):
    r"""``(γ, γ', γ'')`` on ``grid``: at each grid point :math:`g` the weighted least-squares fit
    :math:`x_c \approx b_0 + b_1 z_c + b_2 z_c^2/2`, :math:`z_c = (u_c - g)/h`, weights
    :math:`e^{-z_c^2/2}`; then :math:`\gamma = b_0`, :math:`\gamma' = b_1/h`,
    :math:`\gamma'' = b_2/h^2`."""
    z = (u[None, :] - grid[:, None]) / bandwidth  # (G, C)
    weights = np.exp(-0.5 * np.square(z))
    basis = np.stack([np.ones_like(z), z, 0.5 * np.square(z)], axis=-1)  # (G, C, 3)
    normal = np.einsum("gc,gci,gcj->gij", weights, basis, basis)
    moments = np.einsum("gc,gci,ck->gik", weights, basis, points)
    normal = normal + 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(3)[None]
    coefficients = np.linalg.solve(normal, moments)  # (G, 3, k)
    return coefficients[:, 0], coefficients[:, 1] / bandwidth, coefficients[:, 2] / bandwidth**2


def _check_trajectory(scores, steps):
    scores = np.asarray(scores, np.float64)
    steps = np.asarray(steps, np.float64)
    if scores.ndim != 2 or scores.shape[0] < 4:
        raise ValueError(f"scores must be a (num_checkpoints >= 4, k) array, got shape {scores.shape}")
    if steps.shape != (scores.shape[0],):
        raise ValueError(
            f"steps must have one entry per checkpoint, shape ({scores.shape[0]},); got {steps.shape}"
        )
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(steps))):
        raise ValueError("scores and steps must be finite")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return scores, steps


def _peaks(rate, speed, min_speed, min_prominence, floor):
    from scipy.signal import find_peaks

    moving = speed >= min_speed * np.max(speed)
    masked = np.where(moving, rate, 0.0)
    height = np.max(masked)
    if not height >= floor or not height > 0:
        return np.zeros((0,), np.int64)
    peaks, _ = find_peaks(masked, height=floor, prominence=min_prominence * height)
    return peaks


def _refine(values: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Sub-grid peak offsets from the parabola through each peak and its neighbours."""
    left = values[np.maximum(peaks - 1, 0)]
    right = values[np.minimum(peaks + 1, values.size - 1)]
    centre = values[peaks]
    curvature = left - 2.0 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    return np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)


def trajectory_turning_points(
    scores,
    steps,
    *,
    smoothing: float | None = None,
    axis: str = "log",
    min_speed: float = 1e-2,
    min_prominence: float = 0.1,
    min_angle: float = 0.05,
    grid_size: int = TURNING_GRID_SIZE,
) -> TurningPoints | dict:
    r"""Turning points of a trajectory in PC space, from the curvature of the smoothed path.

    With :math:`u = \ln(1 + t)` (``axis="log"``, for log-spaced checkpoints) or :math:`u = t`,
    :math:`\gamma(u), \gamma'(u), \gamma''(u)` are a Gaussian-weighted local quadratic fit to
    the scores (bandwidth ``smoothing`` in units of :math:`u`) on a uniform grid; then

    .. math::

        \kappa = \frac{\sqrt{\lVert\gamma'\rVert^2\lVert\gamma''\rVert^2 - (\gamma'\cdot\gamma'')^2}}
                       {\lVert\gamma'\rVert^3},\qquad \omega = \kappa\,\lVert\gamma'\rVert,

    and the turning points are the peaks of the turning rate :math:`\omega` (radians per unit
    :math:`u`) where the path moves (:math:`\lVert\gamma'\rVert \ge` ``min_speed`` × its
    maximum) with prominence at least ``min_prominence`` × the largest :math:`\omega` there and
    height :math:`\omega h \ge` ``min_angle`` (a turn of about that many radians within one
    bandwidth :math:`h`; a straight path has none) **(ours**; :math:`\kappa` itself diverges where the path stalls, e.g. near a small
    initialization, so its maxima would mark stalls). :math:`\kappa` and :math:`\omega` are
    invariant under rotations of PC space, so use all ``k`` components that carry the motion.

    Args:
      scores: ``(num_checkpoints, k)`` (e.g. ``ed.scores[run]``), or a dict of them (then
        ``steps`` is one array for all or a dict with the same keys, and a dict is returned).
      steps: ``(num_checkpoints,)`` increasing training steps.
      smoothing: bandwidth in units of :math:`u` (default: the median spacing of the
        checkpoints on that axis). Compare trajectories with the same value. The threshold
        ``min_angle`` is per bandwidth, so a small ``smoothing`` raises the turning rate a
        turn needs (a smooth 90° arc at rate 0.5 rad per unit is missed at ``smoothing=0.05``
        and found at 0.2): lower ``min_angle`` with it.
      axis: ``"log"`` or ``"linear"``.
      min_speed, min_prominence, min_angle: the thresholds above.
      grid_size: points of the uniform grid in :math:`u`.

    Returns:
      a :class:`TurningPoints` (or ``{run: TurningPoints}``).

    Example:
      >>> import numpy as np
      >>> steps = np.linspace(0.0, 2.0, 41)
      >>> corner = np.stack([np.minimum(steps, 1.0), np.maximum(steps - 1.0, 0.0)], axis=1)
      >>> tp = trajectory_turning_points(corner, steps, axis="linear", smoothing=0.1)
      >>> np.round(tp.steps, 3).tolist()
      [1.0]
    """
    if isinstance(scores, Mapping):
        return {run: trajectory_turning_points(
            value, steps[run] if isinstance(steps, Mapping) else steps, smoothing=smoothing,
            axis=axis, min_speed=min_speed, min_prominence=min_prominence, min_angle=min_angle,
            grid_size=grid_size)
            for run, value in scores.items()}
    scores, steps = _check_trajectory(scores, steps)
    to_u, from_u = _axis(steps, axis)
    u = to_u(steps)
    bandwidth = float(np.median(np.diff(u))) if smoothing is None else float(smoothing)
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"smoothing must be a positive bandwidth in units of u, got {smoothing!r}")
    grid = np.linspace(u[0], u[-1], check_int("grid_size", grid_size, 8))
    position, velocity, acceleration = _local_quadratic(u, scores, grid, bandwidth)
    speed = np.linalg.norm(velocity, axis=1)
    cross = np.sqrt(np.maximum(
        np.square(speed) * np.sum(np.square(acceleration), axis=1)
        - np.square(np.sum(velocity * acceleration, axis=1)), 0.0))
    safe = np.where(speed > 0, speed, 1.0)
    curvature = np.where(speed > 0, cross / safe**3, 0.0)
    rate = np.where(speed > 0, cross / safe**2, 0.0)
    peaks = _peaks(rate, speed, min_speed, min_prominence, min_angle / bandwidth)
    peak_u = grid[peaks] + _refine(rate, peaks) * (grid[1] - grid[0])
    turning_steps = from_u(peak_u)
    nearest = np.abs(steps[None, :] - turning_steps[:, None]).argmin(axis=1) if peaks.size else (
        np.zeros((0,), np.int64))
    return TurningPoints(
        steps=turning_steps, indices=nearest, positions=position[peaks], turning_rate=rate[peaks],
        grid_steps=from_u(grid), curvature=curvature, rate=rate, speed=speed,
        smoothing=bandwidth, axis=axis,
    )
