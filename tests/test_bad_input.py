"""Bad input and silent failures (issue 9): caught up front, with a message saying what and where.

- non-finite data, parameters, per-example losses or gradients at w* raise a ``ValueError``
  before the sampling program is traced (``sample``, ``estimate_llc``, ``estimate_bif``);
- a step whose noise is below the parameters' floating-point resolution warns;
- ``llc(trace, nbeta=...)`` with another nβ than the trace was sampled with raises;
- errors raised while tracing ``loss_fn`` keep their type and message;
- RMSProp-SGLD started exactly at w* does not kick the chains out on its first steps.
"""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import sampling

NUM_EXAMPLES = 8


def loss_fn(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] + params["b"] - y) ** 2


def make_problem(dtype=jnp.float32):
    x = np.linspace(-1.0, 1.0, NUM_EXAMPLES * 2).reshape(NUM_EXAMPLES, 2).astype(dtype)
    y = np.linspace(0.0, 1.0, NUM_EXAMPLES).astype(dtype)
    params = {"w": jnp.array([0.5, -0.25], dtype), "b": jnp.asarray(0.75, dtype)}
    return params, (x, y)


def run_sample(loss=loss_fn, params=None, data=None, sampler=None, **options):
    default_params, default_data = make_problem()
    options = {"key": jax.random.key(0), "num_chains": 2, "num_draws": 3, "batch_size": 4,
               **options}
    return slt.sample(
        loss, default_params if params is None else params,
        default_data if data is None else data,
        slt.samplers.sgld(1e-4, 10.0) if sampler is None else sampler, **options,
    )


def run_estimate_llc(loss=loss_fn, params=None, data=None):
    default_params, default_data = make_problem()
    return slt.estimate_llc(
        loss, default_params if params is None else params,
        default_data if data is None else data, key=jax.random.key(0), num_chains=2,
        num_draws=8, batch_size=4,
    )


def run_estimate_bif(loss=loss_fn, params=None, data=None):
    default_params, default_data = make_problem()
    data = default_data if data is None else data
    return slt.estimate_bif(
        loss, default_params if params is None else params, data, data,
        key=jax.random.key(0), num_chains=2, num_draws=8, batch_size=4,
    )


ENTRY_POINTS = {"sample": run_sample, "estimate_llc": run_estimate_llc,
                "estimate_bif": run_estimate_bif}


@contextlib.contextmanager
def raises_before_sampling(exception, match):
    """``pytest.raises`` that also asserts the sampling program was never traced."""
    programs_before = sampling._run_block._cache_size()
    with pytest.raises(exception, match=match):
        yield
    assert sampling._run_block._cache_size() == programs_before, "the error came after tracing"


# ------------------------------------------------------------------ non-finite input at w*


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("where", ["host", "device"])
def test_nan_in_the_data_names_the_leaf_and_the_examples(entry, where):
    params, (x, y) = make_problem()
    x = x.copy()
    x[5, 1] = np.nan
    x[2, 0] = np.inf
    data = (x, y) if where == "host" else (jnp.asarray(x), jnp.asarray(y))
    with raises_before_sampling(
        ValueError, r"data leaf \[0\] has non-finite values .* 2 example\(s\): \[2, 5\]"
    ):
        ENTRY_POINTS[entry](data=data)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_non_finite_params_name_the_leaf(entry):
    params, _ = make_problem()
    params["w"] = params["w"].at[1].set(jnp.inf)
    with raises_before_sampling(ValueError, r"params leaf \['w'\] \(w\*\) has non-finite"):
        ENTRY_POINTS[entry](params=params)


def log_loss(params, batch):
    """Finite data, but the log of a negative number for the examples with x[:, 0] > 0.5."""
    x, y = batch
    return jnp.log(0.5 - x[:, 0]) + loss_fn(params, batch)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_loss_that_is_nan_for_some_examples_names_them(entry):
    _, (x, _) = make_problem()
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(np.log(0.5 - x[:, 0].astype(np.float64))))
    assert bad.tolist() == [6, 7]
    with raises_before_sampling(
        ValueError, r"loss_fn\(params, batch\) at w\* is non-finite for 2 example\(s\): \[6, 7\]"
    ):
        ENTRY_POINTS[entry](loss=log_loss)


def test_estimate_llc_checks_the_loss_of_every_example_not_just_the_first_chunk():
    """estimate_llc computes L_n(w*) on all examples; a bad example far out is named too."""
    n = 3000
    x = np.zeros((n, 2), np.float32)
    x[2345, 0] = 1.0  # finite data, log(0.5 - 1) = nan
    data = (x, np.zeros(n, np.float32))
    params, _ = make_problem()
    with raises_before_sampling(ValueError, r"non-finite for 1 example\(s\): \[2345\]"):
        slt.estimate_llc(log_loss, params, data, key=jax.random.key(0), num_chains=2,
                         num_draws=8, batch_size=4)


def sqrt_bias_loss(params, batch):
    """Finite at b = 0, but d sqrt(b) / db is infinite there."""
    x, y = batch
    return 0.5 * (x @ params["w"] + jnp.sqrt(params["b"]) - y) ** 2


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_non_finite_gradient_at_w_star_names_the_param_leaf(entry):
    params, _ = make_problem()
    params["b"] = jnp.zeros((), jnp.float32)
    with raises_before_sampling(
        ValueError, r"gradient of the loss at w\* is non-finite in params leaf \['b'\]"
    ):
        ENTRY_POINTS[entry](loss=sqrt_bias_loss, params=params)


# --------------------------------------------------------------------- float16 parameters


