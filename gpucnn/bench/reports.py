"""Reports: a timed case as a results row, the results document's check (``validate``: the schema, and every
timed figure's device against its clock), the terminal table, the markdown, the files' names and the files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .cases import Case, rates
from .timers import Timing, check_clock

SCHEMA = "gpucnn.bench/1"


def case_row(case: Case, impl: str, label: str, timing: Timing, rotation: dict, ceilings, tf32: bool) -> dict:
    med = timing.median_ms
    return {
        "op": case.op, "source": case.source, "shape": case.shape_text, "n": case.n, "c": case.c, "h": case.h,
        "w": case.w, "k": case.k, "r": case.r, "s": case.s, "stride": case.stride, "pad": case.pad,
        "impl": impl, "label": label, "device": timing.device, "clock": timing.clock, "tf32": tf32,
        "flops": case.flops, "bytes": case.bytes,
        "median_ms": med, "min_ms": min(timing.times_ms), "repeats": len(timing.times_ms),
        "times_ms": [round(t, 6) for t in timing.times_ms],
        "first_call_ms": timing.first_call_ms, "warmup_ms": timing.warmup_ms, "rotation": rotation,
        **rates(case.flops, case.bytes, med / 1e3, ceilings, tf32),
    }


_CASE_KEYS = {"op": str, "shape": str, "impl": str, "label": str, "device": str, "clock": str, "flops": int,
              "bytes": int, "median_ms": float, "repeats": int, "times_ms": list, "first_call_ms": float,
              "flop_per_s": float, "byte_per_s": float, "rotation": dict}
_TOP_KEYS = {"schema": str, "created": str, "host": dict, "versions": dict, "settings": dict, "ceilings": dict,
             "skipped": list, "cases": list, "train_step": list}


def validate(doc: dict) -> dict:
    """Check a results document against the schema; every timed figure's device against its clock."""
    def need(obj, keys, where):
        for k, typ in keys.items():
            if k not in obj:
                raise ValueError(f"{where}: missing key {k!r}")
            ok = isinstance(obj[k], (int, float)) and not isinstance(obj[k], bool) if typ is float else \
                isinstance(obj[k], typ) and not (typ is int and isinstance(obj[k], bool))
            if not ok:
                raise ValueError(f"{where}: {k!r} should be {typ.__name__}, got {type(obj[k]).__name__}")
    need(doc, _TOP_KEYS, "results")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results: schema {doc['schema']!r}, expected {SCHEMA!r}")
    for dev, c in doc["ceilings"].items():
        check_clock(dev, c["clock"])
    for i, row in enumerate(doc["cases"]):
        _check_model(row, f"cases[{i}]")
        if "not_measured" in row:  # a cupy case no GPU timed here: only its shape, why, and the model
            need(row, {"op": str, "shape": str, "impl": str, "label": str, "device": str, "not_measured": str},
                 f"cases[{i}]")
            if any(k in row for k in ("median_ms", "times_ms", "clock")):
                raise ValueError(f"cases[{i}]: a row not measured carries no time")
            continue
        need(row, _CASE_KEYS, f"cases[{i}]")
        check_clock(row["device"], row["clock"])
        if row.get("reference"):
            check_clock(row["reference"]["device"], row["reference"]["clock"])
        if row["median_ms"] <= 0 or row["repeats"] != len(row["times_ms"]):
            raise ValueError(f"cases[{i}]: a median must be positive and repeats must match times_ms")
    for i, row in enumerate(doc["train_step"]):
        _check_model(row, f"train_step[{i}]")
        if "not_measured" not in row:
            need(row, {"model": str, "batch": int, "label": str, "device": str, "clock": str, "median_ms": float,
                       "images_per_s": float}, f"train_step[{i}]")
            check_clock(row["device"], row["clock"])
    return doc


