"""Data parallelism over every device with a ``('data',)`` mesh and ``NamedSharding`` (no pmap).

Usage::

  maybe_initialize_distributed(enabled=True)             # several processes: before any JAX call
  mesh = make_mesh()                                     # all devices of all processes
  x_BHWC = shard_batch(x_host_BHWC, mesh)                # split along 'data'
  params = replicate(params, mesh)                       # a full copy on every device

Under ``jax.jit`` with a batch sharded along ``'data'`` and replicated parameters, XLA partitions
the computation itself: every reduction over the batch (the loss mean, BatchNorm statistics,
gradients) becomes a cross-device all-reduce, so a data-parallel step computes the same numbers as
one device, up to float summation order.

Multi-host: every process calls the same functions with the same global (host) arrays; the
helpers build global ``jax.Array``s from each process's addressable shards, so each process feeds
only its share of a batch, and replicated outputs come back whole on every process::

  maybe_initialize_distributed(enabled=True, coordinator_address="10.0.0.1:1234",
                               num_processes=2, process_id=0, timeout_s=300)
  check_same_across_processes(json.dumps(config), what="configuration")
  if is_primary():
      write_results(...)
  barrier("results written")
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Seconds JAX's own connection timeout runs past ours (see maybe_initialize_distributed).
_JAX_TIMEOUT_GRACE_S = 30


# At most this many XLA:CPU devices by default: beyond it the per-device batches of the CPU
# presets get small and the gain flattens (4 devices on 2 cores measured slower than 2).
_MAX_DEFAULT_CPU_DEVICES = 8


def default_cpu_devices(cores: int | None = None) -> int:
    """One XLA:CPU device per core, rounded down to a power of two (every preset's batch
    sizes divide by it) and at most 8."""
    cores = cores or os.cpu_count() or 1
    count = 1
    while count * 2 <= min(cores, _MAX_DEFAULT_CPU_DEVICES):
        count *= 2
    return count


def use_cpu_devices(count: int | None = None, environ=os.environ) -> int | None:
    """Splits the CPU into `count` XLA devices (default `default_cpu_devices()`) before JAX
    starts its backend: the runner's mesh then shards every batch over them (on a 2-core CPU,
    2 devices trained 1.09x faster than one and inferred at 0.98x, benchmarks/host_devices.py).

    Left alone (returns None) when XLA_FLAGS already sets a device count: the user's choice,
    or `experiments.launch`'s. Only the CPU backend reads the flag, so GPU and TPU runs are
    unchanged. Must run before the first JAX computation.

    Returns:
      The device count set, or None.
    """
    if count is not None and int(count) < 1:
        raise ValueError(f"need at least 1 CPU device, got {count}")
    flags_now = environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags_now:
        return None
    from jax._src import xla_bridge  # the backends exist once anything ran

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("use_cpu_devices must run before JAX's first computation")
    count = default_cpu_devices() if count is None else int(count)
    environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()
    return count


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'``.

    Args:
      devices: devices to use; defaults to ``jax.devices()`` (every device of every process).

    Returns:
      The mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis along ``'data'``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def pad_to_multiple(x_N: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads the leading axis with zeros up to a multiple (e.g. the device count).

    Args:
      x_N: array with a leading batch axis of length N.
      multiple: target multiple (>= 1).

    Returns:
      ``(padded, mask)``: the padded array and a bool mask of the real rows.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    x_N = np.asarray(x_N)
    n = x_N.shape[0]
    total = -(-n // multiple) * multiple
    pad = np.zeros((total - n, *x_N.shape[1:]), x_N.dtype)
    return np.concatenate([x_N, pad]), np.arange(total) < n


def shard_batch(x_B, mesh: Mesh) -> jax.Array:
    """Places a global batch on the mesh, split along ``'data'``.

    Args:
      x_B: array with a leading batch axis; every process passes the same global array.
      mesh: a ``('data',)`` mesh.

    Returns:
      A global ``jax.Array`` sharded along the batch axis.
    """
    n = np.shape(x_B)[0] if np.ndim(x_B) else None
    if n is None or n % mesh.size:
        raise ValueError(
            f"batch of {n} rows cannot be split over {mesh.size} devices: use a batch size that "
            "is a multiple of the device count, or pad it with pad_to_multiple"
        )
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(x_B, sharding)
    x_B = np.asarray(x_B)
    return jax.make_array_from_callback(x_B.shape, sharding, lambda idx: x_B[idx])


def _replicate_leaf(x, sharding: NamedSharding):
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _replicate_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree, mesh: Mesh):
    """Puts a full copy of every array leaf of ``tree`` on every device of the mesh.

    Args:
      tree: pytree of arrays (parameters, optimizer state, a data set).
      mesh: the mesh.

    Returns:
      The same pytree of replicated global ``jax.Array``s.
    """
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


class DistributedError(RuntimeError):
    """The processes of a multi-process run cannot work together (one sentence says why)."""


def maybe_initialize_distributed(
    *,
    enabled: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Calls ``jax.distributed.initialize`` for a multi-process run, when asked.

    Must run before anything else touches a JAX backend. With only ``enabled=True`` JAX detects the
    cluster (Cloud TPU, SLURM, Open MPI...); pass the other arguments for a hand-made cluster (e.g.
    ``python -m experiments.launch``). CPU processes reduce across processes through gloo.

    A process whose peers do not all connect within ``timeout_s`` (an unreachable coordinator,
    a process that never started) prints one sentence to stderr and exits with status 1: JAX
    itself would abort it a little later with a C++ fatal error that Python cannot catch.

    Args:
      enabled: whether to initialize (the runner's ``--distributed`` flag).
      coordinator_address: ``host:port`` of process 0.
      num_processes: number of processes.
      process_id: this process's index.
      timeout_s: how long to wait for every process to reach the coordinator.

    Returns:
      True if it initialized the distributed runtime.

    Raises:
      DistributedError: JAX refused the arguments.
    """
    if not enabled:
        return False
    kwargs = {
        k: v
        for k, v in (
            ("coordinator_address", coordinator_address),
            ("num_processes", num_processes),
            ("process_id", process_id),
        )
        if v is not None
    }
    # Only the CPU backend reads it: cross-process collectives of CPU devices (GPUs and TPUs
    # bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = coordinator_address or "the detected coordinator"
    watchdog = threading.Timer(
        timeout_s,
        _exit_with,
        args=(
            f"error: the processes did not all reach the coordinator at {where} within "
            f"{timeout_s}s: start every process with the same coordinator address and process "
            "count, and check that process 0 runs there",
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            **kwargs, initialization_timeout=timeout_s + _JAX_TIMEOUT_GRACE_S
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise DistributedError(f"jax.distributed.initialize refused the arguments: {e}") from None
    finally:
        watchdog.cancel()
    return True


def shutdown_distributed() -> None:
    """Ends a `jax.distributed` run (a no-op otherwise) while the interpreter is whole.

    Every process calls it at the end: JAX's own exit hook runs during interpreter shutdown,
    where a still-live checkpointer thread or a peer's late barrier aborts the process with a C++
    fatal error after its results were written.
    """
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def _exit_with(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)  # the main thread is blocked inside JAX's connect call


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always true on one process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called `name` (a no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_same_across_processes(
    text: str, *, what: str, fix: str = "start every process with the same flags"
) -> None:
    """Refuses a run whose processes were given different inputs (a collective: all call it).

    Args:
      text: this process's view of something every process must agree on (e.g. the
        configuration as JSON); only its SHA-256 travels between processes.
      what: what `text` is, for the error message.
      fix: what to do about a difference, for the error message.

    Raises:
      DistributedError: some process's `text` differs from process 0's.
    """
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint32)
    all_PD = multihost_utils.process_allgather(digest)
    differ = [p for p in range(all_PD.shape[0]) if not np.array_equal(all_PD[p], all_PD[0])]
    if differ:
        raise DistributedError(
            f"process(es) {differ} have a different {what} than process 0: {fix}"
        )
