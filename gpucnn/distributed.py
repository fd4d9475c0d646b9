"""Data-parallel training over MPI (host arrays) and NCCL (device arrays).

One process per device (or per CPU share), started by an MPI launcher:
``mpiexec -n 2 gpucnn train --distributed``. The communicator that averages the
gradients is chosen by the backend object's device kind:

- the NumPy backend, and the Numba/CuPy backends in their CPU simulator or
  emulator (arrays on the host): MPI through mpi4py, non-blocking
  ``Iallreduce`` on one flat buffer per bucket;
- a GPU backend (``Backend.device == 'gpu'``, not simulated): NCCL through
  ``cupy.cuda.nccl``, one rank per GPU by its local rank on the machine, the
  NCCL unique id broadcast over MPI, each bucket reduced on a side stream.
  This path has not run on a GPU here (none is present): the tests check that it
  is chosen for a device backend and that its calls match cupy.cuda.nccl's
  API, through a stand-in module.

``allreduce_mean(grads)`` flattens gradients into buckets of ``bucket_bytes``
(4 MiB by default; a tensor may straddle a boundary) and starts each bucket's
reduction as soon as every tensor in it is ready; ``fit(..., distributed=True)``
marks a layer's gradients ready the moment its backward returns, so the
reduction of late layers overlaps the backward of earlier ones, and waits only
before the optimizer step.

Faults: every wait polls its request against a deadline (``GPUCNN_DIST_TIMEOUT``
seconds, 50 by default); past it the rank prints ``gpucnn: error: rank R: ...``
and calls ``MPI.COMM_WORLD.Abort(1)``, which ends every rank. ``guard()`` wraps
a whole run: an exception on any rank prints ``gpucnn: error: rank R failed:
...`` and aborts the job (non-zero status, no hang).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time

import numpy as np

DEFAULT_BUCKET_BYTES = 4 << 20
DEFAULT_TIMEOUT = 50.0


class DistributedError(RuntimeError):
    """A distributed run that cannot go on, raised on every rank alike (no abort needed)."""


_state: dict = {}


def _timeout() -> float:
    try:
        return float(os.environ.get("GPUCNN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def mpi_status() -> str | None:
    """None when MPI is usable here (mpi4py imports and finds its library), else why not."""
    try:
        from mpi4py import MPI
        MPI.Get_library_version()
    except Exception as e:  # ImportError, or a library that does not load
        return f"mpi4py not usable ({type(e).__name__}: {e}); pip install -e '.[mpi]'"
    return None


def mpi_describe() -> str:
    why = mpi_status()
    if why:
        return f"unavailable: {why}"
    from mpi4py import MPI
    import mpi4py
    lib = MPI.Get_library_version().strip().splitlines()[0]
    return f"available: mpi4py {mpi4py.__version__}, {' '.join(lib.split())}"


def nccl_status() -> str | None:
    """None when NCCL is usable here (cupy.cuda.nccl loads and a GPU is present), else why not."""
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception as e:
        return f"cupy.cuda.nccl not importable ({type(e).__name__}: {e})"
    if not getattr(nccl, "available", True):
        return "CuPy was built without NCCL (pip install nvidia-nccl-cu12)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA device ({type(e).__name__}: {e})"
    return None if n > 0 else "no CUDA device"


def nccl_describe() -> str:
    why = nccl_status()
    if why:
        return f"unavailable: {why}"
    from cupy.cuda import nccl
    return f"available: NCCL {nccl.get_version()}"


# ------------------------------------------------------------------------------------- requests


def _say_and_abort(line: str, comm=None):
    """Write `line` to stderr, give the launcher a moment to pass it on (an abort can cut off output still
    in its pipe), then MPI_Abort: every rank ends, status non-zero."""
    try:
        sys.stderr.flush()
        os.write(2, (line + "\n").encode())
    except (OSError, ValueError):
        pass
    time.sleep(0.5)
    from mpi4py import MPI
    (comm or MPI.COMM_WORLD).Abort(1)


def _abort(msg: str, comm=None):
    _say_and_abort(f"gpucnn: error: rank {rank()}: {msg}", comm)


def wait(requests, what="collective", comm=None, timeout=None):
    """Wait for MPI requests, polling against a deadline; past it abort the job (never hang)."""
    from mpi4py import MPI
    timeout = _timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    reqs = list(requests)
    pause = 0.0
    while not MPI.Request.Testall(reqs):
        if time.monotonic() > deadline:
            _abort(f"{what} did not complete within {timeout:g} s (a rank died or hangs); aborting", comm)
        time.sleep(pause)  # spin briefly, then back off to 1 ms (a waiting rank leaves the CPU to the others)
        pause = min(pause * 2 or 2e-6, 1e-3)


# ------------------------------------------------------------------------------------- communicators


class _Done:
    def wait(self):
        pass


class _MPIRequest:
    def __init__(self, req, comm, what):
        self.req, self.comm, self.what = req, comm, what

    def wait(self):
        wait([self.req], self.what, self.comm)


class MPICommunicator:
    """Host buffers over MPI: sums with non-blocking Iallreduce."""

    kind = "mpi"

    def __init__(self, comm):
        self.comm = comm
        self.size = comm.size
        self.xp = np

    def iallreduce_sum(self, buf):
        from mpi4py import MPI
        if self.comm.size == 1:
            return _Done()
        return _MPIRequest(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), self.comm, "allreduce")


class _NCCLRequest:
    def __init__(self, event, cupy):
        self.event, self.cupy = event, cupy

    def wait(self):  # the compute stream waits for the side stream's reduction (no host sync)
        self.cupy.cuda.get_current_stream().wait_event(self.event)


class NCCLCommunicator:
    """Device buffers over NCCL (cupy.cuda.nccl): one rank per GPU, chosen by the local rank; the
    unique id comes from rank 0 over MPI. Each bucket is reduced on a side stream that first waits
    for the compute stream (the gradients are written), and the compute stream waits for it before
    the optimizer step. Not run on a GPU yet (none here)."""

    kind = "nccl"
    _DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16"}

    def __init__(self, comm, nccl=None, cupy=None):
        if cupy is None:
            import cupy
        if nccl is None:
            from cupy.cuda import nccl
        from mpi4py import MPI
        self.mpi, self.nccl, self.cupy, self.xp = comm, nccl, cupy, cupy
        self.size = comm.size
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
        self.local_rank = local.rank
        cupy.cuda.Device(self.local_rank % max(1, cupy.cuda.runtime.getDeviceCount())).use()
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def iallreduce_sum(self, buf):
        cp, nccl = self.cupy, self.nccl
        ready = cp.cuda.Event()
        ready.record(cp.cuda.get_current_stream())
        self.stream.wait_event(ready)
        dtype = getattr(nccl, self._DTYPES[np.dtype(buf.dtype).name])
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype, nccl.NCCL_SUM, self.stream.ptr)
        done = cp.cuda.Event()
        done.record(self.stream)
        return _NCCLRequest(done, cp)


def choose_communicator(comm, be=None, nccl=None, cupy=None):
    """MPI for host arrays; NCCL for a backend whose arrays live on a GPU (device kind 'gpu', not simulated)."""
    if be is None:
        from . import backend
        be = backend.get_backend()
    if getattr(be, "device", "cpu") == "gpu" and not getattr(be, "simulated", False):
        return NCCLCommunicator(comm, nccl=nccl, cupy=cupy)
    return MPICommunicator(comm)


# ------------------------------------------------------------------------------------- process group


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def is_initialized() -> bool:
    return "comm" in _state


def rank() -> int:
    if "comm" in _state:
        return _state["comm"].rank
    return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0)))


def size() -> int:
    return _state["comm"].size if "comm" in _state else 1


def local_size() -> int:
    """Ranks on this machine (1 before init)."""
    return _state.get("local_size", 1)


def rank_map() -> str:
    """'0=PID@HOST 1=PID@HOST ...': which process each rank is. A rank killed outright (SIGKILL, out of memory)
    cannot speak; the launcher then names its PID (MPICH: 'BAD TERMINATION ... PID P'), and this map names
    the rank."""
    return " ".join(f"{r}={pid}@{host}" for r, (pid, host) in enumerate(_state.get("ranks", [])))


def communicator():
    if "backend_comm" not in _state:
        raise DistributedError("gpucnn.distributed.init() has not run")
    return _state["backend_comm"]


def fingerprint_model(model) -> str:
    cfg = model.get_config()
    cfg = {k: v for k, v in cfg.items() if k != "name"}
    shapes = [(k, tuple(np.shape(v))) for k, v in model.parameters().items()]
    return hashlib.sha256(json.dumps([cfg, shapes], sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_data(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _allgather_digest(comm, digest: str) -> list[str]:
    buf = np.frombuffer(bytes.fromhex(digest), np.uint8).copy()
    out = np.empty((comm.size, buf.size), np.uint8)
    wait([comm.Iallgather(buf, out)], "fingerprint exchange", comm)
    return [bytes(row).hex() for row in out]


def init(model=None, data=None, comm=None, backend=None):
    """Join the MPI job (mpi4py) and pick the gradient communicator for the backend.

    model / data (a tuple of host arrays): when given, every rank's architecture and dataset
    fingerprints are compared with rank 0's, and a rank that differs is refused on every rank with a
    DistributedError naming it. Returns (rank, size)."""
    why = mpi_status()
    if why:
        raise DistributedError(f"distributed training needs MPI: {why}")
    from mpi4py import MPI
    if comm is None:
        comm = _state.get("comm") or _world()
    if _state.get("comm") is not comm or "backend_comm" not in _state:
        _state["comm"] = comm
        _state["local_size"] = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank).size
        _state["backend_comm"] = choose_communicator(comm, backend)
        _state["ranks"] = comm.allgather((os.getpid(), MPI.Get_processor_name()))
    for what, digest in (("model architecture", None if model is None else fingerprint_model(model)),
                         ("dataset", None if data is None else fingerprint_data(*data))):
        if digest is None:
            continue
        digests = _allgather_digest(comm, digest)
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            raise DistributedError(
                f"rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} started with a different "
                f"{what} than rank 0 (fingerprint {digests[bad[0]][:12]} vs {digests[0][:12]}); every rank must "
                f"run the same command on the same data")
    return comm.rank, comm.size


def broadcast(model, root: int = 0) -> None:
    """Every parameter and buffer of `model` from rank `root` (one flat host buffer per dtype over MPI)."""
    comm = _state.get("comm")
    if comm is None or comm.size == 1:
        return
    state = model.state_dict()
    by_dtype: dict = {}
    for k, v in state.items():
        by_dtype.setdefault(v.dtype.str, []).append(k)
    for keys in by_dtype.values():
        flat = np.concatenate([state[k].ravel() for k in keys]) if comm.rank == root else \
            np.empty(sum(state[k].size for k in keys), state[keys[0]].dtype)
        wait([comm.Ibcast(flat, root=root)], "broadcast of the model", comm)
        pos = 0
        for k in keys:
            n = state[k].size
            state[k] = flat[pos: pos + n].reshape(state[k].shape).copy()
            pos += n
    model.load_state_dict(state)


def allreduce_sum_host(values, comm=None, what="statistics allreduce") -> np.ndarray:
    """A small host vector summed over ranks (statistics: loss sums, counts), blocking."""
    from mpi4py import MPI
    comm = comm or _state.get("comm")
    buf = np.ascontiguousarray(values, np.float64).copy()
    if comm is None or comm.size == 1:
        return buf
    wait([comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)], what, comm)
    return buf


# ------------------------------------------------------------------------------------- buckets


class Reducer:
    """Averages named gradients over ranks in buckets of about `bucket_bytes`.

    The tensors, in the order given (the order backward produces them), are laid end to end in one
    flat space cut into buckets; a tensor may straddle a boundary. mark(key, grad, scale) copies the
    tensor (times scale) into its bucket(s) and starts a bucket's reduction as soon as every piece of
    it is in; finish() waits for all and returns {key: mean over ranks}."""

    def __init__(self, shapes: dict, dtype, comm=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.comm = comm or communicator()
        self.xp = self.comm.xp
        self.keys = list(shapes)
        self.shapes = {k: tuple(s) for k, s in shapes.items()}
        self.dtype = np.dtype(dtype)
        per = max(1, int(bucket_bytes) // self.dtype.itemsize)
        total = sum(int(np.prod(s)) for s in self.shapes.values())
        self.bounds = [(a, min(a + per, total)) for a in range(0, total, per)]
        self.pieces: dict = {}  # key -> [(bucket, tensor start, tensor stop, bucket start)]
        self.need = [0] * len(self.bounds)
        pos = 0
        for k in self.keys:
            n = int(np.prod(self.shapes[k]))
            start, stop = pos, pos + n
            b = start // per if n else None
            lst = []
            while n and b < len(self.bounds) and self.bounds[b][0] < stop:
                lo, hi = max(start, self.bounds[b][0]), min(stop, self.bounds[b][1])
                lst.append((b, lo - start, hi - start, lo - self.bounds[b][0]))
                self.need[b] += 1
                b += 1
            self.pieces[k] = lst
            pos = stop
        self.buffers = [self.xp.empty(hi - lo, self.dtype) for lo, hi in self.bounds]
        self.calls = 0
        self.reset()

    def reset(self):
        self.left = list(self.need)
        self.requests = [None] * len(self.bounds)
        self.marked = set()

    def mark(self, key, grad, scale=1.0):
        if key in self.marked:
            raise RuntimeError(f"gradient {key!r} marked twice in one step")
        self.marked.add(key)
        flat = self.xp.asarray(grad).reshape(-1)
        for b, lo, hi, at in self.pieces[key]:
            piece = flat[lo:hi]
            if scale != 1.0:
                piece = piece * self.dtype.type(scale)
            self.buffers[b][at: at + hi - lo] = piece
            self.left[b] -= 1
            if self.left[b] == 0:
                self.requests[b] = self.comm.iallreduce_sum(self.buffers[b])
                self.calls += 1

    def finish(self) -> dict:
        missing = [k for k in self.keys if k not in self.marked]
        if missing:
            raise RuntimeError(f"gradients never marked this step: {', '.join(missing)}")
        for r in self.requests:
            r.wait()
        inv = self.dtype.type(1.0 / self.comm.size)
        out = {}
        for k in self.keys:
            parts = [self.buffers[b][at: at + hi - lo] for b, lo, hi, at in self.pieces[k]]
            if not parts:  # an empty tensor
                out[k] = self.xp.zeros(self.shapes[k], self.dtype)
                continue
            flat = parts[0] if len(parts) == 1 else self.xp.concatenate(parts)
            out[k] = (flat * inv).reshape(self.shapes[k])
        self.reset()
        return out


def allreduce_mean(grads, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
    """The mean over ranks of `grads` (a dict name -> array, or a list of arrays), reduced in flat
    buckets of about bucket_bytes, each started as soon as it is filled. Same structure back."""
    named = dict(grads) if isinstance(grads, dict) else {str(i): g for i, g in enumerate(grads)}
    dtypes = {np.dtype(g.dtype) for g in named.values()}
    if len(dtypes) != 1:
        raise ValueError(f"allreduce_mean needs gradients of one dtype, got {sorted(map(str, dtypes))}")
    red = Reducer({k: np.shape(g) for k, g in named.items()}, dtypes.pop(), bucket_bytes=bucket_bytes)
    for k, g in named.items():
        red.mark(k, g)
    out = red.finish()
    return out if isinstance(grads, dict) else [out[str(i)] for i in range(len(named))]


# ------------------------------------------------------------------------------------- faults


@contextlib.contextmanager
def guard():
    """Run a distributed job's body; any exception on this rank prints 'gpucnn: error: rank R failed:
    ...' and aborts every rank (MPI_Abort), so no rank waits forever for it. A DistributedError (raised
    on every rank alike) passes through for a clean exit."""
    try:
        yield
    except DistributedError:
        raise
    except BaseException as e:
        if not is_initialized() or size() == 1 or isinstance(e, SystemExit) and not e.code:
            raise
        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        _say_and_abort(f"gpucnn: error: rank {rank()} failed: {msg}", _state["comm"])


# ------------------------------------------------------------------------------------- training


class BatchNormSync:
    """A BatchNorm2D's `sync` under DataParallel(sync_batchnorm=True): the blocking host allreduce of its
    per-channel statistics, and this step's gradient scale (F.sync_batch_norm_backward's dy_scale)."""

    def __init__(self, comm):
        self.comm = comm
        self.dy_scale = 1.0

    def allreduce(self, values):
        return allreduce_sum_host(values, self.comm, "batch norm statistics allreduce")


class DataParallel:
    """The per-step work of fit(..., distributed=True) on one rank.

    While entered, every layer with parameters reports its gradients to a Reducer the moment its
    backward returns (an instance attribute wraps the layer's backward), so a bucket's reduction starts
    while earlier layers still run backward; step() waits for all before the optimizer step. A rank's
    loss is the mean over its own rows, so its gradients are scaled by rows * size / global rows before
    the mean over ranks: the result is the gradient of the global batch's mean loss, also for a short
    last batch split unevenly (a rank with no rows adds zeros).

    sync_batchnorm=True (more than one rank): every BatchNorm2D normalizes with the statistics of the
    global batch (PyTorch's SyncBatchNorm; F.sync_batch_norm): two small blocking allreduces per layer
    and step, one in forward and one in backward; the running statistics are the global batch's, alike
    on every rank. A rank with no rows in a step still takes part in them (with empty batches)."""

    def __init__(self, model, bucket_bytes: int = DEFAULT_BUCKET_BYTES, sync_batchnorm: bool = False):
        from .layers import BatchNorm2D, Dropout
        self.model = model
        entries = list(model._entries(("params",)))
        self.keys_of: dict = {}
        for key, layer, _, k, _ in entries:
            self.keys_of.setdefault(id(layer), (layer, []))[1].append((key, k))
        shapes = {key: tuple(np.shape(v)) for key, _, _, _, v in reversed(entries)}  # backward's order
        self.reducer = Reducer(shapes, model.dtype, bucket_bytes=bucket_bytes)
        self.dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
        self.scale = 1.0
        comm = _state["comm"]  # init() has run: the Reducer found its communicator
        sync = bool(sync_batchnorm) and comm.size > 1  # one rank: its batch is the global batch
        self.batch_norm_sync = BatchNormSync(comm) if sync else None
        self.synced = [layer for layer in model.layers if isinstance(layer, BatchNorm2D)] if sync else []

    def __enter__(self):
        for layer, keys in self.keys_of.values():
            layer.backward = self._wrap(layer, layer.backward, keys)
        for layer in self.synced:
            layer.sync = self.batch_norm_sync
        return self

    def __exit__(self, *exc):
        for layer, _ in self.keys_of.values():
            layer.__dict__.pop("backward", None)
        for layer in self.synced:
            layer.__dict__.pop("sync", None)
        for d in self.dropouts:
            d.rows = None
        self.reducer.reset()
        return False

    def _wrap(self, layer, backward, keys):
        def wrapped(*args, **kwargs):
            out = backward(*args, **kwargs)
            for key, k in keys:
                self.reducer.mark(key, layer.grads[k], self.scale)
            return out
        return wrapped

    def step(self, xb, yb, offset: int, global_rows: int):
        """One step on this rank's rows (offset.. of a global batch of global_rows); returns the local
        (loss sum, number correct) as host numbers."""
        from . import functional as F
        model, n = self.model, len(xb)
        for d in self.dropouts:
            d.rows = (offset, global_rows)
        loss_sum, correct = 0.0, 0
        if n == 0:  # a short last batch with fewer rows than ranks: zeros, and the dropout seeds still advance
            for d in self.dropouts:
                d._rng.integers(2**63)
            self._idle_step()
        else:
            self.scale = n * self.reducer.comm.size / global_rows
            if self.batch_norm_sync is not None:
                self.batch_norm_sync.dy_scale = self.scale
            logits = model.forward(xb, training=True, logits=True)
            loss, dlogits = F.softmax_cross_entropy(logits, yb)
            model.backward(dlogits, input_grad=False)
            loss_sum = float(F.to_numpy(loss)) * n
            correct = int((F.to_numpy(logits).argmax(axis=1) == yb).sum())
        grads = self.reducer.finish()
        params = model.parameters()
        model.optimizer.step(params, {k: grads[k] for k in params})
        return loss_sum, correct

    def _idle_step(self):
        """A step without rows: zero gradients, marked in the order a working rank's backward marks them, so
        every bucket's collective starts in the same order on every rank; synchronized batch norms run on
        empty batches at their places in forward and backward (their allreduces are collectives too)."""
        from . import functional as F
        model = self.model
        model._place()
        self.scale = 0.0
        synced = {id(layer) for layer in self.synced}
        for node in model.nodes[1:]:  # forward's order
            if id(node.layer) in synced:
                shape = (0,) + tuple(node.layer.input_shape)
                node.layer.forward(F.asarray(np.zeros(shape, model.dtype)), training=True)
        for node in reversed(model.nodes[1:]):  # backward's order
            layer = node.layer
            if id(layer) in synced:
                layer.backward(layer._x)  # an empty dy; the wrapper marks its (zero) gradients
            elif id(layer) in self.keys_of:
                for key, k in self.keys_of[id(layer)][1]:
                    self.reducer.mark(key, F.zeros_like(layer.params[k]), 1.0)


def shard(n: int, r: int | None = None, k: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of n for rank r of k: contiguous, the first n % k ranks one row more."""
    r = rank() if r is None else r
    k = size() if k is None else k
    base, extra = divmod(n, k)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)
