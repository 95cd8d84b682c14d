"""PNG plots of a search: α heat maps, training curves, drawings of the derived architecture.

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so nothing global is touched.

- ``alpha_cells.png`` — softmax(θ') per cell (rows: edges, columns: the 8 ops), arg-max boxed;
- ``alpha_fusion.png`` — softmax(θ) per fusion edge (Up×2 edges have 2 columns);
- ``curves.png`` — CE, LUT latency (sampled per step; expected and derived per epoch) and λ over steps;
- ``architecture.png`` — every cell as a DAG with its ops on the edges (paper Fig. 9 style: light
  ops dashed, large-receptive-field ops green, removed ``zero`` edges not drawn);
- ``fusion_cell.png`` — the dense-connected fusion cell with its chosen ops (paper Fig. 8 style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from latbench.files import save_png
from nas.cell import cell_edges
from nas.config import SpaceConfig
from nas.genotype import Architecture
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES, ZERO

SHORT = {
    "max_pool_3x3": "max3", "skip_connect": "skip", "conv_3x3": "conv3", "zero": "none",
    "sep_conv_3x3": "sep3", "dil_sep_conv_3x3_d2": "dil2", "dil_sep_conv_3x3_d4": "dil4",
    "dil_sep_conv_3x3_d8": "dil8", "dil_sep_conv_3x3_d12": "dil12", "conv_1x1": "conv1",
    "gpool_1x1": "gp1", "gpool_2x2": "gp2", "gpool_5x5": "gp5", "deconv": "deconv", "interp": "interp",
}
LIGHT = {"max_pool_3x3", "skip_connect", "interp", "gpool_1x1", "gpool_2x2", "gpool_5x5"}
LARGE_RF = {"dil_sep_conv_3x3_d4", "dil_sep_conv_3x3_d8", "dil_sep_conv_3x3_d12"}


def _style(op: str) -> dict[str, Any]:
    if op in LARGE_RF:
        return {"color": "#2a9d3a", "linestyle": "-"}
    if op in LIGHT:
        return {"color": "#555555", "linestyle": "--"}
    if op.startswith("dil_"):
        return {"color": "#1f6fb4", "linestyle": "-"}
    return {"color": "#c0392b", "linestyle": "-"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return save_png(fig, path, 110, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------
def plot_alpha_cells(path: Path, theta: torch.Tensor, config: SpaceConfig, title: str = "") -> Path:
    probs = torch.softmax(theta.detach().float(), -1).numpy()
    k = probs.shape[0]
    cols = min(7, k)
    rows = int(np.ceil(k / cols))
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows + 0.6))
    fig.subplots_adjust(hspace=0.75, wspace=0.25)
    # colour range = the data's range (early in a search every p is close to 1/8 and a 0–1 scale
    # would show nothing); the colour bar gives the actual values
    vmin, vmax = float(probs.min()), float(probs.max())
    vmax = max(vmax, vmin + 1e-3)
    topo = cell_edges(config.steps)
    edge_names = [f"{'in' + str(s) if s < 2 else 'n' + str(s - 2)}→n{d}" for s, d in topo]
    im = None
    for c in range(k):
        ax = fig.add_subplot(rows, cols, c + 1)
        im = ax.imshow(probs[c], vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        for e, m in enumerate(probs[c].argmax(-1)):
            ax.add_patch(Rectangle((m - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        kind = "reduction" if config.is_reduction(c) else "normal"
        ax.set_title(f"cell {c} ({kind}, s{config.cell_stride(c)})", fontsize=8)
        ax.set_xticks(range(len(CELL_PRIMITIVES)))
        ax.set_xticklabels([SHORT[o] for o in CELL_PRIMITIVES], rotation=90, fontsize=6)
        ax.set_yticks(range(len(edge_names)))
        ax.set_yticklabels(edge_names if c % cols == 0 else [""] * len(edge_names), fontsize=6)
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.6, label="softmax(α') per edge (colour range = data range)")
    fig.suptitle(f"Cell architecture weights (red: arg-max = derived op) {title}".strip(), fontsize=10)
    return _save(fig, path)


def plot_alpha_fusion(path: Path, fusion: Sequence[torch.Tensor], title: str = "") -> Path:
    from nas.fusion import EDGES, edge_candidates

    cands = edge_candidates()
    width = max(len(c) for c in cands)
    grid = np.full((len(cands), width), np.nan)
    for e, t in enumerate(fusion):
        grid[e, :t.numel()] = torch.softmax(t.detach().float(), -1).numpy()
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, vmin=0.0, vmax=max(0.5, float(np.nanmax(grid))), cmap="viridis", aspect="auto")
    for e, c in enumerate(cands):
        m = int(np.nanargmax(grid[e]))
        ax.add_patch(Rectangle((m - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        for j, op in enumerate(c):
            ax.text(j, e, SHORT[op], ha="center", va="center", fontsize=5.5, color="white")
    ax.set_yticks(range(len(cands)))
    ax.set_yticklabels([f"e{j}: n{s}→n{d}" + (" (Up×2)" if kind == "up" else "") for j, (s, d, kind) in enumerate(EDGES)],
                       fontsize=7)
    ax.set_xticks(range(width))
    ax.set_xticklabels([f"op{j}" for j in range(width)], fontsize=7)
    ax.set_xlabel(f"candidates: {', '.join(SHORT[o] for o in FUSION_PRIMITIVES)}; Up×2: "
                  f"{', '.join(UP_PRIMITIVES)}", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="softmax(α) per edge")
    ax.set_title(f"Fusion-cell architecture weights (red: derived op) {title}".strip(), fontsize=10)
    return _save(fig, path)


def plot_curves(path: Path, history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], title: str = "") -> Path:
    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    s = [r["step"] for r in steps]
    if steps:
        ax1.plot(s, [r["ce"] for r in steps], color="#9ecae1", lw=0.8, label="CE per step")
        ax2.plot(s, [r["latency_us"] for r in steps], color="#fdae6b", lw=0.8, label="sampled LAT per step")
        ax3.plot(s, [r["tau"] for r in steps], color="#555555", lw=1.2)
    if history:
        hs = [r["step"] for r in history]
        ax1.plot(hs, [r["ce"] for r in history], "o-", color="#08519c", label="CE, epoch mean")
        ax2.plot(hs, [r["expected_latency_us"] for r in history], "o-", color="#d94801",
                 label="expected LAT (softmax α')")
        ax2.plot(hs, [r["derived_latency_us"] for r in history], "s--", color="#54278f", label="derived arch LAT")
    ax1.set(title="cross-entropy", xlabel="step")
    ax2.set(title="LUT latency (µs)", xlabel="step")
    ax3.set(title="Gumbel temperature λ", xlabel="step", yscale="log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax3.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
def _arrow(ax, a, b, op: str, rad: float = 0.0, t: float = 0.5, fontsize: float = 6.5, text: str | None = None,
           dx_text: float = 0.0) -> None:
    """An arrow a → b styled by ``op``, its label at parameter ``t`` of the (quadratic) curve."""
    st = _style(op)
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, linewidth=1.3,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=9, shrinkB=9, **st))
    # matplotlib's arc3 control point: the chord's midpoint moved by rad·(dy, −dx)
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    cx, cy = mx + rad * (b[1] - a[1]), my - rad * (b[0] - a[0])
    x = (1 - t) ** 2 * a[0] + 2 * (1 - t) * t * cx + t ** 2 * b[0]
    y = (1 - t) ** 2 * a[1] + 2 * (1 - t) * t * cy + t ** 2 * b[1]
    ax.text(x + dx_text, y, text or SHORT.get(op, op), fontsize=fontsize, ha="left" if dx_text else "center",
            va="center", color=st["color"], bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))


def _node(ax, xy, text: str, color: str) -> None:
    ax.text(xy[0], xy[1], text, ha="center", va="center", fontsize=6.5,
            bbox=dict(boxstyle="round,pad=0.25", fc=color, ec="#333333", lw=0.6))


def _cell_layout(steps: int) -> tuple[dict[int, tuple[float, float]], tuple[float, float], dict[tuple[int, int], float]]:
    """Node positions, the output position and each edge's label position along it."""
    if steps == 2:
        pos = {0: (0.0, 1.0), 1: (0.0, 0.0), 2: (1.2, 1.0), 3: (2.4, 0.0)}
        t = {(0, 0): 0.5, (1, 0): 0.3, (0, 1): 0.7, (1, 1): 0.5, (2, 1): 0.4}
        return pos, (3.2, 0.5), t
    pos = {0: (0.0, 1.0), 1: (0.0, 0.0)}
    for i in range(steps):
        pos[2 + i] = (1.0 + i, 0.75 if i % 2 == 0 else 0.25)
    t = {(s, d): 0.3 + 0.4 * ((s + d) % 2) for s, d in cell_edges(steps)}
    return pos, (1.0 + steps, 0.5), t


