"""Compile kernels/*.cu with nvcc for one architecture, read each kernel's resources and disassemble it.

Tools: nvcc (a CUDA toolkit), cuobjdump and the nvdisasm it runs (a toolkit, or the PyPI wheels
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm: ``pip install 'gpucnn[perf]'``). ``missing()`` names what
is absent and how to install it. Results are cached under ~/.cache/gpucnn/perf (XDG_CACHE_HOME), keyed by
a hash of the source, every header, the instance list, the architecture and the tools' versions.

The main loop of a kernel: every backward branch (a ``BRA`` to an address below its own) closes a
loop [target, branch]; the main loop is the one holding the most FFMA + HMMA, the innermost of those (a loop
around it, say one staging a tile for it in shared memory, runs less often: its own instructions count as
outside the main loop); in a kernel without math, the one with the most global memory instructions, then
the most shared memory ones, then the smallest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "pip install 'gpucnn[perf]' (the PyPI wheels nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm)"


def _wheel_bin(tool: str) -> str | None:
    """`tool` from the NVIDIA PyPI wheels (nvidia/cu13/bin, nvidia/cu12/bin, nvidia/cuda_*/bin)."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for path in sorted(Path(root).glob(f"*/bin/{tool}")):
            if os.access(path, os.X_OK):
                return str(path)
    return None


def find(tool: str) -> str | None:
    """The path of nvcc, cuobjdump or nvdisasm: PATH, /usr/local/cuda/bin, then the PyPI wheels."""
    found = shutil.which(tool) or shutil.which(f"/usr/local/cuda/bin/{tool}")
    return found or (_wheel_bin(tool) if tool != "nvcc" else None)


def missing() -> str | None:
    """None when nvcc, cuobjdump and nvdisasm are all here, else what is missing and how to install it."""
    absent = [t for t in ("nvcc", "cuobjdump", "nvdisasm") if find(t) is None]
    if not absent:
        return None
    how = []
    if "nvcc" in absent:
        how.append("nvcc comes with the CUDA toolkit (put its bin/ on PATH, or /usr/local/cuda/bin/nvcc)")
    if {"cuobjdump", "nvdisasm"} & set(absent):
        how.append(INSTALL)
    return f"gpucnn kernels needs {', '.join(absent)}, not found here: " + "; ".join(how)


