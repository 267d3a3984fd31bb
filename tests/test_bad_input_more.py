"""Silent or misleading outcomes of bad input (issue 17, item 6): each one now raises a clear
error (or warns) that says what was expected, before anything is compiled where it can.

``raises_early`` asserts, besides the type and message, that the sampling program was never
traced, and for the one-call estimators that nothing at all was compiled
(``slt.count_compilations``): the check ran before the calibration.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import sampling
from slt_jax._checks import check_loss_fn
from slt_jax.estimators.influence import bif_accumulator, loss_kernel_accumulator

NUM_EXAMPLES = 16


def loss_fn(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] + params["b"] - y) ** 2


def make_problem():
    x = np.linspace(-1.0, 1.0, NUM_EXAMPLES * 2, dtype=np.float32).reshape(NUM_EXAMPLES, 2)
    y = np.sin(np.arange(NUM_EXAMPLES, dtype=np.float32))
    design = np.concatenate([x, np.ones((NUM_EXAMPLES, 1), np.float32)], axis=1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0].astype(np.float32)  # w* a minimum
    params = {"w": jnp.asarray(solution[:2]), "b": jnp.asarray(solution[2])}
    return params, (x, y)


PARAMS, DATA = make_problem()
SAMPLE = dict(key=jax.random.key(0), num_chains=2, num_draws=6, batch_size=4)


def sgld(**options):
    return slt.samplers.sgld(1e-4, 10.0, **options)


def estimate_llc(**overrides):
    arguments = dict(key=jax.random.key(0), num_chains=2, num_draws=8, batch_size=4)
    arguments.update(overrides)
    return slt.estimate_llc(arguments.pop("loss_fn", loss_fn), arguments.pop("params", PARAMS),
                            arguments.pop("data", DATA), **arguments)


def estimate_bif(query=DATA, **overrides):
    arguments = dict(key=jax.random.key(0), num_chains=2, num_draws=8, batch_size=4)
    arguments.update(overrides)
    return slt.estimate_bif(loss_fn, PARAMS, DATA, query, **arguments)


@contextlib.contextmanager
def raises_early(exception, match, compiled_nothing=False):
    """``pytest.raises`` that also asserts the sampling program was never traced and, with
    ``compiled_nothing``, that nothing at all was compiled (no calibration ran)."""
    programs_before = sampling._run_block._cache_size()
    with slt.count_compilations() as counter:
        with pytest.raises(exception, match=match):
            yield
    assert sampling._run_block._cache_size() == programs_before, "the error came after tracing"
    if compiled_nothing:
        assert counter.count == 0, f"{counter.count} compilation(s) before the error"


@pytest.fixture(scope="module")
def trace():
    return slt.sample(loss_fn, PARAMS, DATA, sgld(), **SAMPLE)


# ------------------------------------------------------------------------------------ masks


def test_a_float_mask_that_is_not_zero_or_one_is_refused():
    """mask=0.5 used to scale the calibration's curvature (LLC 2.16 -> 1.83) silently."""
    half = {"w": 0.5, "b": True}
    with raises_early(TypeError, r"mask leaf at \['w'\] must be boolean .* such as 0.5"):
        slt.sample(loss_fn, PARAMS, DATA, sgld(mask=half), **SAMPLE)
    with raises_early(TypeError, r"must be boolean .* such as 0.5", compiled_nothing=True):
        estimate_llc(mask=half)
    numeric = {"w": np.array([1.0, 0.0]), "b": 1}  # 0/1 numbers are a boolean mask
    assert sgld(mask=numeric).init(PARAMS).mask["w"].tolist() == [1.0, 0.0]


def test_an_all_false_mask_is_the_same_clear_error_in_every_estimator():
    """It gave LLC 0.0 in llc_over_checkpoints and a 'max_curvature' error in estimate_llc."""
    nothing = {"w": False, "b": np.zeros((), bool)}
    match = r"mask selects no coordinate to sample"
    with raises_early(ValueError, match, compiled_nothing=True):
        estimate_llc(mask=nothing)
    with raises_early(ValueError, match, compiled_nothing=True):
        estimate_llc(sampler=sgld(mask=nothing))
    checkpoints = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), PARAMS)
    with raises_early(ValueError, match):
        slt.llc_over_checkpoints(loss_fn, checkpoints, DATA, key=jax.random.key(0),
                                 masks={"nothing": nothing}, num_draws=4)


