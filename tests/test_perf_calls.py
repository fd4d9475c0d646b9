"""gpucnn.perf.calls: the launches one call makes on the CuPy backend (record_call) and their modelled time
(predict_call), the figures `gpucnn bench` puts beside each cupy row. Model output, not measurements."""
import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn import perf
from gpucnn.perf import gpus, sass

MISSING = sass.missing()
needs_tools = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def conv_call(c=32, k=64, hw=14, n=4):
    rng = np.random.default_rng(0)
    x = rng.random((n, c, hw, hw), dtype=np.float32)
    w = rng.random((k, c, 3, 3), dtype=np.float32)
    b = np.zeros(k, np.float32)
    return (lambda: (F.asarray(x), F.asarray(w), F.asarray(b))), (lambda x, w, b: F.conv2d(x, w, b, padding=1))


def test_record_call_is_the_launchers_choice():
    prepare, call = conv_call()
    launches = perf.record_call(call, gpus.GPUS["h200"].sms, prepare=prepare)
    kernels = [la.kernel for la in launches]
    assert kernels[0].startswith("conv_weight_gemm<") and any(k.startswith("conv2d_fwd<") for k in kernels)
    fwd = next(la for la in launches if la.kernel.startswith("conv2d_fwd<"))
    assert (fwd.gemm["M"], fwd.gemm["N"], fwd.gemm["K"]) == (4 * 14 * 14, 64, 32 * 9)   # the implicit GEMM
    assert {la.layer for la in launches} == {"call"} and fwd.direction == "forward"
    # prepare's own launches (none here) and every launch outside the call are not recorded
    assert perf.record_call(lambda: None, 132) == []


@needs_tools
def test_predict_call_is_the_sum_of_its_rows():
    prepare, call = conv_call()
    rows, total = perf.predict_call(call, "h200", prepare=prepare)
    assert [r.launch.kernel for r in rows] == [la.kernel for la in perf.record_call(call, 132, prepare=prepare)]
    assert total == pytest.approx(sum(r.predicted_us for r in rows)) and total > 0
    assert all(r.predicted_us == max(r.bounds().values()) for r in rows)
    a100, _ = perf.predict_call(call, "a100", prepare=prepare)
    assert a100[-1].occ is not None and sum(r.predicted_us for r in a100) > total   # a slower GPU, modelled
    with pytest.raises(ValueError, match="unknown GPU"):
        perf.predict_call(call, "v100", prepare=prepare)


def test_predict_call_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(sass, "missing", lambda: "gpucnn kernels needs nvcc, not found here")
    with pytest.raises(RuntimeError, match="needs nvcc"):
        perf.predict_call(lambda: None)
