"""Export any ``nn.Module`` + example inputs to a self-contained ONNX file, cached by content hash.

What every exported file is: fixed shapes (those of the example inputs, batch included), opset
:data:`DEFAULT_OPSET` (17 or newer), weights inside the file (no external data), input names
``input0..``, output names ``output0..``, fp32 or fp16 end to end (TensorRT 11 networks are strongly
typed, so an FP16 engine needs an FP16 ONNX file: :attr:`ExportSettings.precision` ``"fp16"`` casts
the module and the inputs before export).

Exporter choice (recorded in :attr:`ExportedModel.settings`): the **dynamo** exporter
(``torch.onnx.export(..., dynamo=True)``, torch's default since 2.9, runs onnxscript's optimizer) is
the default. The legacy TorchScript exporter (``exporter="torchscript"``) is kept as an option: it
is ~50x faster to export, but it refuses adaptive average pooling whose output size does not
divide the input size and emits larger graphs (e.g. 31 nodes for a stride-2 factorized reduction
where dynamo emits 6). Neither falls back to the other.

Adaptive average pooling to k x k on a size that k does not divide (DESIGN §6): the dynamo
exporter lowers it to a gather graph (``GatherND``/``Gather``/``Where``/``Div``, e.g. 90 nodes for
5 x 5 bins on 17 x 33); the legacy exporter fails. With ``rewrite_adaptive_pool=True`` (default)
each such ``nn.AdaptiveAvgPool2d`` in a *copy* of the module is replaced, for export only, by the
same average written as two matrix products with constant pooling matrices (``P_h @ x @ P_w^T``,
row i of ``P_h`` holds ``1/len`` over rows ``floor(i*H/k) .. ceil((i+1)*H/k)-1`` exactly as
PyTorch's kernel does). It agrees with ``adaptive_avg_pool2d`` to float rounding (tested), exports
as two ``MatMul`` nodes with either exporter and is what TensorRT and ONNX Runtime then run.
Pools whose output size divides the input are left alone (they export as an exact
``AveragePool``). The rewrites applied are listed in :attr:`ExportedModel.rewrites`.

Cache: ``<cache_dir>/<key>.onnx`` + ``<key>.json`` (metadata), written atomically. ``key`` hashes
the module's structure (module types, their forward code, their plain attributes), parameter and
buffer names/shapes/dtypes, input and output shapes, the export settings and the torch / onnx /
onnxscript versions, and — with ``match="weights"`` (default) — the weight values. Timing
backends use ``match="structure"``: a file exported from a module with the same structure and
other weight values times the same, so a rebuild (whose ops get fresh random weights) does not
re-export; such a file must not be used to check numerics.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from latbench.errors import UserError
from latbench.files import atomic_write, atomic_write_text, file_sha256

#: Opset written by default; 17 is the oldest accepted (LayerNorm, stable Resize semantics).
DEFAULT_OPSET = 18
MIN_OPSET = 17
EXPORTERS = ("dynamo", "torchscript")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
MATCH_MODES = ("weights", "structure")
#: Bump when the rewrite logic or the file layout changes (invalidates every cache entry).
FORMAT_VERSION = 1


class OnnxExportError(RuntimeError):
    """The exporter failed on a module (a fact about the op, recorded as a failed measurement)."""


@dataclass(frozen=True)
class ExportSettings:
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    precision: str = "fp32"
    rewrite_adaptive_pool: bool = True
    check: bool = True  # run onnx.checker on the written file

    def __post_init__(self) -> None:
        if int(self.opset) < MIN_OPSET:
            raise UserError(f"ONNX opset {self.opset} is too old: latbench exports opset {MIN_OPSET} or newer")
        if self.exporter not in EXPORTERS:
            raise UserError(f"unknown ONNX exporter {self.exporter!r}; choose one of {', '.join(EXPORTERS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportedModel:
    """One ONNX file on disk and what it holds."""

    path: Path
    sha256: str  # of the file's bytes (TensorRT engines are keyed by it)
    key: str  # the cache key it was stored under
    match: str
    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    settings: ExportSettings
    rewrites: tuple[str, ...] = ()
    nodes: int = 0
    op_types: tuple[str, ...] = ()
    export_s: float = 0.0  # time the export took when the file was made
    cached: bool = False  # this call found the file in the cache
    versions: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """JSON-able facts for a measurement's ``info`` / LUT metadata."""
        return {
            "onnx_sha256": self.sha256, "onnx_key": self.key, "onnx_match": self.match,
            "onnx_nodes": self.nodes, "onnx_rewrites": list(self.rewrites),
            "onnx_export_s": round(self.export_s, 3), "onnx_cached": self.cached,
            "onnx_opset": self.settings.opset, "onnx_exporter": self.settings.exporter,
            "onnx_precision": self.settings.precision,
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d.pop("cached")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path, cached: bool) -> "ExportedModel":
        d = dict(d)
        d["path"] = path
        d["settings"] = ExportSettings(**d["settings"])
        for k in ("input_names", "output_names", "rewrites", "op_types"):
            d[k] = tuple(d.get(k) or ())
        for k in ("input_shapes", "output_shapes"):
            d[k] = tuple(tuple(int(x) for x in s) for s in d.get(k) or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known}, cached=cached)


