"""The benchmark harness itself: its counts, its arithmetic, its files, and that it never passes a CPU time off as GPU."""
import json

import numpy as np
import pytest

from gpucnn import bench, models, perf
from gpucnn.backend import get_backend
from gpucnn.bench import CPU_CLOCK, GPU_CLOCK, Case, GpuFigureError, modelled
from gpucnn.perf import sass


# --------------------------------------------------------------------------- counts against hand counts

def test_conv_counts_by_hand():
    # x 2x3x5x5, 4 filters 3x3, padding 1: output 2x4x5x5 = 200 values, each 27 multiply-adds
    c = Case("conv2d", 2, 3, 5, 5, k=4, r=3, s=3, pad=1)
    assert c.out_hw == (5, 5)
    assert c.flops == 2 * 200 * 27 + 200 == 11_000          # products+sums, one bias add per output
    assert c.bytes == 4 * (150 + 108 + 4 + 200) == 1_848    # x, w, b read; y written
    b = Case("conv2d_backward", 2, 3, 5, 5, k=4, r=3, s=3, pad=1)
    assert b.flops == 21_800                                 # dx 10,800 + dw 10,800 + db 200
    assert b.bytes == 4 * (200 + 150 + 108 + 150 + 108 + 4) == 2_880


def test_counts_of_the_spec_examples():
    # the 8x8 image, 3x3 kernel, stride 2: a 3x3 output, 9 outputs of 9 multiply-adds
    c = Case("conv2d", 1, 1, 8, 8, k=1, r=3, s=3, stride=2)
    assert c.out_hw == (3, 3) and c.flops == 171
    # 2x2 max pool of a 4x4 plane: 4 outputs, 3 comparisons each; 16 read, 4 written
    p = Case("max_pool2d", 1, 1, 4, 4, r=2, s=2, stride=2)
    assert (p.flops, p.bytes) == (12, 80)
    assert Case("max_pool2d_backward", 1, 1, 4, 4, r=2, s=2, stride=2).bytes == 80
    r = Case("relu", 2, 3, 4, 5)
    assert (r.flops, r.bytes) == (120, 960)
    assert Case("relu_backward", 2, 3, 4, 5).bytes == 1_440


def test_model_cases_are_the_zoo_shapes():
    cases = bench.model_cases(["cifar10_vgg"], batches=(1,))
    convs = [c for c in cases if c.op == "conv2d"]
    assert [(c.c, c.h, c.k) for c in convs] == [(3, 32, 32), (32, 32, 32), (32, 16, 64), (64, 16, 64),
                                                (64, 8, 128), (128, 8, 128)]
    # the layers' own per-sample FLOPs (2*MAC + bias + ReLU) less the ReLU: 6 convs of the SPEC's ~78 MFLOP net
    net = models.cifar10_vgg()
    layer_flops = sum(layer.flops() - int(np.prod(layer.output_shape)) for layer in net.layers
                      if type(layer).__name__ == "Conv2D")
    assert sum(c.flops for c in convs) == layer_flops
    assert len([c for c in cases if c.op == "max_pool2d"]) == 3
    assert {c.n for c in bench.model_cases(["mnist_cnn"], batches=(1, 32))} == {1, 32}
    with pytest.raises(ValueError, match="models"):
        bench.model_cases(["lenet_like"])


# --------------------------------------------------------------------------- median, rates, percentages

def test_median():
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([4, 1, 3, 2]) == 2.5
    assert bench.median([7.5]) == 7.5
    with pytest.raises(ValueError):
        bench.median([])


def test_rates_and_percentages_of_the_ceilings():
    ceil = {"fp32_flop_per_s": 8e9, "tf32_flop_per_s": 16e9, "copy_byte_per_s": 4e9}
    r = bench.rates(2e9, 1e9, 0.5, ceil)
    assert r["flop_per_s"] == 4e9 and r["byte_per_s"] == 2e9 and r["intensity"] == 2.0
    assert r["pct_peak_flops"] == pytest.approx(50.0) and r["pct_peak_bandwidth"] == pytest.approx(50.0)
    assert bench.rates(2e9, 1e9, 0.5, ceil, tf32=True)["pct_peak_flops"] == pytest.approx(25.0)
    assert bench.rates(0, 1e9, 0.25, ceil)["pct_peak_flops"] is None        # no FLOPs: no percentage
    assert bench.rates(1, 1, 1, None)["pct_peak_bandwidth"] is None          # no ceiling measured
    with pytest.raises(ValueError):
        bench.rates(1, 1, 0.0, ceil)


