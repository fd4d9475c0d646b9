"""The model against Nsight Compute: ``gpucnn kernels --compare FILE`` puts the model's row of every launch of a
step beside what ncu measured for it, worst ratio first, to calibrate the ruler the first time a GPU is lent.

FILE is ncu's raw CSV of one training step (``benchmarks/gpu_proof.sh profile`` makes it: ncu --csv --page raw
--profile-from-start off around one step of benchmarks/gpu_proof_profile.py, the same step `gpucnn kernels`
records). Read per kernel launch, when present: gpu__time_duration.sum (the duration), sm__inst_issued.sum
(warp instructions issued), l1tex__data_pipe_lsu_wavefronts_mem_shared.sum and
l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum (shared-memory wavefronts and bank conflicts),
sm__warps_active.avg.pct_of_peak_sustained_active (achieved occupancy), sm__cycles_elapsed.avg.per_second (the
clock it ran at). Launches are matched to the model's in order, by kernel name (a sequence alignment, so a
launch the model lacks or the profile lacks shows as unmatched instead of shifting every row after it).

``python -m gpucnn.perf.compare --plant OUT.csv`` writes a planted profile of a step from the model itself
(durations the model's times x known factors, in ncu's format), which the GPU proof's dry run compares on the CPU.
"""
from __future__ import annotations

import csv
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

METRICS = ("gpu__time_duration.sum", "sm__inst_issued.sum", "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",
           "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", "sm__warps_active.avg.pct_of_peak_sustained_active",
           "sm__cycles_elapsed.avg.per_second")
_TIME = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6}


def _base(name: str) -> str:
    """The kernel's own name: conv2d_fwd<128, 64, ...> / void conv2d_fwd<128, 64, ...>(const float *, ...) ->
    conv2d_fwd; a name in a namespace keeps its last part."""
    name = re.sub(r"^(void|__global__)\s+", "", name.strip())
    return name.split("(")[0].split("<")[0].split("::")[-1].strip()


