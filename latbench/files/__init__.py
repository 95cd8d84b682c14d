"""Every output of latbench and nas goes through this package, one module per concern:

- :mod:`~latbench.files.outputs`: :func:`check_writable` (a file), :func:`check_output_dir` (a
  folder) and :func:`check_outputs` (a command's outputs) check an output path *before* any work;
- :mod:`~latbench.files.atomic`: :func:`atomic_write` (and ``_text``/``_bytes``) through a
  temporary file and ``os.replace``; :func:`file_sha256`;
- :mod:`~latbench.files.lock`: :class:`FileLock`, an exclusive lock file whose stale copies (a
  dead writer) are taken over atomically; :func:`lock_path`;
- :mod:`~latbench.files.journal`: :class:`Journal`, append-only JSON lines (whole lines or
  nothing), :func:`read_journal`, :func:`truncate_journal`;
- :mod:`~latbench.files.png`: :func:`save_png`, a matplotlib figure written atomically;
- :mod:`~latbench.files.storage`: what counts as the storage refusing (:func:`is_storage_error`,
  :func:`output_error`) and the low-level pieces the others share.
"""

from latbench.files.atomic import (STALE_TMP_OTHER_HOST_S, atomic_write, atomic_write_bytes, atomic_write_text,
                                   clean_stale_temporaries, file_sha256)
from latbench.files.journal import Journal, read_journal, truncate_journal
from latbench.files.lock import LOCK_SUFFIX, FileLock, lock_path
from latbench.files.outputs import MIN_FREE_BYTES, check_output_dir, check_outputs, check_writable
from latbench.files.png import save_png
from latbench.files.storage import STORAGE_ERRNOS, fsync_dir, is_storage_error, output_error

__all__ = [
    "LOCK_SUFFIX", "MIN_FREE_BYTES", "STALE_TMP_OTHER_HOST_S", "STORAGE_ERRNOS", "FileLock", "Journal",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "check_output_dir", "check_outputs",
    "check_writable", "clean_stale_temporaries", "file_sha256", "fsync_dir", "is_storage_error", "lock_path",
    "output_error", "read_journal", "save_png", "truncate_journal",
]
