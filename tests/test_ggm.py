"""The GCN-guided module follows eq. 5–7 (and its ablation variants) on hand-computable α."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.search.ggm import GGM, CellLink, GGMConfig

P, Q, D = 3, 4, 2


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _set(link: CellLink, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fix every weight of ``link`` to known values; return them as numpy (math orientation)."""
    w = {}
    with torch.no_grad():
        for name, mod in link.named_children():
            weight = rng.normal(size=tuple(mod.weight.shape[::-1]))  # x @ weight: (in, out)
            mod.weight.copy_(torch.tensor(weight.T))
            w[name] = weight
            if mod.bias is not None:
                b = rng.normal(size=mod.bias.shape)
                mod.bias.copy_(torch.tensor(b))
                w[name + ".b"] = b
    return w


def _alphas():
    cur = np.array([[0.5, -1.0, 0.2, 0.0], [1.0, 0.3, -0.4, 0.1], [0.0, 0.0, 2.0, -0.5]])
    prev = np.array([[-0.2, 0.4, 0.1, 1.0], [0.3, -0.6, 0.0, 0.2], [1.5, 0.1, -0.3, 0.0]])
    return cur, prev


def test_edge_similarity_graph_follows_eq_5_to_7():
    cfg = GGMConfig(mode="gcn", graph="edge", dim=D, gamma=0.5, bias=True)
    link = CellLink(P, Q, cfg).double()
    w = _set(link, np.random.default_rng(0))
    cur, prev = _alphas()
    # eq. 6: A = softmax(φ1(α_k) φ2(α_{k−1})ᵀ), φ1 = α_k w1, φ2 = α_{k−1} w2 (q × q), row-normalised
    a = _softmax_rows((cur @ w["w1"]) @ (prev @ w["w2"]).T)
    assert a.shape == (P, P)
    x = prev @ w["phi1"] + w["phi1.b"]                      # Φ1: FC q → d
    g = a @ x @ w["gcn_w"] + x                               # eq. 7: A X W + X
    expected = cur + 0.5 * (g @ w["phi2"] + w["phi2.b"])     # eq. 5 with γ = 0.5, Φ2: FC d → q
    got = link(torch.tensor(cur), torch.tensor(prev)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(link.adjacency(torch.tensor(cur), torch.tensor(prev)).detach().numpy(), a, rtol=1e-12)


@pytest.mark.parametrize("norm", ["softmax", "none"])
def test_operation_identity_graph(norm):
    cfg = GGMConfig(mode="gcn", graph="operation", dim=D, gamma=0.25, op_graph_norm=norm, bias=True)
    link = CellLink(P, Q, cfg).double()
    w = _set(link, np.random.default_rng(1))
    cur, prev = _alphas()
    a = np.outer(cur.reshape(-1), prev.reshape(-1))          # A = α'_k α'_{k−1}ᵀ on flattened α (pq × pq)
    if norm == "softmax":
        a = _softmax_rows(a)
    x = prev.reshape(-1, 1) @ w["phi1"] + w["phi1.b"]        # every (edge, op) is a node, feature = its α
    g = a @ x @ w["gcn_w"] + x
    expected = cur + 0.25 * (g @ w["phi2"] + w["phi2.b"]).reshape(P, Q)
    got = link(torch.tensor(cur), torch.tensor(prev)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fc_ablation_has_no_graph():
    cfg = GGMConfig(mode="fc", dim=D, gamma=0.5, bias=True)
    link = CellLink(P, Q, cfg).double()
    assert {n for n, _ in link.named_children()} == {"phi1", "phi2"}
    w = _set(link, np.random.default_rng(2))
    cur, prev = _alphas()
    expected = cur + 0.5 * ((prev @ w["phi1"] + w["phi1.b"]) @ w["phi2"] + w["phi2.b"])
    np.testing.assert_allclose(link(torch.tensor(cur), torch.tensor(prev)).detach().numpy(), expected, rtol=1e-12)


def _chain_ggm(chain: str) -> GGM:
    ggm = GGM(3, P, Q, GGMConfig(mode="gcn", dim=D, gamma=0.5, chain=chain, bias=True)).double()
    rng = np.random.default_rng(3)
    for link in ggm.links:
        _set(link, rng)
    return ggm


def test_chain_raw_uses_raw_previous_alpha_and_updated_uses_updated():
    theta = torch.tensor(np.random.default_rng(4).normal(size=(3, P, Q)))
    raw, upd = _chain_ggm("raw"), _chain_ggm("updated")
    out_raw, out_upd = raw(theta), upd(theta)
    # cell 0 has no predecessor
    assert torch.equal(out_raw[0], theta[0]) and torch.equal(out_upd[0], theta[0])
    # eq. 5 as written: α'_k from raw α_{k−1}
    for k in (1, 2):
        assert torch.allclose(out_raw[k], raw.links[k - 1](theta[k], theta[k - 1]))
    # chained: α'_2 from the updated α'_1
    assert torch.allclose(out_upd[2], upd.links[1](theta[2], out_upd[1]))
    assert not torch.allclose(out_upd[2], out_raw[2])


def test_none_is_identity_and_fresh_module_starts_as_identity():
    theta = torch.randn(4, 5, 8)
    assert GGM(4, 5, 8, GGMConfig(mode="none")).links.__len__() == 0
    assert torch.equal(GGM(4, 5, 8, GGMConfig(mode="none"))(theta), theta)
    fresh = GGM(4, 5, 8, GGMConfig())            # Φ2 zero-initialised: θ' = θ at the start
    assert torch.equal(fresh(theta), theta)
    # ... yet every part of it receives a gradient through Φ2 at once
    fresh(theta).sum().backward()
    assert fresh.links[0].phi2.weight.grad.abs().sum() > 0


def test_gradient_reaches_previous_cell_alpha():
    ggm = _chain_ggm("raw")
    theta = torch.tensor(np.random.default_rng(5).normal(size=(3, P, Q)), requires_grad=True)
    ggm(theta)[2].sum().backward()
    assert theta.grad[1].abs().sum() > 0  # cell 2's α' depends on cell 1's α


def test_default_fc_layers_are_bias_free_so_the_update_is_linear_in_the_previous_alpha():
    link = CellLink(P, Q, GGMConfig(mode="gcn", dim=D))
    assert link.phi1.bias is None and link.phi2.bias is None
    w = _set(link.double(), np.random.default_rng(6))
    cur, prev = _alphas()
    a = _softmax_rows((cur @ w["w1"]) @ (prev @ w["w2"]).T)
    x = prev @ w["phi1"]
    expected = cur + 0.5 * ((a @ x @ w["gcn_w"] + x) @ w["phi2"])
    np.testing.assert_allclose(link(torch.tensor(cur), torch.tensor(prev)).detach().numpy(), expected, rtol=1e-12)
    # θ_{k−1} = 0 leaves θ_k unchanged
    assert torch.equal(link(torch.tensor(cur), torch.zeros(P, Q, dtype=torch.float64)), torch.tensor(cur))
