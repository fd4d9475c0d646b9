"""The README's Python examples are tests: each ```python block runs as written, in a fresh folder."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    if "accuracy" in namespace:  # the training tour: the numbers it promises
        assert namespace["accuracy"] >= 0.97
    if "img" in namespace:  # the worked examples
        from gpucnn import functional as F
        assert F.conv2d(namespace["img"], namespace["k"])[0, 0, 0, :2].tolist() == [107, 156]
        assert F.conv2d(namespace["img"], namespace["k"], stride=2)[0, 0, 0, :2].tolist() == [107, 121]
    if "unet" in namespace:
        x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
        assert namespace["unet"].forward(x).shape == (2, 1, 8, 8)
