"""Pass-throughs (an op that returns its input) are analytic 0 µs rows, never timed, on every backend."""

from __future__ import annotations

import pytest
import torch

from latbench.build.builder import build_lut, journal_path
from latbench.files import read_journal
from latbench.lut.table import read_lut
from latbench.timing.passthrough import is_passthrough


class ReturnsInput(torch.nn.Module):
    def forward(self, x):
        return x


class Copies(torch.nn.Module):
    def forward(self, x):
        return x.clone()


class SecondInput(torch.nn.Module):
    def forward(self, a, b):
        return b


@pytest.mark.parametrize("module,shapes,expected", [
    (torch.nn.Identity(), [(1, 8, 4, 4)], True),
    (ReturnsInput(), [(1, 8, 4, 4)], True),
    (SecondInput(), [(1, 8, 4, 4), (1, 8, 4, 4)], True),
    (Copies(), [(1, 8, 4, 4)], False),  # a copy runs a kernel
    (torch.nn.ReLU(inplace=True), [(1, 8, 4, 4)], False),  # returns its input, but wrote it
    (torch.nn.Conv2d(8, 8, 3), [(1, 8, 4, 4)], False),
    (torch.nn.MaxPool2d(3, 1, 1), [(1, 8, 4, 4)], False),
])
def test_is_passthrough(module, shapes, expected):
    assert is_passthrough(module, shapes) is expected


def test_lgcnet_identity_skip_is_a_passthrough_and_the_others_are_not():
    from nas.ops import build_op

    assert is_passthrough(build_op("skip_connect", 8, 8, 1), [(1, 8, 9, 17)])
    assert not is_passthrough(build_op("skip_connect", 8, 8, 2), [(1, 8, 9, 17)])  # factorized reduce
    assert not is_passthrough(build_op("zero", 8, 8, 1), [(1, 8, 9, 17)])  # makes a new tensor


def test_a_build_stores_passthroughs_as_analytic_and_never_times_them(tmp_path, toy_space, fast_config):
    out = tmp_path / "p.parquet"
    timed = []
    lut = build_lut(toy_space, [(16, 32)], "cpu", fast_config, out, "cpu", progress=False,
                    on_timed=lambda k, m: timed.append(k))
    skip = lut.df[lut.df.op == "skip"]  # the toy space's skip is nn.Identity and is not marked analytic
    assert len(skip) == 3 and (skip.status == "analytic").all() and (skip.median_us == 0).all()
    assert not any(k.startswith("skip|") for k in timed)
    assert lut.meta["build"]["timed"] == len(timed) and lut.meta["complete"] is True
    # a rerun keeps them and times nothing
    again = []
    lut2 = build_lut(toy_space, [(16, 32)], "cpu", fast_config, out, "cpu", progress=False,
                     on_timed=lambda k, m: again.append(k))
    assert again == [] and (lut2.df[lut2.df.op == "skip"].status == "analytic").all()
    assert len(read_lut(out)) == len(lut)


def test_passthroughs_never_reach_the_journal(tmp_path, toy_space, fast_config):
    out = tmp_path / "j.parquet"
    records = []

    def grab(key, m):  # the journal is open while entries are timed
        records[:] = [r for r in read_journal(journal_path(out)) if r.get("type") == "timing"]

    build_lut(toy_space, [(16, 32)], "cpu", fast_config, out, "cpu", progress=False, on_timed=grab)
    assert records and not any(r["key"].startswith("skip|") for r in records)


def test_lgcnet_lut_rows_of_identity_skips_are_analytic():
    from nas.space import LGCNetSpace

    entries = LGCNetSpace().enumerate(65, 129)
    skips = [e for e in entries if e.op == "skip_connect"]
    identity = [e for e in skips if e.spec.param("stride") == 1]
    assert identity and all(e.analytic for e in identity)
    assert all(not e.analytic for e in skips if e.spec.param("stride") == 2)
