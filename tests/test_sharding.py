"""Sharded sampling equals single-device sampling (8 simulated CPU devices, in a subprocess).

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, so the
check runs in a fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    import slt_jax as slt
    from jax.sharding import PartitionSpec
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import dln_loss

    assert jax.device_count() == 8, jax.devices()
    teacher = make_dln_teacher(jax.random.key(0), [5, 6, 4])
    data = make_dln_data(jax.random.key(1), teacher.params, 2048)
    sampler = slt.samplers.rmsprop_sgld(1e-7, slt.default_nbeta(2048), 1.0)
    kwargs = dict(key=jax.random.key(3), num_chains=8, num_draws=20, num_burnin=5,
                  observables={"w0": lambda p: p[0]})
    out = {}
    for name, batch_size, mesh_shape, data_axis in [
        ("chains8", 64, (8, 1), None),
        ("chains4_data2", 64, (4, 2), "data"),
        ("fullbatch_chains2_data4", None, (2, 4), "data"),
    ]:
        reference = slt.sample(dln_loss, teacher.params, data, sampler,
                               batch_size=batch_size, **kwargs)
        mesh = jax.make_mesh(mesh_shape, ("chains", "data"))
        sharded = slt.sample(dln_loss, teacher.params, data, sampler, batch_size=batch_size,
                             mesh=mesh, data_axis=data_axis, **kwargs)
        out[name] = dict(
            loss_max_abs_diff=float(np.max(np.abs(np.asarray(sharded.loss) - np.asarray(reference.loss)))),
            loss_scale=float(np.max(np.abs(np.asarray(reference.loss)))),
            observable_max_abs_diff=float(np.max(np.abs(
                np.asarray(sharded.observables["w0"]) - np.asarray(reference.observables["w0"])))),
            loss_sharded_over_chains=sharded.loss.sharding.spec == PartitionSpec("chains"),
            observable_sharded_over_chains=(
                sharded.observables["w0"].sharding.spec == PartitionSpec("chains")),
            loss_devices=len(sharded.loss.sharding.device_set),
            shards=len(sharded.loss.addressable_shards),
            shard_shape=list(sharded.loss.addressable_shards[0].data.shape),
        )
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_sample_equals_single_device_and_stays_sharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])
    for name, result in results.items():
        # same keys ⇒ same chains; data-parallel sums may reorder float additions
        assert result["loss_max_abs_diff"] <= 1e-5 * result["loss_scale"] + 1e-7, (name, result)
        assert result["observable_max_abs_diff"] <= 1e-5, (name, result)
        # the trace is not gathered to one device: one shard per device, split over chains
        assert result["loss_sharded_over_chains"], (name, result)
        assert result["observable_sharded_over_chains"], (name, result)
        assert result["loss_devices"] == 8, (name, result)
    assert results["chains8"]["shard_shape"] == [1, 20]
    assert results["chains4_data2"]["shard_shape"] == [2, 20]