def test_a_step_below_the_float16_resolution_warns():
    params, data = make_problem(jnp.float16)
    # sqrt(ε) = 1e-5 against a float16 half-spacing >= 1.2e-4 at |w| >= 0.25: a 12σ noise draw
    # would be needed to move a coordinate, so no update survives (1e-8 was a 1.2σ margin)
    with pytest.warns(RuntimeWarning, match=r"sqrt\(ε\)=1e-05.* below .*float16") as caught:
        trace = run_sample(params=params, data=data, sampler=slt.samplers.sgld(1e-10, 10.0))
    message = str(caught[0].message)
    assert "|w|" in message and "float32" in message  # where, and what to do
    # the warning is right: every update rounded to zero
    np.testing.assert_array_equal(np.asarray(trace.final_params["w"][0]), np.asarray(params["w"]))


@pytest.mark.parametrize("dtype, step_size", [(jnp.float16, 1e-4), (jnp.float32, 1e-8)])
def test_a_step_above_the_resolution_is_quiet(dtype, step_size):
    params, data = make_problem(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = run_sample(params=params, data=data, sampler=slt.samplers.sgld(step_size, 10.0))
    assert not [str(warning.message) for warning in caught]
    for name, start in params.items():  # and the chains do move
        moved = np.asarray(trace.final_params[name], np.float32)
        assert np.all(moved != np.asarray(start, np.float32)[None]), name


def test_a_large_nbeta_with_float16_params_stays_finite():
    """nβ = 1e5 overflows float16 (max 65504); hyperparameters keep their own precision."""
    params, data = make_problem(jnp.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = run_sample(params=params, data=data, sampler=slt.samplers.sgld(1e-6, 1e5),
                           num_draws=20)
    assert trace.hyperparameters["nbeta"] == 1e5
    state_nbeta = trace.state.sampler_state.hyperparameters["nbeta"]
    assert state_nbeta.dtype == jnp.float32 and np.all(np.asarray(state_nbeta) == 1e5)
    assert not bool(trace.diverged.any())
    assert np.all(np.isfinite(np.asarray(trace.loss)))
    moved = np.asarray(trace.final_params["w"], np.float32) - np.asarray(params["w"], np.float32)
    assert np.all(np.isfinite(moved)) and np.any(moved != 0)


# ------------------------------------------------------------------------- llc and its nβ


def test_llc_with_another_nbeta_than_the_trace_raises():
    params, data = make_problem()
    trace = run_sample(sampler=slt.samplers.sgld(1e-4, 10.0), num_draws=50)
    init_loss = float(slt.evaluate_loss(loss_fn, params, data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat of 50 draws is not the subject
        with pytest.raises(ValueError, match=r"nβ=10 .*sampled with"):
            slt.llc(trace, nbeta=100.0, init_loss=init_loss)
        recorded = slt.llc(trace, init_loss=init_loss)  # nbeta=None: the trace's
        assert recorded.nbeta == 10.0
        same = slt.llc(trace, nbeta=10.0, init_loss=init_loss)
        assert same.mean == recorded.mean
        # a raw loss array carries no nβ: the caller's is used (the explicit override)
        raw = slt.llc(np.asarray(trace.loss), nbeta=100.0, init_loss=init_loss)
        assert raw.nbeta == 100.0
        with pytest.raises(ValueError, match=r"nbeta is required"):
            slt.llc(np.asarray(trace.loss), init_loss=init_loss)


# ------------------------------------------------------------ errors raised while tracing


def concretizing_loss(params, batch):
    x, y = batch
    repeats = int(params["b"])  # a Python int of a traced value
    return 0.5 * (x @ params["w"] - y) ** 2 * repeats


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_tracer_error_in_loss_fn_keeps_its_type_and_message(entry):
    with pytest.raises(jax.errors.ConcretizationTypeError, match=r"Abstract tracer value") as info:
        ENTRY_POINTS[entry](loss=concretizing_loss)
    assert not isinstance(info.value, AttributeError)


# --------------------------------------------------------- RMSProp-SGLD's first steps at w*


def test_rmsprop_sgld_first_steps_from_w_star_stay_comparable_to_sgld():
    """At w* the loss gradient is 0, so v̂ = 0 and P = 1/stability: the first step was
    sqrt(1/stability) ≈ 3.2 times SGLD's at the same step size, far outside a posterior whose
    stationary preconditioner is ~30 times smaller. The first steps must stay on SGLD's scale."""
    dimension, curvature, nbeta, step_size = 2000, 1e4, 10.0, 1e-4

    def gradient(params):  # ∇L of L = curvature/2 ||w||², exact (no minibatch noise)
        return {"w": curvature * params["w"]}

    def displacements(sampler, num_steps=6):
        params = {"w": jnp.zeros(dimension)}
        state = sampler.init(params)
        radii = []
        for step in range(num_steps):
            updates, state = sampler.update(
                gradient(params), state, params, key=jax.random.key(step)
            )
            params = jax.tree.map(lambda w, u: w + u, params, updates)
            radii.append(float(jnp.linalg.norm(params["w"])))
        return np.array(radii)

    sgld_first = displacements(slt.samplers.sgld(step_size, nbeta), 1)[0]
    np.testing.assert_allclose(sgld_first, np.sqrt(step_size * dimension), rtol=0.05)
    rmsprop = displacements(slt.samplers.rmsprop_sgld(step_size, nbeta))
    assert np.all(np.isfinite(rmsprop))
    assert rmsprop.max() < 1.5 * sgld_first, rmsprop / sgld_first
