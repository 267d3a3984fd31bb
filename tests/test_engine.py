"""The sampling engine: query sets as program arguments, streams stored or accumulated inside
the compiled program, progress meters, one program for runs of any length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import accumulators

NUM_CHAINS = 3


def _regression(n=64, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ np.arange(1.0, d + 1.0) + 0.5 * rng.standard_normal(n)).astype(np.float32)
    center = np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float32)
    return {"w": jnp.asarray(center)}, (jnp.asarray(x), jnp.asarray(y))


def loss_fn(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] - y) ** 2


def token_loss_fn(params, batch):
    """Per-token losses (b, T): each example has T = 2 "tokens" (its residual and a scaled one)."""
    x, y = batch
    residual = x @ params["w"] - y
    return jnp.stack([0.5 * residual**2, 0.25 * residual**2 + params["w"][0] ** 2], axis=1)


RUN = dict(num_chains=NUM_CHAINS, num_draws=40, num_burnin=5, batch_size=16, draws_per_block=16)
SAMPLER = slt.samplers.sgld(1e-3, 30.0, 1.0)


def _query(n, seed):
    return _regression(n=n, seed=seed)[1]


def test_query_losses_are_loss_fn_at_the_draws():
    params, data = _regression()
    probe = _query(7, 1)
    trace = slt.sample(
        token_loss_fn, params, data, SAMPLER, key=jax.random.key(0), **RUN,
        query_data={"probe": probe}, observables={"w": lambda p: p["w"]}, query_chunk_size=3,
    )
    losses = trace.query_losses["probe"]
    assert losses.shape == (NUM_CHAINS, RUN["num_draws"], 7, 2)  # per-token shape kept
    expected = jax.vmap(jax.vmap(lambda w: token_loss_fn({"w": w}, probe)))(trace.observables["w"])
    np.testing.assert_allclose(np.asarray(losses), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_new_query_data_or_key_compiles_nothing():
    params, data = _regression()
    run = dict(RUN, query_data={"probe": _query(5, 1), "train": _query(9, 2)})
    first = slt.sample(loss_fn, params, data, SAMPLER, key=jax.random.key(0), **run)
    new_queries = {"probe": _query(5, 3), "train": _query(9, 4)}
    with slt.count_compilations() as counter:
        second = slt.sample(loss_fn, params, data, SAMPLER, key=jax.random.key(0),
                            **{**run, "query_data": new_queries})
        third = slt.sample(loss_fn, params, data, SAMPLER, key=jax.random.key(1), **run)
    assert counter.count == 0
    # same key, same chains: the loss trace is identical, the query losses are the new sets'
    np.testing.assert_array_equal(np.asarray(first.loss), np.asarray(second.loss))
    assert not np.allclose(np.asarray(first.query_losses["probe"]),
                           np.asarray(second.query_losses["probe"]))
    assert not np.array_equal(np.asarray(first.loss), np.asarray(third.loss))


def _offset_observable(params):
    """A stream with mean 1e4 and spread ~0.1: the float32 stability case."""
    return 1e4 + 10.0 * params["w"]


def test_streaming_accumulators_equal_the_array_computation_on_the_same_draws():
    params, data = _regression()
    queries = {"probe": _query(5, 1), "train": _query(11, 2)}
    reducers = {
        "mean_probe": accumulators.running_mean("probe"),
        "bif": accumulators.cross_covariance("train", "probe"),
        "kernel_chain": accumulators.covariance("probe", center="chain"),
        "loss_offset": accumulators.cross_covariance("loss", "offset"),
        "offset": accumulators.covariance("offset"),
    }
    trace = slt.sample(
        loss_fn, params, data, SAMPLER, key=jax.random.key(0),
        **{**RUN, "num_draws": 45}, query_data=queries, accumulators=reducers,
        observables={"offset": _offset_observable},
    )
    as64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    probe, train = as64(trace.query_losses["probe"]), as64(trace.query_losses["train"])
    offset, loss = as64(trace.observables["offset"]), as64(trace.loss)

    def pooled_cov(a, b, center):
        a, b = a.reshape(a.shape[0], a.shape[1], -1), b.reshape(b.shape[0], b.shape[1], -1)
        if center == "global":
            da, db = a - a.mean(axis=(0, 1)), b - b.mean(axis=(0, 1))
            dof = a.shape[0] * a.shape[1] - 1
        else:
            da, db = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
            dof = a.shape[0] * (a.shape[1] - 1)
        return np.einsum("cda,cdb->ab", da, db) / dof

    results = trace.accumulators
    np.testing.assert_allclose(np.asarray(results["mean_probe"].mean), probe.mean(axis=(0, 1)),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(results["bif"].covariance),
                               pooled_cov(train, probe, "global"), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(results["kernel_chain"].covariance),
                               pooled_cov(probe, probe, "chain"), rtol=2e-4, atol=1e-6)
    offset_cov = pooled_cov(offset, offset, "global")
    np.testing.assert_allclose(np.asarray(results["offset"].covariance), offset_cov,
                               rtol=1e-3, atol=1e-3 * np.abs(offset_cov).max())
    np.testing.assert_allclose(
        np.asarray(results["loss_offset"].covariance).reshape(-1),
        pooled_cov(loss[..., None], offset, "global").reshape(-1), rtol=2e-3, atol=1e-6,
    )
    # ... and the array form of the library agrees too
    np.testing.assert_allclose(
        np.asarray(accumulators.cross_covariance_of_draws(trace.query_losses["train"],
                                                          trace.query_losses["probe"])),
        np.asarray(results["bif"].covariance), rtol=2e-4, atol=1e-6,
    )


def test_accumulate_only_streams_are_not_stored_and_give_the_same_result():
    params, data = _regression()
    queries = {"probe": _query(5, 1)}
    reducers = {"kernel": accumulators.covariance("probe")}
    kwargs = dict(key=jax.random.key(2), **RUN, query_data=queries, accumulators=reducers)
    stored = slt.sample(loss_fn, params, data, SAMPLER, **kwargs)
    streamed = slt.sample(loss_fn, params, data, SAMPLER, store=("loss",), **kwargs)
    assert "probe" not in streamed.query_losses and "probe" in stored.query_losses
    np.testing.assert_array_equal(np.asarray(stored.accumulators["kernel"].covariance),
                                  np.asarray(streamed.accumulators["kernel"].covariance))


def test_stream_errors_are_caught_before_compilation():
    params, data = _regression()
    run = dict(key=jax.random.key(0), **RUN)
    with pytest.raises(ValueError, match=r"reads stream\(s\) \['nope'\], which do not exist"):
        slt.sample(loss_fn, params, data, SAMPLER, **run,
                   accumulators={"k": accumulators.covariance("nope")})
    with pytest.raises(ValueError, match="distinct"):
        slt.sample(loss_fn, params, data, SAMPLER, **run, query_data={"loss": _query(3, 1)})
    with pytest.raises(ValueError, match="store names unknown"):
        slt.sample(loss_fn, params, data, SAMPLER, **run, store=("probe",))
    with pytest.raises(TypeError, match="query_data must be a dict"):
        slt.sample(loss_fn, params, data, SAMPLER, **run, query_data=[_query(3, 1)])
    with pytest.raises(ValueError, match="share the leading"):
        x, y = _query(4, 1)
        slt.sample(loss_fn, params, data, SAMPLER, **run, query_data={"q": (x, y[:3])})


class RecordingMeter:
    def __init__(self):
        self.events = []

    def start(self, total_steps, description):
        self.events.append(("start", total_steps))

    def update(self, steps, phase):
        self.events.append((phase, steps))

    def close(self):
        self.events.append(("close", 0))


def test_a_progress_meter_object_sees_every_step_and_does_not_change_the_trace():
    params, data = _regression()
    run = dict(RUN, num_burnin=21, steps_per_draw=2)
    quiet = slt.sample(loss_fn, params, data, SAMPLER, key=jax.random.key(4), **run)
    meter = RecordingMeter()
    shown = slt.sample(loss_fn, params, data, SAMPLER, key=jax.random.key(4), progress=meter,
                       **run)
    np.testing.assert_array_equal(np.asarray(quiet.loss), np.asarray(shown.loss))
    total = run["num_burnin"] + run["num_draws"] * run["steps_per_draw"]
    assert meter.events[0] == ("start", total)
    assert meter.events[1][0] == "compiling"
    assert meter.events[-1] == ("close", 0)
    assert sum(steps for phase, steps in meter.events if phase in ("burn-in", "sampling")) == total


def test_trace_records_the_sampler_hyperparameters():
    params, data = _regression()
    trace = slt.sample(loss_fn, params, data, slt.samplers.sghmc(2e-4, 12.0, 0.5, friction=0.3),
                       key=jax.random.key(0), **RUN)
    assert trace.hyperparameters == pytest.approx(
        {"step_size": 2e-4, "nbeta": 12.0, "localization": 0.5, "friction": 0.3,
         "num_burnin": RUN["num_burnin"], "steps_per_draw": RUN.get("steps_per_draw", 1)}
    )
