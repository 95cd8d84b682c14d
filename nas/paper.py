"""The LGCNet paper's own numbers, in one place, for the commands that print ours beside them.

Every value is quoted from the paper — G. Cheng, P. Sun, T.-B. Xu, S. Lyu, P. Lin, "Local-to-Global
Information Communication for Real-Time Semantic Segmentation Network Search", arXiv:2302.08481
(cs.CV, 2023) —; the table or section it comes from is named next to it. Nothing here is measured
by this repository.
"""

from __future__ import annotations

#: The paper these figures come from.
CITATION = ("G. Cheng, P. Sun, T.-B. Xu, S. Lyu, P. Lin, \"Local-to-Global Information Communication for "
            "Real-Time Semantic Segmentation Network Search\", arXiv:2302.08481 (cs.CV), 2023")

#: Table VI d (cell independent + GCN): parameters of the searched network (Fig. 9).
PARAMS = 2.09e6
#: Table IV: the searched network on a Titan Xp, PyTorch, 769x1537, batch 1.
LATENCY_MS = 8.68
FPS = 115.2
#: Table IV with TensorRT 5.1.5.
FPS_TENSORRT = 205.6
#: IV-B: Cityscapes evaluation input (resized from 1024x2048), single scale.
CITYSCAPES_RESOLUTION = (769, 1537)
#: Table V: CamVid input size.
CAMVID_RESOLUTION = (720, 960)
#: IV-A: the search's initial channels.
SEARCH_INIT_CHANNELS = 8


def params_note(params: int | float | None) -> str:
    """``"2.093 M params (paper: 2.09 M, Table VI)"`` — ours beside the paper's."""
    ours = "–" if params is None else f"{params / 1e6:.3f} M"
    return f"{ours} params (paper: {PARAMS / 1e6:.2f} M, Table VI)"
