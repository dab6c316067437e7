"""Tests for bal_jax.sampling: every sampler against a small NumPy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bal_jax import diversity, sampling
from bal_jax.kmeans import kmeans_core, pairwise_sq_dists

N, C, D = 200, 5, 6


@functools.cache
def _data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(N, C)).astype(np.float32) * 2
    probs = np.array(jax.nn.softmax(logits, axis=1))
    probs[10] = probs[20]  # exact score ties: the lower index must win
    probs[15] = probs[20]
    feats = rng.normal(size=(N, D)).astype(np.float32)
    labeled = np.zeros(N, bool)
    labeled[rng.choice(N, 20, replace=False)] = True
    mask = ~labeled & (rng.random(N) < 0.7)
    return logits, probs, feats, labeled, mask


def _as(candidates_mask, kind):
    return candidates_mask if kind == "mask" else np.flatnonzero(candidates_mask)[::-1].copy()


def _np_top_k(score, mask, k):
    """k candidates with the highest score; ties: lowest index first."""
    idx = np.flatnonzero(mask)
    return idx[np.lexsort((idx, -score[idx]))][:k]


def _np_entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


def _check_valid(picked, k, mask):
    picked = np.asarray(picked)
    assert picked.shape == (k,) and picked.dtype == np.int32
    assert len(set(picked.tolist())) == k
    assert mask[picked].all()


# ---------------------------------------------------------------------------------------------
# Score-based samplers.


SCORE_REFS = {
    "least_confidence": lambda p: -p.max(1),
    "entropy": _np_entropy,
    "margin": lambda p: -(np.sort(p, 1)[:, -1] - np.sort(p, 1)[:, -2]),
}


@pytest.mark.parametrize("kind", ["mask", "index"])
@pytest.mark.parametrize("name", sorted(SCORE_REFS))
def test_score_samplers_match_numpy_through_jit(name, kind):
    _, probs, _, _, mask = _data()
    fn = jax.jit(getattr(sampling, name), static_argnames="k")
    for k in (1, 17):
        got = fn(probs, _as(mask, kind), k=k)
        _check_valid(got, k, mask)
        np.testing.assert_array_equal(got, _np_top_k(SCORE_REFS[name](probs), mask, k))


def test_ties_go_to_the_lowest_index():
    probs = np.full((6, 2), 0.5, np.float32)
    for name in SCORE_REFS:
        got = getattr(sampling, name)(probs, np.array([5, 3, 1, 4]), 3)
        np.testing.assert_array_equal(got, [1, 3, 4])


def test_entropy_returns_k_distinct_images_regression():
    # The released code's entropy sampler argsorted per-sample arrays of shape (1,) and so
    # returned the same image k times.
    _, probs, _, _, mask = _data()
    got = np.asarray(sampling.entropy(probs, mask, 25))
    assert len(set(got.tolist())) == 25
    ent = _np_entropy(probs)
    assert ent[got].min() >= np.sort(ent[mask])[-25]


def test_least_confidence_with_normalized_logits():
    logits, probs, _, _, mask = _data()
    z = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    ref_probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    fn = jax.jit(sampling.least_confidence, static_argnames=("k", "normalize_logits"))
    got = fn(probs, mask, k=12, logits=logits, normalize_logits=True)
    np.testing.assert_array_equal(got, _np_top_k(-ref_probs.max(1), mask, 12))
    # Without normalisation the logits' plain softmax is used.
    plain = np.asarray(jax.nn.softmax(logits, axis=1))
    np.testing.assert_array_equal(
        sampling.least_confidence(None, mask, 12, logits=logits),
        sampling.least_confidence(plain, mask, 12),
    )


def test_bald_matches_numpy():
    rng = np.random.default_rng(3)
    probs_tnc = np.asarray(jax.nn.softmax(rng.normal(size=(4, N, C)).astype(np.float32), -1))
    mask = _data()[4]
    mi = _np_entropy(probs_tnc.mean(0)) - _np_entropy(probs_tnc).mean(0)
    got = jax.jit(sampling.bald, static_argnames="k")(probs_tnc, np.flatnonzero(mask), k=9)
    np.testing.assert_array_equal(got, _np_top_k(mi, mask, 9))


# ---------------------------------------------------------------------------------------------
# Order-based samplers.


@pytest.mark.parametrize("kind", ["mask", "index"])
def test_random_is_distinct_reproducible_and_spread(kind):
    mask = _data()[4]
    fn = jax.jit(sampling.random, static_argnames="k")
    cand = _as(mask, kind)
    a = fn(jax.random.key(0), cand, k=30)
    _check_valid(a, 30, mask)
    np.testing.assert_array_equal(a, fn(jax.random.key(0), cand, k=30))
    assert set(np.asarray(a).tolist()) != set(np.asarray(fn(jax.random.key(1), cand, k=30)))
    # All candidates, k = |candidates|: a permutation of them.
    everything = np.asarray(fn(jax.random.key(2), cand, k=int(mask.sum())))
    assert set(everything.tolist()) == set(np.flatnonzero(mask).tolist())


@pytest.mark.parametrize("kind", ["mask", "index"])
def test_first_k_follows_the_order(kind):
    mask = _data()[4]
    order = np.random.default_rng(1).permutation(N)
    got = jax.jit(sampling.first_k, static_argnames="k")(order, _as(mask, kind), k=11)
    np.testing.assert_array_equal(got, order[mask[order]][:11])


# ---------------------------------------------------------------------------------------------
# Feature-based samplers.


def _np_kcenter(x, labeled, cand, k):
    x = x.astype(np.float64)
    avail = cand & ~labeled
    if labeled.any():
        m = ((x[:, None] - x[labeled][None]) ** 2).sum(-1).min(1)
        picks = []
    else:
        d = ((x - x[avail].mean(0)) ** 2).sum(1)
        first = int(np.argmin(np.where(avail, d, np.inf)))
        picks, m = [first], ((x - x[first]) ** 2).sum(1)
        avail[first] = False
    while len(picks) < k:
        i = int(np.argmax(np.where(avail, m, -np.inf)))
        picks.append(i)
        avail[i] = False
        m = np.minimum(m, ((x - x[i]) ** 2).sum(1))
    return np.array(picks)


@pytest.mark.parametrize(("with_labeled", "kind"), [(True, "mask"), (False, "index")])
@pytest.mark.parametrize("small_batches", [False, True])
def test_kcenter_greedy_matches_numpy(with_labeled, kind, small_batches, monkeypatch):
    _, _, feats, labeled, mask = _data()
    labeled = labeled if with_labeled else np.zeros(N, bool)
    if small_batches:
        # A shortlist smaller than the pool: several batches, their certificates, and both
        # widths of the distance update (tight clusters make batches of 1 to 4 picks).
        rng = np.random.default_rng(1)
        centers = rng.normal(size=(10, D)).astype(np.float32) * 5
        feats = centers[rng.integers(0, 10, N)] + 0.3 * rng.normal(size=(N, D)).astype(np.float32)
        monkeypatch.setattr(diversity, "_KC_TOP", 12)
        monkeypatch.setattr(diversity, "_KC_GROUP", 8)
        monkeypatch.setattr(diversity, "_KC_SMALL_GROUP", 6)
    diversity._kcenter_core.clear_cache()
    fn = diversity.kcenter_greedy
    if not small_batches:  # traced by an outer jit (the patched run must trace afresh)
        fn = jax.jit(fn, static_argnames=("k", "chunk_size"))
    got = fn(feats, labeled, _as(mask, kind), k=60, chunk_size=64 if with_labeled else None)
    diversity._kcenter_core.clear_cache()
    _check_valid(got, 60, mask)
    np.testing.assert_array_equal(got, _np_kcenter(feats, labeled, mask, 60))


def test_kcenter_greedy_runs_on_100k_points():
    # An N x N float32 matrix would need 40 GB here.
    n = 100_000
    feats = jax.random.normal(jax.random.key(0), (n, 4))
    labeled = jnp.arange(n) < 3
    got = diversity.kcenter_greedy(feats, labeled, ~labeled, 20)
    _check_valid(got, 20, ~np.asarray(labeled))


def test_kmeans_centers_takes_the_nearest_free_candidate_of_each_center():
    _, _, feats, _, mask = _data()
    key, k = jax.random.key(4), 8
    fn = jax.jit(diversity.kmeans_centers, static_argnames=("k",))
    got = np.asarray(fn(key, feats, mask, k=k))
    _check_valid(got, k, mask)
    centers = kmeans_core(
        key, jnp.asarray(feats), jnp.asarray(mask), 1e-4, 300, num_clusters=k, chunk_size=None
    ).centers
    d = np.asarray(pairwise_sq_dists(feats, centers))
    free = mask.copy()
    for j in range(k):
        i = int(np.argmin(np.where(free, d[:, j], np.inf)))
        assert got[j] == i
        free[i] = False


def test_kmeans_centers_on_blobs_picks_one_per_blob():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], np.float32)
    x = (means[np.arange(80) % 4] + rng.normal(size=(80, 2))).astype(np.float32)
    got = np.asarray(diversity.kmeans_centers(jax.random.key(0), x, np.ones(80, bool), 4))
    assert sorted((got % 4).tolist()) == [0, 1, 2, 3]


def test_badge_matches_explicit_gradient_embeddings():
    _, probs, feats, _, mask = _data()
    key, k = jax.random.key(9), 15
    got = np.asarray(jax.jit(diversity.badge, static_argnames="k")(key, probs, feats, mask, k=k))
    _check_valid(got, k, mask)
    # Reference: explicit (N, C*D) embeddings and the same D^2 draws.
    a = probs - np.eye(C)[probs.argmax(1)]
    g = (a[:, :, None] * feats[:, None, :]).reshape(N, C * D).astype(np.float64)
    norms = (g**2).sum(1)
    picks = [int(np.argmax(np.where(mask, norms, -np.inf)))]
    closest = ((g - g[picks[0]]) ** 2).sum(1)
    avail = mask.copy()
    avail[picks[0]] = False
    for t in range(1, k):
        w = np.where(avail, closest, 0.0)
        u = float(jax.random.uniform(jax.random.fold_in(key, t), (1,))[0])
        i = int(np.searchsorted(np.cumsum(w), u * w.sum(), side="right"))
        picks.append(i)
        avail[i] = False
        closest = np.minimum(closest, ((g - g[i]) ** 2).sum(1))
    np.testing.assert_array_equal(got, picks)


def test_typiclust_picks_typical_points_of_uncovered_clusters():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0], [40, 0], [0, 40], [40, 40], [80, 80]], np.float32)
    sizes = [60, 50, 40, 30, 20]
    x = np.concatenate([m + rng.normal(size=(s, 2)) for m, s in zip(means, sizes, strict=True)])
    x = x.astype(np.float32)
    blob = np.repeat(np.arange(5), sizes)
    labeled = np.zeros(len(x), bool)
    labeled[[0, 1]] = True  # blob 0 is covered
    got = diversity.typiclust(
        jax.random.key(0), x, labeled, ~labeled, 3, num_neighbors=5, max_clusters=5
    )
    _check_valid(got, 3, ~labeled)
    # K = min(|L| + k, 5) = 5 clusters = the blobs; the three largest uncovered blobs first.
    assert blob[got].tolist() == [1, 2, 3]
    # Each pick is the most typical point of its blob: inverse mean distance to 5-NN.
    for pick in got:
        members = np.flatnonzero((blob == blob[pick]) & ~labeled)
        d = np.sqrt(np.asarray(pairwise_sq_dists(x[members], x[members])))
        np.fill_diagonal(d, np.inf)
        typ = 1 / (np.sort(d, 1)[:, :5].mean(1) + 1e-5)
        assert pick == members[np.argmax(typ)]
    # Candidates restrict the picks, not the density estimate: without the best point of
    # blob 1 among the candidates, the second most typical one is taken.
    members = np.flatnonzero(blob == 1)
    d = np.sqrt(np.asarray(pairwise_sq_dists(x[members], x[members])))
    np.fill_diagonal(d, np.inf)
    ranked = members[np.argsort(-1 / (np.sort(d, 1)[:, :5].mean(1) + 1e-5), kind="stable")]
    cand = ~labeled
    cand[ranked[0]] = False
    again = diversity.typiclust(
        jax.random.key(0), x, labeled, cand, 3, num_neighbors=5, max_clusters=5
    )
    assert again[0] == ranked[1] and again[1:].tolist() == got[1:].tolist()


# ---------------------------------------------------------------------------------------------
# Bad input.


def _all_samplers(probs, feats, labeled, cand, k):
    key = jax.random.key(0)
    order = np.arange(probs.shape[0])
    return {
        "least_confidence": lambda: sampling.least_confidence(probs, cand, k),
        "entropy": lambda: sampling.entropy(probs, cand, k),
        "margin": lambda: sampling.margin(probs, cand, k),
        "bald": lambda: sampling.bald(probs[None], cand, k),
        "random": lambda: sampling.random(key, cand, k),
        "first_k": lambda: sampling.first_k(order, cand, k),
        "kmeans_centers": lambda: diversity.kmeans_centers(key, feats, cand, k),
        "kcenter_greedy": lambda: diversity.kcenter_greedy(feats, labeled, cand, k),
        "badge": lambda: diversity.badge(key, probs, feats, cand, k),
        "typiclust": lambda: diversity.typiclust(key, feats, labeled, cand, k),
    }


SAMPLER_NAMES = [
    "badge",
    "bald",
    "entropy",
    "first_k",
    "kcenter_greedy",
    "kmeans_centers",
    "least_confidence",
    "margin",
    "random",
    "typiclust",
]


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_rejects_k_too_large_and_empty_candidates(name):
    _, probs, feats, labeled, mask = _data()
    cand = np.flatnonzero(mask)[:4]
    with pytest.raises(ValueError, match="larger than"):
        _all_samplers(probs, feats, labeled, cand, 5)[name]()
    with pytest.raises(ValueError, match="empty"):
        _all_samplers(probs, feats, labeled, np.zeros(0, np.int32), 1)[name]()
    if name != "random":  # a mask's length is the pool for the others
        with pytest.raises(ValueError, match="empty"):
            _all_samplers(probs, feats, labeled, np.zeros(N, bool), 1)[name]()
    with pytest.raises(ValueError, match="k must be"):
        _all_samplers(probs, feats, labeled, cand, 0)[name]()


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda p, f, m: sampling.entropy(np.where(p > 0.3, np.nan, p), m, 3), "NaN"),
        (lambda p, f, m: sampling.entropy(p * 2, m, 3), "probability"),
        (lambda p, f, m: sampling.entropy(p[0], m, 3), "2-D"),
        (lambda p, f, m: sampling.entropy((p > 0.5).astype(int), m, 3), "floating"),
        (lambda p, f, m: sampling.margin(p[:, :1] / p[:, :1], m, 3), "2 classes"),
        (lambda p, f, m: sampling.bald(p, m, 3), "3-D"),
        (lambda p, f, m: sampling.least_confidence(p, m, 3, normalize_logits=True), "logits"),
        (lambda p, f, m: sampling.entropy(p, m.astype(float), 3), "index array or a bool"),
        (lambda p, f, m: sampling.entropy(p, np.array([1, 1, 2]), 2), "distinct"),
        (lambda p, f, m: sampling.entropy(p, np.array([1, N]), 2), "in \\[0"),
        (lambda p, f, m: sampling.entropy(p, m[:-1], 2), "length"),
        (lambda p, f, m: diversity.kcenter_greedy(f.at[3, 1].set(jnp.nan), m, ~m, 2), "NaN"),
        (lambda p, f, m: diversity.kcenter_greedy(f, m, m, 2), "already labeled"),
        (lambda p, f, m: diversity.kcenter_greedy(f, m.astype(int), ~m, 2), "labeled_mask"),
        (lambda p, f, m: diversity.kmeans_centers(jax.random.key(0), f[:, 0], m, 2), "2-D"),
        (lambda p, f, m: diversity.badge(jax.random.key(0), p[:-1], f, m, 2), "rows"),
        (lambda p, f, m: sampling.first_k(np.zeros(N, int), m, 2), "distinct"),
    ],
)
def test_bad_input_is_a_clear_error(fn, match):
    _, probs, feats, _, mask = _data()
    with pytest.raises(ValueError, match=match):
        fn(probs, jnp.asarray(feats), mask)


def test_under_outer_jit_missing_picks_are_minus_one():
    probs = _data()[1]
    mask = np.zeros(N, bool)
    mask[:3] = True
    got = jax.jit(sampling.entropy, static_argnames="k")(probs, mask, k=5)
    assert np.asarray(got)[3:].tolist() == [-1, -1]
    assert set(np.asarray(got)[:3].tolist()) == {0, 1, 2}
