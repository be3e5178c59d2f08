"""The compiled stage DP against the numpy reference and against brute-force enumeration."""
import itertools
import threading
import time
import warnings

import numpy as np
import pytest

from search import _dp_core  # CI builds it with `pip install -e .`; a missing build must fail here
from search import dp, dp_reference

INF = float("inf")


def random_instance(rng, max_l=6, max_s=7, max_mem=6):
    L = int(rng.integers(1, max_l + 1))
    S = int(rng.integers(1, max_s + 1))
    G = int(rng.integers(1, S + 1))
    intra = rng.random((L, S))
    mem = rng.integers(0, max_mem, (L, S))
    group = rng.integers(0, G, S).astype(np.int32)
    kind = rng.integers(3)
    if kind == 0:
        gtrans = rng.random((G, G))
    elif kind == 1:  # one price for any layout change: the O(G) path
        gtrans = np.full((G, G), rng.random())
        np.fill_diagonal(gtrans, 0.0)
    else:  # every strategy its own layout: the general O(S^2) transition
        group = np.arange(S, dtype=np.int32)
        gtrans = rng.random((S, S))
    final = rng.random(S) if rng.random() < 0.5 else None
    return intra, mem, group, gtrans, final


def assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-12, abs=0) or (a[0] == INF and b[0] == INF)
    assert list(a[1]) == list(b[1])
    assert a[2] == b[2]


def test_solve_matches_numpy_reference_on_random_instances():
    rng = np.random.default_rng(1234)
    for _ in range(250):
        intra, mem, group, gtrans, final = random_instance(rng)
        budget = int(rng.integers(-1, 25))
        full = gtrans[group][:, group]
        assert_same(_dp_core.solve(intra, mem, group, gtrans, budget, final),
                    dp_reference.solve(intra, mem, full, budget, final))


def test_cost_table_matches_numpy_reference_on_random_instances():
    rng = np.random.default_rng(99)
    for i in range(250):
        intra, mem, group, gtrans, final = random_instance(rng)
        if i % 3 == 0:  # several hand-over costs at once, constant per layout (the engine's case)
            final = rng.random((3, group.max() + 1))[:, group]
        elif i % 3 == 1 and final is not None:
            final = np.stack([final, rng.random(len(group))])
        budget = int(rng.integers(0, 25))
        got = _dp_core.cost_table(intra, mem, group, gtrans, budget, final)
        want = dp_reference.cost_table(intra, mem, gtrans[group][:, group], budget, final)
        np.testing.assert_array_equal(got, want)


def brute_force(intra, mem, trans, budget, final):
    L, S = intra.shape
    final = np.zeros(S) if final is None else final
    best = (INF, None)
    for assign in itertools.product(range(S), repeat=L):
        used = sum(mem[l, s] for l, s in enumerate(assign))
        if used > budget:
            continue
        cost = sum(intra[l, s] for l, s in enumerate(assign))
        cost += sum(trans[a, b] for a, b in zip(assign, assign[1:])) + final[assign[-1]]
        if cost < best[0]:
            best = (cost, assign)
    return best


def test_dp_equals_brute_force_on_small_instances():
    rng = np.random.default_rng(7)
    for _ in range(120):
        intra, mem, group, gtrans, final = random_instance(rng, max_l=5, max_s=6)
        budget = int(rng.integers(0, 20))
        full = gtrans[group][:, group]
        cost, strategies, left = _dp_core.solve(intra, mem, group, gtrans, budget, final)
        want, assign = brute_force(intra, mem, full, budget, final)
        if assign is None:
            assert cost == INF and strategies == [] and left == -1
            continue
        assert cost == pytest.approx(want, rel=1e-12)
        used = sum(mem[l, s] for l, s in enumerate(strategies))
        assert left == budget - used >= 0
        fin = np.zeros(len(group)) if final is None else final
        recomputed = sum(intra[l, s] for l, s in enumerate(strategies)) + fin[strategies[-1]] + \
            sum(full[a, b] for a, b in zip(strategies, strategies[1:]))
        assert recomputed == pytest.approx(cost, rel=1e-12)


