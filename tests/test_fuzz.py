"""The op fuzz (tests/fuzz_ops.py) on every backend, each in a child process: a crash (a segfault in a
kernel, the simulator or the emulator) fails that backend's test, naming the case it was running, instead
of ending the pytest run.

The three children start together (a module fixture), so a 2-core CI machine runs them side by side;
the default run has a fixed seed and a number of examples per backend that fits CI (well under a
minute of wall time in all). A long run: GPUCNN_FUZZ=N examples per backend, GPUCNN_FUZZ_SEED=S (an
int, or 'random': the seed is printed), e.g.

    GPUCNN_FUZZ=2000 GPUCNN_FUZZ_SEED=random pytest tests/test_fuzz.py -rA

(environment variables only: a --fuzz option would need pytest_addoption in tests/conftest.py).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import BACKENDS, why_unavailable

FUZZ = Path(__file__).with_name("fuzz_ops.py")
CI_EXAMPLES = {"numpy": 1000, "cupy": 600, "numba": 200}  # the default run: 25-45 s of wall time in all
CI_TIMEOUT_S = 300  # a hung child fails its test instead of the whole run


def _settings():
    """(examples per backend, seed, timeout in seconds) from GPUCNN_FUZZ / GPUCNN_FUZZ_SEED."""
    n = os.environ.get("GPUCNN_FUZZ")
    seed = os.environ.get("GPUCNN_FUZZ_SEED", "0")
    if seed == "random":  # one seed for the three children (each prints it)
        seed = str(random.randrange(2**32))
    if not n:
        return dict(CI_EXAMPLES), seed, CI_TIMEOUT_S
    return {b: int(n) for b in BACKENDS}, seed, CI_TIMEOUT_S + 5 * int(n)


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """Start the fuzz of every available backend at once; {backend: Popen, its log path, start time}."""
    examples, seed, timeout = _settings()
    env = dict(os.environ)
    env.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    env.setdefault("GPUCNN_CUPY_EMULATE", "1")
    logs = tmp_path_factory.mktemp("fuzz")
    runs = {}
    for name in BACKENDS:
        if why_unavailable(name):
            continue
        log = logs / f"{name}.log"
        cmd = [sys.executable, str(FUZZ), "--backend", name, "--max-examples", str(examples[name]), "--seed", seed]
        if name == "numba":
            cmd.append("--no-shrink")  # shrinking in the simulator would outlast any budget
        with open(log, "wb") as out:
            runs[name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), log, time.monotonic())
    yield runs, timeout
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _last_case(text: str) -> str:
    cases = [line for line in text.splitlines() if line.startswith("case ")]
    return cases[-1] if cases else "(no case started)"


@pytest.mark.parametrize("name", BACKENDS)
def test_fuzz(fuzz_runs, name):
    runs, timeout = fuzz_runs
    reason = why_unavailable(name)
    if reason:
        pytest.skip(f"{name} backend unavailable: {reason}")
    proc, log, start = runs[name]
    try:
        rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        why = None
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        why = f"timed out after {timeout} s"
    text = log.read_text(errors="replace")
    if rc < 0 and why is None:
        why = f"killed by signal {-rc} ({signal.Signals(-rc).name})"
    if why is not None:
        pytest.fail(f"fuzz {name}: {why} while running: {_last_case(text)}\n{text[-6000:]}", pytrace=False)
    if rc != 0:
        pytest.fail(f"fuzz {name} failed (exit {rc}):\n{text[-12000:]}", pytrace=False)
    print(text.strip().splitlines()[-1])  # the counts (pytest -rA shows them)