def _check_model(row: dict, where: str) -> None:
    """A model figure is labelled a model, names its GPU, and is never taken for a measurement."""
    if not any(k in row for k in ("model_us", "model_absent", "measured_over_model")):
        return
    if not str(row.get("model_label", "")).startswith("model") or not row.get("model_gpu"):
        raise ValueError(f"{where}: a model figure needs model_label (a model, not measured) and model_gpu")
    if row.get("model_us") is None and not row.get("model_absent"):
        raise ValueError(f"{where}: model_us is absent, so model_absent must say why")
    if "measured_over_model" in row and "median_ms" not in row:
        raise ValueError(f"{where}: measured_over_model without a measurement")


def device_title(device: str, clock: str) -> str:
    check_clock(device, clock)
    return "GPU (CUDA events)" if device == "gpu" else "CPU (monotonic clock)"


def _fmt(v, scale=1.0, digits=1, unit=""):
    return "—" if v is None else f"{v / scale:.{digits}f}{unit}"


def table_rows(doc: dict) -> list[list[str]]:
    head = ["op", "input", "backend", "device", "ms", "GFLOP/s", "% FP32 peak", "GB/s", "% copy BW", "reference",
            "ref ms", "× ref"]
    with_model = _has_model(doc["cases"])
    if with_model:
        head += ["model µs", "× model"]
    out = [head]
    for r in doc["cases"]:
        ref = r.get("reference") or {}
        if "not_measured" in r:
            out.append([r["op"], r["shape"], r["label"], r["device"].upper(), "not measured"] + ["—"] * 7
                       + [_model_ms(r), "—"])
            continue
        out.append([r["op"], r["shape"], r["label"], device_title(r["device"], r["clock"]).split()[0],
                    _fmt(r["median_ms"], digits=3), _fmt(r["flop_per_s"] or None, 1e9),
                    _fmt(r["pct_peak_flops"]), _fmt(r["byte_per_s"], 1e9), _fmt(r["pct_peak_bandwidth"]),
                    ref.get("label", "—"), _fmt(ref.get("median_ms"), digits=3),
                    _fmt(r.get("vs_reference"), digits=2, unit="×")]
                   + ([_model_ms(r), _fmt(r.get("measured_over_model"), digits=2, unit="×")] if with_model else []))
    return out


def _has_model(rows) -> bool:
    return any("model_label" in r for r in rows)


def _model_ms(r: dict, unit="us") -> str:
    """The model's figure for a row, marked as a model: '12.3 (model)' in µs (unit "us") or ms (unit "ms");
    '—' for a row of another backend."""
    if "model_label" not in r:
        return "—"
    if r.get("model_us") is None:
        return "absent (see 'model:' above)"
    v = r["model_us"] / (1e3 if unit == "ms" else 1)
    return f"{v:.{3 if v < 10 else 1}f} (model)"


def step_rows(doc: dict) -> list[list[str]]:
    with_model = _has_model(doc["train_step"])
    out = [["model", "batch", "implementation", "device", "ms / step", "images / s"]
           + (["model ms / step", "× model"] if with_model else [])]
    for r in doc["train_step"]:
        extra = [_model_ms(r, "ms"), _fmt(r.get("measured_over_model"), digits=2, unit="×")] if with_model else []
        if "not_measured" in r:
            why = r["not_measured"] if not with_model or len(r["not_measured"]) < 60 else r["not_measured"][:57] + "..."
            out.append([r["model"], str(r["batch"]), r["label"], r["device"].upper(), "not measured", why] + extra)
        else:
            out.append([r["model"], str(r["batch"]), r["label"], device_title(r["device"], r["clock"]).split()[0],
                        _fmt(r["median_ms"]), _fmt(r["images_per_s"], digits=0)] + extra)
    return out


