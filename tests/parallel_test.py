"""Tests for bal_jax.parallel: the ('data',) mesh helpers, and data-parallel training on 4 forced
host CPU devices matching one device (in a subprocess, so this suite keeps its single device)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec

from bal_jax import parallel


def test_make_mesh_covers_all_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.size == jax.device_count()
    with pytest.raises(ValueError):
        parallel.make_mesh([])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), multiple=st.integers(1, 9))
def test_pad_to_multiple(n, multiple):
    x = np.arange(n * 2).reshape(n, 2)
    padded, mask = parallel.pad_to_multiple(x, multiple)
    assert padded.shape[0] % multiple == 0 and padded.shape[0] - n < multiple
    np.testing.assert_array_equal(padded[mask], x)
    assert not padded[~mask].any() and mask.sum() == n


def test_shard_and_replicate_on_one_device_mesh():
    mesh = parallel.make_mesh(jax.devices()[:1])
    x = np.arange(12.0).reshape(6, 2)
    xs = parallel.shard_batch(x, mesh)
    assert xs.sharding.spec == PartitionSpec("data")
    np.testing.assert_array_equal(xs, x)
    tree = parallel.replicate({"a": np.ones(3), "k": jax.random.key(0)}, mesh)
    assert tree["a"].sharding.spec == PartitionSpec()
    assert jax.dtypes.issubdtype(tree["k"].dtype, jax.dtypes.prng_key)


def test_distributed_initialization_is_opt_in():
    assert parallel.maybe_initialize_distributed(enabled=False) is False


_FOUR_DEVICES = textwrap.dedent(
    """
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec

    jax.config.update("jax_numpy_rank_promotion", "raise")
    from bal_jax import parallel, train
    from bal_jax.models import VGG16

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (12, 32, 32, 1)).astype(np.uint8)
    y = rng.randint(0, 10, 12)
    norm = dict(mean=(0.4,), std=(0.3,))

    def run(mesh):
      model = VGG16(10, in_channels=1, width=1 / 16, rngs=nnx.Rngs(0))
      # Two steps of 8: the second has 4 real rows (one per device) and 4 padded ones.
      metrics = train.fit(jax.random.key(1), model, x, y, epochs=1, batch_size=8,
                          learning_rate=0.1, mesh=mesh, **norm)
      preds = train.predict(model, x[:10], batch_size=4, mesh=mesh, **norm)
      state = jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model, nnx.Not(nnx.RngState))))
      return metrics, state, preds

    mesh = parallel.make_mesh()
    m4, s4, p4 = run(mesh)
    m1, s1, p1 = run(None)
    assert m4["steps_per_epoch"] == m1["steps_per_epoch"] == 2
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    leaves4, leaves1 = jax.tree.leaves(s4), jax.tree.leaves(s1)
    assert len(leaves4) == len(leaves1) > 50
    for a, b in zip(leaves4, leaves1):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p4.logits_NC, p1.logits_NC, rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(p4.features_ND, p1.features_ND, rtol=1e-3, atol=2e-4)

    # The batch really is split over the four devices.
    idx, mask, key = train.epoch_order(jax.random.key(0), 0, num_images=12, batch_size=8,
                                       num_steps=2)
    batch, _, _, _ = train.take_batch(
        parallel.replicate(x, mesh), None, *parallel.replicate((idx, mask, key), mesh),
        jax.numpy.int32(0), batch_sharding=parallel.batch_sharding(mesh))
    assert batch.sharding.spec == PartitionSpec("data")
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 32, 32, 1)}

    for bad in (lambda: parallel.shard_batch(np.zeros((6, 2)), mesh),
                lambda: train.fit(jax.random.key(0), VGG16(10, in_channels=1, width=1 / 16,
                                  rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=6,
                                  learning_rate=0.1, mesh=mesh, **norm)):
      try:
        bad()
      except ValueError as e:
        assert "device" in str(e), e
      else:
        raise AssertionError("expected a ValueError")
    print("FOUR_DEVICES_OK")
    """
)


def test_four_device_training_matches_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0 and "FOUR_DEVICES_OK" in proc.stdout, proc.stderr[-4000:]
