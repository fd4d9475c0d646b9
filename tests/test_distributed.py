"""gpucnn.distributed: data-parallel training over MPI (mpi4py + the mpich wheel's mpiexec), run for real
with `mpiexec -n 2/3` in subprocesses; the NCCL path against stand-ins for cupy and cupy.cuda.nccl."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

mpi4py = pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[mpi]')")
MPIEXEC = shutil.which("mpiexec") or (str(Path(sys.executable).parent / "mpiexec")
                                      if (Path(sys.executable).parent / "mpiexec").exists() else None)
GPUCNN = Path(sys.executable).parent / "gpucnn"
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH (pip install mpich)")


def _env():
    env = dict(os.environ)
    env.pop("GPUCNN_DEBUG", None)
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def mpirun(n, *argv, timeout=90, cwd=None, timeout_env=None):
    """`mpiexec -n N ...` (fork launcher: no ssh in a container); returns (CompletedProcess, seconds)."""
    cmd = [MPIEXEC, "-launcher", "fork", "-n", str(n), *map(str, argv)]
    t0 = time.monotonic()
    env = _env()
    if timeout_env:
        env["GPUCNN_DIST_TIMEOUT"] = timeout_env
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    return p, time.monotonic() - t0


def script(tmp_path, body: str) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_allreduce_mean_matches_numpy_mean_over_ranks(tmp_path):
    """Odd sizes, many buckets, bucket boundaries inside tensors, 3 ranks; one call per bucket."""
    w = tmp_path / "worker.py"
    text = textwrap.dedent("""
        import numpy as np
        from gpucnn import distributed as d
        r, n = d.init()
        shapes = [(3, 5), (7,), (1,), (11, 13), (2, 3, 3, 3), (5,), (0,), (17, 1)]
        mine = {}
        for k, s in enumerate(shapes):
            every = [np.random.default_rng([k, q]).standard_normal(s).astype(np.float32) for q in range(n)]
            mine[f"t{k}"] = (every[r], np.mean(every, axis=0))
        for bucket_bytes in (4, 12, 40, 100, 1 << 20):
            red = d.Reducer({k: v[0].shape for k, v in mine.items()}, np.float32, bucket_bytes=bucket_bytes)
            split = [k for k, p in red.pieces.items() if len(p) > 1]
            assert bucket_bytes > 4 * 400 or split, "no tensor straddles a bucket boundary"
            for k, (g, _) in mine.items():
                red.mark(k, g)
            out = red.finish()
            assert red.calls == len(red.bounds), (red.calls, len(red.bounds))
            for k, (g, ref) in mine.items():
                assert out[k].shape == ref.shape
                np.testing.assert_allclose(out[k], ref, rtol=1e-6, atol=1e-6, err_msg=f"{k} {bucket_bytes}")
            if bucket_bytes == 40:
                assert len(red.bounds) > 10
        lst = d.allreduce_mean([v[0] for v in mine.values()], bucket_bytes=24)
        for o, (_, ref) in zip(lst, mine.values()):
            np.testing.assert_allclose(o, ref, rtol=1e-6, atol=1e-6)
        (tmp / f"ok{r}").write_text(f"{r} {n}")
        """).replace("import numpy as np", f"import numpy as np, pathlib; tmp = pathlib.Path({str(tmp_path)!r})", 1)
    w.write_text(text)
    p, _ = mpirun(3, sys.executable, w)
    assert p.returncode == 0, p.stderr + p.stdout
    assert [(tmp_path / f"ok{r}").read_text() for r in range(3)] == ["0 3", "1 3", "2 3"]  # each rank's own file


def test_train_distributed_matches_one_process(tmp_path):
    """The issue's check: mpiexec -n 2 gpucnn train --distributed against one process, same command."""
    args = ["train", "--epochs", "2", "--batch-size", "64", "--verbose", "2"]
    one = subprocess.run([str(GPUCNN), *args, "--save", tmp_path / "a.npz"], capture_output=True, text=True,
                         timeout=90, env=_env())
    assert one.returncode == 0, one.stderr
    two, _ = mpirun(2, GPUCNN, *args, "--distributed", "--save", tmp_path / "b.npz")
    assert two.returncode == 0, two.stderr + two.stdout

    def accuracy(out):
        lines = [line for line in out.splitlines() if line.startswith("test accuracy:")]
        assert len(lines) == 1, out  # only rank 0 prints
        return float(lines[0].split()[2])

    assert "2 ranks over MPI (global batch 64, 32 per rank)" in two.stdout
    assert two.stdout.count("saved to") == 1
    assert abs(accuracy(one.stdout) - accuracy(two.stdout)) <= 0.01
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    floats = [k for k in a.files if a[k].dtype.kind == "f"]
    assert floats
    for k in floats:  # rtol 1e-3, with an absolute floor of 1e-3 of the tensor's largest weight
        np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-3 * float(np.abs(a[k]).max()), err_msg=k)


