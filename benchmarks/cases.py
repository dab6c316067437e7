"""The sides of every comparison: bal_jax's real code path and its reference, on the same data.

A *case* is a JSON-able dict (``{"bench": "kmeans", "n": 50000, ...}``); ``build(case, side)``
prepares one side (data, model, device transfer: all untimed) and returns a ``Side`` whose
``run()`` does one unit of timed work and blocks until it is done. ``benchmarks.worker`` runs
the sides of a case alternately (timing) or one side alone (peak memory).

Sides:
  train   bal_jax: ``bal_jax.train.fit`` for one epoch of ``steps`` batches (the library's
          training path: augment + normalise + SGD step, jitted), each batch sharded over
          every device (one per core on a CPU, as the runner);
          torch / torch_cl: the authors' VGG16-BN step in PyTorch (NCHW / channels_last),
          with the same augmentation done batched in torch.
  infer   bal_jax: ``bal_jax.train.predict`` + softmax, as the active-learning loop calls it;
          torch / torch_cl: eval-mode forward in batches, softmax, features.
  kmeans  bal_jax: ``bal_jax.kmeans.kmeans(n_init=1)`` + ``cdd``; sklearn: ``KMeans(k-means++,
          n_init=1)`` + ``transform`` + the two smallest distances; matmul: the machine's
          limit, the distance products the row needs and nothing else: the (N, D) pool times
          the (D, K) centers (float32 at HIGHEST precision as bal_jax's, plus the row
          minimum) once per Lloyd iteration, once for the final assignments and once for the
          CDD, i.e. ``iters + 2`` times.
  select  bal_jax: ``bal_jax.methods.bal_select`` (sub-pool + least confidence) when present,
          else ``bal_jax.subpools.subpool`` + ``bal_jax.sampling.least_confidence``;
          numpy: the same window and ranking in vectorised NumPy.
  kcenter bal_jax: ``bal_jax.diversity.kcenter_greedy``; numpy: the O(N)-memory greedy.

A side whose bal_jax function does not exist yet raises ``Unavailable``: its row says "not
available", never a number.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10


class Unavailable(Exception):
    """This side cannot run here (a bal_jax function or a package is missing)."""


class Side(NamedTuple):
    """One prepared side of a case.

    Attributes:
      run: does one unit of work, blocks until done, returns a small dict of facts (or None);
        a ``_picks`` entry (selected indices) is compared across sides by the worker and not
        reported itself.
      work: images processed per ``run()`` (throughput rows) or 1 (seconds rows).
      num_params: the model's parameter count (train/infer), so the worker can check that
        both sides build the same network.
    """

    run: Callable[[], dict[str, Any] | None]
    work: float
    num_params: int | None = None


def _attr(module: str, name: str) -> Any:
    """``module.name``, or Unavailable naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{module} not importable ({e})") from e
    if not hasattr(mod, name):
        raise Unavailable(f"{module}.{name} does not exist")
    return getattr(mod, name)


# ----------------------------------------------------------------------------------------------
# Data, identical on both sides (NumPy, fixed seeds).


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 images and (n,) int32 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    )


