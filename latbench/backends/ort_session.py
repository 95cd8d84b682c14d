"""ONNX Runtime sessions for the ``ort`` backend (:mod:`latbench.backends.ort`): the module itself
(:func:`_ort`, with the install hint), which of its wheels are installed (:func:`coinstall_note`),
the session options that shape a timing (:class:`OrtSessionSettings`), the CUDA provider's options,
opening a session on the requested provider (:func:`open_session`: an error, not a fallback, when
ONNX Runtime did not start it), and the one-node probe session that checks the CUDA provider can
load at all (:func:`probe_provider`, with ONNX Runtime's own reason when it cannot).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from latbench.backends import INSTALL_HINTS
from latbench.errors import UserError

GRAPH_LEVELS = ("disable", "basic", "extended", "all")

def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX Runtime is not installed: pip install 'latbench-lgcnet[ort]' (CPU) or "
                        + INSTALL_HINTS["onnxruntime-gpu"] + coinstall_note()) from None
    return onnxruntime


#: The wheels that install the module ``onnxruntime`` (only one of them may be installed).
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_ort_distributions() -> dict[str, str]:
    """Which of :data:`ORT_DISTRIBUTIONS` are installed, with their versions."""
    from importlib import metadata

    found = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def coinstall_note(found: dict[str, str] | None = None) -> str:
    """'' unless both the CPU and the GPU wheel are installed; else one sentence (with a leading
    '; ') saying so and how to repair it."""
    found = installed_ort_distributions() if found is None else found
    if "onnxruntime" not in found or "onnxruntime-gpu" not in found:
        return ""
    return (f"; onnxruntime {found['onnxruntime']} (CPU) and onnxruntime-gpu {found['onnxruntime-gpu']} are both "
            "installed and share the module 'onnxruntime', so the CPU wheel can shadow the CUDA provider: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def _available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class OrtSessionSettings:
    """The session options that shape a timing (all recorded in the LUT metadata)."""

    intra_op_threads: int
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    execution_mode: str = "sequential"
    cuda_graph: bool = False
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    use_tf32: bool = False  # CUDA provider only: TF32 math (precision tf32) or strict fp32
    synchronize: bool = False  # CUDA provider only: True = every run ends with a stream sync

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_LEVELS:
            raise UserError(f"unknown ONNX Runtime graph optimisation level {self.graph_optimization!r}; "
                            f"choose one of {', '.join(GRAPH_LEVELS)}")
        if self.intra_op_threads < 1 or self.inter_op_threads < 1:
            raise UserError("ONNX Runtime thread counts must be >= 1")

    def session_options(self):
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if self.execution_mode == "sequential" \
            else ort.ExecutionMode.ORT_PARALLEL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        so.log_severity_level = 3
        return so

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cuda_provider_options(device: str, settings: OrtSessionSettings, stream: Any = None) -> dict[str, str]:
    index = torch.device(device).index or 0
    opts = {"device_id": str(index), "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
            "enable_cuda_graph": "1" if settings.cuda_graph else "0", "use_tf32": "1" if settings.use_tf32 else "0"}
    if stream is not None:
        opts.update({"has_user_compute_stream": "1", "user_compute_stream": str(stream.cuda_stream)})
    return opts


def open_session(path: str | os.PathLike, device: str, settings: OrtSessionSettings, stream: Any = None):
    """An ``InferenceSession`` on ``device``'s provider; UserError if that provider is not used."""
    ort = _ort()
    if device == "cpu":
        providers: list[Any] = ["CPUExecutionProvider"]
        want = "CPUExecutionProvider"
    else:
        # The CPU provider stays listed for the few nodes the CUDA provider has no kernel for
        # (shape arithmetic); which nodes ran where is ONNX Runtime's documented assignment.
        providers = [("CUDAExecutionProvider", cuda_provider_options(device, settings, stream)), "CPUExecutionProvider"]
        want = "CUDAExecutionProvider"
    session = ort.InferenceSession(str(path), settings.session_options(), providers=providers)
    if want not in session.get_providers():
        raise UserError(f"ONNX Runtime did not start its {want} (session uses {session.get_providers()}); "
                        f"{INSTALL_HINTS['onnxruntime-gpu']}")
    return session


def _probe_model() -> bytes:
    """A one-node ONNX model (Relu on a float[1]), built in memory."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "latbench_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)  # readable by every onnxruntime this backend supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


@contextlib.contextmanager
def _captured_fd2() -> Any:
    """Capture what C++ code writes to file descriptor 2 (ONNX Runtime's log) into a buffer."""
    buf = io.StringIO()
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf.write(tmp.read().decode("utf-8", "replace"))


def _reason(text: str) -> str:
    """The most telling line of ONNX Runtime's output about a provider that did not load."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("*")]
    for needle in ("failed to load", "cannot open shared object", "ep error", "not in available provider",
                   "error", "warn"):
        for ln in lines:
            if needle in ln.lower():
                return ln[:300]
    return lines[0][:300] if lines else "no reason given"


def probe_provider(provider: str, options: dict[str, str] | None = None) -> list[str]:
    """Open a one-node session asking for ``provider`` (then the CPU provider) and return the
    session's providers; :class:`UserError` (one line, with ONNX Runtime's reason) if ``provider``
    did not start. ONNX Runtime does not raise for a provider it cannot load: it logs the failure
    (or warns that the provider is unavailable) and runs the session on the CPU provider."""
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 2
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), _captured_fd2() as err:
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(_probe_model(), so, providers=[(provider, dict(options or {})),
                                                                          "CPUExecutionProvider"])
            used = list(session.get_providers())
            exc_text = ""
        except Exception as exc:  # noqa: BLE001 - any failure to create the session is the answer
            used, exc_text = [], f"{type(exc).__name__}: {exc}"
    if provider in used:
        return used
    text = "\n".join([exc_text, out.getvalue(), err.getvalue(), *(str(w.message) for w in caught)])
    build = ""
    try:
        from onnxruntime.capi import build_and_package_info as info

        cuda = getattr(info, "cuda_version", None)
        build = f"; this onnxruntime {ort.__version__} was built for CUDA {cuda}" if cuda else ""
    except Exception:
        pass
    torch_cuda = f", torch here uses CUDA {torch.version.cuda}" if torch.version.cuda and build else ""
    raise UserError(f"ONNX Runtime could not start {provider} in a probe session (it ran on "
                    f"{', '.join(used) or 'nothing'}): {_reason(text)}{build}{torch_cuda}; "
                    f"{INSTALL_HINTS['onnxruntime-gpu']}{coinstall_note()}")
