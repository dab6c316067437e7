import pytest

from bal_jax.budgets import budget_fractions, cycle_counts, validate_fractions


@pytest.mark.parametrize(
    ("budget", "n", "expected"),
    [
        ("small", 50_000, (1000,) * 5),
        ("medium", 50_000, (5000,) + (2500,) * 6),
        ("large", 1000, (100,) * 10),
    ],
)
def test_paper_schedules(budget, n, expected):
    assert cycle_counts(budget_fractions(budget), pool_size=n) == expected


def test_counts_sum_to_rounded_total():
    counts = cycle_counts((0.013, 0.027, 0.1), pool_size=1237)
    assert sum(counts) == round(0.1 * 1237)
    assert all(c > 0 for c in counts)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ((0.1, 0.05), "increasing"),
        ((0.1, 1.2), r"\(0, 1\]"),
        ((), "at least one"),
        ((0.0,), r"\(0, 1\]"),
    ],
)
def test_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        validate_fractions(fractions)


def test_pool_too_small_for_schedule():
    with pytest.raises(ValueError, match="too small"):
        cycle_counts((0.02, 0.021), pool_size=100)


def test_unknown_budget():
    with pytest.raises(ValueError, match="unknown budget"):
        budget_fractions("huge")


@pytest.mark.parametrize(
    ("budget", "cycles"),
    [("small", 5), ("medium", 2), ("large", 2)],  # 10% (all of small), 15%, 20%
)
def test_beta_search_reaches_the_papers_fifteen_percent_where_it_can(budget, cycles):
    from bal_jax.budgets import search_cycles

    assert search_cycles(budget_fractions(budget), fraction=0.15) == cycles
    # Never a single cycle when there are two: cycle 0 is the same for every beta >= 1.
    assert search_cycles(budget_fractions(budget), fraction=0.01) == 2
    assert search_cycles((0.5,), fraction=0.15) == 1
