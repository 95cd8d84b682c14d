"""nas report over repeated runs: runs of one configuration (names equal but for the seed marker)
-> mean ± std and variance of mIoU, latency and FPS with the number of runs; the error-bar plot."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from nas.cli import cli
from nas.fps import append_records
from nas.report import MiouRecord, build_rows, run_name_from_path, write_miou_record
from nas.report_groups import Stat, build_groups, group_name, render_groups_markdown


def _fps(sha, latency_ms, path, backend="cpu", res="33x65"):
    return {"date": "2026-01-01T00:00:00+00:00", "report": "cpu",
            "genotype": {"sha": sha, "name": "genotype", "path": path},
            "network": {"width_mult": 4.5, "params": 2_000_000, "flops": 10**9}, "resolution": res, "batch": 1,
            "backend": backend, "precision": "fp32", "status": "ok", "latency_ms": latency_ms,
            "p10_ms": latency_ms, "p90_ms": latency_ms, "fps": 1e3 / latency_ms, "host_bound": False,
            "device": {"name": "AMD EPYC", "type": "cpu"}, "lut": {"sum_us": latency_ms * 900.0}}


def _miou(sha, miou, name, res="33x65"):
    return MiouRecord(genotype_sha=sha, dataset="cityscapes", split="val", resolution=res, miou=miou,
                      genotype_path=f"runs/{name}/search/genotype.json", date="2026-01-02T00:00:00+00:00",
                      extra={"name": name})


def test_group_names_and_run_names():
    assert group_name("t6a-s0") == "t6a" and group_name("t6a-s12") == "t6a" and group_name("fig7-seed3") == "fig7"
    assert group_name("t7a-random-003") == "t7a" and group_name("t10-aspp") == "t10-aspp"
    assert group_name("t8-d16") == "t8-d16" and group_name("lgcnet") == "lgcnet"
    assert run_name_from_path("runs/t6a-s1/train/genotype.json") == "t6a-s1"
    assert run_name_from_path("/abs/runs/x/runs/t9-op-s0/search/genotype.json") == "t9-op-s0"
    assert run_name_from_path("nas/genotypes/lgcnet_paper.json") == "lgcnet_paper"
    assert run_name_from_path("out/net/genotype.json") == "net"
    assert run_name_from_path("runs/t7a/random-003.json") == "t7a-random-003"
    assert run_name_from_path(None) is None


def test_stat_is_mean_sample_std_and_variance():
    s = Stat.of([70.0, 72.0, 74.0, None])
    assert s.n == 3 and s.mean == pytest.approx(72.0) and s.var == pytest.approx(4.0) and s.std == pytest.approx(2.0)
    one = Stat.of([5.0])
    assert one.n == 1 and one.std is None and one.var is None
    assert Stat.of([None]) is None


def test_runs_of_a_configuration_are_aggregated():
    fps = [_fps("a0", 10.0, "runs/t6a-s0/train/genotype.json"), _fps("a1", 12.0, "runs/t6a-s1/train/genotype.json"),
           _fps("a2", 14.0, "runs/t6a-s2/train/genotype.json"), _fps("b0", 8.0, "runs/t6b-s0/train/genotype.json"),
           _fps("b1", 8.0, "runs/t6b-s1/train/genotype.json"),
           _fps("a0", 5.0, "runs/t6a-s0/train/genotype.json", res="65x129")]
    miou = [_miou("a0", 0.70, "t6a-s0"), _miou("a1", 0.72, "t6a-s1"), _miou("a2", 0.74, "t6a-s2"),
            _miou("b0", 0.60, "t6b-s0")]
    groups = build_groups(build_rows(fps, miou), miou)
    by = {(g.group, g.resolution): g for g in groups}
    assert set(by) == {("t6a", "33x65"), ("t6b", "33x65"), ("t6a", "65x129")}
    a = by[("t6a", "33x65")]
    assert [r.name for r in a.runs] == ["t6a-s0", "t6a-s1", "t6a-s2"]
    assert a.miou_pct.mean == pytest.approx(72.0) and a.miou_pct.std == pytest.approx(2.0)
    assert a.miou_pct.var == pytest.approx(4.0)
    assert a.latency_ms.mean == pytest.approx(12.0) and a.latency_ms.std == pytest.approx(2.0)
    fps_vals = [1e3 / 10, 1e3 / 12, 1e3 / 14]
    m = sum(fps_vals) / 3
    assert a.fps.mean == pytest.approx(m)
    assert a.fps.std == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in fps_vals) / 2))
    b = by[("t6b", "33x65")]  # one of two runs was evaluated: mIoU over 1, FPS over 2
    assert len(b.runs) == 2 and b.miou_pct.n == 1 and b.fps.n == 2 and b.fps.std == pytest.approx(0.0)
    md = render_groups_markdown(groups)
    row = next(ln for ln in md.splitlines() if ln.startswith("| t6a | 3 |") and "33 × 65" in ln)
    assert "| 72.0 ± 2.0 | 4.00 | 12.00 ± 2.00 |" in row and "t6a-s0, t6a-s1, t6a-s2" in row
    row_b = next(ln for ln in md.splitlines() if ln.startswith("| t6b | 2 |"))
    assert "60.0 (n=1)" in row_b and "| – |" in row_b  # no variance from one value


def test_two_runs_of_one_architecture_stay_two_runs():
    """Two seeds can derive the same network: one FPS row, two evaluations, two runs."""
    fps = [_fps("same", 10.0, "runs/t8-d16-s0/train/genotype.json")]
    miou = [_miou("same", 0.50, "t8-d16-s0"), _miou("same", 0.54, "t8-d16-s1")]
    (g,) = build_groups(build_rows(fps, miou), miou)
    assert g.group == "t8-d16" and len(g.runs) == 2 and g.miou_pct.mean == pytest.approx(52.0)
    assert g.latency_ms.n == 2 and g.latency_ms.std == pytest.approx(0.0)


def test_cli_prints_groups_json_and_error_bar_plot(tmp_path):
    reports = tmp_path / "reports"
    append_records(reports / "fps" / "cpu.json", [_fps("a0", 10.0, "runs/t6a-s0/train/genotype.json"),
                                                  _fps("a1", 12.0, "runs/t6a-s1/train/genotype.json")])
    write_miou_record(reports / "miou" / "t6a-s0.json", _miou("a0", 0.70, "t6a-s0"))
    write_miou_record(reports / "miou" / "t6a-s1.json", _miou("a1", 0.72, "t6a-s1"))
    out, png = tmp_path / "table.md", tmp_path / "groups.png"
    r = CliRunner().invoke(cli, ["report", "--reports", str(reports), "--out", str(out), "--group-plot", str(png)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "## Repeated runs" in text and "| t6a | 2 |" in text and "71.0 ± 1.4 | 2.00 |" in text
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["report", "--reports", str(reports), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    (g,) = d["groups"]
    assert g["runs"] == 2 and g["members"] == ["t6a-s0", "t6a-s1"] and g["miou_pct"]["var"] == pytest.approx(2.0)
    assert len(d["rows"]) == 2
    r = CliRunner().invoke(cli, ["report", "--reports", str(reports), "--no-groups"])
    assert r.exit_code == 0 and "Repeated runs" not in r.output
    r = CliRunner().invoke(cli, ["report", "--reports", str(reports), "--no-groups", "--group-plot", str(png)])
    assert r.exit_code == 2 and r.output.strip().startswith("Error:") and "--group-plot" in r.output


def test_a_run_genotype_is_named_after_its_run_folder():
    rows = build_rows([_fps("a0", 10.0, "runs/t6a-s0/train/genotype.json")], [])
    assert rows[0].network == "t6a-s0 ×4.5"
    (g,) = build_groups(rows, [])
    assert g.group == "t6a" and [r.name for r in g.runs] == ["t6a-s0"]  # no width suffix in the run's name


def _genotype_file(path, search=None, random_search=None):
    meta = {"search": search} if search is not None else {"random_search": random_search}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "lgcnet-genotype", "meta": meta}))
    return str(path)


def test_groups_by_recorded_configuration(tmp_path):
    """--group-by config: the seed aside, equal search settings are one group whatever the run names."""
    def search(seed, beta=0.005, fusion="dcfc"):
        return {"seed": seed, "beta": beta, "space": {"fusion": fusion}, "lut": {"path": f"/x/{seed}.parquet"}}

    paths = {
        "a0": _genotype_file(tmp_path / "runs/x-s0/train/genotype.json", search(0)),
        "a1": _genotype_file(tmp_path / "runs/other/train/genotype.json", search(1)),  # a name that does not say
        "b0": _genotype_file(tmp_path / "runs/y-s0/train/genotype.json", search(0, fusion="aspp")),
        "c0": _genotype_file(tmp_path / "runs/z-s0/train/genotype.json", search(0, beta=0.05)),
        "r0": _genotype_file(tmp_path / "runs/t7a/random-000.json", random_search={"setting": "a", "draw": 0}),
        "r1": _genotype_file(tmp_path / "runs/t7a/random-001.json", random_search={"setting": "a", "draw": 1}),
        "n0": str(tmp_path / "gone/genotype.json"),  # unreadable: grouped by its name
    }
    fps = [_fps(sha, 10.0 + i, p) for i, (sha, p) in enumerate(paths.items())]
    groups = build_groups(build_rows(fps, []), [], by="config")
    by = {g.group: sorted(r.name for r in g.runs) for g in groups}
    assert by == {"search (most common settings)": ["other", "x-s0"], 'space.fusion="aspp"': ["y-s0"],
                  "beta=0.05": ["z-s0"], "random (most common settings)": ["t7a-random-000", "t7a-random-001"],
                  "gone": ["gone"]}
    with pytest.raises(Exception, match="unknown grouping"):
        build_groups([], [], by="colour")
    md = render_groups_markdown(groups, "config")
    assert "record the same search" in md and '| space.fusion="aspp" | 1 |' in md
