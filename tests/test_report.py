"""nas report: FPS records + mIoU records -> Markdown table and PNG; the mIoU file format."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from latbench.errors import UserError
from nas.cli import cli
from nas.fps import append_records
from nas.report import MiouRecord, build_rows, read_miou_record, render_markdown, write_miou_record


def _record(sha="aaaa1111bbbb2222", name="net-a", device="NVIDIA H100 80GB HBM3", backend="cudagraph",
            res="769x1537", latency_ms=8.0, date="2026-01-01T00:00:00+00:00", width_mult=1.0):
    return {"date": date, "report": "h100", "genotype": {"sha": sha, "name": name, "path": "g.json"},
            "network": {"width_mult": width_mult, "params": 2_500_000, "macs": 5_000_000_000, "flops": 10_000_000_000},
            "resolution": res, "batch": 1, "backend": backend, "precision": "fp32", "status": "ok",
            "latency_ms": latency_ms, "p10_ms": latency_ms * 0.99, "p90_ms": latency_ms * 1.02,
            "fps": 1e3 / latency_ms, "host_bound": backend == "eager", "device": {"name": device, "type": "cuda"},
            "lut": {"sum_us": latency_ms * 1e3 * 0.97, "calibrated_us": None}}


def _miou(sha="aaaa1111bbbb2222", res="769x1537", miou=0.724, date="2026-02-01T00:00:00+00:00"):
    return MiouRecord(genotype_sha=sha, dataset="cityscapes", split="val", resolution=res, miou=miou,
                      genotype_path="g.json", per_class={"road": 0.97, "wall": None}, date=date)


def test_latest_record_wins_and_miou_is_joined_by_genotype():
    old = _record(latency_ms=9.0, date="2026-01-01T00:00:00+00:00")
    new = _record(latency_ms=8.0, date="2026-01-02T00:00:00+00:00")
    eager = _record(backend="eager", latency_ms=20.0)
    other = _record(sha="cccc", name="net-b", res="513x1025", latency_ms=4.0)
    rows = build_rows([old, new, eager, other], [_miou(res="1024x2048", date="2026-01-05"), _miou(date="2026-01-03")])
    assert len(rows) == 3
    a = {(r.network, r.backend): r for r in rows}
    assert a[("net-a", "cudagraph")].latency_ms == 8.0
    assert a[("net-a", "cudagraph")].miou.resolution == "769x1537"  # same resolution preferred over newer
    assert a[("net-b", "cudagraph")].miou is None
    md = render_markdown(rows)
    lines = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 3 and lines[0].startswith("| Network |")
    assert md.strip().splitlines()[-1].startswith("Paper, for comparison") and "2.09 M params" in md
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    row = next(ln for ln in lines if "net-a" in ln and "cudagraph" in ln)
    assert "| 72.4 |" in row and "| 8.00 |" in row and "| 125.0 |" in row and "769 × 1537" in row
    assert "host-bound" in next(ln for ln in lines if "eager" in ln)


def test_width_multiplier_is_named():
    rows = build_rows([_record(width_mult=0.5)], [])
    assert rows[0].network == "net-a ×0.5"


def test_miou_record_round_trip_and_validation(tmp_path):
    rec = _miou()
    p = write_miou_record(tmp_path / "miou" / "run.json", rec)
    back = read_miou_record(p)
    assert back == rec
    bad = rec.to_dict()
    bad["miou"] = 72.4  # a percentage, not a fraction
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="fraction"):
        read_miou_record(tmp_path / "bad.json")
    bad = rec.to_dict()
    bad["format"] = "other"
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="not an mIoU record"):
        read_miou_record(tmp_path / "bad2.json")


def test_cli_writes_table_and_png(tmp_path):
    reports = tmp_path / "reports"
    append_records(reports / "fps" / "h100.json", [_record(), _record(backend="eager", latency_ms=20.0)])
    append_records(reports / "fps" / "cpu.json", [_record(device="AMD EPYC", backend="cpu", res="65x129", latency_ms=9.0)])
    write_miou_record(reports / "miou" / "a.json", _miou())
    out, png = tmp_path / "table.md", tmp_path / "fps_miou.png"
    r = CliRunner().invoke(cli, ["report", "--reports", str(reports), "--out", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    per_network, _, repeated = text.partition("## Repeated runs")
    table = [ln for ln in per_network.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 3 and "AMD EPYC" in text and "NVIDIA H100" in text
    assert len([ln for ln in repeated.splitlines() if ln.startswith("|")]) == 2 + 3  # one run per group here
    assert "2.09 M params (Table VI d)" in text      # the paper's figure beside ours
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_records_is_exit_2(tmp_path):
    r = CliRunner().invoke(cli, ["report", "--reports", str(tmp_path)])
    assert r.exit_code == 2 and "no FPS records" in r.output
