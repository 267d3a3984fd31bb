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
    figure.savefig(path)
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