def draw_architecture(path: Path, arch: Architecture, config: SpaceConfig, title: str = "") -> Path:
    k = len(arch.cells)
    cols = min(7, k)
    rows = int(np.ceil(k / cols))
    fig = Figure(figsize=(3.0 * cols, 2.3 * rows + 0.8))
    topo = cell_edges(config.steps)
    n = config.steps
    pos, out_xy, label_t = _cell_layout(n)
    for c, cell in enumerate(arch.cells):
        ax = fig.add_subplot(rows, cols, c + 1)
        ax.set_xlim(-0.4, out_xy[0] + 0.4)
        ax.set_ylim(-0.3, 1.3)
        ax.axis("off")
        kind = "reduction" if config.is_reduction(c) else "normal"
        ax.set_title(f"cell {c} ({kind}, s{config.cell_stride(c)})", fontsize=8)
        _node(ax, pos[0], f"c{c - 2}" if c >= 2 else "stem", "#deebf7")
        _node(ax, pos[1], f"c{c - 1}" if c >= 1 else "stem", "#deebf7")
        for i in range(n):
            _node(ax, pos[2 + i], f"n{i}", "#fee6ce")
        _node(ax, out_xy, "cat", "#e5f5e0")
        for (src, dst), op in zip(topo, cell):
            if op == ZERO:
                continue
            _arrow(ax, pos[src], pos[2 + dst], op, t=label_t[(src, dst)])
        for i in range(n):
            ax.add_patch(FancyArrowPatch(pos[2 + i], out_xy, arrowstyle="-|>", mutation_scale=7,
                                         color="#bbbbbb", linewidth=0.8, shrinkA=9, shrinkB=9))
    fig.suptitle((f"Derived network: {k} cells (c_j = output of cell j). Red: conv / sep conv, blue: dilated d2, "
                  f"green: dilated d≥4, dashed: light ops; 'none' edges removed. {title}").strip(), fontsize=9)
    return _save(fig, path)


