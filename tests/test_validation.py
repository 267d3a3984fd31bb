"""Bad input gets a clear error before compilation (DESIGN.md principle 6).

Every test checks three things: the exception type, a fragment of the message that says what
was expected (``pytest.raises(..., match=...)``), and that the sampling program was never
traced (the sampling program's jit cache did not grow), i.e. the error came from validation and
not from somewhere inside ``jit``.
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
SAMPLER_FACTORIES = slt.samplers.SAMPLERS


def loss_fn(params, batch):
    x, y = batch
    prediction = x @ params["w"] + params["b"]
    return 0.5 * (prediction - y) ** 2


def make_problem():
    x = jnp.linspace(-1.0, 1.0, NUM_EXAMPLES * 2, dtype=jnp.float32).reshape(NUM_EXAMPLES, 2)
    y = jnp.linspace(0.0, 1.0, NUM_EXAMPLES, dtype=jnp.float32)
    params = {"w": jnp.array([0.5, -0.25], jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return params, (x, y)


def good_arguments(**overrides):
    params, data = make_problem()
    arguments = dict(
        loss_fn=loss_fn,
        params=params,
        data=data,
        sampler=slt.samplers.sgld(step_size=1e-4, nbeta=10.0),
        key=jax.random.key(0),
        num_chains=2,
        num_draws=3,
        batch_size=4,
    )
    arguments.update(overrides)
    return arguments


def call_sample(arguments):
    arguments = dict(arguments)
    return slt.sample(
        arguments.pop("loss_fn"),
        arguments.pop("params"),
        arguments.pop("data"),
        arguments.pop("sampler"),
        **arguments,
    )


@contextlib.contextmanager
def raises_before_compilation(exception, match):
    """``pytest.raises`` that also asserts the sampling program was not traced or compiled."""
    programs_before = sampling._run_block._cache_size()
    with pytest.raises(exception, match=match):
        yield
    assert sampling._run_block._cache_size() == programs_before, "the error came after tracing"


def test_good_arguments_run():
    """The baseline used by every test below is valid (so each failure is due to its change)."""
    trace = call_sample(good_arguments())
    assert trace.loss.shape == (2, 3)
    assert np.all(np.isfinite(np.asarray(trace.loss)))


# ---------------------------------------------------------------------------- batch and data


def test_batch_size_larger_than_num_examples():
    with raises_before_compilation(ValueError, r"batch_size must be at most .* n=8, got 9"):
        call_sample(good_arguments(batch_size=NUM_EXAMPLES + 1))


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_not_positive(batch_size):
    with raises_before_compilation(ValueError, r"batch_size must be an int >= 1"):
        call_sample(good_arguments(batch_size=batch_size))


def test_batch_size_not_an_int():
    with raises_before_compilation(TypeError, r"batch_size must be an int >= 1, got 2\.5"):
        call_sample(good_arguments(batch_size=2.5))


def test_data_leaves_with_different_leading_axes():
    params, (x, y) = make_problem()
    with raises_before_compilation(ValueError, r"share the leading \(example\) axis length n"):
        call_sample(good_arguments(data=(x, y[:-1])))


def test_data_leaves_with_different_leading_axes_names_the_lengths():
    params, (x, y) = make_problem()
    data = {"x": x, "y": y[:5]}
    with raises_before_compilation(ValueError, r"\['x'\]: 8, \['y'\]: 5"):
        call_sample(good_arguments(data=data))


def test_scalar_data_leaf():
    params, (x, y) = make_problem()
    with raises_before_compilation(ValueError, r"is a scalar; every data leaf needs a leading"):
        call_sample(good_arguments(data=(x, jnp.float32(1.0))))


def test_empty_data():
    with raises_before_compilation(ValueError, r"data must be a pytree with at least one array"):
        call_sample(good_arguments(data={}))


# ---------------------------------------------------------------------------------- params


def test_integer_params():
    params, _ = make_problem()
    params = {"w": jnp.array([1, 2], jnp.int32), "b": params["b"]}
    with raises_before_compilation(TypeError, r"\['w'\] has dtype int32; expected a floating"):
        call_sample(good_arguments(params=params))


def test_empty_params():
    with raises_before_compilation(ValueError, r"params must be a non-empty pytree of float"):
        call_sample(good_arguments(params={}))


# ------------------------------------------------------------------- sampler hyperparameters


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
@pytest.mark.parametrize("step_size", [0.0, -1e-3, float("nan"), float("inf")])
def test_step_size_not_positive(name, step_size):
    with raises_before_compilation(ValueError, r"step_size must be finite and > 0"):
        SAMPLER_FACTORIES[name](step_size=step_size, nbeta=10.0)


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
@pytest.mark.parametrize("nbeta", [0.0, -5.0])
def test_nbeta_not_positive(name, nbeta):
    with raises_before_compilation(ValueError, r"nbeta must be finite and > 0"):
        SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=nbeta)


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_negative_localization(name):
    with raises_before_compilation(ValueError, r"localization must be finite and >= 0"):
        SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0, localization=-0.5)


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_zero_localization_is_allowed(name):
    sampler = SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0, localization=0.0)
    assert sampler.hyperparameters["localization"] == 0.0


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_replace_validates_too(name):
    sampler = SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0)
    with raises_before_compilation(ValueError, r"step_size must be finite and > 0"):
        sampler.replace(step_size=-1.0)
    with raises_before_compilation(TypeError, r"has no hyperparameter\(s\) \['stepsize'\]"):
        sampler.replace(stepsize=1.0)


@pytest.mark.parametrize(
    "name, option, value, message",
    [
        ("sgld", "temperature", -1.0, r"temperature must be finite and >= 0"),
        ("rmsprop_sgld", "decay", 1.0, r"decay must be in \[0, 1\)"),
        ("rmsprop_sgld", "stability", 0.0, r"stability must be finite and > 0"),
        ("adam_sgld", "first_decay", -0.1, r"first_decay must be in \[0, 1\)"),
        ("adam_sgld", "second_decay", 1.5, r"second_decay must be in \[0, 1\)"),
        ("adam_sgld", "stability", -1.0, r"stability must be finite and > 0"),
        ("sgnht", "diffusion", -0.01, r"diffusion must be finite and >= 0"),
        ("sghmc", "friction", 0.0, r"friction must be finite and > 0"),
        ("sghmc", "friction", 1.5, r"friction must be in \(0, 1\]"),
    ],
)
def test_sampler_options_out_of_range(name, option, value, message):
    with raises_before_compilation(ValueError, message):
        SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0, **{option: value})


def test_sghmc_friction_above_one():
    with raises_before_compilation(ValueError, r"friction must be in \(0, 1\]"):
        slt.samplers.sghmc(step_size=1e-3, nbeta=10.0, friction=1.5)


def test_not_a_sampler():
    with raises_before_compilation(TypeError, r"sampler must be an optax"):
        call_sample(good_arguments(sampler="sgld"))


# ------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_mask_with_wrong_structure(name):
    sampler = SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0, mask={"w": True})
    with raises_before_compilation(ValueError, r"mask must be a pytree of booleans with the same"):
        call_sample(good_arguments(sampler=sampler))


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_mask_with_wrong_leaf_shape(name):
    mask = {"w": jnp.array([True, False, True]), "b": True}
    sampler = SAMPLER_FACTORIES[name](step_size=1e-3, nbeta=10.0, mask=mask)
    with raises_before_compilation(
        ValueError, r"mask leaf at \['w'\] has shape \(3,\); expected \(\) .* shape \(2,\)"
    ):
        call_sample(good_arguments(sampler=sampler))


def test_mask_with_non_boolean_dtype():
    mask = {"w": np.array(["a", "b"]), "b": True}
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=10.0, mask=mask)
    with raises_before_compilation(TypeError, r"mask leaf at \['w'\] must be boolean"):
        call_sample(good_arguments(sampler=sampler))


# ---------------------------------------------------------------------------------- loss_fn


def scalar_mean_loss(params, batch):
    return jnp.mean(loss_fn(params, batch))


def three_dimensional_loss(params, batch):
    losses = loss_fn(params, batch)
    return jnp.broadcast_to(losses[:, None, None], losses.shape + (3, 2))


def wrong_leading_axis_loss(params, batch):
    return loss_fn(params, batch)[:2]


def transposed_token_loss(params, batch):
    losses = loss_fn(params, batch)
    return jnp.broadcast_to(losses[None, :], (5,) + losses.shape)


@pytest.mark.parametrize(
    "bad_loss_fn, shape",
    [
        (scalar_mean_loss, r"\(\)"),
        (three_dimensional_loss, r"\(4, 3, 2\)"),
        (wrong_leading_axis_loss, r"\(2,\)"),
        (transposed_token_loss, r"\(5, 4\)"),
    ],
    ids=["scalar-mean", "batch-tokens-2", "wrong-leading-axis", "tokens-first"],
)
def test_loss_fn_with_wrong_shape(bad_loss_fn, shape):
    expected = (
        r"loss_fn must return per-example losses of shape \(batch,\) or \(batch, tokens\); "
        rf"for a batch of 4 examples it returned shape {shape}"
    )
    with raises_before_compilation(ValueError, expected):
        call_sample(good_arguments(loss_fn=bad_loss_fn))


def test_loss_fn_with_wrong_shape_full_batch():
    """With ``batch_size=None`` the expected leading axis is ``n``."""
    with raises_before_compilation(ValueError, r"for a batch of 8 examples it returned shape \(\)"):
        call_sample(good_arguments(loss_fn=scalar_mean_loss, batch_size=None))


def test_loss_fn_returning_integers():
    def integer_loss(params, batch):
        return jnp.round(loss_fn(params, batch)).astype(jnp.int32)

    with raises_before_compilation(TypeError, r"loss_fn must return floating-point losses"):
        call_sample(good_arguments(loss_fn=integer_loss))


def test_loss_fn_returning_a_tuple():
    def tuple_loss(params, batch):
        losses = loss_fn(params, batch)
        return losses, losses

    with raises_before_compilation(ValueError, r"loss_fn must return one array"):
        call_sample(good_arguments(loss_fn=tuple_loss))


def test_loss_fn_not_callable():
    with raises_before_compilation(TypeError, r"loss_fn must be callable"):
        call_sample(good_arguments(loss_fn="mse"))


def test_loss_fn_that_fails_says_how_it_was_called():
    def failing_loss(params, batch):
        x, y = batch
        return x @ params["w"][:1] - y  # (4, 2) @ (1,): a shape error

    with raises_before_compilation(TypeError, r"raised by loss_fn\(params, batch\) on a batch of 4"):
        call_sample(good_arguments(loss_fn=failing_loss))


def test_a_tracer_error_in_loss_fn_keeps_its_type_and_message():
    """Re-raising as ``type(error)(message)`` turned JAX's tracer errors into an
    ``AttributeError``; the error must keep its type and JAX's own explanation."""

    def python_branch_loss(params, batch):
        x, y = batch
        residual = x @ params["w"] - y
        if residual[0] > 0:  # a Python branch on a traced value
            return residual**2
        return -residual

    with raises_before_compilation(jax.errors.TracerBoolConversionError, r"Attempted boolean"):
        call_sample(good_arguments(loss_fn=python_branch_loss))