class ScriptedTimer:
    """Returns scripted times and records which input copy each call received."""

    def __init__(self, times, device="cpu", clock=CPU_CLOCK):
        self.times, self.device, self.clock = list(times), device, clock

    def sync(self):
        pass

    def time_ms(self, fn):
        fn()
        return self.times.pop(0)


def test_measure_excludes_first_call_and_warmup_and_rotates_inputs():
    seen = []
    inputs = [(i,) for i in range(3)]
    timer = ScriptedTimer([100.0, 90.0] + [5.0, 1.0, 3.0, 2.0, 4.0])   # 2 warm-up, then 5 repeats
    t = bench.measure(lambda i: seen.append(i), inputs, timer, warmup=2, min_repeats=5, max_repeats=5)
    assert t.warmup_ms == [100.0, 90.0] and t.times_ms == [5.0, 1.0, 3.0, 2.0, 4.0]
    assert t.median_ms == 3.0                                   # the warm-up's 100 and 90 are not in it
    assert seen == [0, 1, 2, 0, 1, 2, 0, 1]                     # first call, warm-up, repeats: every copy in turn
    assert t.device == "cpu" and t.clock == CPU_CLOCK


def test_repeats_grow_for_fast_cases():
    t = bench.measure(lambda: None, [()], ScriptedTimer([0.1] * 60), warmup=1, min_repeats=3, max_repeats=50,
                      min_time_s=0.002)
    assert len(t.times_ms) == 20                                # 2 ms of work at 0.1 ms a call


# --------------------------------------------------------------------------- no GPU figure without a GPU clock

def test_refuses_a_gpu_label_on_a_cpu_clock():
    with pytest.raises(GpuFigureError):
        bench.check_clock("gpu", CPU_CLOCK)
    with pytest.raises(GpuFigureError):
        bench.Timing("gpu", CPU_CLOCK, [1.0], 1.0)
    with pytest.raises(GpuFigureError):   # a timer claiming the GPU but reading the CPU clock
        bench.measure(lambda: None, [()], ScriptedTimer([1.0] * 3, device="gpu"), warmup=0, min_repeats=2,
                      max_repeats=2)
    with pytest.raises(ValueError):
        bench.check_clock("cpu", GPU_CLOCK)
    bench.check_clock("gpu", GPU_CLOCK)   # the one way to a GPU figure
    assert bench.CpuTimer().device == "cpu" and bench.timer_for_backend("numpy").clock == CPU_CLOCK


def test_simulated_backend_is_never_timed(monkeypatch):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    names, skipped = bench.plan_backends(["numpy", "numba"])
    assert names == ["numpy"]
    assert skipped[0]["backend"] == "numba"
    assert get_backend("numba").simulator in skipped[0]["reason"]   # the backend describes its own simulator
    with pytest.raises(ValueError, match="simulator"):
        bench.timer_for_backend("numba")


def test_the_tf32_flag_comes_from_the_backend(monkeypatch):
    """A row is TF32 when config.allow_tf32 is set and the backend says the op follows it (Backend.tf32_ops)."""
    from gpucnn import config
    monkeypatch.setattr(get_backend("numpy"), "tf32_ops", ("relu",))
    kw = dict(backends=["numpy"], ops=["relu", "relu_backward"], models=["mnist_cnn"], batches=(1,), warmup=0,
              min_repeats=1, max_repeats=1, min_time_s=0, step=False, reference=False, ceilings_small=True,
              rotate_bytes=1 << 16, progress=False, command="test")
    with config.tf32(True):
        doc = bench.run(**kw)
    assert {(r["op"], r["tf32"]) for r in doc["cases"]} == {("relu", True), ("relu_backward", False)}
    assert all(r["pct_peak_flops"] is None for r in doc["cases"] if r["tf32"])   # no TF32 ceiling on a CPU


# --------------------------------------------------------------------------- a tiny real run: schema, files, tables

@pytest.fixture(scope="module")
def doc():
    return bench.run(backends=["numpy"], ops=["conv2d", "relu"], models=["mnist_cnn"], batches=(2,),
                     warmup=1, min_repeats=3, max_repeats=3, min_time_s=0, step_batch=4, step_repeats=2,
                     ceilings_small=True, rotate_bytes=1 << 18, progress=False, command="test")