def test_head_masks_default_to_the_zoo_transformers_head_axis():
    """The zoo's per-head kernels are (H, d, d_head) and (H, d_head, d): the default used to be
    axis=-1, a d_head slice of the queries and a d_model slice of the outputs."""
    from flax import nnx

    from slt_jax.models import zoo

    heads, d_model, d_head = 4, 8, 2
    model = nnx.eval_shape(lambda: zoo.AttentionOnlyTransformer(  # shapes only: no compute
        8, 6, d_model=d_model, num_layers=1, num_heads=heads, d_head=d_head, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # from_nnx's paths
    default = slt.masks.head(params, "blocks/0/attn/*", head=1)
    explicit = slt.masks.head(params, "blocks/0/attn/*", head=1, axis=0)
    for got, want in zip(jax.tree.leaves(default), jax.tree.leaves(explicit)):
        np.testing.assert_array_equal(got, want)
    assert slt.masks.count(default, params) == 4 * d_model * d_head  # q, k, v, output of head 1
    query = [m for p, m in zip(slt.masks.paths(params), jax.tree.leaves(default))
             if p.endswith("attn/query")][0]
    assert query[1].all() and not np.delete(query, 1, axis=0).any()
    # with num_heads the only axis of that length is found
    with_heads = slt.masks.head(params, "blocks/0/attn/*", head=1, num_heads=heads)
    assert slt.masks.count(with_heads, params) == 4 * d_model * d_head
    with pytest.raises(ValueError, match=r"different leading lengths.*pass num_heads= and axis="):
        slt.masks.head(params, ["blocks/0/attn/*", "embedding"], head=1)
    square = {"qkv": np.zeros((8, 8))}  # (d_model, heads * d_head) with d_model = 8: ambiguous
    with pytest.raises(ValueError, match=r"cannot tell the head axis.*pass axis="):
        slt.masks.head(square, "qkv", head=0, num_heads=4)


# ----------------------------------------------------------------------- init_loss and draws


@pytest.mark.filterwarnings("ignore:split R-hat", "ignore:negative LLC")  # 6 draws: noise
def test_init_loss_is_checked_not_echoed_by_the_paired_estimator(trace):
    """The paired estimator subtracts trace.center_loss; a given init_loss used to be reported
    as if it had been used."""
    center = float(np.mean(np.asarray(trace.center_loss, np.float64)))
    truth = float(slt.evaluate_loss(loss_fn, PARAMS, DATA))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "init_loss")
        agreeing = slt.llc(trace, init_loss=truth)  # L_n(w*): agrees, no warning
    assert agreeing.init_loss == truth
    with pytest.warns(RuntimeWarning, match=r"init_loss=5 is not used by the paired estimator"):
        wrong = slt.llc(trace, init_loss=5.0)
    assert wrong.mean == agreeing.mean and wrong.init_loss == pytest.approx(center)
    with pytest.warns(RuntimeWarning, match="negative LLC"):
        plain = slt.llc(trace, init_loss=5.0, paired=False)  # the plain estimator uses it
    assert plain.init_loss == 5.0 and plain.mean < 0


def test_one_draw_is_refused_before_anything_runs():
    """num_draws=1 gave LLC 0 ± nan and an all-zero BIF."""
    for run in (estimate_llc, estimate_bif):
        with raises_early(ValueError, r"num_draws must be an int >= 2, got 1",
                          compiled_nothing=True):
            run(num_draws=1)
    with pytest.raises(ValueError, match=r"shape \(2, 1\).*two draws per chain"):
        slt.llc(np.zeros((2, 1)), nbeta=1.0, init_loss=0.0)


def test_with_no_burn_in_the_first_draw_is_not_w_star(trace):
    """The first draw used to be w* itself (loss - center_loss exactly 0 in every run)."""
    first = np.asarray(trace.loss)[:, 0] - np.asarray(trace.center_loss)[:, 0]
    assert np.all(first != 0.0)
    assert trace.hyperparameters["num_burnin"] == 1
    assert int(trace.state.step) == 1 + SAMPLE["num_draws"]
    # a continued run starts where the last one stopped, a state no draw recorded: no shift
    more = slt.sample(loss_fn, PARAMS, DATA, sgld(), initial_state=trace.state, **SAMPLE)
    assert more.hyperparameters["num_burnin"] == 0
    assert int(more.state.step) == 1 + 2 * SAMPLE["num_draws"]


# -------------------------------------------------------------------- kernel and BIF values


def test_a_non_finite_loss_names_its_row_and_column():
    losses = np.random.default_rng(0).normal(size=(2, 20, 4)).astype(np.float32)
    losses[1, 7, 2] = np.nan
    with pytest.warns(RuntimeWarning, match=r"loss kernel has 7 non-finite .* query row\(s\) "
                                            r"\[2\] and 1 query column\(s\) \[2\]"):
        slt.loss_kernel(losses)
    with pytest.warns(RuntimeWarning, match=r"BIF has .* 0 train row\(s\) \[\] and 1 query "
                                            r"column\(s\) \[2\]"):
        slt.bif(np.nan_to_num(losses), losses, beta=0.1)
    # the streaming forms warn when sample() finalizes them (on the host, after the program)
    block = {"train": losses, "query": losses}
    shapes = {name: jax.ShapeDtypeStruct((2, 4), np.float32) for name in block}
    for accumulator, what in ((bif_accumulator("train", "query"), "BIF"),
                              (loss_kernel_accumulator("query"), "loss kernel")):
        state = accumulator.update(accumulator.init(shapes), block, np.ones((2, 20), np.float32))
        with pytest.warns(RuntimeWarning, match=rf"{what} has .* \[2\]"):
            accumulator.finalize(state)


def test_an_overflowing_beta_or_nbeta_is_refused():
    draws = np.ones((2, 5, 3), np.float32)
    with raises_early(ValueError, r"beta=1e\+39 overflows float32"):
        slt.bif(draws, draws, beta=1e39)
    with raises_early(ValueError, r"beta=1e\+39 overflows float32"):
        bif_accumulator("a", "b", beta=1e39)
    with raises_early(ValueError, r"nbeta must be finite in float32"):
        slt.sample(loss_fn, PARAMS, DATA, slt.samplers.sgld(1e-4, 1e39), **SAMPLE)


def test_a_square_loss_that_follows_the_batch_is_not_taken_as_per_token():
    def broadcasting_slip(params, batch):  # (b, 1) predictions minus (b,) targets: (b, b)
        x, y = batch  # (written out: the tests raise on implicit rank promotion)
        return 0.5 * ((x @ params["w"])[:, None] + params["b"] - y[None, :]) ** 2

    with raises_early(ValueError, r"shape \(4, 4\) .* and \(5, 5\) for 5: .* broadcasting"):
        slt.sample(broadcasting_slip, PARAMS, DATA, sgld(), **SAMPLE)

    def four_tokens(params, batch):  # per-token losses with T = 4 = b: fine
        return jnp.broadcast_to(loss_fn(params, batch)[:, None], (batch[0].shape[0], 4))

    assert check_loss_fn(four_tokens, PARAMS, DATA, 4) == (4, 4)


# ---------------------------------------------------------------- errors that say what is wrong


@pytest.mark.parametrize("nbeta", [-10.0, float("nan")])
def test_a_bad_nbeta_is_named(nbeta):
    """nbeta=-10 blamed the localization, nbeta=nan the calibration's max_curvature."""
    for run in (estimate_llc, estimate_bif):
        with raises_early(ValueError, r"nbeta must be finite and > 0", compiled_nothing=True):
            run(nbeta=nbeta)


def test_empty_sets_zero_draws_and_zero_chains_are_named():
    empty = jax.tree.map(lambda leaf: leaf[:0], DATA)
    with raises_early(ValueError, r"has no examples"):  # was a ZeroDivisionError
        slt.sample(loss_fn, PARAMS, DATA, sgld(), query_data={"probe": empty}, **SAMPLE)
    with raises_early(ValueError, r"has no examples"):
        estimate_bif(query=empty)
    no_draws = np.zeros((2, 0, 3), np.float32)  # was "integer modulo by zero"
    with raises_early(ValueError, r"needs at least one chain and two draws"):
        slt.loss_kernel(no_draws)
    with raises_early(ValueError, r"needs at least one chain and two draws"):
        slt.bif(no_draws, no_draws)
    for run in (estimate_llc, estimate_bif):  # was a reduction error from the calibration
        with raises_early(ValueError, r"num_chains must be an int >= 1, got 0",
                          compiled_nothing=True):
            run(num_chains=0)
    no_checkpoints = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None][:0], PARAMS)
    with raises_early(ValueError, r"no checkpoint"):  # was an IndexError
        slt.llc_over_checkpoints(loss_fn, no_checkpoints, DATA, key=jax.random.key(0))