def blobs(n: int, d: int, *, true_k: int = NUM_CLASSES, sep: float = 0.3, seed: int = 0):
    """(n, d) float32 features: ``true_k`` Gaussian blobs that overlap like CNN features do.

    Centers ~ N(0, sep^2 I), unit noise: with sep = 0.3 and d = 512 the blobs overlap enough
    that Lloyd's iterations do not stop after a handful of rounds (a clean, fast-converging
    data set would flatter whichever side has the cheaper initialisation).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((true_k, d), dtype=np.float32) * np.float32(sep)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += centers[rng.integers(0, true_k, n)]
    return x


# ----------------------------------------------------------------------------------------------
# Train step and pool inference.


def _torch_threads() -> None:
    import torch

    # Default is one thread per core already; make it explicit and identical in every process.
    torch.set_num_threads(len(_usable_cpus()))


def _usable_cpus():
    import os

    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return range(os.cpu_count() or 1)


def _jax_model(width: float):
    from flax import nnx

    vgg16 = _attr("bal_jax.models", "VGG16")
    return vgg16(NUM_CLASSES, in_channels=3, width=width, rngs=nnx.Rngs(0))


def _jax_num_params(model) -> int:
    import jax
    from flax import nnx

    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _torch_num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _train_side(case: dict, side: str) -> Side:
    batch, steps, width = case["batch"], case["steps"], case["width"]
    imgs, labels = images(batch * steps, seed=1)
    if side == "bal_jax":
        import jax
        from flax import nnx

        fit = _attr("bal_jax.train", "fit")
        model = _jax_model(width)
        key = jax.random.key(0)
        mesh = _attr("bal_jax.parallel", "make_mesh")()

        def run():
            fit(
                key,
                model,
                imgs,
                labels,
                epochs=1,
                batch_size=batch,
                learning_rate=0.1,
                mean=CIFAR_MEAN,
                std=CIFAR_STD,
                augment=True,
                mesh=mesh,
            )
            jax.block_until_ready(nnx.state(model))

        return Side(run, batch * steps, _jax_num_params(model))
    if side in ("torch", "torch_cl"):
        import torch

        from benchmarks import torch_vgg

        _torch_threads()
        torch.manual_seed(0)
        model = torch_vgg.VGG16(NUM_CLASSES, width=width)
        step = torch_vgg.make_train_step(
            model,
            learning_rate=0.1,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            augment=True,
            channels_last=side == "torch_cl",
        )
        x = torch.from_numpy(imgs)
        y = torch.from_numpy(labels.astype(np.int64))

        def run():
            for i in range(steps):
                loss = step(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
            return {"loss": float(loss)}

        return Side(run, batch * steps, _torch_num_params(model))
    raise ValueError(f"unknown train side {side!r}")


def _infer_side(case: dict, side: str) -> Side:
    n, batch, width = case["n"], case["batch"], case["width"]
    imgs, _ = images(n, seed=2)
    if side == "bal_jax":
        import jax

        predict = _attr("bal_jax.train", "predict")
        model = _jax_model(width)
        mesh = _attr("bal_jax.parallel", "make_mesh")()

        def run():
            # As bal_jax.active_loop does: (logits, features) on the host, then softmax.
            logits, feats = predict(
                model, imgs, batch_size=batch, mean=CIFAR_MEAN, std=CIFAR_STD, mesh=mesh
            )
            probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
            feats = np.asarray(feats)
            return {"probs": list(probs.shape), "features": list(feats.shape)}

        return Side(run, n, _jax_num_params(model))
    if side in ("torch", "torch_cl"):
        import torch

        from benchmarks import torch_vgg

        _torch_threads()
        torch.manual_seed(0)
        model = torch_vgg.VGG16(NUM_CLASSES, width=width)

        def run():
            probs, feats = torch_vgg.predict(
                model,
                imgs,
                batch_size=batch,
                mean=CIFAR_MEAN,
                std=CIFAR_STD,
                channels_last=side == "torch_cl",
            )
            return {"probs": list(probs.shape), "features": list(feats.shape)}

        return Side(run, n, _torch_num_params(model))
    raise ValueError(f"unknown infer side {side!r}")


# ----------------------------------------------------------------------------------------------
# K-means + CDD.


def sklearn_kmeans_cdd(x: np.ndarray, k: int, *, max_iter: int, tol: float, seed: int = 0):
    """The authors' route: scikit-learn KMeans, ``transform`` to all centers, d2 - d1."""
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=k, init="k-means++", n_init=1, max_iter=max_iter, tol=tol, random_state=seed
    ).fit(x)
    dist_NK = km.transform(x)
    two = np.partition(dist_NK, 1, axis=1)[:, :2]
    return two[:, 1] - two[:, 0], km


