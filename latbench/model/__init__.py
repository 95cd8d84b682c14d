"""The latency model and everything that judges a LUT against whole networks: the model stored in
a LUT (:mod:`.latency_model`), fitting it (:mod:`.fitting`), fidelity metrics (:mod:`.metrics`),
``latbench fit`` (:mod:`.fit`) and ``latbench validate-lut`` (:mod:`.validate`).

The stored model's public names are re-exported here: ``from latbench.model import LatencyModel``.
"""
from latbench.model.latency_model import LatencyModel, ModelScope, model_for, stored_models, with_model

__all__ = ["LatencyModel", "ModelScope", "model_for", "stored_models", "with_model"]
