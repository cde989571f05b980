"""The fused CPU kernels of the multipliers' full-size work (`_fused.c`), built on first use, called through ctypes.

Why: on CPU the learnable multipliers' cost per optimizer step is memory traffic over each matrix (the module doc of
`multipliers`): eager torch ops take 13 full-size streams (the mapping dW̃, dr, dc from G: 9; the rebuild of
W = a·r⊙W̃⊙c: 4), a single pass takes 5. torch.compile's CPU code was measured slower than eager for the mapping
(its column sum walks the matrix column strip by column strip, one 4 KiB page per row), so the pass is written
out in C: `benchmarks/RESULTS.md`, issue 15.

How: the system C compiler (`$CC`, else `cc`, `gcc` or `clang`) builds `_fused.c` once into the user's cache
(`$XDG_CACHE_HOME/lrm-mup/kernels`, else `~/.cache/...`; a private temporary folder if that is not writable),
keyed by the source, the flags and the machine type; a build is loaded only from a folder and file of the user's
own that nobody else can write. No compiler, a failed build or `LRM_MUP_FUSED=off` leaves the eager ops in use
(`status()` says which and why); `LRM_MUP_FUSED=on` makes that an error instead.

One call takes many matrices (`Batch`: the records of a whole model, filled once): the effective path maps and
rebuilds all its matrices in one call each, with no Python or dispatch work per matrix (`multipliers._FusedPlan`).

Used only where it computes exactly what the eager ops compute: CPU, float32 or float64, plain tensors (not
subclasses such as DTensor) of one dtype, matrices row- or column-major with nothing between their rows, outside
torch.compile's tracing and never where autograd would need to record the products.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from importlib import resources

import torch

from ..errors import ConfigError

ENV = "LRM_MUP_FUSED"
MODES = ("auto", "on", "off")
FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
NO_CLONES = "-DLRM_MUP_NO_CLONES"  # a compiler without target_clones (x86-64) gets one generic build
MIN_PER_THREAD = 1 << 17  # elements per thread below which more threads cost more than they save (~50 µs a thread)
STREAM_BYTES = 1 << 20  # a rebuilt matrix this large is written with streaming stores (`_fused.c`): past L2 anyway
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_PLAIN = (torch.Tensor, torch.nn.Parameter)

_state: _Library | str | None = None  # the loaded library, or why there is none; None: not tried yet


class _Layer(ctypes.Structure):
    """One matrix of a call (`layer_` in `_fused.c`; the same fields for both dtypes)."""
    _fields_ = [(name, ctypes.c_void_p) for name in ("out", "g", "w", "r", "c", "s")] + [
        ("fixed", ctypes.c_double), ("n_rows", ctypes.c_long), ("n_cols", ctypes.c_long)] + [
        (name, ctypes.c_void_p) for name in ("dr", "dc", "ds")]


class _Library:
    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        layers, n, i = ctypes.POINTER(_Layer), ctypes.c_long, ctypes.c_int
        self.map, self.rebuild = {}, {}
        for dtype, suffix in _SUFFIX.items():
            f = getattr(lib, f"lrm_mup_map_{suffix}")
            f.argtypes, f.restype = [layers, n, i, n], ctypes.c_int
            self.map[dtype] = f
            f = getattr(lib, f"lrm_mup_rebuild_{suffix}")
            f.argtypes, f.restype = [layers, n, i, n, n], None
            self.rebuild[dtype] = f


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{ENV}={os.environ[ENV]!r}: allowed {', '.join(MODES)} (the fused CPU kernels of the "
                          "multipliers: auto uses them where they build)")
    return value


def library() -> _Library | None:
    """The built kernels, or None (eager ops): built and loaded on the first call of a process."""
    global _state
    if _state is None:
        if mode() == "off":
            _state = f"{ENV}=off"
        else:
            try:
                _state = _Library(_build())
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                _state = f"not built: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
    if isinstance(_state, str) and mode() == "on":
        raise ConfigError(f"{ENV}=on but the fused CPU kernels are unavailable ({_state}); install a C compiler "
                          f"(gcc or clang, or name one in $CC) or set {ENV}=auto")
    return _state if isinstance(_state, _Library) else None


def status() -> str:
    """One line for benchmarks and logs: which kernels the multipliers' CPU work uses, and why."""
    lib = library()
    return f"fused C kernels ({lib.path})" if lib is not None else f"eager torch ops ({_state})"