def test_batch_not_divisible_refused():
    p, _ = mpirun(2, GPUCNN, "train", "--distributed", "--epochs", "1", "--batch-size", "63", timeout=60)
    assert p.returncode != 0
    assert "--batch-size 63 is the global batch and must divide evenly over the 2 ranks" in p.stderr


def test_fit_refuses_a_rank_with_other_data(tmp_path):
    w = script(tmp_path, """
        import numpy as np, gpucnn
        from gpucnn import distributed as d, models
        rank, size = d.init()
        x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
        y = np.arange(40) % 10
        if rank == 1:
            x[3, 0, 0, 0] += 1
        m = models.get("digits_cnn", seed=0)
        try:
            m.fit(x, y, epochs=1, batch_size=8, verbose=0, distributed=True)
        except d.DistributedError as e:
            open(f"refused{rank}", "w").write(str(e))
        """)
    p, _ = mpirun(2, sys.executable, w, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for r in range(2):  # refused on every rank alike, rank 1 named
        assert "rank 1 started with a different dataset than rank 0" in (tmp_path / f"refused{r}").read_text()


@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_a_failing_rank_ends_the_job_naming_it(tmp_path, how):
    """Rank 1 raises (or is killed) in its 5th step: every rank stops, non-zero, within 60 s, naming rank 1."""
    w = script(tmp_path, f"""
        import os, signal, sys
        from gpucnn import cli, distributed as d
        step = d.DataParallel.step
        count = [0]
        def failing(self, *a, **k):
            count[0] += 1
            if d.rank() == 1 and count[0] == 5:
                if {how!r} == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if {how!r} == "hang":  # rank 0 waits on the allreduce past GPUCNN_DIST_TIMEOUT and aborts
                    import time; time.sleep(3600)
                raise RuntimeError("injected failure")
            return step(self, *a, **k)
        d.DataParallel.step = failing
        sys.exit(cli.main(["train", "--distributed", "--epochs", "3", "--batch-size", "32", "--verbose", "0"]))
        """)
    p, seconds = mpirun(2, sys.executable, w, timeout=90, timeout_env="4")
    assert p.returncode != 0
    assert seconds < 60
    err = p.stderr + p.stdout
    if how == "raise":
        assert "gpucnn: error: rank 1 failed: RuntimeError: injected failure" in err
    elif how == "hang":
        assert "gpucnn: error: rank 0: allreduce did not complete within 4 s" in err
    else:  # it cannot speak: mpiexec names its PID, rank 0's first line maps PIDs to ranks
        import re
        ranks = dict(re.findall(r"(\d+)=(\d+)@", re.search(r"ranks \(rank=pid@host\): (.*)", err).group(1)))
        dead = re.search(r"PID (\d+) RUNNING AT", err).group(1)
        assert ranks["1"] == dead, err


# ------------------------------------------------------------------------------------- in process


def test_mpi_chosen_for_host_arrays_and_nccl_for_a_device_backend(monkeypatch):
    from mpi4py import MPI
    from gpucnn import backend, distributed as d
    assert d.choose_communicator(MPI.COMM_SELF, backend.get_backend()).kind == "mpi"
    sim = types.SimpleNamespace(device="gpu", simulated=True)  # a simulator's arrays are host arrays
    assert d.choose_communicator(MPI.COMM_SELF, sim).kind == "mpi"
    nccl, cupy = _fake_nccl_and_cupy()
    gpu = types.SimpleNamespace(device="gpu", simulated=False)
    comm = d.choose_communicator(MPI.COMM_SELF, gpu, nccl=nccl, cupy=cupy)
    assert comm.kind == "nccl"
    assert nccl.log[:2] == [("get_unique_id",), ("NcclCommunicator", 1, nccl.UID, 0)]
    assert cupy.log == [("Device", 0), ("use",), ("Stream", True)]


def test_nccl_calls_follow_cupy_nccl_api():
    """Buckets reduced through NcclCommunicator.allReduce(sendbuf, recvbuf, count, datatype, op, stream) in place,
    on the side stream after the compute stream's event; the mean comes back (one rank)."""
    from mpi4py import MPI
    from gpucnn import distributed as d
    nccl, cupy = _fake_nccl_and_cupy()
    comm = d.NCCLCommunicator(MPI.COMM_SELF, nccl=nccl, cupy=cupy)
    grads = {"a": np.arange(7, dtype=np.float32), "b": np.ones((3, 5), np.float32)}
    red = d.Reducer({k: v.shape for k, v in grads.items()}, np.float32, comm=comm, bucket_bytes=32)
    for k, g in grads.items():
        red.mark(k, g)
    out = red.finish()
    for k, g in grads.items():
        np.testing.assert_array_equal(np.asarray(out[k]), g)
    calls = [c for c in nccl.log if c[0] == "allReduce"]
    assert len(calls) == len(red.bounds) == 3
    for (_, send, recv, count, dtype, op, stream), buf in zip(calls, red.buffers):
        assert send == recv == buf.data.ptr and count == buf.size
        assert dtype == nccl.NCCL_FLOAT32 and op == nccl.NCCL_SUM and stream == comm.stream.ptr


def _fake_nccl_and_cupy():
    """Stand-ins with cupy.cuda.nccl's signatures (checked: positional arity and types) and the part of cupy
    used; arrays are NumPy arrays whose .data.ptr is their address."""

    class Arr(np.ndarray):
        @property
        def data(self):
            return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    nccl = types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_FLOAT16=6, NCCL_SUM=0, UID=tuple(range(128)),
                                 log=[], available=True)

    def get_unique_id():
        nccl.log.append(("get_unique_id",))
        return nccl.UID

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            assert isinstance(ndev, int) and isinstance(commId, tuple) and len(commId) == 128 and isinstance(rank, int)
            nccl.log.append(("NcclCommunicator", ndev, commId, rank))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            assert all(isinstance(v, int) for v in (sendbuf, recvbuf, count, datatype, op, stream))
            nccl.log.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))

    nccl.get_unique_id, nccl.NcclCommunicator = get_unique_id, NcclCommunicator
    log = []

    class Stream:
        ptr = 1234

        def __init__(self, non_blocking=False):
            log.append(("Stream", non_blocking))

        def wait_event(self, event):
            assert isinstance(event, Event)

    class Event:
        def record(self, stream=None):
            assert isinstance(stream, Stream)

    class Device:
        def __init__(self, i):
            log.append(("Device", i))

        def use(self):
            log.append(("use",))

    current = Stream.__new__(Stream)
    cuda = types.SimpleNamespace(Device=Device, Stream=Stream, Event=Event, get_current_stream=lambda: current,
                                 runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cupy = types.SimpleNamespace(cuda=cuda, log=log,
                                 empty=lambda n, dtype: np.empty(n, dtype).view(Arr),
                                 zeros=lambda s, dtype: np.zeros(s, dtype).view(Arr),
                                 asarray=lambda a: np.asarray(a).view(Arr),
                                 concatenate=lambda parts: np.concatenate(parts).view(Arr))
    return nccl, cupy


def test_info_reports_mpi_and_nccl(capsys):
    from gpucnn import cli
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "mpi    available: mpi4py" in out
    assert "nccl   " in out


def test_fit_three_ranks_short_last_batch_matches_one_process(tmp_path):
    """26 training rows, global batch 6 over 3 ranks: the last batch has 2 rows (rank 2 gets none); with
    validation_split and dropout, the weights and the history match fit in one process. 64 KiB buckets (10):
    the rank without rows marks its zero gradients in backward's order, so its buckets' collectives start
    in the other ranks' order (in parameter order they did not, and the weights came out wrong by ~5e-3)."""
    w = script(tmp_path, """
        import sys, numpy as np
        from gpucnn import data, distributed as d, models
        x, y = data.load_digits()
        m = models.get("digits_cnn", seed=0)
        h = m.fit(x[:33], y[:33], epochs=2, batch_size=6, seed=1, validation_split=0.2, verbose=0,
                  distributed=sys.argv[1] == "1", bucket_bytes=1 << 16)
        if d.rank() == 0:
            np.savez(f"w{sys.argv[1]}.npz", **m.state_dict(), **{k: np.array(v) for k, v in h.history.items()})
        """)
    one = subprocess.run([sys.executable, w, "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env())
    assert one.returncode == 0, one.stderr
    p, _ = mpirun(3, sys.executable, w, "1", timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert "val_accuracy" in a.files
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


# ------------------------------------------------------------------------------------- synchronized batch norm


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
def test_sync_batch_norm_layer_matches_one_process_on_the_global_batch(tmp_path, backend):
    """BatchNorm2D with sync over 3 ranks: every rank's rows of y and dx, the averaged weight/bias gradients
    and the running statistics equal one process's batch norm on the concatenated batch, for even, uneven
    and empty shares, 4-D and 2-D inputs; dy on each rank is scaled as DataParallel's mean loss over its own
    rows makes it (rows * ranks / global rows, undone by the gradient weighting). NumPy in float64 to 1e-10;
    the CuPy backend's kernels (float32 only; emulated on the CPU here) to 2e-4."""
    from gpucnn import backend as gb
    why = gb.get_backend(backend).probe()
    if why:
        pytest.skip(f"backend {backend}: {why}")
    w = script(tmp_path, """
        import sys, numpy as np, gpucnn
        from gpucnn import distributed as d, functional as F
        from gpucnn.layers import BatchNorm2D
        gpucnn.use_backend(sys.argv[1])
        dt = np.float64 if sys.argv[1] == "numpy" else np.float32
        tol = dict(rtol=1e-10, atol=1e-12) if dt == np.float64 else dict(rtol=2e-4, atol=2e-5)
        rank, size = d.init()
        sync = d.BatchNormSync(d._state["comm"])
        host = F.to_numpy

        def layer(shape):
            bn = BatchNorm2D(momentum=0.3)
            bn.input_shape = shape[1:]
            bn.build(np.random.default_rng(0), dt)
            g = np.random.default_rng(1)
            for store, k in (("params", "weight"), ("params", "bias"), ("buffers", "running_mean"),
                             ("buffers", "running_var")):
                a = getattr(bn, store)[k]
                getattr(bn, store)[k] = F.asarray((a + (k != "running_var") * g.standard_normal(shape[1])).astype(dt))
            return bn

        for shape in [(8, 3, 2, 3), (7, 5), (2, 2, 2, 2)]:
            g = np.random.default_rng(list(shape))
            x = (g.standard_normal(shape) * 2 + 0.5).astype(dt)
            dy = g.standard_normal(shape).astype(dt)
            ref = layer(shape)
            y_ref = host(ref.forward(F.asarray(x), training=True))
            dx_ref = host(ref.backward(F.asarray(dy)))
            b = shape[0]
            for cut in ([0, b // 3, 2 * b // 3, b], [0, 1, b - 1, b], [0, 0, b, b], [0, b, b, b]):
                lo, hi = cut[rank], cut[rank + 1]
                n = hi - lo
                scale = n * size / b  # DataParallel's: this rank's loss is the mean over its n rows
                bn = layer(shape)
                bn.sync = sync
                sync.dy_scale = scale
                y = host(bn.forward(F.asarray(x[lo:hi].copy()), training=True))
                dx = host(bn.backward(F.asarray((dy[lo:hi] * dt(b / max(n, 1))).astype(dt))))
                where = f"{shape} {cut} rank {rank}"
                np.testing.assert_allclose(y, y_ref[lo:hi], err_msg=where, **tol)
                np.testing.assert_allclose(dx * dt(n / b), dx_ref[lo:hi], err_msg=where, **tol)
                grads = d.allreduce_mean({k: host(bn.grads[k]) * dt(scale) for k in ("weight", "bias")})
                for k in ("weight", "bias"):
                    np.testing.assert_allclose(grads[k], host(ref.grads[k]), err_msg=where + k, **tol)
                for k in ("running_mean", "running_var"):
                    np.testing.assert_allclose(host(bn.buffers[k]), host(ref.buffers[k]), err_msg=where + k, **tol)
        bn = layer((4, 3))
        bn.sync = sync
        try:  # one value per channel over all ranks: refused on every rank alike
            bn.forward(F.asarray(np.ones((1 if rank == 0 else 0, 3), dt)), training=True)
        except ValueError as e:
            assert "more than one value per channel over all ranks, got 1" in str(e), e
        else:
            raise AssertionError("a global batch of one value per channel was not refused")
        open(f"ok{rank}", "w").write("ok")
        """)
    p, _ = mpirun(3, sys.executable, w, backend, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    assert all((tmp_path / f"ok{r}").exists() for r in range(3))


def test_fit_sync_batchnorm_matches_one_process(tmp_path):
    """fit(..., distributed=True, sync_batchnorm=True) with batch norm after a conv and after a dense layer,
    3 ranks, 1.4 KB gradient buckets (7), a short last batch of 2 rows (1 + 1 + none: rank 2 takes part in
    the collectives with empty batches): weights, running statistics and history equal one process's fit
    (per-rank batch norm, the default, could not even run this: one value per channel on a rank)."""
    w = script(tmp_path, """
        import sys, numpy as np
        from gpucnn import Sequential, data, distributed as d
        from gpucnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
        x, y = data.load_digits()
        # no biases before batch norm: their gradients are rounding noise (batch norm takes the mean out), which
        # Adam's step, normalized by the gradient's size, would turn into different weights in any two runs
        m = Sequential([Conv2D(8, 3, padding="same", use_bias=False), BatchNorm2D(), ReLU(), MaxPool2D(2),
                        Flatten(), Dense(16, use_bias=False), BatchNorm2D(), ReLU(), Dense(10)],
                       input_shape=(1, 8, 8), seed=0)
        mode = sys.argv[1]
        h = m.fit(x[:160], y[:160], epochs=2, batch_size=18, seed=1, validation_split=0.2, verbose=0,
                  distributed=mode != "one", sync_batchnorm=mode == "sync", bucket_bytes=1400)
        if d.rank() == 0:
            np.savez(f"w_{mode}.npz", **m.state_dict(), **{k: np.array(v) for k, v in h.history.items()})
        """)
    one = subprocess.run([sys.executable, w, "one"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env=_env())
    assert one.returncode == 0, one.stderr
    p, _ = mpirun(3, sys.executable, w, "sync", timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    a, b = np.load(tmp_path / "w_one.npz"), np.load(tmp_path / "w_sync.npz")
    assert any("running_var" in k for k in a.files) and "val_accuracy" in a.files
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_sync_batchnorm_needs_distributed():
    import gpucnn
    from gpucnn import cli
    from gpucnn.layers import BatchNorm2D, Dense
    m = gpucnn.Sequential([Dense(4), BatchNorm2D(), Dense(2)], input_shape=(3,), seed=0)
    with pytest.raises(ValueError, match="sync_batchnorm=True .* needs distributed=True"):
        m.fit(np.zeros((4, 3), np.float32), np.zeros(4, int), verbose=0, sync_batchnorm=True)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--sync-bn", "--epochs", "1"])
    assert "--sync-bn synchronizes batch-norm statistics over the ranks of a --distributed run" in str(e.value.code)
