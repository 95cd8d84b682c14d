"""A --lut that names no file is answered with the exact latbench build-lut command that writes it
(nas search, nas sample, nas fps): the file's name, the resolution asked for, the CPU when asked."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from latbench.errors import UserError
from nas.cli import cli
from nas.lutfile import build_lut_command, require_lut_file

PAPER = Path(__file__).resolve().parents[1] / "nas" / "genotypes" / "lgcnet_paper.json"


def test_build_command_names_the_file_its_resolutions_and_a_cpu():
    assert build_lut_command("luts/titanxp.parquet", ["769x1537"]) == \
        "latbench build-lut --gpu titanxp --resolution 769x1537 --output luts/titanxp.parquet"
    assert build_lut_command("my luts/cpu.parquet", ["33x65", "33x65", "65x129"], device="cpu") == \
        "latbench build-lut --gpu cpu --device cpu --resolution 33x65 --resolution 65x129 --output 'my luts/cpu.parquet'"
    assert build_lut_command("luts/h100.parquet") == "latbench build-lut --gpu h100 --output luts/h100.parquet"


def test_require_lut_file(tmp_path):
    (tmp_path / "ok.parquet").write_bytes(b"x")
    require_lut_file(tmp_path / "ok.parquet")
    with pytest.raises(UserError, match="is a directory"):
        require_lut_file(tmp_path)
    with pytest.raises(UserError, match=r"does not exist; build it with: latbench build-lut --gpu nope"):
        require_lut_file(tmp_path / "nope.parquet", ["33x65"])


def _one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    return lines[0]


@pytest.mark.parametrize("args", [
    ["search", "--dataset", "synthetic", "--resolution", "33x65", "--device", "cpu"],
    ["sample", "--resolution", "33x65", "-n", "1"],
    ["fps", "--arch", str(PAPER), "--resolution", "33x65", "--device", "cpu"],
])
def test_nas_commands_name_the_build(tmp_path, args):
    lut = tmp_path / "luts" / "cpu.parquet"
    out = ["--out", str(tmp_path / "o")] if args[0] in ("search", "sample") else ["--reports", str(tmp_path / "r")]
    line = _one_error_line(CliRunner().invoke(cli, [*args, "--lut", str(lut), *out]))
    cmd = line.split("build it with: ", 1)[1]
    argv = shlex.split(cmd)
    assert argv[:4] == ["latbench", "build-lut", "--gpu", "cpu"] and argv[argv.index("--output") + 1] == str(lut)
    assert argv[argv.index("--resolution") + 1] == "33x65"
    if args[0] != "sample":
        assert "--device" in argv and argv[argv.index("--device") + 1] == "cpu"