# --- cache location ---------------------------------------------------------------------------

def cache_root() -> Path:
    """``$LATBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/latbench``, else ``~/.cache/latbench``."""
    env = os.environ.get("LATBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "latbench"


def default_cache_dir() -> Path:
    """Where exported ONNX files go unless a cache dir is given."""
    return cache_root() / "onnx"


def resolve_cache_dir(cache_dir: str | os.PathLike | None, sub: str = "onnx") -> Path:
    """``cache_dir`` (a user's ``--cache-dir``: files go to ``<cache_dir>/<sub>``) or the default."""
    path = (Path(cache_dir).expanduser() / sub) if cache_dir is not None else cache_root() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache folder {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the cache folder {str(path)!r} is not writable; give another --cache-dir")
    return path


# --- adaptive pooling as matrix products -------------------------------------------------------

def adaptive_pool_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(n_out, n_in)`` matrix whose row i averages PyTorch's adaptive bin i:
    ``[floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))``."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m.to(dtype)


class AdaptiveAvgPoolAsMatMul(nn.Module):
    """``adaptive_avg_pool2d`` for one fixed input size as ``P_h @ x @ P_w^T`` (export-only stand-in)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.register_buffer("ph", adaptive_pool_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("pwt", adaptive_pool_matrix(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.ph, x), self.pwt)


def _pool_out_hw(pool: nn.AdaptiveAvgPool2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    size = pool.output_size
    if isinstance(size, int):
        size = (size, size)
    return tuple(in_hw[i] if size[i] is None else int(size[i]) for i in range(2))  # type: ignore[return-value]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _trace_shapes(module: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[dict[str, set], list[tuple[int, ...]]]:
    """One forward pass: the input H x W seen by every AdaptiveAvgPool2d, and the output shapes."""
    seen: dict[str, set] = {}
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, nn.AdaptiveAvgPool2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, set()).add(tuple(args[0].shape[-2:]))))
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise OnnxExportError(f"{type(module).__name__}.forward must return a tensor or a tuple of tensors")
    return seen, [tuple(o.shape) for o in outs]


def rewrite_adaptive_pools(module: nn.Module, pool_inputs: dict[str, set]) -> list[str]:
    """Replace (in place) every AdaptiveAvgPool2d whose output size does not divide its single
    observed input size by :class:`AdaptiveAvgPoolAsMatMul`; return one line per rewrite."""
    notes = []
    for name, sizes in sorted(pool_inputs.items()):
        pool = module.get_submodule(name)
        if len(sizes) != 1:
            notes.append(f"{name}: AdaptiveAvgPool2d seen at several sizes {sorted(sizes)}, left to the exporter")
            continue
        in_hw = next(iter(sizes))
        out_hw = _pool_out_hw(pool, in_hw)
        if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
            continue
        _set_submodule(module, name, AdaptiveAvgPoolAsMatMul(in_hw, out_hw))
        notes.append(f"{name}: adaptive_avg_pool2d {in_hw[0]}x{in_hw[1]}->{out_hw[0]}x{out_hw[1]} as MatMul")
    return notes


# --- hashing ----------------------------------------------------------------------------------

_PLAIN = (int, float, bool, str, type(None))


def _plain(v: Any) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return False


def _code_fingerprint(fn: Any) -> bytes:
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn).encode()
    consts = [repr(c) for c in code.co_consts if not hasattr(c, "co_code")]
    return code.co_code + repr((code.co_names, consts)).encode()


def module_fingerprint(module: nn.Module, with_values: bool) -> str:
    """sha256 of a module's structure (and, if ``with_values``, its weights)."""
    h = hashlib.sha256()
    for name, m in module.named_modules(remove_duplicate=False):
        cls = type(m)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|".encode())
        h.update(_code_fingerprint(cls.forward))
        attrs = sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v))
        h.update(repr(attrs).encode())
    for name, t in module.state_dict(keep_vars=False).items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if with_values:
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx

    v = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except Exception:  # pragma: no cover - onnxscript is a dependency
        v["onnxscript"] = "missing"
    return v