def test_run_document_schema_and_arithmetic(doc):
    again = json.loads(json.dumps(doc))
    bench.validate(again)
    assert again["schema"] == bench.SCHEMA and again["gpu"] is None
    assert set(again["ceilings"]) == {"cpu"} and again["ceilings"]["cpu"]["tf32_flop_per_s"] is None
    assert [r["op"] for r in again["cases"]] == ["conv2d", "relu"] * 3
    ceil = again["ceilings"]["cpu"]
    for r in again["cases"]:
        case = Case(r["op"], r["n"], r["c"], r["h"], r["w"], r["k"], r["r"], r["s"], r["stride"], r["pad"])
        assert (r["flops"], r["bytes"]) == (case.flops, case.bytes)
        assert r["device"] == "cpu" and r["clock"] == CPU_CLOCK and r["repeats"] == 3
        assert r["median_ms"] == pytest.approx(bench.median(r["times_ms"]), rel=1e-4)
        assert r["pct_peak_bandwidth"] == pytest.approx(100 * r["bytes"] / (r["median_ms"] / 1e3)
                                                        / ceil["copy_byte_per_s"])
        assert r["rotation"]["copies"] >= 2
    steps = [r for r in again["train_step"] if "median_ms" in r]
    assert steps[0]["label"] == "gpucnn numpy"
    assert steps[0]["images_per_s"] == pytest.approx(4 / (steps[0]["median_ms"] / 1e3))
    assert all(r["device"] == "cpu" for r in steps)   # no GPU here, so no GPU step figure


def test_validate_rejects_a_broken_document(doc):
    broken = json.loads(json.dumps(doc))
    del broken["cases"][0]["median_ms"]
    with pytest.raises(ValueError, match="median_ms"):
        bench.validate(broken)
    broken = json.loads(json.dumps(doc))
    broken["cases"][0]["repeats"] = "3"
    with pytest.raises(ValueError, match="repeats"):
        bench.validate(broken)


def test_a_cpu_figure_relabelled_gpu_is_refused_everywhere(doc, tmp_path):
    forged = json.loads(json.dumps(doc))
    forged["cases"][0]["device"] = "gpu"
    for fn in (bench.validate, bench.format_table, bench.to_markdown, lambda d: bench.write_results(d, tmp_path)):
        with pytest.raises(GpuFigureError):
            fn(forged)
    assert not list(tmp_path.iterdir())


def test_files_and_tables(doc, tmp_path):
    paths = bench.write_results(doc, tmp_path, plot=False)
    assert [p.suffix for p in paths] == [".json", ".md"]
    assert paths[0].name.startswith(doc["created"][:10] + "_cpu-")
    bench.validate(json.loads(paths[0].read_text()))
    md = paths[1].read_text()
    assert "| op | input | backend |" in md and "GPU: none used in this run" in md
    text = bench.format_table(doc)
    assert "GPU (CUDA events)" not in text and "mnist_cnn" in text


