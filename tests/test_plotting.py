"""slt_jax.plotting: figures render, clustering recovers planted blocks, bad input is rejected."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as pyplot  # noqa: E402

from slt_jax import plotting  # noqa: E402


def _planted_blocks(sizes, *, within=0.6, seed=0):
    """A block-diagonal correlation matrix (plus noise), rows shuffled; returns it and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    size = labels.size
    latent = rng.normal(size=(400, len(sizes)))
    noise = rng.normal(size=(400, size))
    draws = np.sqrt(within) * latent[:, labels] + np.sqrt(1 - within) * noise
    permutation = rng.permutation(size)
    correlation = np.corrcoef(draws[:, permutation], rowvar=False)
    return correlation, labels[permutation]


def _save(figure, tmp_path, name):
    path = tmp_path / f"{name}.png"
    figure.savefig(path, dpi=60)  # a low resolution renders every element, faster
    pyplot.close(figure)
    assert path.stat().st_size > 0
    return path


def _contiguous_groups(labels_in_order) -> int:
    """How many runs of equal labels there are (2 for two contiguous blocks)."""
    return 1 + int(np.count_nonzero(np.diff(labels_in_order)))


@pytest.mark.parametrize("sizes", [(7, 9), (20, 25, 15)])
def test_cluster_order_groups_each_planted_block_contiguously(sizes):
    correlation, labels = _planted_blocks(sizes)
    order = plotting.cluster_order(correlation)
    assert sorted(order.tolist()) == list(range(labels.size))
    assert _contiguous_groups(labels[order]) == len(sizes)


def test_cluster_order_normalizes_a_covariance():
    correlation, labels = _planted_blocks((10, 12), seed=1)
    scales = np.linspace(0.1, 10.0, labels.size)
    order = plotting.cluster_order(correlation * scales[:, None] * scales[None, :])
    assert _contiguous_groups(labels[order]) == 2


def test_cluster_labels_recover_planted_blocks():
    correlation, labels = _planted_blocks((12, 18), seed=2)
    found = plotting.cluster_labels(correlation, 2)
    agreement = np.mean(found == labels)
    assert max(agreement, 1 - agreement) == 1.0


def test_plot_kernel_renders_heatmap_and_colorbar(tmp_path):
    correlation, labels = _planted_blocks((6, 8))
    figure = plotting.plot_kernel(correlation, title="kernel")
    assert len(figure.axes) == 2
    assert "correlation" in figure.axes[1].get_ylabel()
    _save(figure, tmp_path, "kernel")


def test_plot_kernel_with_labels_and_given_axes(tmp_path):
    correlation, labels = _planted_blocks((6, 8))
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4), layout="constrained")
    returned = plotting.plot_kernel(2.0 * correlation, labels=np.where(labels, "B", "A"),
                                    order=None, ax=axes[0])
    assert returned is figure
    assert len(figure.axes) == 3  # two panels and one colorbar (label strips are insets)
    assert "covariance" in figure.axes[2].get_ylabel()
    _save(figure, tmp_path, "kernel_labels")


def test_plot_influence_renders_heatmap_and_colorbar(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 12))
    figure = plotting.plot_influence(scores, title="BIF")
    assert len(figure.axes) == 2
    assert "negative = helpful" in figure.axes[1].get_ylabel()
    image = figure.axes[0].images[0]
    low, high = image.get_clim()
    assert low == -high  # centred at 0
    _save(figure, tmp_path, "influence")


def test_plot_influence_orders_rows_by_clustering():
    rng = np.random.default_rng(3)
    profiles = rng.normal(size=(2, 10))
    groups = rng.permutation(np.repeat([0, 1], 15))
    scores = profiles[groups] + 0.1 * rng.normal(size=(30, 10))
    figure = plotting.plot_influence(scores, column_order=None)
    shown = figure.axes[0].images[0].get_array()
    pyplot.close(figure)
    row_groups = [groups[np.argmin(np.abs(scores - row).sum(1))] for row in np.asarray(shown)]
    assert _contiguous_groups(np.asarray(row_groups)) == 2


