"""LUT files: the Parquet format and its provenance (:mod:`.table`), merging (:mod:`.merge`),
comparison (:mod:`.compare`) and its reports (:mod:`.report_md`, :mod:`.plots`).

The file format's public names are re-exported here: ``from latbench.lut import LUT, read_lut``.
"""
from latbench.lut.table import (LUT, Coverage, ROW_ID, SCHEMA_VERSION, STATUSES, concat_rows, dedupe_rows,
                                empty_frame, now_iso, read_lut, write_lut)

__all__ = ["LUT", "Coverage", "ROW_ID", "SCHEMA_VERSION", "STATUSES", "concat_rows", "dedupe_rows",
           "empty_frame", "now_iso", "read_lut", "write_lut"]