def test_cli_bench_writes_results(tmp_path, capsys):
    from gpucnn.cli import main
    assert main(["bench", "--backend", "numpy", "--model", "mnist_cnn", "--batch", "1", "--op", "relu",
                 "--no-step", "--repeats", "2", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "relu" in out and "1x32x28x28" in out and "CPU (monotonic clock) ceilings" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "md", "png"]
    doc = bench.validate(json.loads((tmp_path / names[0]).read_text()))
    assert {r["shape"] for r in doc["cases"]} == {"1x32x28x28", "1x64x14x14", "1x128x7x7"}


# --------------------------------------------------------------------------- the static kernel model beside the measurement

MODEL_KW = dict(backends=["numpy", "cupy"], ops=["conv2d", "max_pool2d_backward"], models=["mnist_cnn"],
                batches=(2,), warmup=0, min_repeats=1, max_repeats=1, min_time_s=0, step_batch=4, step_repeats=1, reference=False,
                ceilings_small=True, rotate_bytes=1 << 16, progress=False, command="test")


@pytest.fixture(scope="module")
def model_doc():
    return bench.run(**MODEL_KW)


def test_the_gpu_modelled_comes_from_the_device_name():
    assert modelled.choose_gpu({"name": "NVIDIA H100 80GB HBM3"}) == ("h100", None)
    assert modelled.choose_gpu({"name": "NVIDIA H200"}) == ("h200", None)
    assert modelled.choose_gpu({"name": "NVIDIA A100-SXM4-80GB"}) == ("a100", None)
    key, why = modelled.choose_gpu({"name": "NVIDIA L4"})
    assert key == "h200" and "'NVIDIA L4'" in why and "H200 assumed" in why
    key, why = modelled.choose_gpu(None)
    assert key == "h200" and "no GPU" in why


@pytest.mark.skipif(sass.missing() is not None, reason=sass.missing() or "")
def test_cupy_rows_carry_the_model_labelled_as_a_model(model_doc, tmp_path):
    doc = bench.validate(json.loads(json.dumps(model_doc)))
    assert doc["model"]["gpu"] == "h200" and doc["model"]["absent"] is None
    cupy = [r for r in doc["cases"] if r["impl"] == "cupy"]
    numpy_rows = [r for r in doc["cases"] if r["impl"] == "numpy"]
    assert len(cupy) == len(numpy_rows) == 6 and all("model_us" not in r for r in numpy_rows)
    for r in cupy:   # no GPU here: not measured, and the model beside it
        assert "median_ms" not in r and "clock" not in r
        assert r["not_measured"] == next(s["reason"] for s in doc["skipped"] if s["backend"] == "cupy")
        assert r["model_us"] > 0 and r["model_gpu"] == "H200 (assumed)" and "measured_over_model" not in r
        assert r["model_label"].startswith("model") and "not measured" in r["model_label"]
    # each case's figure is predict_call's for the same call: recorded once, the same launches
    case = Case("conv2d", 2, 1, 28, 28, k=32, r=3, s=3, pad=1)
    prepare, call = bench.gpucnn_impl(case)
    host = bench.host_inputs(case, np.random.default_rng(0))
    _, us = perf.predict_call(call, "h200", prepare=lambda: prepare(host))
    assert next(r for r in cupy if r["shape"] == case.shape_text and r["op"] == "conv2d")["model_us"] == \
        pytest.approx(us)
    step = next(r for r in doc["train_step"] if r["impl"] == "cupy")
    assert "not_measured" in step and step["model_us"] > 0 and step["batch"] == 4
    text = bench.format_table(doc)
    assert "model µs" in text and "(model)" in text and "MODEL figures, not measurements" in text
    assert "H200 FP32 (no GPU in this run: H200 assumed)" in text and "not measured" in text
    md = bench.to_markdown(doc)
    assert "model µs" in md and "a model, not a measurement" in md
    bench.write_results(doc, tmp_path)   # the roofline leaves the rows no clock measured out


def test_a_measured_cupy_row_gets_measured_over_model():
    result = {"gpu": "h100", "gpu_name": "H100", "assumed": None, "label": modelled.MODEL_LABEL, "absent": None}
    row = modelled.fields(result, 50.0, measured_ms=0.1)
    assert row == {"model_gpu": "H100", "model_label": modelled.MODEL_LABEL, "model_us": 50.0,
                   "measured_over_model": pytest.approx(2.0)}
    absent = modelled.fields(dict(result, absent="gpucnn kernels needs nvcc"), 50.0, measured_ms=0.1)
    assert absent["model_us"] is None and "needs nvcc" in absent["model_absent"]
    assert "measured_over_model" not in absent


def test_a_model_figure_must_say_it_is_a_model(model_doc):
    forged = json.loads(json.dumps(model_doc))
    row = next(r for r in forged["cases"] if r["impl"] == "cupy")
    row["model_label"] = "measured"
    with pytest.raises(ValueError, match="model_label"):
        bench.validate(forged)
    forged = json.loads(json.dumps(model_doc))
    row = next(r for r in forged["cases"] if r["impl"] == "cupy")
    row["median_ms"] = 1.0   # a time on a row no clock measured
    with pytest.raises(ValueError, match="not measured"):
        bench.validate(forged)


def test_without_nvcc_the_model_column_says_why(monkeypatch):
    monkeypatch.setattr(sass, "missing", lambda: "gpucnn kernels needs nvcc, not found here: install the toolkit")
    doc = bench.run(**dict(MODEL_KW, step=False, ops=["conv2d"]))
    assert doc["model"]["absent"].startswith("gpucnn kernels needs nvcc")
    cupy = [r for r in doc["cases"] if r["impl"] == "cupy"]
    assert cupy and all(r["model_us"] is None and "needs nvcc" in r["model_absent"] for r in cupy)
    text = bench.format_table(doc)
    assert "model column is absent: gpucnn kernels needs nvcc" in text and "absent (see 'model:' above)" in text
    assert not bench.run(**dict(MODEL_KW, step=False, ops=["conv2d"], model=False)).get("model")
