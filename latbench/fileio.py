"""The old name of :mod:`latbench.files` (split by concern into ``outputs``, ``atomic``, ``lock``,
``journal``, ``png`` and ``storage``): re-exports its public names so that code written against
``latbench.fileio`` keeps importing. New code imports from :mod:`latbench.files`."""

from latbench.files import *  # noqa: F401,F403
from latbench.files import __all__  # noqa: F401
