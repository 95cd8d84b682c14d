"""benchmarks/form_transfer_offline.py: the rules and rungs on a result whose 'measurements' are an
exact affine of the LUT's sums — so the affine rung (and the global form, which contains it up to
the per-row term) must predict the held-out networks almost exactly, per kind of fit network."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LUT = REPO / "luts" / "cpu-epyc-1t-compile-65x129.parquet"


def _script():
    from search_support import benchmark_script

    return benchmark_script("form_transfer_offline")


def _result(tmp_path: Path) -> Path:
    from search_support import affine_result

    return affine_result(tmp_path / "result.json", LUT, 34, lambda i: "fit" if i < 24 else "other_searches", seed=7,
                         source=lambda i: ("some search (derived)" if i >= 24 else
                                           "span draw, runs of one op (sticky 0.8)" if i % 2 else
                                           "span draw, independent edges"))


def test_rules_and_rungs_on_measurements_the_lut_explains(tmp_path, monkeypatch):
    mod = _script()
    monkeypatch.setattr(mod, "N_BOOT", 10)
    res = _result(tmp_path)
    out = tmp_path / "out"
    assert mod.main([f"{res}={LUT}", "--out-dir", str(out), "--name", "t"]) == 0
    r = json.loads((out / "t.json").read_text())["results"][0]
    assert r["kinds"] == {"independent edges": 12, "runs of one op": 12}
    rungs = r["rungs"]
    assert set(rungs) == {"one-SE rule (the fit's)", "worst-kind rule", "global", "affine",
                          "one-SE, shrunk half-way to global"}
    assert rungs["affine"]["other_searches"]["mape"] < 0.2 and rungs["affine"]["other_searches"]["n"] == 10
    for label, d in rungs.items():  # every rule's model explains an affine of the sums
        assert d["other_searches"]["mape"] < 2.0, (label, d)
    # per-kind CV: each candidate scored on each kind, the affine one exactly on both
    assert set(r["cv"]["affine"]) == {"all", "independent edges", "runs of one op"}
    assert r["cv"]["affine"]["all"] < 0.2 < 10 < r["cv"]["raw"]["runs of one op"]
    assert "| worst-kind rule |" in (out / "t.md").read_text()


def test_a_pair_without_its_lut_is_one_error_line(tmp_path, capsys):
    assert _script().main([str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"Error: '{tmp_path / 'none.json'}' is not RESULT.json=LUT"


def test_a_closed_loops_networks_are_judged_relative_to_its_anchors(tmp_path, monkeypatch):
    mod = _script()
    monkeypatch.setattr(mod, "N_BOOT", 10)
    res = _result(tmp_path)
    nets = json.loads(res.read_text())["networks"]
    drift = 1.1  # the machine ran 10 % slower during the closed loop: measurements 1.1 × the fit's
    runs = [{"pricing": "raw", "beta": 0.5, "seed": i, "arch": n["arch"], "measured_us": n["measured_us"] * drift}
            for i, n in enumerate(nets[24:])]
    cl = tmp_path / "closed_loop-x.json"
    cl.write_text(json.dumps({"runs": runs, "anchors": {"drift": drift}}))
    out = tmp_path / "out"
    assert mod.main([f"{res}={LUT}", "--closed-loop", f"{res}={cl}", "--out-dir", str(out), "--name", "t"]) == 0
    affine = json.loads((out / "t.json").read_text())["results"][0]["rungs"]["affine"]
    assert affine["closed loop closed_loop-x"]["n"] == 10
    assert affine["closed loop closed_loop-x"]["mape"] < 0.2  # the drift divided out
    assert "--closed-loop" in (out / "t.md").read_text()
    # a closed loop must belong to one of the results analysed
    assert mod.main([f"{res}={LUT}", "--closed-loop", f"{cl}={cl}"]) == 2