# --- export -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warnings; keep a CLI's output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _write_model(model: nn.Module, args: tuple, in_names: list[str], out_names: list[str],
                 settings: ExportSettings, dest: str) -> None:
    with _quiet():
        if settings.exporter == "dynamo":
            program = torch.onnx.export(model, args, dynamo=True, opset_version=settings.opset,
                                        input_names=in_names, output_names=out_names, optimize=True,
                                        verbose=False)
            program.save(dest, external_data=False)
        else:
            torch.onnx.export(model, args, dest, dynamo=False, opset_version=settings.opset,
                              input_names=in_names, output_names=out_names, do_constant_folding=True,
                              export_params=True)


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], settings: ExportSettings | None = None,
                cache_dir: str | os.PathLike | None = None, *, match: str = "weights") -> ExportedModel:
    """Export ``module(*inputs)`` to ONNX (or find it in the cache) and return what was written.

    ``module`` is not modified (a CPU copy is exported). ``cache_dir`` is the ONNX folder itself
    (default :func:`default_cache_dir`). Raises :class:`OnnxExportError` if the exporter fails.
    """
    import onnx

    settings = settings or ExportSettings()
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, not {match!r}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dtype = PRECISIONS[settings.precision]

    model = copy.deepcopy(module).to("cpu").float().eval()
    args = tuple(t.detach().to("cpu").float() if t.is_floating_point() else t.detach().to("cpu") for t in inputs)
    pool_inputs, out_shapes = _trace_shapes(model, args)

    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "settings": settings.to_dict(), "match": match,
                         "versions": _versions(),
                         "inputs": [(str(t.dtype), tuple(t.shape)) for t in args],
                         "outputs": out_shapes}, sort_keys=True).encode())
    h.update(module_fingerprint(model, with_values=(match == "weights")).encode())
    key = h.hexdigest()[:32]
    onnx_path, meta_path = folder / f"{key}.onnx", folder / f"{key}.json"

    cached = _load_cached(onnx_path, meta_path)
    if cached is not None:
        return cached

    rewrites = rewrite_adaptive_pools(model, pool_inputs) if settings.rewrite_adaptive_pool else []
    if dtype != torch.float32:
        model = model.to(dtype)
        args = tuple(t.to(dtype) if t.is_floating_point() else t for t in args)
    in_names = [f"input{i}" for i in range(len(args))]
    out_names = [f"output{i}" for i in range(len(out_shapes))]
    t0 = time.perf_counter()
    try:
        atomic_write(onnx_path, lambda tmp: _write_model(model, args, in_names, out_names, settings, tmp))
    except Exception as exc:
        raise OnnxExportError(f"ONNX export of {type(module).__name__} failed ({settings.exporter} exporter, "
                              f"opset {settings.opset}): {_first_line(exc)}") from exc
    export_s = time.perf_counter() - t0

    proto = onnx.load(str(onnx_path))
    if settings.check:
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            onnx_path.unlink(missing_ok=True)
            raise OnnxExportError(f"exported ONNX for {type(module).__name__} fails onnx.checker: "
                                  f"{_first_line(exc)}") from exc
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), settings.opset)
    if opset < MIN_OPSET:
        raise OnnxExportError(f"the exporter wrote opset {opset}, older than {MIN_OPSET}")
    exported = ExportedModel(
        path=onnx_path, sha256=file_sha256(onnx_path), key=key, match=match,
        input_names=tuple(in_names), input_shapes=tuple(tuple(t.shape) for t in args),
        output_names=tuple(out_names), output_shapes=tuple(out_shapes), settings=settings,
        rewrites=tuple(rewrites), nodes=len(proto.graph.node),
        op_types=tuple(sorted({n.op_type for n in proto.graph.node})), export_s=export_s,
        cached=False, versions=_versions())
    atomic_write_text(meta_path, json.dumps(exported.to_json(), indent=1, sort_keys=True))
    return exported


def _load_cached(onnx_path: Path, meta_path: Path) -> ExportedModel | None:
    if not (onnx_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        exported = ExportedModel.from_json(meta, onnx_path, cached=True)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # a damaged entry is re-exported (and overwritten atomically)
    if file_sha256(onnx_path) != exported.sha256:
        return None
    return exported