def read_ncu(path) -> list[dict]:
    """The launches of an ncu raw CSV, in order: {"kernel": name, "us": duration, metric: value, ...}. The units
    row ncu writes under the header (empty ID) gives each metric's unit; durations are converted to us."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Kernel Name" not in rows[0]:
        raise ValueError(f"{path}: not an ncu raw CSV (no 'Kernel Name' column): run ncu with --csv --page raw")
    units = rows[0] if not rows[0].get("ID", "").strip() else {}
    out = []
    for row in rows[1:] if units else rows:
        launch = {"kernel": row["Kernel Name"]}
        for metric in METRICS:
            raw = (row.get(metric) or "").replace(",", "").strip()
            if not raw or raw == "n/a":
                continue
            value = float(raw)
            if metric == "gpu__time_duration.sum":
                launch["us"] = value * _TIME.get((units.get(metric) or "nsecond").strip(), 1e-3)
            else:
                launch[metric] = value
        if "us" not in launch:
            raise ValueError(f"{path}: launch {row.get('ID')} ({row['Kernel Name'][:60]}) has no gpu__time_duration.sum")
        out.append(launch)
    return out


@dataclass
class Pair:
    row: object | None        # the model's Row, or None (a launch the model lacks)
    measured: dict | None     # ncu's launch, or None (a launch the profile lacks)

    @property
    def ratio(self) -> float | None:
        if self.row is None or self.measured is None:
            return None
        return self.measured["us"] / self.row.predicted_us


def match(rows, measured: list[dict]) -> list[Pair]:
    """Model rows and measured launches paired in order by kernel name."""
    a = [_base(r.launch.kernel) for r in rows]
    b = [_base(m["kernel"]) for m in measured]
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            pairs += [Pair(rows[i], measured[j]) for i, j in zip(range(i1, i2), range(j1, j2))]
        else:
            pairs += [Pair(rows[i], None) for i in range(i1, i2)] + [Pair(None, measured[j]) for j in range(j1, j2)]
    return pairs


def _model_instructions(r) -> float:
    return r.warp_instructions * math.ceil(r.launch.threads / 32) * r.launch.ctas


def _model_wavefronts(r) -> float | None:
    if r.banks is None:
        return 0.0 if r.shared_us == 0 else None
    return r.banks.per_cta((r.launch.gemm or {}).get("ksteps")) * r.launch.ctas


def format_compare(pairs: list[Pair], gpu) -> str:
    """One line per launch, the worst |log ratio| first, then the totals and the unmatched."""
    def fmt(v, spec=".3g"):
        return "-" if v is None else format(v, spec)

    matched = [p for p in pairs if p.ratio is not None]
    lines = [f"gpucnn kernels --compare: the model (labelled 'model') beside Nsight Compute's measurement on "
             f"{gpu.name}, {len(matched)} launches matched, worst ratio first; ratio = measured / model time",
             f"{'layer':13s} {'direction':19s} {'kernel':36s} {'model us':>9s} {'meas. us':>9s} {'ratio':>6s} "
             f"{'bound':>7s} {'instr model':>11s} {'instr meas':>11s} {'wavefr model':>12s} {'wavefr meas':>11s} "
             f"{'conflicts':>9s} {'occ %':>6s} {'clock GHz':>9s}"]
    for p in sorted(matched, key=lambda p: -abs(math.log(p.ratio))):
        r, m = p.row, p.measured
        clock = m.get("sm__cycles_elapsed.avg.per_second")
        lines.append(
            f"{r.launch.layer[:13]:13s} {r.launch.direction[:19]:19s} {r.launch.kernel[:36]:36s} "
            f"{r.predicted_us:9.2f} {m['us']:9.2f} {p.ratio:6.2f} {r.bound:>7s} {_model_instructions(r):11.4g} "
            f"{fmt(m.get('sm__inst_issued.sum'), '11.4g'):>11s} {fmt(_model_wavefronts(r), '12.4g'):>12s} "
            f"{fmt(m.get('l1tex__data_pipe_lsu_wavefronts_mem_shared.sum'), '11.4g'):>11s} "
            f"{fmt(m.get('l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum'), '9.4g'):>9s} "
            f"{fmt(m.get('sm__warps_active.avg.pct_of_peak_sustained_active'), '6.1f'):>6s} "
            f"{fmt(clock / 1e9 if clock else None, '9.2f'):>9s}")
    model_us = sum(p.row.predicted_us for p in matched)
    meas_us = sum(p.measured["us"] for p in matched)
    if matched:
        lines.append(f"matched launches: model {model_us:.1f} us, measured {meas_us:.1f} us, ratio {meas_us / model_us:.2f} "
                     f"(kernel time only: the launch gaps between them are not in ncu's durations)")
    for p in pairs:
        if p.row is None:
            lines.append(f"unmatched (in the profile, not the model): {p.measured['kernel'][:80]}")
        elif p.measured is None:
            lines.append(f"unmatched (in the model, not the profile): {p.row.launch.kernel}")
    return "\n".join(lines)


FACTORS = (1.0, 2.0, 0.5, 1.25)  # the planted profile's durations: the model's times x these, in turn


def plant(rows, path) -> None:
    """An ncu-style raw CSV of the model's own launches (header, units row, one row a launch), durations the
    model's times x FACTORS in turn: what a real profile looks like, with known answers."""
    header = ["ID", "Process ID", "Process Name", "Kernel Name", "Block Size", "Grid Size", *METRICS]
    units = ["", "", "", "", "", "", "nsecond", "inst", "", "", "%", "cycle/second"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(header)
        w.writerow(units)
        for i, r in enumerate(rows):
            us = r.predicted_us * FACTORS[i % len(FACTORS)]
            wavefronts = _model_wavefronts(r)
            w.writerow([i, 1, "python", f"void {r.launch.kernel}(const float *, float *)",
                        f"({r.launch.block[0]}, 1, 1)", "(" + ", ".join(map(str, r.launch.grid)) + ")",
                        f"{us * 1e3:,.0f}", f"{_model_instructions(r):.0f}",
                        "" if wavefronts is None else f"{wavefronts:.0f}", "0", "50.0", "1980000000"])


def main(argv=None) -> int:
    import argparse

    from . import model as perf_model
    p = argparse.ArgumentParser(prog="python -m gpucnn.perf.compare", description="write a planted ncu profile")
    p.add_argument("--plant", required=True, metavar="OUT.csv")
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--gpu", default="h200")
    args = p.parse_args(argv)
    rows, _ = perf_model.run(args.model, args.batch, args.gpu)
    plant(rows, Path(args.plant))
    print(f"{args.plant}: {len(rows)} launches of {args.model} at batch {args.batch}, durations the model's x "
          f"{', '.join(map(str, FACTORS))} in turn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
