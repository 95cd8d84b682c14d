"""The LUTs committed under luts/: each was measured on the device its file name says, and its own
metadata proves it (device, backend, resolution, threads); a stored latency model's scope names
the same device and backend. A LUT copied under the wrong name, or one whose metadata was lost,
fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latbench.lut import read_lut

LUTS = sorted((Path(__file__).resolve().parents[1] / "luts").glob("*.parquet"))
#: file-name prefix → (device type, text the device name must hold)
DEVICES = {"cpu-epyc-1t": ("cpu", "EPYC"), "h200": ("cuda", "H200")}
BACKENDS = ("cpu", "ort", "compile", "cudagraph", "eager", "trt")


def _prefix(name: str) -> str:
    for p in DEVICES:
        if name == p or name.startswith(p + "-"):
            return p
    raise AssertionError(f"luts/{name}.parquet: its name starts with no known device ({', '.join(DEVICES)})")


def test_there_are_committed_luts():
    assert LUTS, "luts/ holds no LUT"


@pytest.mark.parametrize("path", LUTS, ids=lambda p: p.stem)
def test_a_committed_lut_was_measured_on_the_device_its_name_says(path):
    lut = read_lut(path)
    meta = lut.meta
    prefix = _prefix(path.stem)
    dtype, dname = DEVICES[prefix]
    assert meta["device"]["type"] == dtype and dname in meta["device"]["name"], meta["device"]
    if dtype == "cpu":
        assert meta["protocol"]["threads"] == 1  # "-1t"
    rest = path.stem[len(prefix):]
    backend = next((b for b in BACKENDS if f"-{b}-" in rest + "-"), None)
    if backend is not None:
        assert meta["backend"] == backend
    res = re.search(r"-(\d+)x(\d+)(?:-|$)", rest)
    if res:
        assert (int(res.group(1)), int(res.group(2))) in lut.resolutions()
    date = re.search(r"(\d{4}-\d{2}-\d{2})$", path.stem)
    if date:
        assert meta["created"].startswith(date.group(1))
    for model in meta.get("latency_models") or []:
        scope = model["scope"]
        assert scope["backend"] == meta["backend"] and dname in str(scope.get("device", "")), scope
