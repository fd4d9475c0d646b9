"""The cupy backend's elementwise kernels (kernels/elementwise.cu) against the NumPy backend."""
import numpy as np
import pytest

from cupy_support import host, ref, run
from helpers import assert_close


@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 3, 5, 4), (3, 1000)])
def test_relu_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(host(run("relu", x)), ref("relu", x), rtol=0, atol=0)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_close(host(run("relu_backward", dy, x)), ref("relu_backward", dy, x), rtol=0, atol=0)


def test_relu_refuses_float64_and_strided_arrays():
    x = np.random.default_rng(0).standard_normal((4, 6))
    with pytest.raises(TypeError, match="float32"):
        run("relu", x)
    with pytest.raises(ValueError, match="C-contiguous"):
        run("relu", x.astype(np.float32)[:, ::2])
