"""LGCNet's latency-constrained differentiable search (paper III-B, III-C; DESIGN §3).

One module per job:

- :mod:`nas.search.arch_params` — the architecture parameters (stored as logits, log α);
- :mod:`nas.search.ggm` — the GCN-guided module between adjacent cells (eq. 5–7) and its ablations;
- :mod:`nas.search.temperature` — the Gumbel-softmax temperature schedule (λ: 1.0 → 0.03);
- :mod:`nas.search.latency` — the LUT-priced expected latency (eq. 8–9), the coverage check;
- :mod:`nas.search.step` — one single-level optimisation step (eq. 10): the model (supernet + θ + GGM),
  its optimisers, mixed precision;
- :mod:`nas.search.trainer` — the search on the shared epoch loop (:mod:`nas.train.loop`): DDP, exact
  checkpoints, logs, the genotype at the end;
- :mod:`nas.search.derive` — α → discrete :class:`~nas.genotype.Architecture`;
- :mod:`nas.search.plots` — α heat maps, curves, drawings of the derived architecture.

``docs/search.md`` describes the method as implemented, every default and its source.
"""

from nas.search.arch_params import ArchConfig, ArchParams, gumbel_softmax, sample_gumbel
from nas.search.derive import derive_architecture
from nas.search.ggm import GGM, GGMConfig
from nas.search.latency import LatencyTable, load_latency_table
from nas.search.temperature import TemperatureSchedule

__all__ = [
    "ArchConfig", "ArchParams", "GGM", "GGMConfig", "LatencyTable", "TemperatureSchedule",
    "derive_architecture", "gumbel_softmax", "load_latency_table", "sample_gumbel",
]
