"""Plots of a results document (matplotlib, imported here only): the roofline and time against size."""
from __future__ import annotations

import numpy as np

from .cases import OPS
from .reports import device_title, results_name, validate


def plot_roofline(doc: dict, ax=None):
    """Achieved FLOP/s against arithmetic intensity, under each device's measured roofs."""
    import matplotlib.pyplot as plt
    validate(doc)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in doc["cases"] if r["flops"] and "median_ms" in r]
    if not rows:
        raise ValueError("no case with a FLOP count to plot")
    ai = [r["intensity"] for r in rows]
    xs = np.logspace(np.log10(min(ai) / 2), np.log10(max(ai) * 4), 200)
    for dev, c in doc["ceilings"].items():
        title = device_title(dev, c["clock"]).split()[0]
        bw = c["copy_byte_per_s"]
        ax.plot(xs, np.minimum(c["fp32_flop_per_s"], xs * bw), "k-" if dev == "cpu" else "b-", lw=1.5,
                label=f"{title} roof: {bw / 1e9:.0f} GB/s, FP32 {c['fp32_flop_per_s'] / 1e9:.0f} GFLOP/s")
        if c.get("tf32_flop_per_s"):
            ax.plot(xs, np.minimum(c["tf32_flop_per_s"], xs * bw), "b--", lw=1,
                    label=f"{title} TF32 roof {c['tf32_flop_per_s'] / 1e12:.0f} TFLOP/s")
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    seen = set()
    for r in rows:
        for src, filled in ((r, True), (r.get("reference"), False)):
            if not src:
                continue
            lab = f"{r['op']} ({'gpucnn ' + r['impl'] if filled else src['label']})"
            ax.scatter(r["intensity"], src["flop_per_s"], s=28, color=colors[r["op"]] if filled else "none",
                       edgecolors=colors[r["op"]], marker="o" if filled else "s",
                       label=None if lab in seen else lab)
            seen.add(lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of compulsory traffic)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"roofline, {results_name(doc)} (filled: gpucnn, hollow: reference)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return fig or ax.figure


def plot_sweep(doc: dict, ax=None):
    """Median time against input size for the sweep cases, one line per op and implementation."""
    import matplotlib.pyplot as plt
    validate(doc)
    rows = [r for r in doc["cases"] if r["source"] == "sweep" and "median_ms" in r]
    if not rows:
        raise ValueError("no sweep cases in these results (run with sweep=True / --sweep)")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    lines = {}
    for r in rows:
        lines.setdefault((r["op"], r["label"]), []).append((r["h"], r["median_ms"]))
        if r.get("reference"):
            lines.setdefault((r["op"], r["reference"]["label"]), []).append((r["h"], r["reference"]["median_ms"]))
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    for (op, label), pts in lines.items():
        pts = sorted(set(pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if label.startswith("gpucnn") else "s--",
                color=colors[op], label=f"{op}, {label}", ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"H = W (batch {rows[0]['n']}, {rows[0]['c']} channels)")
    ax.set_ylabel("median time (ms)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig or ax.figure
