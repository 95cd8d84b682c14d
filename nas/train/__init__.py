"""Fine-tuning, evaluation and prediction for derived LGCNet networks (``nas train / eval / predict``).

- :mod:`nas.train.trainer` — :class:`TrainConfig`, :func:`train_genotype` (paper IV-A fine-tuning);
- :mod:`nas.train.evaluate` — :func:`evaluate_split` (confusion matrix over a whole split) and the
  ``reports/miou/<name>.json`` result file;
- :mod:`nas.train.predict` — colour-coded predictions and overlays (paper Fig. 6);
- :mod:`nas.train.checkpoint` — the self-describing checkpoint format.

Import the submodules directly; this package imports nothing heavy on its own.
"""
