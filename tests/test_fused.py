"""The fused CPU kernels (`lrm_mup/core/_fused.c`, issue 15) compute what the eager ops compute: dW̃ and the merged
matrix bit for bit (the same products in the same order), the sums behind dr, dc, ds to float64 rounding, for
every combination of learned factors, both storage layouts and more than one thread; inputs they cannot take go to
the eager ops; they are built where a C compiler is, loaded only from a folder nobody else can write, and
`LRM_MUP_FUSED` switches them off or makes their absence an error (one line)."""
import itertools
import os
import shutil
import stat

import pytest
import torch

from lrm_mup.core import _fused
from lrm_mup.core.multipliers import factor_grads, merged_matrix
from lrm_mup.errors import ConfigError

FACTORS = list(itertools.product([True, False], repeat=3))  # which of r, c, s the layer learns
HAVE_CC = any(shutil.which(n) for n in (os.environ.get("CC") or "cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine: the eager ops are the only path")


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which the kernels have not been looked for yet (restored after the test)."""
    monkeypatch.setattr(_fused, "_state", None)


@pytest.fixture
def eager_only(monkeypatch):
    monkeypatch.setattr(_fused, "_state", "switched off by the test")


def inputs(rows, cols, present, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g, w = (torch.randn(rows, cols, generator=gen, dtype=dtype) for _ in range(2))
    r, c, s = (torch.randn(n, generator=gen, dtype=dtype) if on else None for n, on in zip((rows, cols, 1), present))
    return g, w, r, c, s


def eager(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(_fused, "_state", "switched off by the test")
        return fn(*args, **kw)


def assert_same(fused, ref, exact_first):
    for i, (a, b) in enumerate(zip(fused, ref)):
        assert (a is None) == (b is None)
        if a is not None:
            tol = 0 if i == 0 and exact_first else 1e-13
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@needs_cc
@pytest.mark.parametrize("present", FACTORS)
@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_fused_mapping_and_rebuild_equal_the_eager_ops_in_float64(present, layout, threads, monkeypatch):
    monkeypatch.setattr(_fused, "MIN_PER_THREAD", 64)  # 3 threads over the 37 rows below
    monkeypatch.setattr(_fused, "STREAM_BYTES", 0)  # the rebuild's streaming stores too (their unaligned ends)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g, w, r, c, s = inputs(37, 29, present)
        if layout == "column-major":  # transformers' Conv1D: the (fan_out, fan_in) view of a (fan_in, fan_out) tensor
            g, w = g.T.contiguous().T, w.T.contiguous().T
        assert _fused.usable(g, w, r, c, s) is not None
        ref = eager(monkeypatch, factor_grads, g, w, r, c, s, 0.7)
        row_major = layout == "row-major"  # column-major walks the storage's rows: c then r, one rounding apart
        assert_same(factor_grads(g, w, r, c, s, 0.7), ref, exact_first=row_major)
        own = g.clone()
        in_place = factor_grads(own, w, r, c, s, 0.7, inplace=True)
        assert in_place[0].data_ptr() == own.data_ptr()
        assert_same(in_place, ref, exact_first=row_major)
        merged = merged_matrix(w, r, c, s, 0.7)
        assert merged.stride() == w.stride()
        torch.testing.assert_close(merged, eager(monkeypatch, merged_matrix, w, r, c, s, 0.7),
                                   rtol=0 if row_major else 1e-15, atol=0)
    finally:
        torch.set_num_threads(before)


@needs_cc
def test_float32_dw_is_eagers_bit_for_bit_and_its_sums_agree_to_float32_rounding(monkeypatch):
    monkeypatch.setattr(_fused, "STREAM_BYTES", 0)
    g, w, r, c, s = inputs(300, 200, (True, True, True), dtype=torch.float32)
    fused, ref = factor_grads(g, w, r, c, s, 0.25), eager(monkeypatch, factor_grads, g, w, r, c, s, 0.25)
    assert torch.equal(fused[0], ref[0])
    for a, b in zip(fused[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 * b.abs().max().item())
    out = torch.empty_like(w)
    assert merged_matrix(w, r, c, s, 0.25, out=out) is out
    assert torch.equal(out, eager(monkeypatch, merged_matrix, w, r, c, s, 0.25))


@needs_cc
@pytest.mark.parametrize("case", ["bfloat16", "strided rows", "recording autograd"])
def test_inputs_the_kernels_cannot_take_get_the_eager_ops_results(case, monkeypatch):
    g, w, r, c, s = inputs(12, 10, (True, True, True))
    if case == "bfloat16":
        g, w, r, c, s = (t.bfloat16() for t in (g, w, r, c, s))
    elif case == "strided rows":
        g, w = torch.randn(12, 20, dtype=torch.float64)[:, ::2], w.clone()
    else:
        w.requires_grad_(True)
        merged = merged_matrix(w, r, c, s, 0.5)
        assert merged.grad_fn is not None  # the eager products: autograd's graph through them
        return
    ref = eager(monkeypatch, factor_grads, g, w, r, c, s, 0.5)
    for a, b in zip(factor_grads(g, w, r, c, s, 0.5), ref):
        assert torch.equal(a, b)


@needs_cc
def test_the_kernels_are_built_once_into_a_private_cache_and_loaded_from_it(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = _fused.library()
    assert lib is not None and "fused C kernels" in _fused.status()
    folder = tmp_path / "lrm-mup" / "kernels"
    assert os.path.dirname(lib.path) == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    built = os.stat(lib.path).st_mtime_ns
    monkeypatch.setattr(_fused, "_state", None)
    assert _fused.library().path == lib.path and os.stat(lib.path).st_mtime_ns == built  # not rebuilt


@needs_cc
def test_a_build_others_can_write_is_never_loaded(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _fused.library().path
    os.unlink(path)  # a new file at the path (this process keeps its mapping of the loaded one)
    with open(path, "wb") as f:
        f.write(b"not a library")
    os.chmod(path, 0o666)
    monkeypatch.setattr(_fused, "_state", None)
    assert _fused.library().path == path  # rebuilt over it, not loaded
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700 and open(path, "rb").read(4) == b"\x7fELF"
    shared = tmp_path / "shared"
    (shared / "lrm-mup" / "kernels").mkdir(parents=True)
    os.chmod(shared / "lrm-mup" / "kernels", 0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    monkeypatch.setattr(_fused, "_state", None)
    assert not _fused.library().path.startswith(str(shared))  # a world-writable cache: a private folder instead


def test_LRM_MUP_FUSED_off_leaves_the_eager_ops(fresh, monkeypatch):
    monkeypatch.setenv("LRM_MUP_FUSED", "off")
    assert _fused.library() is None and _fused.status() == "eager torch ops (LRM_MUP_FUSED=off)"
    g, w, r, c, s = inputs(4, 3, (True, True, True))
    assert _fused.usable(g, w, r, c, s) is None


def test_without_a_compiler_auto_falls_back_and_on_is_a_one_line_error(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert _fused.library() is None
    assert _fused.status() == "eager torch ops (not built: no C compiler found (tried $CC, cc, gcc, clang))"
    monkeypatch.setenv("LRM_MUP_FUSED", "on")
    with pytest.raises(ConfigError, match=r"^LRM_MUP_FUSED=on but the fused CPU kernels are unavailable") as e:
        _fused.library()
    assert "\n" not in str(e.value)


def test_a_bad_LRM_MUP_FUSED_names_the_value_and_what_is_allowed(fresh, monkeypatch):
    monkeypatch.setenv("LRM_MUP_FUSED", "fast")
    with pytest.raises(ConfigError, match=r"^LRM_MUP_FUSED='fast': allowed auto, on, off"):
        _fused.library()