def test_bad_input_raises():
    with pytest.raises(ValueError, match="square"):
        plotting.plot_kernel(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="square"):
        plotting.cluster_order(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_influence(np.zeros(5))
    with pytest.raises(ValueError, match="permutation"):
        plotting.plot_kernel(np.eye(3), order=[0, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_kernel(np.eye(3), labels=[0, 1])
    with pytest.raises(ValueError, match="num_clusters"):
        plotting.cluster_labels(np.eye(3), 4)


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plotting.plot_kernel(np.eye(3))


# ----------------------------------------------------------------------------------------------
# traces, calibration evidence, LLC curves (synthetic runs: no sampling, so no compilation)


def _ar1_chains(num_chains=4, num_draws=100, *, mean=1.5, seed=0):
    """Stationary AR(1) chains around ``mean`` (a stand-in for recorded losses)."""
    rng = np.random.default_rng(seed)
    values = np.empty((num_chains, num_draws))
    values[:, 0] = rng.normal(size=num_chains)
    for draw in range(1, num_draws):
        values[:, draw] = 0.5 * values[:, draw - 1] + rng.normal(size=num_chains)
    return mean + 0.05 * values


def _legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_plot_trace_of_llc_result_marks_burnin_and_diverged_chain(tmp_path):
    import warnings

    from slt_jax import llc
    from slt_jax.estimators import BIFResult

    losses = _ar1_chains()
    losses[2, 60:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the diverged chain is reported
        result = llc(losses, nbeta=10.0, init_loss=1.0)
    result = result._replace(hyperparameters={"num_burnin": 50, "steps_per_draw": 2})
    figure = plotting.plot_trace(result, truth=5.0)
    assert len(figure.axes) == 2
    draws_panel, means_panel = figure.axes
    first_line = draws_panel.lines[0]
    np.testing.assert_array_equal(first_line.get_xdata(), 50 + 2 * np.arange(100))
    np.testing.assert_allclose(means_panel.lines[0].get_ydata(),
                               np.cumsum(result.draws[0]) / np.arange(1, 101))
    assert draws_panel.lines[2].get_linestyle() == "--"  # the diverged chain
    assert any(patch.get_hatch() for patch in draws_panel.patches)  # burn-in
    assert draws_panel.get_xlabel() == "" and means_panel.get_xlabel() == "sampler step"
    texts = _legend_texts(figure)
    assert "chain 2 (diverged)" in texts and "burn-in (not recorded)" in texts
    assert any(text.startswith("± MCSE") for text in texts)
    assert "R̂" in figure._suptitle.get_text()
    _save(figure, tmp_path, "trace_llc")
    bif_result = BIFResult(bif=np.zeros((3, 2)), llc=result, hyperparameters={}, trace=None)
    figure = plotting.plot_trace(bif_result)
    assert len(figure.axes) == 2
    pyplot.close(figure)


def test_plot_trace_of_trace_with_observables(tmp_path):
    from slt_jax import Trace

    loss = _ar1_chains(3, 80)
    loss[1, 70:] = np.nan
    trace = Trace(
        loss=loss, observables={"norm": _ar1_chains(3, 80, seed=1),
                                "weights": np.zeros((3, 80, 2))},
        diverged=np.array([False, True, False]), first_nonfinite_step=np.array([-1, 70, -1]),
    )
    figure = plotting.plot_trace(trace, observables=True)
    assert len(figure.axes) == 2  # the loss and the scalar observable; vectors are skipped
    loss_panel, norm_panel = figure.axes
    assert norm_panel.get_xlabel() == "draw"  # no run lengths: draw index
    np.testing.assert_array_equal(loss_panel.lines[0].get_xdata(), np.arange(80))
    assert loss_panel.get_title().startswith("loss: R̂ = ")
    assert "chain 1 (diverged at step 70)" in _legend_texts(figure)
    _save(figure, tmp_path, "trace")
    assert len(plotting.plot_trace(trace).axes) == 1
    pyplot.close("all")
    with pytest.raises(ValueError, match="scalar"):
        plotting.plot_trace(trace, observables=["weights"])
    with pytest.raises(ValueError, match="no observable"):
        plotting.plot_trace(trace, observables=["missing"])
    with pytest.raises(TypeError, match="LLCResult"):
        plotting.plot_trace(loss)


def _calibration(*, noise: bool):
    from slt_jax.calibration import Calibration

    rounds = (
        {"round": 0, "where": "w*", "max_hessian_eigenvalue": 2.0, "step_size": 2.5e-3},
        {"round": 1, "where": "pilot diverged", "step_size": 1.25e-3},
        {"round": 2, "where": "500-step pilot ends", "max_hessian_eigenvalue": 5.0,
         "step_size": 1e-3},
    )
    return Calibration(
        step_size=1e-3, sampler="sghmc", max_hessian_eigenvalue=5.0, max_curvature=101.0,
        stability_bound=4 / 101.0, safety_factor=0.1, nbeta=20.0, localization=1.0,
        rounds=rounds, options=(("friction", 0.46),),
        pilot_llc=12.0 if noise else None, gradient_noise_bias=0.01 if noise else None,
    )


def test_plot_calibration_shows_rounds_and_noise_budget(tmp_path):
    from slt_jax import LLCResult

    calibration = _calibration(noise=True)
    result = LLCResult(mean=1.0, std=0.1, per_chain=np.ones(2), mcse=0.01, rhat=1.0, ess=100.0,
                       init_loss=0.0, nbeta=20.0, diverged_chains=(), draws=np.ones((2, 5)),
                       hyperparameters={"calibration": calibration})
    figure = plotting.plot_calibration(result)
    assert len(figure.axes) == 3
    curvature, steps, noise = figure.axes
    measured = curvature.lines[0]
    np.testing.assert_array_equal(measured.get_xdata(), [0, 2])  # rounds with an eigenvalue
    np.testing.assert_array_equal(measured.get_ydata(), [2.0, 5.0])
    assert steps.get_yscale() == "log"
    np.testing.assert_allclose([bar.get_height() for bar in noise.patches], [12.0, 0.12])
    _save(figure, tmp_path, "calibration")
    assert len(plotting.plot_calibration(_calibration(noise=False)).axes) == 2
    pyplot.close("all")
    with pytest.raises(ValueError, match="not calibrated"):
        plotting.plot_calibration(result._replace(hyperparameters={"calibration": None}))
    with pytest.raises(TypeError, match="Calibration"):
        plotting.plot_calibration(np.zeros(3))


def test_plot_llc_curves_draws_bands_per_component(tmp_path):
    steps = np.array([0, 10, 100, 1000])
    means = np.array([[1.0, 0.5], [2.0, 0.7], [4.0, 1.5], [5.0, 2.5]])
    figure = plotting.plot_llc_curves(steps, means, 0.1 * means, labels=["all", "layer 1"],
                                      log_x=True)
    assert len(figure.axes) == 1
    ax = figure.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # one band per component
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), means[:, 1])
    assert ax.get_xscale() == "symlog"  # a checkpoint at step 0
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["all", "layer 1"]
    _save(figure, tmp_path, "llc_curves")
    figure = plotting.plot_llc_curves(steps[1:], means[1:, 0], log_x=True)
    assert figure.axes[0].get_xscale() == "log" and not figure.axes[0].collections
    pyplot.close(figure)
    with pytest.raises(ValueError, match="errors"):
        plotting.plot_llc_curves(steps, means, np.ones((4, 3)))
    with pytest.raises(ValueError, match="num_checkpoints"):
        plotting.plot_llc_curves(steps, means[:3])
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_llc_curves(steps, means, labels=["one"])