def _kmeans_side(case: dict, side: str) -> Side:
    n, d, k = case["n"], case["d"], case["k"]
    iters, tol, chunk = case["iters"], case["tol"], case.get("chunk")
    x = blobs(n, d, true_k=case.get("true_k", NUM_CLASSES), seed=3)
    if side == "bal_jax":
        import jax

        kmeans = _attr("bal_jax.kmeans", "kmeans")
        cdd = _attr("bal_jax.kmeans", "cdd")
        x_dev = jax.device_put(x)
        del x
        key = jax.random.key(0)

        def run():
            res = kmeans(key, x_dev, k, max_iters=iters, tol=tol, chunk_size=chunk, n_init=1)
            cdd(x_dev, res.centers, chunk_size=chunk).block_until_ready()
            return {"iters": int(res.num_iters), "inertia": float(res.inertia)}

        return Side(run, 1)
    if side == "matmul":
        import jax
        import jax.numpy as jnp

        x_dev = jax.device_put(x)
        del x
        c_dev = x_dev[:k]
        nearest = jax.jit(
            lambda x, c: jnp.min(jnp.dot(x, c.T, precision=jax.lax.Precision.HIGHEST), axis=1)
        )

        def run():
            for _ in range(iters + 2):
                out = nearest(x_dev, c_dev)
            out.block_until_ready()
            return {"gflops": 2.0 * n * d * k * (iters + 2) / 1e9}

        return Side(run, 1)
    if side == "sklearn":

        def run():
            _, km = sklearn_kmeans_cdd(x, k, max_iter=iters, tol=tol)
            return {"iters": int(km.n_iter_), "inertia": float(km.inertia_)}

        return Side(run, 1)
    raise ValueError(f"unknown kmeans side {side!r}")


# ----------------------------------------------------------------------------------------------
# One BAL selection step: sub-pool window + least confidence.


def numpy_subpool(
    order: np.ndarray,
    labeled: np.ndarray,
    *,
    cycle: int,
    num_cycles: int,
    beta: float,
    min_size: int,
) -> np.ndarray:
    """Reference sub-pool (paper Eq. 6-7, SPEC Step 3), 0-based ``cycle``.

    Positions j of S with ``c N/C - (beta-1) N/(2C) <= j < (c+1) N/C + (beta-1) N/(2C)``
    (exact rational bounds, beta read as a decimal), labeled images removed; if fewer than
    ``min_size`` remain, the window grows one position at a time, left then right (SPEC's
    widening rule).

    Returns:
      Pool indices in CDD order.
    """
    n = order.shape[0]
    # beta as the decimal it was written as (1.2 -> 6/5), so float noise in 1.2 cannot move a
    # window bound that is an integer on paper.
    half = (Fraction(beta).limit_denominator(10**9) - 1) * Fraction(n, 2 * num_cycles)
    lo = min(max(math.ceil(Fraction(cycle * n, num_cycles) - half), 0), n)
    hi = min(max(math.ceil(Fraction((cycle + 1) * n, num_cycles) + half), 0), n)
    hi = max(lo, hi)
    unl_pos = ~labeled[order]
    count = int(unl_pos[lo:hi].sum())
    grow_left = True
    while count < min_size and (lo > 0 or hi < n):
        if (grow_left and lo > 0) or hi == n:
            lo -= 1
            count += int(unl_pos[lo])
        else:
            count += int(unl_pos[hi])
            hi += 1
        grow_left = not grow_left
    return order[lo:hi][unl_pos[lo:hi]]