def test_query_data_in_the_wrong_form_is_named():
    with raises_early(TypeError, r"query_data must be a dict \{name: data pytree"):
        slt.sample(loss_fn, PARAMS, DATA, sgld(), query_data=DATA, **SAMPLE)
    with raises_early(TypeError, r"query_data must be a data pytree with the structure of "
                                 r"train_data.*dict with keys \['probe'\]"):
        estimate_bif(query={"probe": DATA})


# ---------------------------------------------------------------------------------- devices

DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, time
    import jax, jax.numpy as jnp, numpy as np
    import slt_jax as slt

    def loss_fn(params, batch):
        x, y = batch
        return 0.5 * (x @ params["w"] + params["b"] - y) ** 2

    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2)
    data = (x, np.zeros(16, np.float32))
    devices = jax.devices()
    out = {}
    split = {"w": jax.device_put(jnp.ones(2), devices[0]),
             "b": jax.device_put(jnp.zeros(()), devices[1])}
    try:
        slt.sample(loss_fn, split, data, slt.samplers.sgld(1e-4, 10.0), key=jax.random.key(0),
                   num_chains=2, num_draws=3)
    except Exception as error:
        out["split"] = [type(error).__name__, str(error)]
    elsewhere = jax.device_put(data, devices[2])  # the data on another device than params
    try:
        slt.sample(loss_fn, jax.device_put(split, devices[0]), elsewhere,
                   slt.samplers.sgld(1e-4, 10.0), key=jax.random.key(0), num_chains=2,
                   num_draws=3)
    except Exception as error:
        out["data"] = [type(error).__name__, str(error)]
    mesh = jax.make_mesh((2,), ("chains",), devices=devices[:2])
    params = {"w": jnp.ones(2), "b": jnp.zeros(())}
    with slt.count_compilations() as counter:
        try:
            slt.estimate_llc(loss_fn, params, data, key=jax.random.key(0), num_chains=3,
                             num_draws=8, mesh=mesh)
        except Exception as error:
            out["mesh"] = [type(error).__name__, str(error)]
    out["mesh_compilations"] = counter.count
    print("RESULT" + json.dumps(out))
    """
)


def test_devices_and_meshes_are_checked_up_front():
    """Params (or params and data) on different devices gave a raw JAX error; num_chains=3 on a
    2-device mesh errored only after the calibration."""
    environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    completed = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT], env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    assert out["split"][0] == "ValueError"
    assert "params leaves are committed to different devices" in out["split"][1]
    assert out["data"][0] == "ValueError"
    assert "params, data and query_data leaves are committed to different" in out["data"][1]
    assert out["mesh"] == ["ValueError", "num_chains (3) must be divisible by the size of mesh "
                                         "axis 'chains' (2)"]
    assert out["mesh_compilations"] == 0
