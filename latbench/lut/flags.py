"""Flagged LUT rows (DESIGN §5.11): a timing ``build-lut`` did not trust — taken while other
processes held the timing threads' cores, or physically implausible for the op — carries the reason
in its ``flag`` column (:mod:`latbench.timing.plausibility`). :func:`refuse_flagged` is what
``latbench fit``, ``validate-lut`` and ``nas search`` call on the LUT they open.
"""

from __future__ import annotations

from typing import Any

from latbench.errors import UserError
from latbench.timing.load import FLAG_COLUMN


def flagged_rows(lut: Any, height: int | None = None, width: int | None = None, batch: int | None = None,
                 backend: str | None = None, precision: str | None = None):
    """The rows of ``lut`` (a :class:`latbench.lut.table.LUT`) whose ``flag`` is set, restricted to
    a resolution / batch / backend / precision where given. Empty for LUTs without the column."""
    df = lut.df
    if FLAG_COLUMN not in df.columns or df.empty:
        return df.iloc[0:0]
    flag = df[FLAG_COLUMN]
    mask = flag.notna() & (flag.astype(str).str.strip() != "") & (df["status"] == "ok")
    for col, val in (("height", height), ("width", width), ("batch", batch), ("backend", backend),
                     ("precision", precision)):
        if val is not None:
            mask &= df[col] == val
    return df[mask]


def refuse_flagged(lut: Any, where: str, *, height: int | None = None, width: int | None = None,
                   batch: int | None = None, backend: str | None = None, precision: str | None = None,
                   use: str = "this command") -> None:
    """:class:`UserError` (one line) when rows ``use`` needs are flagged; nothing otherwise. Call
    it where a command opens the LUT it prices with (``fit``, ``validate-lut``, ``nas search``)."""
    bad = flagged_rows(lut, height, width, batch, backend, precision)
    if bad.empty:
        return
    keys = bad.drop_duplicates(subset=["key"])
    first = keys.iloc[0]
    reason = str(first[FLAG_COLUMN]).split(";")[0].strip()
    threads = ((getattr(lut, "meta", {}) or {}).get("device") or {}).get("threads")
    hint = "" if threads == 1 else (" (several timing threads stall whenever one is preempted: a LUT built with "
                                    "--threads 1 and a new --output avoids that)")
    raise UserError(
        f"LUT {where!r} has {len(keys)} flagged timing(s) that {use} needs (e.g. {first['key']}: {reason}); "
        f"re-time them on a quieter machine with: {retime_command(lut, where, bad)}{hint}; "
        f"latbench show {where} lists them")


def retime_command(lut: Any, where: str, rows: Any) -> str:
    """The ``build-lut`` command that re-times the flagged rows of the LUT at ``where`` (resuming
    into the same file), spelled from the LUT's own metadata where :mod:`latbench.lut.coverage`
    can; a generic one otherwise."""
    resolutions = sorted({(int(h), int(w)) for h, w in zip(rows["height"], rows["width"])})
    try:
        from latbench.lut.coverage import rebuild_command

        cmd = rebuild_command(lut, where, resolutions)
    except Exception:  # a LUT whose metadata cannot spell its build: the generic form
        return f"latbench build-lut <this LUT's options> --output {where} --retry-flagged"
    cut = min([i for i in (cmd.find(" (this LUT"), cmd.find(" — but")) if i >= 0] or [len(cmd)])
    return cmd[:cut] + " --retry-flagged" + cmd[cut:]
