"""The part of CuPy the CuPy backend uses, emulated on the CPU (GPUCNN_CUPY_EMULATE=1).

With a GPU, ``_runtime.xp`` is ``cupy``; emulated, it is this module, so the launchers run the
same code either way. Its arrays behave like ``cupy.ndarray`` where a GPU would catch a mistake
that plain NumPy arrays would hide:

- ``ndarray`` is not a NumPy array: ``np.asarray(a)`` (any implicit conversion) raises
  ``TypeError``, as CuPy does; ``a.get()`` copies to the host, ``asarray(host)`` copies to the
  device (a copy, never an alias, so an op that updates a device array in place never changes
  the caller's host array, as on a GPU);
- a stream capture (``begin_capture``/``end_capture``, what ``_runtime.Graph`` uses) records the
  launches and device-side fills and copies, and any host read (``get``, ``float(a)``), host
  upload (``asarray`` of a NumPy array, ``set``) or synchronization during it raises
  ``CaptureError``, as CUDA invalidates a capture that synchronizes or copies from pageable
  host memory;
- streams and events exist (pinned host buffers are plain NumPy arrays; work runs at once, in
  program order, so what they order is already ordered).

Still not like a device: no speed, no concurrency (blocks and streams run one after another),
no asynchronous errors, and the memory is host memory.
"""
from __future__ import annotations

import numpy as np

from . import hostemu


class CaptureError(RuntimeError):
    """A host read, host upload or synchronization inside a stream capture (illegal in CUDA)."""


# --------------------------------------------------------------------------- capture state

_capture: list | None = None  # the operations recorded by the capture in progress, or None


def capturing() -> bool:
    return _capture is not None


def begin_capture() -> None:
    global _capture
    if _capture is not None:
        raise CaptureError("a stream capture is already in progress")
    _capture = []


def end_capture() -> list:
    """The recorded operations (callables that redo them), in order; the capture ends."""
    global _capture
    if _capture is None:
        raise CaptureError("end_capture without begin_capture")
    ops, _capture = _capture, None
    return ops


def abort_capture() -> None:
    global _capture
    _capture = None


def _host_access(what: str) -> None:
    if _capture is not None:
        raise CaptureError(f"{what} during a stream capture: CUDA forbids host synchronization and copies "
                           "between pageable host memory and the device while a stream is being captured")


def run_or_record(op) -> None:
    """A device operation: run it now, or record it (not run) while a capture is in progress."""
    if _capture is not None:
        _capture.append(op)
    else:
        op()


# --------------------------------------------------------------------------- arrays

