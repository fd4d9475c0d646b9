"""Every kernels/*.cu compiles with the machine's nvcc for sm_80 and sm_90, every template instance
a launcher can ask for included, and ptxas reports no register spills in any kernel.

nvcc only compiles the template instances a translation unit uses, so each file is compiled
together with a reference to every name expression its launcher module lists (the same list
cupy.RawModule instantiates at run time). Skipped, saying so, where nvcc is absent.
"""
import functools
import importlib
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpucnn.backends.cupy import _runtime

NVCC = shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine (no CUDA toolkit)")

KERNELS = _runtime.kernels_dir()
ARCHS = ("sm_80", "sm_90")


STEMS = sorted(p.stem for p in KERNELS.glob("*.cu"))


@functools.lru_cache(maxsize=None)
def names_of(stem):
    """The name expressions the launcher module gpucnn/backends/cupy/<stem>.py builds kernels/<stem>.cu with."""
    module = importlib.import_module(f"gpucnn.backends.cupy.{stem}")
    names = set()
    for value in vars(module).values():
        if isinstance(value, _runtime.Family) and value.family == stem:
            names.update(value.names)
    return sorted(names)


@pytest.mark.parametrize("stem", STEMS)
def test_every_kernel_file_has_a_launcher(stem):
    assert names_of(stem), f"kernels/{stem}.cu is loaded by no launcher in gpucnn/backends/cupy/{stem}.py"


@functools.lru_cache(maxsize=None)
def _perf_builds():
    """Every (file, architecture) built as the static model builds it, two nvcc at a time, the biggest first
    (the two cores of CI busy while the files compile; each test then reads its file's two builds)."""
    from gpucnn.perf import sass
    jobs = sorted(((s, a) for s in STEMS for a in ARCHS), key=lambda j: (j[0] not in ("conv", "dense"), j))
    with ThreadPoolExecutor(2) as pool:
        builds = pool.map(lambda j: sass.build(_runtime.module_source(j[0]), KERNELS, names_of(j[0]), j[1]), jobs)
        return dict(zip(jobs, builds))


def ptxas_report(stem, tmp):
    """nvcc's output (with ptxas -v) for kernels/<stem>.cu, every instance, both architectures.

    Where cuobjdump is installed too (the [perf] extra), each architecture is built the way the static
    kernel model builds it (gpucnn.perf.sass.build: the source CuPy compiles, every instance, cached by
    content), the two in parallel: `gpucnn kernels` and tests/test_perf.py then find these builds in the
    cache instead of compiling the same sources again."""
    from gpucnn.perf import sass
    if sass.missing() is None:
        return "\n".join(_perf_builds()[(stem, arch)]["ptxas"] for arch in ARCHS)
    names = names_of(stem)
    src = tmp / f"{stem}_all.cu"
    refs = "void* gpucnn_instances[] = {" + ", ".join(f"(void*)&{n}" for n in names) + "};"
    src.write_text(f'#include "{KERNELS / (stem + ".cu")}"\n{refs}\n')
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [NVCC, "-std=c++17", f"-I{KERNELS}", *gencode, "--threads", "2", "-Xptxas", "-v", "-Werror",
           "all-warnings", "-c", str(src), "-o", str(tmp / f"{stem}.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"nvcc failed on kernels/{stem}.cu:\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


@pytest.mark.parametrize("stem", STEMS)
def test_compiles_for_sm80_and_sm90_without_spills(tmp_path, stem):
    text = ptxas_report(stem, tmp_path)
    entries = re.findall(r"Compiling entry function '([^']+)' for '(sm_\d+)'", text)
    for arch in ARCHS:
        assert any(a == arch for _, a in entries), f"no kernel of {stem}.cu was compiled for {arch}:\n{text[-2000:]}"
    warnings = [line for line in text.splitlines() if re.search(r"\bwarning\b", line, re.I)]
    assert not warnings, f"{stem}.cu: compiler warnings:\n" + "\n".join(warnings[:20])
    spills = re.findall(r"(\d+) bytes spill stores", text)
    assert len(spills) >= len(entries), f"ptxas -v printed no spill line for some kernels of {stem}.cu"
    bad = [line for line in text.splitlines() if re.search(r"[1-9]\d* bytes spill stores", line)]
    assert not bad, f"{stem}.cu: register spills:\n" + "\n".join(bad)
    want = {n.split("<")[0] for n in names_of(stem)}
    compiled = set(entries and {re.sub(r"^_Z\d+", "", e) for e, _ in entries})
    for name in want:
        assert any(name in e for e in compiled), f"{name} of {stem}.cu was not compiled"
