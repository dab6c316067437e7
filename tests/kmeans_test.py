"""Tests for bal_jax.kmeans: K-means, CDD and the CDD order."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from bal_jax.blocks import BLOCK_ROWS, block_rows
from bal_jax.kmeans import (
    cdd,
    cdd_order,
    kmeans,
    kmeans_core,
    pairwise_sq_dists,
)

jit_kmeans = jax.jit(kmeans, static_argnames=("num_clusters", "max_iters", "tol", "chunk_size"))
jit_cdd = jax.jit(cdd, static_argnames=("chunk_size",))
jit_cdd_order = jax.jit(cdd_order, static_argnames=("chunk_size",))


def _np_sq_dists(x, c):
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def _np_cdd(x, c):
    d = np.sort(np.sqrt(_np_sq_dists(x, c)), axis=1)
    return d[:, 1] - d[:, 0]


@functools.cache
def _random_5000x64():
    return np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)


def _blobs(num_per=60, dim=5, num_blobs=4, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_blobs, dim)) * 20.0
    labels = np.repeat(np.arange(num_blobs), num_per)
    x = means[labels] + rng.normal(size=(labels.shape[0], dim))
    perm = rng.permutation(labels.shape[0])
    return x[perm].astype(np.float32), labels[perm]


def test_pairwise_sq_dists_matches_numpy():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(50, 7)), rng.normal(size=(6, 7))
    got = jax.jit(pairwise_sq_dists)(x.astype(np.float32), c.astype(np.float32))
    np.testing.assert_allclose(got, _np_sq_dists(x, c), rtol=1e-5, atol=1e-4)
    # Clamped at 0: a point's distance to itself is never negative.
    assert float(jnp.min(pairwise_sq_dists(x.astype(np.float32), x.astype(np.float32)))) >= 0.0


def test_kmeans_recovers_blobs():
    x, labels = _blobs()
    result = jit_kmeans(jax.random.key(0), x, num_clusters=4)
    assign = np.asarray(result.assignments)
    # Same partition up to renaming: the contingency table is a permutation matrix.
    table = np.zeros((4, 4), int)
    np.add.at(table, (labels, assign), 1)
    assert np.all((table == 0) | (table == 60))
    assert np.all((table > 0).sum(0) == 1) and np.all((table > 0).sum(1) == 1)
    # Centers are the blob means of the recovered partition; inertia is consistent.
    for k in range(4):
        np.testing.assert_allclose(result.centers[k], x[assign == k].mean(0), atol=1e-4)
    np.testing.assert_allclose(
        result.inertia, _np_sq_dists(x, result.centers).min(1).sum(), rtol=1e-5
    )
    assert result.assignments.dtype == jnp.int32


def test_inertia_within_one_percent_of_sklearn_from_same_init():
    x = _random_5000x64()
    init = kmeans(jax.random.key(3), x, 8, max_iters=0)
    assert int(init.num_iters) == 0
    ours = kmeans(jax.random.key(3), x, 8)
    np.testing.assert_allclose(init.inertia, _np_sq_dists(x, init.centers).min(1).sum(), rtol=1e-4)
    ref = KMeans(8, init=np.asarray(init.centers), n_init=1, algorithm="lloyd").fit(x)
    assert abs(float(ours.inertia) - ref.inertia_) <= 0.01 * ref.inertia_
    assert 1 <= int(ours.num_iters) <= 300


def test_inertia_never_increases_across_iterations():
    x = _random_5000x64()[:1000]
    history = [
        float(kmeans(jax.random.key(5), x, 6, max_iters=m, tol=0.0).inertia) for m in range(8)
    ]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(history))
    assert history[-1] < history[0]


def test_lloyd_step_matches_numpy():
    x = _random_5000x64()[:1000]
    step0 = kmeans(jax.random.key(5), x, 6, max_iters=0)
    step1 = kmeans(jax.random.key(5), x, 6, max_iters=1, tol=0.0)
    assign = _np_sq_dists(x, step0.centers).argmin(1)
    expected = np.stack([x[assign == k].mean(0) for k in range(6)])
    np.testing.assert_allclose(step1.centers, expected, rtol=1e-4, atol=1e-5)
    assert int(step1.num_iters) == 1


def test_chunked_matches_unchunked():
    # 1000 rows in blocks of 128: the last block is shifted back and partly masked.
    x, chunk_size = _random_5000x64()[:1000], 128
    full = kmeans(jax.random.key(7), x, 6)
    chunked = kmeans(jax.random.key(7), x, 6, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked.centers, full.centers, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(chunked.assignments, full.assignments)
    np.testing.assert_allclose(chunked.inertia, full.inertia, rtol=1e-5)
    assert int(chunked.num_iters) == int(full.num_iters)
    np.testing.assert_allclose(
        jit_cdd(x, full.centers, chunk_size=chunk_size), jit_cdd(x, full.centers), rtol=1e-6
    )


def test_chunking_bounds_compiled_memory():
    # With chunk_size no (N, K) buffer exists: compiled temporaries stay far below N*K*4
    # bytes (checked on abstract shapes, nothing is run).
    n, d, k = 40_000, 8, 256
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    args = (
        jax.random.key(0),
        x,
        jax.ShapeDtypeStruct((n,), bool),
        scalar,
        scalar.update(dtype=jnp.int32),
    )
    compiled = kmeans_core.lower(*args, num_clusters=k, chunk_size=512).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < n * k * 4 / 8

    def cdd_temp_bytes(chunk_size):
        lowered = jax.jit(cdd, static_argnames="chunk_size").lower(
            x, jax.ShapeDtypeStruct((k, d), jnp.float32), chunk_size=chunk_size
        )
        return lowered.compile().memory_analysis().temp_size_in_bytes

    # None blocks at BLOCK_ROWS (balanced: 10 blocks of 4,000 rows here).
    assert n * k * 4 > 8 * cdd_temp_bytes(None) > 8 * cdd_temp_bytes(512)


def test_duplicate_points_reseed_empty_clusters_without_nan():
    # 3 distinct points, 5 clusters: k-means++ must place duplicate centers, so clusters
    # go empty; they are re-seeded and nothing becomes NaN.
    x = np.repeat(np.eye(3, 4, dtype=np.float32), 10, axis=0)
    result = kmeans(jax.random.key(0), x, 5)
    assert np.all(np.isfinite(result.centers))
    assert float(result.inertia) == 0.0
    assert set(np.asarray(result.assignments).tolist()) <= set(range(5))


def test_same_key_same_result_and_jit_matches_eager():
    x = _random_5000x64()[:1000]
    a = kmeans(jax.random.key(11), x, 6)
    b = jit_kmeans(jax.random.key(11), x, num_clusters=6)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_allclose(a.centers, b.centers, rtol=1e-6)


def test_cdd_matches_numpy_and_order_is_stable_ascending():
    x, _ = _blobs()
    centers = jit_kmeans(jax.random.key(0), x, num_clusters=4).centers
    np.testing.assert_allclose(jit_cdd(x, centers), _np_cdd(x, centers), rtol=1e-4, atol=1e-3)
    # Exact ties (duplicated rows) keep index order.
    xt = np.concatenate([x, x[:5]])
    order = np.asarray(jit_cdd_order(xt, centers))
    values = np.asarray(cdd(xt, centers))
    np.testing.assert_array_equal(order, np.argsort(values, kind="stable"))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(jit_cdd_order(xt, centers, chunk_size=7), order)


def test_cdd_is_zero_on_the_boundary():
    centers = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]], np.float32)
    x = np.array([[1.0, 3.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(cdd(x, centers), [0.0, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    ("x", "num_clusters", "match"),
    [
        (np.full((10, 3), np.nan, np.float32), 2, "NaN"),
        (np.ones(10, np.float32), 2, "2-D"),
        (np.ones((10, 3), np.int32), 2, "floating"),
        (np.ones((10, 3), np.float32), 11, "num_clusters"),
        (np.ones((10, 3), np.float32), 0, "num_clusters"),
        (np.ones((0, 3), np.float32), 1, "no rows"),
    ],
)
def test_kmeans_bad_input(x, num_clusters, match):
    with pytest.raises(ValueError, match=match):
        kmeans(jax.random.key(0), x, num_clusters)


def test_kmeans_bad_options():
    x = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        kmeans(jax.random.key(0), x, 2, chunk_size=0)
    with pytest.raises(ValueError, match="max_iters"):
        kmeans(jax.random.key(0), x, 2, max_iters=-1)
    with pytest.raises(ValueError, match="tol"):
        kmeans(jax.random.key(0), x, 2, tol=float("nan"))
    with pytest.raises(ValueError, match="init_size"):
        kmeans(jax.random.key(0), x, 3, init_size=2)


def test_nearest_center_is_argmin_with_lowest_index_on_ties():
    from bal_jax.kmeans import _nearest

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    c = np.concatenate([x[:5], x[3:4], rng.normal(size=(4, 16))]).astype(np.float32)  # 5 == 3
    idx, d2 = _nearest(jnp.asarray(x), jnp.sum(x * x, 1), jnp.asarray(c), jnp.sum(c * c, 1))
    ref = _np_sq_dists(x, c)
    np.testing.assert_array_equal(idx, ref.argmin(1))  # row 3 ties centers 3 and 5: 3
    assert int(idx[3]) == 3 and int(idx[0]) == 0
    np.testing.assert_allclose(d2, ref.min(1), rtol=1e-4, atol=1e-3)
    assert float(jnp.min(d2)) >= 0.0


def test_seeding_on_a_sample_of_a_large_pool():
    x = _random_5000x64()
    key = jax.random.key(4)
    full = kmeans(key, x, 8, n_init=1)
    # A sample at least as large as the pool is the pool: bit for bit the full seeding.
    same = kmeans(key, x, 8, n_init=1, init_size=5000)
    np.testing.assert_array_equal(same.centers, full.centers)
    # On a sample: the seeds are distinct rows of the pool, other than the full seeding's, and
    # the Lloyd iterations (over every row) land within 1 % of the full seeding's inertia.
    seeds = np.asarray(kmeans(key, x, 8, n_init=1, init_size=500, max_iters=0).centers)
    rows = [np.flatnonzero((x == c).all(1)) for c in seeds]
    assert all(r.size == 1 for r in rows) and len({int(r[0]) for r in rows}) == 8
    full_seeds = np.asarray(kmeans(key, x, 8, n_init=1, max_iters=0).centers)
    assert not np.array_equal(seeds, full_seeds)
    sampled = kmeans(key, x, 8, n_init=1, init_size=500)
    assert float(sampled.inertia) <= 1.01 * float(full.inertia)
    # Only rows of positive weight are drawn: masked-out rows never become seeds.
    mask = np.arange(5000) < 1000
    core = kmeans_core(
        key,
        jnp.asarray(x),
        jnp.asarray(mask),
        jnp.asarray(1e-4, jnp.float32),
        jnp.asarray(0, jnp.int32),
        num_clusters=8,
        chunk_size=None,
        init_size=600,
    )
    seed_rows = [int(np.flatnonzero((x == c).all(1))[0]) for c in np.asarray(core.centers)]
    assert max(seed_rows) < 1000


def test_cdd_bad_input():
    x = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match="at least 2 centers"):
        cdd(x, x[:1])
    with pytest.raises(ValueError, match="features"):
        cdd(x, np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        cdd(np.where(np.eye(10, 3) > 0, np.nan, x), x[:3])
    with pytest.raises(ValueError, match="2-D"):
        cdd_order(x[0], x[:3])


@pytest.mark.parametrize(
    ("num_rows", "chunk_size", "expected"),
    [
        (100, None, 100),
        (50_000, 16_384, 3_847),
        (50_000, 1_000, 1_000),
        (8_193, None, 2_731),
        (10, 3, 3),
        (4_096, None, 4_096),
    ],
)
def test_block_rows_are_balanced_and_capped(num_rows, chunk_size, expected):
    got = block_rows(num_rows, chunk_size)
    assert got == expected
    assert got <= min(chunk_size or BLOCK_ROWS, BLOCK_ROWS)
    assert -(-num_rows // got) * got - num_rows < -(-num_rows // got)  # waste < one row a block


def test_n_init_keeps_the_start_of_lowest_inertia():
    # Ten blobs: single k-means++ starts now and then merge two blobs (a worse optimum).
    x, _ = _blobs(num_per=20, dim=4, num_blobs=10, seed=4)
    keys = jax.random.split(jax.random.key(0), 10)
    singles = [kmeans(k, x, 10, n_init=1) for k in keys]
    best = kmeans(jax.random.key(0), x, 10, n_init=10)
    inertias = np.array([float(r.inertia) for r in singles])
    i = int(np.argmin(inertias))
    assert float(best.inertia) == pytest.approx(inertias[i], rel=1e-5)
    # Float noise in the batched sums may pick another start of the same optimum.
    same = [j for j in range(10) if inertias[j] <= inertias[i] * (1 + 1e-5)]
    assert any(np.array_equal(best.assignments, singles[j].assignments) for j in same)
    # One start is the key itself (reproduces earlier single-start runs).
    one = kmeans(jax.random.key(0), x, 10, n_init=1)
    np.testing.assert_array_equal(
        one.assignments,
        kmeans_core(
            jax.random.key(0),
            jnp.asarray(x),
            jnp.ones(len(x), bool),
            jnp.float32(1e-4),
            jnp.int32(300),
            num_clusters=10,
            chunk_size=None,
        ).assignments,
    )
    with pytest.raises(ValueError, match="n_init"):
        kmeans(jax.random.key(0), x, 10, n_init=0)


def test_ten_starts_avoid_the_bad_optima_that_single_starts_hit():
    # Ten 2-D blobs close enough that one greedy k-means++ start often merges two of them.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    x = (rng.normal(size=(10, 2))[labels] * 8.0 + rng.normal(size=(200, 2))).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), 30)
    singles = np.array([float(kmeans(k, x, 10, n_init=1).inertia) for k in keys])
    assert singles.max() > 1.3 * singles.min()  # single starts do land in worse optima
    for key in keys[:5]:
        assert float(kmeans(key, x, 10, n_init=10).inertia) <= 1.01 * singles.min()
