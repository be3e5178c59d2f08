"""The exchange sets of a re-layout: a partition of the stage in which every rank finds the
whole block it needs among the primary blocks of its own set (checked cell by cell)."""
import itertools

from megatron_galvatron.layout import Layout, exchange_sets


def layouts(w):
    for tp in [t for t in range(1, w + 1) if w % t == 0]:
        for consec, sp in itertools.product((True, False), (False, True)):
            if sp and tp == 1:
                continue
            yield Layout(tp, consec if 1 < tp < w else True, sp)


def covered(have: Layout, need: Layout, members, r, w):
    """Every (seq, batch) cell of r's block under `need` is held by a primary member under `have`."""
    ns, nb = need.block(r, w, w, w)
    for s in range(ns.start, ns.stop):
        for b in range(nb.start, nb.stop):
            if not any(have.is_primary(j, w) and have.block(j, w, w, w)[0].start <= s < have.block(j, w, w, w)[0].stop
                       and have.block(j, w, w, w)[1].start <= b < have.block(j, w, w, w)[1].stop for j in members):
                return False
    return True


def test_sets_partition_the_stage_and_cover_both_directions():
    for w in (2, 4, 8):
        for src, dst in itertools.permutations(set(layouts(w)), 2):
            sets = exchange_sets(src, dst, w)
            assert sorted(i for m in sets for i in m) == list(range(w))
            for members in sets:
                for r in members:
                    assert covered(src, dst, members, r, w), (src, dst, r, sets)   # forward
                    assert covered(dst, src, members, r, w), (src, dst, r, sets)   # backward


def pairwise_exchange_sets(src: Layout, dst: Layout, w: int):
    """The definition, block against block: join a rank to every primary block (of the other
    layout) that overlaps the block it needs, in both directions."""
    parent = list(range(w))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    def overlap(a, b):
        return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b))

    for have, need in ((src, dst), (dst, src)):
        for r in range(w):
            for j in range(w):
                if have.is_primary(j, w) and overlap(have.block(j, w, w, w), need.block(r, w, w, w)):
                    parent[root(r)] = root(j)
    sets = {}
    for i in range(w):
        sets.setdefault(root(i), []).append(i)
    return sorted(tuple(v) for v in sets.values())


def test_sets_match_the_pairwise_definition():
    """exchange_sets works on stretches of the micro-batch instead of block pairs; same partition,
    on powers of two and on stage sizes whose TP degrees do not divide each other."""
    for w in (1, 2, 3, 4, 6, 8, 12, 16, 18, 24):
        for src, dst in itertools.product(sorted(set(layouts(w))), repeat=2):
            assert exchange_sets(src, dst, w) == pairwise_exchange_sets(src, dst, w), (src, dst, w)
            assert exchange_sets(src, dst, w) == exchange_sets(dst, src, w)  # the cost model caches it so


def test_known_sets_are_as_small_as_the_data_allows():
    # growing TP inside consecutive groups only exchanges within the new TP group
    assert exchange_sets(Layout(1, True, False), Layout(2, True, False), 4) == [(0, 1), (2, 3)]
    # turning sequence parallelism off gathers within the TP group
    assert exchange_sets(Layout(2, True, True), Layout(2, True, False), 4) == [(0, 1), (2, 3)]
    assert exchange_sets(Layout(2, False, True), Layout(2, False, False), 4) == [(0, 2), (1, 3)]


def test_rank_geometry_of_consecutive_and_strided_groups():
    """Stage of 8 ranks starting at global rank 8, tp 2: every view of the geometry against
    groups written out by hand."""
    ranks = range(8, 16)
    consec, strided = Layout(2, True, False), Layout(2, False, False)
    assert consec.groups(ranks) == ([(8, 9), (10, 11), (12, 13), (14, 15)], [(8, 10, 12, 14), (9, 11, 13, 15)])
    assert strided.groups(ranks) == ([(8, 12), (9, 13), (10, 14), (11, 15)], [(8, 9, 10, 11), (12, 13, 14, 15)])
    assert consec.strides(8) == (1, 2) and strided.strides(8) == (4, 1)
    assert [consec.coords(i, 8) for i in (0, 1, 2, 7)] == [(0, 0), (0, 1), (1, 0), (3, 1)]
    assert [strided.coords(i, 8) for i in (0, 1, 4, 7)] == [(0, 0), (1, 0), (0, 1), (3, 1)]
    for lo in (consec, strided, Layout(4, False, True), Layout(8, True, False), Layout(1, True, False)):
        assert sorted(lo.rank(*lo.coords(i, 8), 8) for i in range(8)) == list(range(8))