def numpy_least_confidence(probs_NC: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the lowest max-probability (ties: candidate order)."""
    conf = probs_NC[cand].max(axis=1)
    return cand[np.argsort(conf, kind="stable")[:k]]


def selection_inputs(n: int, *, num_cycles: int, cycle: int, k: int, seed: int = 4):
    """CDD order, a labeled mask drawn from the earlier windows, softmax outputs (N, 10)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random(n), kind="stable")
    labeled = np.zeros(n, bool)
    earlier = order[: min(n, cycle * n // num_cycles + k)]
    labeled[rng.choice(earlier, size=min(cycle * k, earlier.size), replace=False)] = True
    logits = rng.standard_normal((n, NUM_CLASSES), dtype=np.float32) * np.float32(3.0)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return order, labeled, probs


def _select_side(case: dict, side: str) -> Side:
    n, k, c, num_cycles, beta = case["n"], case["k"], case["cycle"], case["cycles"], case["beta"]
    order, labeled, probs = selection_inputs(n, num_cycles=num_cycles, cycle=c, k=k)
    if side == "bal_jax":
        import jax

        bal_select = _attr("bal_jax.methods", "bal_select")
        _attr("bal_jax.subpools", "subpool")
        _attr("bal_jax.sampling", "least_confidence")
        key = jax.random.key(0)

        def run():
            picked = bal_select(
                key,
                order=order,
                labeled_mask=labeled,
                cycle=c,
                num_cycles=num_cycles,
                k=k,
                beta=beta,
                probs=probs,
            )
            return {"_picks": np.asarray(picked)}

        return Side(run, 1)
    if side == "numpy":

        def run():
            cand = numpy_subpool(
                order, labeled, cycle=c, num_cycles=num_cycles, beta=beta, min_size=k
            )
            return {"_picks": numpy_least_confidence(probs, cand, k)}

        return Side(run, 1)
    raise ValueError(f"unknown select side {side!r}")


# ----------------------------------------------------------------------------------------------
# K-center greedy (Core-Set).


def numpy_kcenter_greedy(
    feats_ND: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, k: int, *, chunk=8192
) -> np.ndarray:
    """Greedy k-center in O(N) memory: distances to the labeled set in blocks, then k rounds
    of one matrix-vector product. Never forms the N x N matrix the authors' Core-Set builds.

    With no labeled point the first pick is the first candidate (all distances are inf).
    """
    n = feats_ND.shape[0]
    sq_N = np.einsum("nd,nd->n", feats_ND, feats_ND)
    min_d = np.full(n, np.inf, np.float32)
    lab = feats_ND[labeled]
    if lab.shape[0]:
        lab_sq = sq_N[labeled]
        for s in range(0, n, chunk):
            blk = feats_ND[s : s + chunk]
            d = sq_N[s : s + chunk, None] - 2.0 * (blk @ lab.T) + lab_sq[None, :]
            min_d[s : s + chunk] = d.min(axis=1)
    min_d[~candidates] = -np.inf
    picks = np.empty(k, np.int64)
    for i in range(k):
        j = int(np.argmax(min_d))
        picks[i] = j
        d = sq_N - 2.0 * (feats_ND @ feats_ND[j]) + sq_N[j]
        np.minimum(min_d, d, out=min_d)
        min_d[j] = -np.inf
    return picks


def _kcenter_side(case: dict, side: str) -> Side:
    n, d, k, num_labeled = case["n"], case["d"], case["k"], case["labeled"]
    feats = blobs(n, d, seed=5)
    rng = np.random.default_rng(6)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, size=num_labeled, replace=False)] = True
    candidates = ~labeled
    if side == "bal_jax":
        import jax

        kcenter = _attr("bal_jax.diversity", "kcenter_greedy")
        feats_dev = jax.device_put(feats)
        del feats

        def run():
            picked = kcenter(feats_dev, labeled, candidates, k, chunk_size=case.get("chunk"))
            return {"_picks": np.asarray(picked)}

        return Side(run, 1)
    if side == "numpy":

        def run():
            return {"_picks": numpy_kcenter_greedy(feats, labeled, candidates, k)}

        return Side(run, 1)
    raise ValueError(f"unknown kcenter side {side!r}")


BUILDERS = {
    "train": _train_side,
    "infer": _infer_side,
    "kmeans": _kmeans_side,
    "select": _select_side,
    "kcenter": _kcenter_side,
}


def build(case: dict, side: str) -> Side:
    """Prepares ``side`` of ``case`` (untimed). Raises Unavailable if it cannot run here."""
    if case["bench"] not in BUILDERS:
        raise ValueError(f"unknown bench {case['bench']!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[case["bench"]](case, side)