@contextlib.contextmanager
def eager_ops():
    """Within the block, the eager ops only (for comparisons side by side: benchmarks/bench_overhead.py, tests)."""
    global _state
    before, _state = _state, "switched off by eager_ops()"
    try:
        yield
    finally:
        _state = before


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    raise OSError("no C compiler found (tried $CC, cc, gcc, clang)")


def _private(path: str) -> bool:
    """A folder or file of this user's that no one else can write (what may be loaded from)."""
    st = os.lstat(path)
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(st.st_mode)


def _cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(root, "lrm-mup", "kernels")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if _private(folder) and os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="lrm-mup-kernels-")


def _build() -> str:
    source = resources.files(__package__).joinpath("_fused.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), platform.machine().encode()])).hexdigest()
    folder = _cache_dir()
    target = os.path.join(folder, f"fused-{key[:16]}.so")
    if os.path.exists(target) and _private(target):
        return target
    cc = _compiler()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = os.path.join(tmp, "_fused.c")
        with open(src, "wb") as f:
            f.write(source)
        out = os.path.join(tmp, "fused.so")
        for extra in ((), (NO_CLONES,)):
            done = subprocess.run([cc, *FLAGS, *extra, src, "-o", out], capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                break
        else:
            raise OSError(f"{cc} failed: {done.stderr.strip() or done.returncode}")
        os.chmod(out, 0o700)
        os.replace(out, target)  # atomic: a process building beside this one loads a whole file either way
    return target


def _layout(t: torch.Tensor) -> str | None:
    """'rows' (row-major), 'cols' (column-major) or None for a 2-D matrix the kernels cannot walk."""
    rows, cols = t.shape
    if t.stride() == (cols, 1) or cols == 1 and t.stride(0) == 1:
        return "rows"
    if t.stride() == (1, rows) or rows == 1 and t.stride(1) == 1:
        return "cols"
    return None


def usable(*tensors: torch.Tensor | None) -> _Library | None:
    """The kernels, if they compute exactly what the eager ops would for these tensors (module doc); else None."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    if dtype not in _SUFFIX or torch.compiler.is_compiling():
        return None
    for t in present:
        if type(t) not in _PLAIN or t.device.type != "cpu" or t.dtype != dtype or t.layout != torch.strided:
            return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return None  # autograd would need the products' graph: only the eager ops record it
    return library()


def fits(w: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the kernels can walk W̃ (row- or column-major, nothing between its rows) and every full-size tensor
    that goes with it (G, the output) in the same layout."""
    return _layout(w) is not None and all(t.stride() == w.stride() and t.shape == w.shape for t in others)


def _vector(v: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, dtype=like.dtype) if v is None else v.contiguous()


class Batch:
    """Matrices W = fixed · s · r ⊙ W̃ ⊙ c of one dtype whose mapping or rebuild runs in one call of the kernels.

    `factors`: (W̃, r, c, s, fixed) per matrix, W̃ as (fan_out, fan_in) (a view; r, c, s may be None), each taken by
    `usable` and `fits`; `outs`: where `rebuild` writes each W (else pass them to `rebuild`). The records hold the
    tensors' addresses, and the Batch the tensors (their memory lives as long as it does): it computes from the
    tensors as they were when it was made, which the caller checks still are the model's (`EffectivePath` by the
    parameters' `data_ptr`s)."""

    def __init__(self, lib: _Library, factors: list[tuple], outs: list[torch.Tensor] | None = None):
        self.lib, self.dtype = lib, factors[0][0].dtype
        self.layers = (_Layer * len(factors))()
        self.sizes: list[int] = []  # the multipliers' gradients, in one buffer: their lengths, matrix by matrix
        self.slots: list[tuple] = []  # per matrix: (its record's dr, dc, ds fields, its dr, dc, ds in `sizes`)
        self._keep = []  # the vectors the records point to (ones for an absent r or c)
        for layer, (w, r, c, s, fixed) in zip(self.layers, factors):
            rows, cols = w.shape
            rv, cv = _vector(r, rows, w), _vector(c, cols, w)
            self._keep += [w, rv, cv, s]
            fields = ("dr", "dc", "ds")
            if _layout(w) == "cols":  # walk the transposed storage: its rows are the columns, r and c change places
                rows, cols, rv, cv, fields = cols, rows, cv, rv, ("dc", "dr", "ds")
            layer.w, layer.r, layer.c = w.data_ptr(), rv.data_ptr(), cv.data_ptr()
            layer.s = s.data_ptr() if s is not None else None
            layer.fixed, layer.n_rows, layer.n_cols = fixed, rows, cols
            index = []
            for v in (r, c, s):
                index.append(len(self.sizes) if v is not None else None)
                if v is not None:
                    self.sizes.append(v.numel())
            self.slots.append((fields, tuple(index)))
        self.starts = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        self.outs = [o.data_ptr() for o in outs] if outs is not None else None  # `map` writes the records' `out`
        self._keep += outs or []

    def map(self, grads: list[torch.Tensor], outs: list[torch.Tensor]) -> list[tuple]:
        """For each matrix: its dW̃ = (G ⊙ a·r) ⊙ c written into `outs` (which may be the `grads`), and its
        (dr, dc, ds) in one new buffer (None for an absent multiplier). A matrix whose G is None is skipped (its
        gradients are left unwritten)."""
        flat = torch.empty(sum(self.sizes), dtype=self.dtype)
        parts = flat.split(self.sizes) if self.sizes else ()
        base, step = flat.data_ptr(), flat.element_size()
        out = []
        for layer, g, o, (fields, index) in zip(self.layers, grads, outs, self.slots):
            layer.g, layer.out = (None, None) if g is None else (g.data_ptr(), o.data_ptr())
            for field, k in zip(fields, index):
                setattr(layer, field, None if k is None else base + step * self.starts[k])
            out.append(tuple(None if k is None else parts[k] for k in index))
        if self.lib.map[self.dtype](self.layers, len(self.layers), torch.get_num_threads(), MIN_PER_THREAD):
            raise MemoryError("the multipliers' fused mapping could not allocate its row sums")
        return out

    def rebuild(self, outs: list[torch.Tensor] | None = None) -> None:
        """W = (W̃ ⊙ a·r) ⊙ c for each matrix, into `outs` (default: those given at construction)."""
        for layer, o in zip(self.layers, self.outs if outs is None else (o.data_ptr() for o in outs)):
            layer.out = o
        self.lib.rebuild[self.dtype](self.layers, len(self.layers), torch.get_num_threads(), MIN_PER_THREAD,
                                     STREAM_BYTES)


def map_grads(lib: _Library, g: torch.Tensor, w: torch.Tensor, r, c, s, fixed: float, out: torch.Tensor):
    """(dW̃, dr, dc, ds) of one matrix (`Batch.map`, dW̃ into `out`, which may be `g`); None if the layouts do not
    fit (the caller then runs the eager ops)."""
    if not fits(w, g, out):
        return None
    (grads,) = Batch(lib, [(w, r, c, s, fixed)]).map([g], [out])
    return (out, *grads)


def merged(lib: _Library, w: torch.Tensor, r, c, s, fixed: float, out: torch.Tensor) -> torch.Tensor | None:
    """out = (W̃ ⊙ a·r) ⊙ c, or None if the layouts do not fit."""
    if not fits(w, out):
        return None
    Batch(lib, [(w, r, c, s, fixed)]).rebuild([out])
    return out