def draw_fusion_cell(path: Path, arch: Architecture, config: SpaceConfig, title: str = "") -> Path:
    from nas.fusion import EDGES, NODES

    fig = Figure(figsize=(10, 6))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.set_aspect("equal")
    col = {"input": 0.0, "cat": 1.8, "sum": 3.6}
    # level 0 (stride 4) at the top, as the paper draws the high-resolution branch first
    pos = {i: (col[agg], 2.0 - lvl) for i, (agg, lvl) in enumerate(NODES)}
    strides = [config.cell_stride(c) for c in config.fusion_inputs]
    for i, (agg, lvl) in enumerate(NODES):
        text = f"cell {config.fusion_inputs[lvl]}\n(s{strides[lvl]}, 1×1→{config.fusion_channels})" if agg == "input" \
            else f"n{i} ({'concat' if agg == 'cat' else 'sum'})"
        _node(ax, pos[i], text, "#deebf7" if agg == "input" else "#fee6ce")
    for (s, d, kind), op in zip(EDGES, arch.fusion):
        a, b = pos[s], pos[d]
        if kind == "up":  # vertical, label beside it
            _arrow(ax, a, b, op, fontsize=7, text=f"{SHORT[op]} ↑2", dx_text=0.08)
        elif abs(a[0] - b[0]) > 2:  # input → final node, arcing over the middle column
            _arrow(ax, a, b, op, rad=-0.18, t=0.22, fontsize=7)
        else:
            _arrow(ax, a, b, op, fontsize=7)
    out = (4.9, 1.0)
    _node(ax, out, "output\nΣ (upsampled\nto s4)", "#e5f5e0")
    for f in (8, 7, 6):
        ax.add_patch(FancyArrowPatch(pos[f], out, arrowstyle="-|>", mutation_scale=8, color="#bbbbbb",
                                     linewidth=0.9, shrinkA=14, shrinkB=18))
    ax.set_xlim(-0.6, 5.5)
    ax.set_ylim(-0.4, 2.8)
    ax.set_title(f"Derived dense-connected fusion cell (9 nodes, 13 edges; ↑2 = Up×2 edge) {title}".strip(),
                 fontsize=10)
    return _save(fig, path)


def make_all_plots(folder: Path, config: SpaceConfig, theta: torch.Tensor, fusion: Sequence[torch.Tensor],
                   arch: Architecture, history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]],
                   title: str = "") -> list[Path]:
    folder = Path(folder)
    out = [plot_alpha_cells(folder / "alpha_cells.png", theta, config, title),
           plot_curves(folder / "curves.png", history, steps, title),
           draw_architecture(folder / "architecture.png", arch, config, title)]
    if config.fusion == "dcfc":
        out.append(plot_alpha_fusion(folder / "alpha_fusion.png", fusion, title))
        out.append(draw_fusion_cell(folder / "fusion_cell.png", arch, config, title))
    return out