def _version(tool: str) -> str:
    r = subprocess.run([find(tool), "--version"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


def _env() -> dict:
    """cuobjdump -sass runs nvdisasm: found on PATH or NVDISASM_PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(find("nvdisasm")).parent) + os.pathsep + env.get("PATH", "")
    return env


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "gpucnn" / "perf"


def build(source: str, include: Path, names: list[str], arch: str) -> dict:
    """Compile `source` (CUDA C text) with every name expression in `names` instantiated, for `arch`.

    Returns {"ptxas": the ptxas -v report, "resources": cuobjdump -res-usage, "sass": cuobjdump -sass},
    from the cache when the same inputs were compiled before."""
    headers = sorted(include.glob("*.cuh")) + sorted(include.glob("*.h"))
    key = hashlib.sha256()
    for part in [source, arch, "\n".join(names), _version("nvcc"), _version("cuobjdump")]:
        key.update(part.encode() + b"\0")
    for h in headers:
        key.update(h.name.encode() + b"\0" + h.read_bytes() + b"\0")
    cached = cache_dir() / f"{key.hexdigest()[:32]}.json"
    with _build_lock(cached.name):  # a build of these inputs under way in another thread: wait for it
        if cached.is_file():
            return json.loads(cached.read_text())
        return _build(source, include, names, arch, cached)


_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


def _build_lock(name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


def _build(source: str, include: Path, names: list[str], arch: str, cached: Path) -> dict:
    refs = ""
    if names:
        refs = "void* gpucnn_instances[] = {" + ", ".join(f"(void*)&{n}" for n in names) + "};\n"
    with tempfile.TemporaryDirectory(prefix="gpucnn-perf-") as tmp:
        src, cubin = Path(tmp) / "all.cu", Path(tmp) / "all.cubin"
        src.write_text(source + "\n" + refs)
        cmd = [find("nvcc"), "-std=c++17", f"-I{include}", f"-arch={arch}", "-cubin", "-Xptxas", "-v",
               "-o", str(cubin), str(src)]
        return _save(cached, _assembled("nvcc", cmd, cubin))


def _assembled(tool: str, cmd: list, cubin: Path) -> dict:
    """Run `cmd` (nvcc or ptxas with -v, writing `cubin`), then cuobjdump it: {"ptxas", "resources", "sass"}."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{tool} failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    out = {"ptxas": r.stdout + r.stderr}
    for flag, name in (("-res-usage", "resources"), ("-sass", "sass")):
        d = subprocess.run([find("cuobjdump"), flag, str(cubin)], capture_output=True, text=True, env=_env())
        if d.returncode != 0:
            raise RuntimeError(f"cuobjdump {flag} failed: {d.stderr.strip()[-2000:]}")
        out[name] = d.stdout
    return out


def _save(cached: Path, out: dict) -> dict:
    """Write a build to the cache atomically (a temporary file renamed), and return it."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp_file.write_text(json.dumps(out))
    tmp_file.replace(cached)
    return out


def build_ptx(ptx: str, arch: str) -> dict:
    """Assemble PTX text (the Numba backend's kernels, from numba-cuda's NVVM) with ``ptxas -v`` for
    `arch`, then read it as ``build`` does: {"ptxas", "resources", "sass"}, cached by the PTX's content,
    the architecture and the tools' versions."""
    key = hashlib.sha256()
    for part in [ptx, arch, "ptxas", _version("ptxas"), _version("cuobjdump")]:
        key.update(part.encode() + b"\0")
    cached = cache_dir() / f"ptx-{key.hexdigest()[:32]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix="gpucnn-perf-") as tmp:
        src, cubin = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        src.write_text(ptx)
        cmd = [find("ptxas"), f"-arch={arch}", "-v", "-o", str(cubin), str(src)]
        return _save(cached, _assembled("ptxas", cmd, cubin))


# --------------------------------------------------------------------------- names

def _mangled_args(args: str) -> str:
    parts = []
    for a in (x.strip() for x in args.split(",")):
        if a in ("true", "false"):
            parts.append(f"Lb{int(a == 'true')}E")
        elif re.fullmatch(r"-?\d+", a):
            parts.append(f"Li{a}E".replace("Li-", "Lin"))
        else:
            parts.append({"int": "i", "long long": "x", "float": "f", "unsigned": "j"}[a])
    return "".join(parts)


def symbol_prefix(name: str) -> str:
    """The start of a kernel instance's symbol: `splitk_reduce` (extern "C") or the Itanium mangling of
    `conv2d_fwd<128, 64, false, true>` up to its template arguments (_Z10conv2d_fwdILi128ELi64ELb0ELb1EE)."""
    if "<" not in name:
        return name
    base, args = name.split("<", 1)
    return f"_Z{len(base)}{base}I{_mangled_args(args.rstrip('> '))}E"


def find_symbol(name: str, symbols) -> str:
    prefix = symbol_prefix(name)
    hits = [s for s in symbols if s == prefix or (prefix.startswith("_Z") and s.startswith(prefix))]
    if len(hits) != 1:
        raise KeyError(f"{name}: {len(hits)} compiled kernels match {prefix!r}")
    return hits[0]


# --------------------------------------------------------------------------- resources

@dataclass
class Resources:
    registers: int
    shared: int           # static shared memory, bytes per block
    local: int            # local memory (stack), bytes per thread
    spill_stores: int     # bytes, ptxas -v
    spill_loads: int


def resources(build_out: dict) -> dict[str, Resources]:
    usage = {}
    pattern = r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)"
    for m in re.finditer(pattern, build_out["resources"]):
        usage[m.group(1)] = (int(m.group(2)), int(m.group(4)), int(m.group(5)))
    spills = {}
    for m in re.finditer(r"Compiling entry function '([^']+)'.*?(\d+) bytes spill stores, (\d+) bytes spill loads",
                         build_out["ptxas"], re.S):
        spills[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return {s: Resources(r, sh, lo, *spills.get(s, (0, 0))) for s, (r, sh, lo) in usage.items()}


# --------------------------------------------------------------------------- SASS

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)\s*([^;]*);")
CLASSES = ("FFMA", "HMMA", "LDS", "STS", "LDG", "STG", "BAR", "ALU")


def classify(op: str) -> str:
    """One instruction's class: the math (FFMA, HMMA), shared (LDS, STS; LDSM counts as LDS), global (LDG,
    STG; generic LD/ST, RED and ATOM count with them, and LDGSTS, cp.async's global-to-shared copy, with
    the loads), BAR, and ALU for every other instruction."""
    if op in ("FFMA", "HMMA", "LDS", "STS", "LDG", "STG", "BAR"):
        return op
    return {"LDSM": "LDS", "LD": "LDG", "ST": "STG", "RED": "STG", "ATOM": "STG", "ATOMG": "STG",
            "REDG": "STG", "LDGSTS": "LDG"}.get(op, "ALU")


@dataclass
class Kernel:
    symbol: str
    instructions: list          # [(address, opcode)] in address order
    loops: list                 # [(start, end)] addresses, end = the backward branch
    main: tuple | None          # the main loop, or None (straight-line kernel)
    mix: dict = field(default_factory=dict)  # the main loop's instruction classes
    outside: int = 0            # instructions outside the main loop (counted once per warp)
    global_words: int = 0       # 4-byte words one thread's global loads and stores move per main-loop trip

    @property
    def loop_instructions(self) -> int:
        return sum(self.mix.values())


def functions(sass: str) -> dict[str, list]:
    """{symbol: [(address, opcode, operands)]} from cuobjdump -sass text."""
    out, current = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        if current is None:
            continue
        m = _LINE.search(line)
        if m:
            current.append((int(m.group(1), 16), m.group(2), m.group(4).strip(), m.group(3)))
    return out


def analyze(symbol: str, code: list) -> Kernel:
    """Loops, the main loop and its instruction mix of one kernel's SASS."""
    # the trailing `BRA self` after EXIT and the NOP padding are not part of the kernel's work
    last = max((i for i, (_, op, *_) in enumerate(code) if op == "EXIT"), default=len(code) - 1)
    body = []
    for i, (addr, op, operands, mods) in enumerate(code):
        if op == "NOP" and i > last:
            continue
        if op == "BRA" and i > last and operands.startswith("0x") and int(operands.split()[0], 16) == addr:
            continue
        body.append((addr, op, operands, mods))
    loops = []
    for addr, op, operands, _ in body:
        if op == "BRA":
            m = re.match(r"(?:`\()?(0x[0-9a-f]+)", operands)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))

    def mix_of(lo, hi):
        mix = dict.fromkeys(CLASSES, 0)
        for addr, op, _, _ in body:
            if lo <= addr <= hi:
                mix[classify(op)] += 1
        return mix

    def words(lo, hi):
        total = 0
        for addr, op, _, mods in body:
            if lo <= addr <= hi and classify(op) in ("LDG", "STG"):
                bits = re.search(r"\.(128|64|32|16|U8|S8|U16|S16)\b", mods)
                width = int(bits.group(1)) if bits and bits.group(1).isdigit() else 32
                total += max(1, width // 32)
        return total

    best, best_key = None, None
    for lo, hi in loops:
        mix = mix_of(lo, hi)
        math = mix["FFMA"] + mix["HMMA"]
        # a loop with math: the innermost that holds the most (an outer loop around it, staging tiles for
        # it, runs less often); without math: the most global, then shared memory instructions
        key = (math, -(hi - lo) if math else 0, mix["LDG"] + mix["STG"], mix["LDS"] + mix["STS"], -(hi - lo))
        if best_key is None or key > best_key:
            best, best_key = (lo, hi), key
    mix = mix_of(*best) if best else dict.fromkeys(CLASSES, 0)
    return Kernel(symbol, [(a, op) for a, op, _, _ in body], loops, best, mix, len(body) - sum(mix.values()),
                  words(*best) if best else 0)