# ------------------------------------------------------------------------- counts and keys


@pytest.mark.parametrize("argument", ["num_chains", "num_draws", "steps_per_draw"])
def test_counts_must_be_positive(argument):
    with raises_before_compilation(ValueError, rf"{argument} must be an int >= 1, got 0"):
        call_sample(good_arguments(**{argument: 0}))


def test_num_burnin_must_be_non_negative():
    with raises_before_compilation(ValueError, r"num_burnin must be an int >= 0, got -1"):
        call_sample(good_arguments(num_burnin=-1))


def test_num_chains_not_an_int():
    with raises_before_compilation(TypeError, r"num_chains must be an int >= 1, got 2\.0"):
        call_sample(good_arguments(num_chains=2.0))


def test_key_given_as_an_int():
    with raises_before_compilation(TypeError, r"key must be a JAX PRNG key .* got the int 0"):
        call_sample(good_arguments(key=0))


def test_key_given_as_a_float_array():
    with raises_before_compilation(TypeError, r"key must be a JAX PRNG key .* dtype float32"):
        call_sample(good_arguments(key=jnp.zeros(2, jnp.float32)))


def test_wrong_number_of_per_chain_keys():
    keys = jax.random.split(jax.random.key(0), 3)
    with raises_before_compilation(
        ValueError, r"one key or an array of num_chains=2 keys, got shape \(3,\)"
    ):
        call_sample(good_arguments(key=keys))


