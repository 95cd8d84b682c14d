"""Learned peers of the LUT model (latbench.model.peers) on synthetic architectures whose latency
is known: the same interface for every peer, each learns an additive truth better than predicting
the mean, and the graph network trains in seconds on a CPU."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from latbench.model.peers import PEERS, GraphPeer, OneHot, fit_peers, make_peer, peer_predictions

OPS = {"conv": 60.0, "sep": 35.0, "dil": 45.0, "pool": 8.0, "skip": 3.0, "zero": 0.0}
POSITIONS = 24


def archs(n: int, seed: int):
    rng = random.Random(seed)
    return [[("stem", "stem")] + [(f"e{p}", rng.choice(list(OPS))) for p in range(POSITIONS)] for _ in range(n)]


def latency(a) -> float:
    return 400.0 + sum(OPS.get(o, 0.0) * (1.0 + 0.02 * (i % 5)) for i, (_, o) in enumerate(a))


def mape(p, y):
    return float(100 * np.mean(np.abs(np.asarray(p) - y) / y))


def test_one_hot_counts_position_op_pairs_and_ops_and_ignores_unseen_pairs():
    enc = OneHot().fit([[("a", "x"), ("b", "y")], [("a", "y"), ("b", "y")]])
    X = enc.transform([[("a", "x"), ("b", "y")], [("a", "z"), ("c", "y")]])
    assert X.shape == (2, 3 + 2)  # pairs (a,x), (a,y), (b,y) + ops x, y
    assert X[0].tolist() == [1, 0, 1, 1, 1]
    assert X[1].tolist() == [0, 0, 0, 0, 1]  # (a,z), (c,y) unseen; op y counted


def test_every_peer_learns_the_latency_better_than_the_mean():
    train, test = archs(40, 0), archs(30, 1)
    y, yt = np.array([latency(a) for a in train]), np.array([latency(a) for a in test])
    baseline = mape(np.full(yt.size, y.mean()), yt)
    t0 = time.perf_counter()
    peers = fit_peers(train, y, seed=0)
    assert time.perf_counter() - t0 < 60  # BRP-NAS-sized: well under a minute on a CPU
    assert list(peers) == list(PEERS)
    preds = peer_predictions(peers, test)
    errs = {k: mape(v, yt) for k, v in preds.items()}
    for k, e in errs.items():
        assert preds[k].shape == (30,) and np.all(preds[k] > 0)
        assert e < baseline, (k, e, baseline)
    assert errs["ridge"] < 0.5 * baseline  # an op-additive truth: op counts carry it


def test_graph_peer_is_deterministic_for_a_seed():
    train = archs(20, 2)
    y = np.array([latency(a) for a in train])
    a = GraphPeer(epochs=50, seed=3).fit(train, y).predict(train[:5])
    b = GraphPeer(epochs=50, seed=3).fit(train, y).predict(train[:5])
    assert np.allclose(a, b)


@pytest.mark.parametrize("name", PEERS)
def test_peers_refuse_bad_input(name):
    peer = make_peer(name)
    with pytest.raises(ValueError):
        peer.fit(archs(5, 3), [1.0, 2.0])
    with pytest.raises(ValueError):
        peer.fit(archs(3, 3), [1.0, -2.0, 3.0])
    with pytest.raises(ValueError):
        make_peer("nope")


def test_peers_as_ladder_rungs_take_a_networks_lut_rows_and_never_its_values():
    from latbench.model.peers import peer_ladder, rows_as_arch

    def rows(a, scale):
        return [(op, "s", scale * OPS.get(op, 1.0), op == "zero") for _, op in a]

    train = archs(30, 4)
    y = np.array([latency(a) for a in train])
    ladder = peer_ladder([rows(a, 1.0) for a in train], y, names=("ridge",))
    assert list(ladder) == ["peer: ridge"]
    a = archs(1, 5)[0]
    # the same architecture with other LUT values: the same prediction (a peer never sees the LUT)
    assert ladder["peer: ridge"]({"median_us": rows(a, 1.0)}) == ladder["peer: ridge"]({"median_us": rows(a, 3.0)})
    assert ladder["peer: ridge"]({"median_us": rows(a, 1.0)}) == pytest.approx(latency(a), rel=0.05)
    assert rows_as_arch(rows(a, 1.0))[1] == ("1:s", a[1][1])