def test_cost_table_rows_are_solutions_of_every_prefix_and_budget():
    rng = np.random.default_rng(5)
    for _ in range(20):
        intra, mem, group, gtrans, final = random_instance(rng, max_l=4, max_s=5)
        table = _dp_core.cost_table(intra, mem, group, gtrans, 12, final)
        for n in range(1, intra.shape[0] + 1):
            for m in range(13):
                c = _dp_core.solve(intra[:n], mem[:n], group, gtrans, m, final)[0]
                assert table[n - 1, m] == c or (c == INF and table[n - 1, m] == INF)


def test_backtracking_kept_choices_gives_what_solve_gives_on_every_prefix_and_budget():
    """cost_table's choices answer solve() without another pass: same cost, strategies and memory
    left, bit for bit, for every prefix and budget (the search takes its plans this way)."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        intra, mem, group, gtrans, final = random_instance(rng, max_l=5, max_s=6)
        if rng.random() < 0.3:  # layers that may not take some strategies (--fp8-skip-first/last)
            intra[rng.integers(intra.shape[0]), rng.integers(intra.shape[1])] = INF
        table, choices = _dp_core.cost_table(intra, mem, group, gtrans, 14, final, keep_choices=True)
        assert np.array_equal(table, _dp_core.cost_table(intra, mem, group, gtrans, 14, final))
        for n in range(1, intra.shape[0] + 1):
            for m in range(-1, 15):
                assert _dp_core.backtrack(choices, intra, mem, group, gtrans, n, m, final) == \
                    _dp_core.solve(intra[:n], mem[:n], group, gtrans, m, final), (n, m)
    with pytest.raises(ValueError):  # a budget beyond the kept memory axis
        _dp_core.backtrack(choices, intra, mem, group, gtrans, 1, 15, final)


def test_infeasible_and_bad_input():
    intra = np.ones((2, 2))
    mem = np.full((2, 2), 5)
    group = np.zeros(2, dtype=np.int32)
    gtrans = np.zeros((1, 1))
    assert _dp_core.solve(intra, mem, group, gtrans, 9) == (INF, [], -1)
    assert _dp_core.solve(intra, mem, group, gtrans, -1) == (INF, [], -1)
    with pytest.raises(ValueError):
        _dp_core.solve(intra, mem[:1], group, gtrans, 10)
    with pytest.raises(ValueError):
        _dp_core.solve(intra, mem, np.array([0, 3], dtype=np.int32), gtrans, 10)
    with pytest.raises(ValueError):
        _dp_core.solve(intra, -mem, group, gtrans, 10)


def test_dp_releases_the_gil():
    rng = np.random.default_rng(0)
    L, S = 100, 40  # every strategy its own layout: the O(L M S^2) path, a fraction of a second
    args = (rng.random((L, S)), rng.integers(0, 50, (L, S)), np.arange(S, dtype=np.int32), rng.random((S, S)))
    started, done = threading.Event(), threading.Event()
    elapsed = []

    def work():
        started.set()
        t0 = time.perf_counter()
        _dp_core.cost_table(*args, 3000)
        elapsed.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    spins = 0
    while not done.is_set():
        spins += 1
    t.join()
    assert elapsed[0] > 0.02
    assert spins > 10000  # this thread kept running Python while the DP ran


def test_python_fallback_warns_and_agrees(monkeypatch):
    rng = np.random.default_rng(3)
    intra, mem, group, gtrans, final = random_instance(rng)
    want = dp.solve(intra, mem, group, gtrans, 10, final)
    monkeypatch.setattr(dp, "_dp_core", None)
    monkeypatch.setattr(dp, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = dp.solve(intra, mem, group, gtrans, 10, final)
    assert any("numpy reference" in str(w.message) for w in caught)
    assert_same(got, want)