# ------------------------------------------------------------------------------ observables


def test_observables_not_callables():
    with raises_before_compilation(TypeError, r"observables must map str names to callables"):
        call_sample(good_arguments(observables={"w": "params['w']"}))


def test_observables_not_a_mapping():
    with raises_before_compilation(TypeError, r"observables must be a dict"):
        call_sample(good_arguments(observables=[lambda p: p["w"]]))


def test_observable_that_fails_names_itself():
    def bad_observable(params):
        return params["missing"]

    with raises_before_compilation(KeyError, r"raised by observable 'bad' on params"):
        call_sample(good_arguments(observables={"bad": bad_observable}))


# -------------------------------------------------------------------------------------- llc


@pytest.mark.parametrize("nbeta", [0.0, -1.0, float("nan")])
def test_llc_nbeta_not_positive(nbeta):
    losses = np.ones((2, 5))
    with pytest.raises(ValueError, match=r"nbeta must be finite and > 0"):
        slt.llc(losses, nbeta=nbeta, init_loss=0.5)


def test_llc_init_loss_not_finite():
    with pytest.raises(ValueError, match=r"init_loss must be finite"):
        slt.llc(np.ones((2, 5)), nbeta=1.0, init_loss=float("nan"))


def test_llc_losses_with_wrong_rank():
    with pytest.raises(ValueError, match=r"losses must have shape \(num_chains, num_draws\)"):
        slt.llc(np.ones(5), nbeta=1.0, init_loss=0.5)


def test_llc_warns_when_the_trace_is_still_drifting():
    rng = np.random.default_rng(0)
    stationary = 1.0 + 0.1 * rng.standard_normal((4, 2000))
    drifting = stationary + np.linspace(0.0, 0.5, 2000)[None, :]  # a slow rise over the run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = slt.llc(stationary, nbeta=10.0, init_loss=0.0)
    assert quiet.rhat < 1.01
    with pytest.warns(RuntimeWarning, match=r"split R-hat .* not stationary"):
        drifting_result = slt.llc(drifting, nbeta=10.0, init_loss=0.0)
    assert drifting_result.rhat > 1.05


def test_estimate_llc_rejects_unknown_sampler_options():
    params, data = make_problem()
    with raises_before_compilation(ValueError, r"sampler_options \['momentum'\] are not options"):
        slt.estimate_llc(
            loss_fn, params, data, key=jax.random.key(0), sampler="sghmc",
            sampler_options={"momentum": 0.9},
        )
    with raises_before_compilation(TypeError, r"nbeta/step_size/sampler_options either"):
        slt.estimate_llc(
            loss_fn, params, data, key=jax.random.key(0),
            sampler=slt.samplers.sghmc(1e-4, 10.0), sampler_options={"friction": 0.3},
        )