def _header_lines(doc: dict) -> list[str]:
    lines = [f"gpucnn bench, {doc['created']}: {doc['host']['cpu']}, {doc['host']['cores']} cores"]
    if doc.get("gpu"):
        lines.append(f"GPU: {doc['gpu'].get('name')}, driver {doc['gpu'].get('driver')}")
    else:
        lines.append("GPU: none used in this run; every figure below is a CPU figure (GPU: not measured)")
    for dev, c in doc["ceilings"].items():
        tf = _fmt(c.get("tf32_flop_per_s"), 1e12, 1, " TFLOP/s") if c.get("tf32_flop_per_s") else "not applicable"
        lines.append(f"{device_title(dev, c['clock'])} ceilings: copy {c['copy_byte_per_s'] / 1e9:.1f} GB/s, "
                     f"FP32 matmul {c['fp32_flop_per_s'] / 1e9:.1f} GFLOP/s, TF32 {tf} ({c['how']})")
    for s in doc["skipped"]:
        lines.append(f"skipped {s['backend']}: {s['reason']}")
    lines += model_lines(doc)
    v = doc["versions"]
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    return lines


def model_lines(doc: dict) -> list[str]:
    """What the model columns are: a model, for which GPU (assumed or the device's), or why they are absent."""
    m = doc.get("model")
    if not m:
        return []
    mode = "TF32" if m["tf32"] else "FP32"
    gpu = f"{m['gpu_name']} {mode}" + (f" ({m['assumed']})" if m["assumed"] else " (the GPU of this run)")
    if m["absent"]:
        return [f"model: the cupy rows' model column is absent: {m['absent']}"]
    return [f"model: 'model µs' / 'model ms / step' on the cupy rows are MODEL figures, not measurements: the "
            f"static kernel model's predictions (gpucnn kernels, from nvcc's SASS) for {gpu}; × model = measured / "
            "model (the model is a floor: no launch overhead, latency or caches)"]


def _text_table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_table(doc: dict) -> str:
    """The terminal report: header, one line per case and backend, then the training steps."""
    validate(doc)
    parts = ["\n".join(_header_lines(doc))]
    if doc["cases"]:
        parts.append(_text_table(table_rows(doc)))
    if doc["train_step"]:
        parts.append("whole training step (forward, loss, backward, SGD momentum):\n" + _text_table(step_rows(doc)))
    return "\n\n".join(parts)


def _md_table(rows) -> str:
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] +
                     ["| " + " | ".join(r) + " |" for r in rows[1:]])


def to_markdown(doc: dict) -> str:
    validate(doc)
    out = ["# gpucnn bench: " + results_name(doc), "", *[f"- {line}" for line in _header_lines(doc)], "",
           f"Command: `{doc['command']}`", "",
           "Columns: median time of the repeats; GFLOP/s and GB/s from the case's minimum FLOP count and "
           "compulsory bytes; the percentages are of the ceilings above, measured in the same run; the "
           "reference is PyTorch on the same device (cuDNN for convolutions on a GPU); × ref is our time over "
           "the reference's (above 1: slower)." + (" Model ms (cupy rows): the static kernel model's predicted "
                                                     "time, a model, not a measurement; × model is measured / model."
                                                     if doc.get("model") else ""), ""]
    if doc["cases"]:
        out += ["## Ops", "", _md_table(table_rows(doc)), ""]
    if doc["train_step"]:
        out += ["## Whole training step", "", _md_table(step_rows(doc)), ""]
    return "\n".join(out)


def results_name(doc: dict) -> str:
    """'<date>_<device>': e.g. 2026-11-23_cpu-amd-epyc-2-cores, or 2026-11-23_gpu-nvidia-h100-80gb-hbm3."""
    date = doc["created"][:10]
    if doc.get("gpu"):
        dev = "gpu-" + str(doc["gpu"].get("name", "unknown"))
    else:
        dev = f"cpu-{doc['host']['cpu']}-{doc['host']['cores']}-cores"
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    return f"{date}_{slug}"


def write_results(doc: dict, out_dir, plot=True) -> list[Path]:
    """Write <name>.json, <name>.md and (matplotlib permitting) <name>_roofline.png into out_dir."""
    validate(doc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / results_name(doc)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    paths[1].write_text(to_markdown(doc))
    if plot and doc["cases"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return paths
        import matplotlib.pyplot as plt
        from .plots import plot_roofline
        fig = plot_roofline(doc)
        png = out_dir / f"{stem.name}_roofline.png"
        fig.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(png)
    return paths
