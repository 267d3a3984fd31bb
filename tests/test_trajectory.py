"""Essential dynamics: joint trajectory PCA, turning points, outputs over checkpoints
(docs/mathematics.md §6; arXiv 2402.02364, 2501.17745)."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import slt_jax as slt
from slt_jax.data.hierarchical import make_hierarchical_data

matplotlib.use("Agg")


def _planted(rng, width=60, counts=(25, 18)):
    """Runs on a curved path inside the affine plane ``offset + span(basis)``."""
    basis, _ = np.linalg.qr(rng.normal(size=(width, 2)))
    offset = rng.normal(size=width)
    runs = {}
    for index, count in enumerate(counts):
        t = np.linspace(0.0, 1.0, count)
        plane = np.stack([np.cos(2.0 * t + index), t**2 - 0.3 * index], axis=1)
        runs[f"run{index}"] = offset + plane @ basis.T
    return runs, basis


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_planted_affine_plane_is_recovered_exactly(method):
    runs, basis = _planted(np.random.default_rng(0))
    ed = slt.trajectory_pca(runs, num_components=3, method=method)
    assert ed.method == method
    assert ed.explained_variance_ratio[:2].sum() == pytest.approx(1.0, abs=1e-12)
    assert ed.explained_variance_ratio[2] < 1e-12
    projector = ed.components[:2].T @ ed.components[:2]
    assert np.linalg.norm(projector - basis @ basis.T, 2) <= 1e-6
    # the one mean is the mean of all rows; scores reproduce the centred rows in the plane
    rows = np.concatenate(list(runs.values()))
    np.testing.assert_allclose(ed.mean, rows.mean(0), atol=1e-12)
    for name, value in runs.items():
        np.testing.assert_allclose(ed.scores[name][:, :2] @ ed.components[:2], value - ed.mean,
                                   atol=1e-9)
    np.testing.assert_allclose(ed.components @ ed.components.T, np.eye(3), atol=1e-9)


def test_gram_path_equals_direct_svd():
    rng = np.random.default_rng(1)
    count, width = 30, 400  # m > 4 N: "auto" takes the Gram path
    rows = rng.normal(size=(count, 6)) * np.array([9.0, 6.0, 4.0, 2.5, 1.5, 1.0]) @ rng.normal(
        size=(6, width)) + 0.01 * rng.normal(size=(count, width))
    runs = {"a": rows[:12], "b": rows[12:]}
    reference = {"ref": rng.normal(size=width)}
    gram = slt.trajectory_pca(runs, num_components=4, references=reference)
    direct = slt.trajectory_pca(runs, num_components=4, references=reference, method="svd")
    assert gram.method == "gram" and direct.method == "svd"
    np.testing.assert_allclose(gram.components, direct.components, atol=1e-9)
    np.testing.assert_allclose(gram.singular_values, direct.singular_values, rtol=1e-10)
    np.testing.assert_allclose(gram.explained_variance_ratio, direct.explained_variance_ratio,
                               rtol=1e-10)
    for run in runs:
        np.testing.assert_allclose(gram.scores[run], direct.scores[run], atol=1e-8)
    np.testing.assert_allclose(gram.reference_scores["ref"], direct.reference_scores["ref"],
                               atol=1e-8)
    # the sign convention: each component's largest entry is positive
    largest = direct.components[np.arange(4), np.abs(direct.components).argmax(1)]
    assert np.all(largest > 0)


def test_references_are_projected_not_fitted():
    runs, _ = _planted(np.random.default_rng(2))
    far = 100.0 * np.random.default_rng(3).normal(size=60)  # far off the runs' plane
    plain = slt.trajectory_pca(runs, num_components=2)
    with_reference = slt.trajectory_pca(runs, num_components=2, references={"far": far})
    for field in ("mean", "components", "singular_values", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(with_reference, field))
    for run in runs:
        np.testing.assert_array_equal(plain.scores[run], with_reference.scores[run])
    deviation = far - plain.mean
    np.testing.assert_allclose(with_reference.reference_scores["far"],
                               plain.components @ deviation, rtol=1e-12)
    in_plane = plain.components.T @ with_reference.reference_scores["far"]
    assert with_reference.reference_residuals["far"] == pytest.approx(
        np.linalg.norm(deviation - in_plane), rel=1e-12)
    assert with_reference.reference_residuals["far"] > 100.0  # it really is off the plane


# --- Saxe's deep linear network on the hierarchy ---------------------------------------------

LEARNING_RATE = 0.005
INITIAL_STRENGTHS = (1e-6, 1e-5, 1e-4)


def _dln_apply(params, x):
    return x @ params["w1"].T @ params["w2"].T


def _dln_loss(params, batch):
    return 0.5 * jnp.sum(jnp.square(_dln_apply(params, batch["x"]) - batch["y"]), axis=-1)


@pytest.fixture(scope="module")
def saxe_runs():
    """3 gradient-descent runs (aligned, balanced init of strength a0 per mode) of a 2-layer
    linear network on 4 items / 7 features, their outputs on the 4 items, and the mode
    directions ``M_α = √P v_α ⊗ u_α`` of output space."""
    hierarchy = make_hierarchical_data()
    inputs, outputs = hierarchy.input_modes, hierarchy.output_modes
    steps = slt.training.log_spaced_steps(6000, 60)
    probe = hierarchy.data["x"]
    runs = {}
    for a0 in INITIAL_STRENGTHS:
        init = {"w1": jnp.asarray(np.sqrt(a0) * inputs.T, jnp.float32),
                "w2": jnp.asarray(np.sqrt(a0) * outputs, jnp.float32)}
        result = slt.training.train(init, _dln_loss, hierarchy.data, optax.sgd(LEARNING_RATE),
                                    key=jax.random.key(0), num_steps=int(steps[-1]),
                                    batch_size=None, checkpoint_steps=steps)
        runs[a0] = slt.trajectory_outputs(_dln_apply, result, probe)
    modes = np.stack([2.0 * np.kron(inputs[:, a], outputs[:, a]) for a in range(4)])
    return hierarchy, steps, runs, modes


def test_saxe_top_three_components_span_every_mode(saxe_runs):
    _, _, runs, modes = saxe_runs
    ed = slt.trajectory_pca(runs, num_components=3)
    assert ed.explained_variance_ratio.sum() > 0.99
    # modes 3 and 4 share s = 1/2 and a0, so they rise together: their direction is M3 + M4
    directions = [modes[0], modes[1], modes[2] + modes[3]]
    projector = ed.components.T @ ed.components
    for direction in directions:
        unit = direction / np.linalg.norm(direction)
        assert np.linalg.norm(unit - projector @ unit) <= 1e-3
    # single components mix modes: PC1 is no single mode direction
    overlaps = np.abs(ed.components[0] @ np.stack([d / np.linalg.norm(d) for d in directions]).T)
    assert overlaps.max() < 0.99


def test_saxe_turning_points_match_the_closed_form(saxe_runs):
    hierarchy, steps, runs, modes = saxe_runs
    ed = slt.trajectory_pca(runs, num_components=3)
    s = hierarchy.singular_values
    for a0 in INITIAL_STRENGTHS:
        strengths = slt.truth.saxe_mode_strength(steps[:, None], s[None, :], a0, LEARNING_RATE)
        exact = ed.project(strengths @ modes)
        measured = slt.trajectory_turning_points(ed.scores[a0], steps)
        closed = slt.trajectory_turning_points(exact, steps, smoothing=measured.smoothing)
        assert closed.steps.size == 2  # root → next level → leaves: two turns
        np.testing.assert_allclose(measured.steps, closed.steps, rtol=0.02)
        # each turn lies between the half-rises of the modes it joins
        half = slt.truth.saxe_half_rise_time(s, a0, LEARNING_RATE)
        assert half[0] < closed.steps[0] < half[1] < closed.steps[1] < half[2]


def test_turning_points_of_a_corner_are_at_the_corner():
    steps = np.linspace(0.0, 3.0, 61)
    corner = np.stack([np.minimum(steps, 2.0), np.maximum(steps - 2.0, 0.0), 0 * steps], axis=1)
    points = slt.trajectory_turning_points(corner, steps, axis="linear", smoothing=0.15)
    np.testing.assert_allclose(points.steps, [2.0], atol=0.01)
    line = np.stack([steps, 2.0 * steps, -steps], axis=1)
    straight = slt.trajectory_turning_points(line, steps, axis="linear")
    assert straight.steps.size == 0
    assert np.all(straight.rate < 1e-6)


# --- outputs over checkpoints -----------------------------------------------------------------


def test_trajectory_outputs_vmaps_and_compiles_once():
    rng = np.random.default_rng(4)
    checkpoints = {"w": jnp.asarray(rng.normal(size=(7, 3, 2)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(7, 2)), jnp.float32)}
    probe = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)

    def apply_fn(params, x):
        return jnp.tanh(x @ params["w"] + params["b"][None, :])

    expected = np.stack([np.asarray(apply_fn(jax.tree.map(lambda l, i=i: l[i], checkpoints),
                                             probe)).reshape(-1) for i in range(7)])
    with slt.count_compilations() as counter:
        outputs = slt.trajectory_outputs(apply_fn, checkpoints, probe, checkpoints_per_chunk=3)
    assert counter.count == 1  # three chunks (the last padded) share one program
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    other_probe = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    with slt.count_compilations() as counter:  # a new probe of the same shape compiles nothing
        slt.trajectory_outputs(apply_fn, checkpoints, other_probe, checkpoints_per_chunk=3)
    assert counter.count == 0


def test_trajectory_outputs_of_an_nnx_training_run():
    from flax import nnx

    # what training.train returns for an NNX model: stacked nnx.Param states + the graphdef
    graphdef, params, rest = nnx.split(slt.models.MLP([2, 4, 1], rngs=nnx.Rngs(0)), nnx.Param, ...)
    checkpoints = jax.tree.map(lambda leaf: jnp.stack([leaf, 2.0 * leaf, -leaf]), params)
    run = slt.training.TrainResult(checkpoints, np.arange(3), np.zeros(2), params, graphdef, rest)
    x = jnp.linspace(-1, 1, 16).reshape(8, 2)
    outputs = slt.trajectory_outputs(lambda module, inputs: module(inputs), run, x)
    expected = np.stack([np.asarray(run.model(i)(x)).reshape(-1) for i in range(3)])
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


# --- bad input and the figure --------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    rows = np.random.default_rng(5).normal(size=(6, 4))
    with pytest.raises(ValueError, match="same number of columns m"):
        slt.trajectory_pca({"a": rows, "b": rows[:, :3]})
    with pytest.raises(ValueError, match="num_components=6 is too large.*at most"):
        slt.trajectory_pca({"a": rows}, num_components=6)
    with pytest.raises(ValueError, match="reference 'r' has 3 outputs; expected m = 4"):
        slt.trajectory_pca({"a": rows}, num_components=2, references={"r": np.ones(3)})
    with pytest.raises(ValueError, match="non-finite"):
        slt.trajectory_pca({"a": np.where(rows > 1.5, np.nan, rows)})
    with pytest.raises(ValueError, match="method must be"):
        slt.trajectory_pca({"a": rows}, method="eig")
    with pytest.raises(ValueError, match="one entry per checkpoint"):
        slt.trajectory_turning_points(rows[:, :2], np.arange(5))
    with pytest.raises(ValueError, match="strictly increasing"):
        slt.trajectory_turning_points(rows[:, :2], np.array([0, 1, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="leading checkpoint axis"):
        slt.trajectory_outputs(lambda p, x: x, {"a": jnp.ones((3, 2)), "b": jnp.ones((4,))},
                               jnp.ones(2))


def test_plot_trajectories_draws_paths_references_and_llc():
    runs, _ = _planted(np.random.default_rng(6), counts=(20, 20))
    ed = slt.trajectory_pca(runs, num_components=3, references={"ref": runs["run0"][5]})
    steps = slt.training.log_spaced_steps(1000, 20)
    figure = slt.plotting.plot_trajectories(ed, llc=np.linspace(1.0, 2.0, 20), steps=steps)
    assert len(figure.axes) == 3  # PC1-PC2, PC1-PC3, LLC
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert "ref" in labels and "run0" in labels
    assert len(slt.plotting.plot_trajectories(ed).axes) == 2
    partial = np.where(np.arange(20) % 4 == 0, 1.5, np.nan)  # a sweep of every 4th checkpoint
    figure = slt.plotting.plot_trajectories(ed, llc=partial, steps=steps)
    assert len(figure.axes[-1].lines[0].get_xdata()) == 5  # the swept points, joined
    matplotlib.pyplot.close("all")