class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class ndarray:  # noqa: N801  (the name CuPy uses)
    """A device array: its memory is a NumPy buffer that only kernels and explicit copies touch."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"ndarray wraps a NumPy buffer, got {type(a).__name__}")
        self._a = a

    # -- what a kernel launch sees
    @property
    def buffer(self) -> np.ndarray:
        """The memory behind the array (for hostemu's launches and the canary checks only)."""
        return self._a

    # -- metadata, as cupy.ndarray
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Pointer(int(self._a.ctypes.data)))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"emucupy.ndarray(shape={self.shape}, dtype={self.dtype})"

    # -- no implicit host conversion, as CuPy
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (an emulated device array, as "
                        "cupy.ndarray). Please use `.get()` or gpucnn.functional.to_numpy to copy it to the host.")

    def __iter__(self):
        raise TypeError("iterating over a device array would read it element by element from the host; "
                        "copy it with .get() first")

    def __bool__(self):
        return bool(self._scalar("bool()"))

    def __float__(self):
        return float(self._scalar("float()"))

    def __int__(self):
        return int(self._scalar("int()"))

    def __index__(self):
        return int(self._scalar("an index"))

    def _scalar(self, what):
        _host_access(f"{what} of a device array (a device-to-host copy)")
        if self.size != 1:
            raise TypeError(f"{what} needs a one-element array, got shape {self.shape}")
        return self._a.reshape(()).item()

    # -- explicit copies
    def get(self, stream=None, out=None) -> np.ndarray:
        """A host copy (device-to-host; synchronizes)."""
        _host_access("ndarray.get() (a device-to-host copy)")
        if out is not None:
            np.copyto(out, self._a)
            return out
        return self._a.copy()

    def set(self, arr, stream=None) -> None:
        """Copy a host array of the same shape and dtype into this one (host-to-device)."""
        _host_access("ndarray.set() (a host-to-device copy)")
        arr = np.asarray(arr)
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"set: shape/dtype mismatch: {arr.shape} {arr.dtype} into {self.shape} {self.dtype}")
        np.copyto(self._a, arr)

    # -- device-side operations (recorded while capturing)
    def fill(self, value) -> None:
        a = self._a
        run_or_record(lambda: a.fill(value))

    def copy(self) -> "ndarray":
        out = empty(self.shape, self.dtype)
        src, dst = self._a, out._a
        run_or_record(lambda: np.copyto(dst, src))
        return out

    def astype(self, dtype, copy=True) -> "ndarray":
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        out = empty(self.shape, dtype)
        src, dst = self._a, out._a
        run_or_record(lambda: np.copyto(dst, src, casting="unsafe"))
        return out

    def __setitem__(self, key, value):
        """Device-to-device copy (or fill with a Python scalar); a host array must be uploaded first."""
        if isinstance(value, np.ndarray):
            raise TypeError("assigning a host NumPy array into a device array: upload it with asarray first "
                            "(or use .set())")
        src = value._a if isinstance(value, ndarray) else value
        a = self._a
        run_or_record(lambda: a.__setitem__(key, src))

    # -- views (no data moves)
    def __getitem__(self, key) -> "ndarray":
        """A view (basic indexing; a full integer index gives a 0-d device array, as CuPy)."""
        key = key if isinstance(key, tuple) else (key,)
        if not any(k is Ellipsis for k in key):
            key = key + (Ellipsis,)  # keeps a 0-d result an array, not a host scalar
        view = self._a[key]
        if not isinstance(view, np.ndarray) or (view.size and not np.shares_memory(view, self._a)):
            raise TypeError("only basic slicing of a device array is emulated (a view, as CuPy returns)")
        return ndarray(view)

    def reshape(self, *shape, order="C") -> "ndarray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        view = self._a.reshape(shape, order=order)
        if not np.shares_memory(view, self._a) and self.size:
            raise ValueError("reshape of a non-contiguous device array would copy; emulated only as a view")
        return ndarray(view)

    def ravel(self) -> "ndarray":
        return self.reshape(self.size)

    def view(self, dtype) -> "ndarray":
        return ndarray(self._a.view(dtype))


def _wrap_empty(shape, dtype) -> np.ndarray:
    return hostemu.guarded_empty(shape, dtype)


def empty(shape, dtype=np.float32) -> ndarray:
    """Uninitialised device memory (with canary margins, checked after every launch)."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    return ndarray(_wrap_empty(shape, dtype))


def zeros(shape, dtype=np.float32) -> ndarray:
    out = empty(shape, dtype)
    out.fill(0)
    return out


def asarray(a, dtype=None) -> ndarray:
    """A device array: device arrays pass through (converted on the device if `dtype` differs); a host
    array is copied to the device (refused during a capture, as a pageable host-to-device copy)."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    _host_access("cupy.asarray of a host array (a host-to-device copy)")
    host = np.asarray(a, dtype=dtype)
    out = empty(host.shape, host.dtype)
    np.copyto(out._a, host)
    return out


def ascontiguousarray(a, dtype=None) -> ndarray:
    a = asarray(a)
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    out = empty(a.shape, a.dtype if dtype is None else dtype)
    src, dst = a._a, out._a
    run_or_record(lambda: np.copyto(dst, src, casting="unsafe"))
    return out


def asnumpy(a) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def empty_pinned(shape, dtype=np.float32) -> np.ndarray:
    """Page-locked host memory (cupyx.empty_pinned); emulated: an ordinary NumPy array."""
    return np.empty(shape, dtype)


# --------------------------------------------------------------------------- streams and events

class Event:
    """cupy.cuda.Event: work runs at once here, so an event is complete as soon as it is recorded."""

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        _host_access("Event.synchronize()")

    @property
    def done(self) -> bool:
        return True


class Stream:
    """cupy.cuda.Stream: work runs at once, in program order, whatever stream it is issued to."""

    def __init__(self, non_blocking: bool = False):
        self.non_blocking = non_blocking

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_event(self, event: Event) -> None:
        pass

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        _host_access("Stream.synchronize()")


def synchronize() -> None:
    """cupy.cuda.Device().synchronize() / runtime.deviceSynchronize()."""
    _host_access("a device synchronization")
