"""The fused CPU kernels (`lrm_mup/core/_fused.c`, issue 15) compute what the eager ops compute: dW̃ and the merged
matrix bit for bit (the same products in the same order), the sums behind dr, dc, ds to float64 rounding, for
every combination of learned factors, both storage layouts and more than one thread; inputs they cannot take go to
the eager ops; an effective path maps and rebuilds all its matrices in one call each, as the eager ops would, and
plans anew when its parameters move; they are built where a C compiler is, loaded only from a folder nobody else can
write, and `LRM_MUP_FUSED` switches them off or makes their absence an error (one line)."""
import itertools
import os
import shutil
import stat

import pytest
import torch

from lrm_mup.core import _fused
from lrm_mup.core.multipliers import factor_grads, merged_matrix
from lrm_mup.data import load_corpus
from lrm_mup.errors import ConfigError
from lrm_mup.training import Run, TrainConfig

FACTORS = list(itertools.product([True, False], repeat=3))  # which of r, c, s the layer learns
HAVE_CC = any(shutil.which(n) for n in (os.environ.get("CC") or "cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine: the eager ops are the only path")
SLICE = "tests/data/shakespeare"
TINY = dict(recipe="lrm", width=32, base_width=16, depth=1, head_dim=8, context=32, batch=8, steps=20, eval_every=10,
            eval_batches=2, data=SLICE, device="cpu", path="effective")


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


def double_run(corpus, **kw):
    run = Run.create(TrainConfig(**{**TINY, **kw}), corpus, progress=False)
    run.model.double()
    run.path.sync()  # the parameters moved to float64 storage: the merged matrices are rebuilt, the plan made anew
    return run


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SLICE)


def counting(monkeypatch, table: str) -> list:
    """Count the calls of the kernels' `table` ("map" or "rebuild") entry points; returns the list they append to."""
    calls = []
    lib = _fused.library()
    for dtype, f in dict(getattr(lib, table)).items():
        monkeypatch.setitem(getattr(lib, table), dtype, lambda *a, f=f: calls.append(a[1]) or f(*a))
    return calls


@needs_cc
def test_an_effective_path_maps_and_rebuilds_all_its_matrices_in_one_kernel_call_each(corpus, monkeypatch):
    run = double_run(corpus, placement="all")
    layers = len(run.path.layers)
    maps, rebuilds = counting(monkeypatch, "map"), counting(monkeypatch, "rebuild")
    run.train_step()
    assert layers >= 9 and maps == [layers] and rebuilds == [layers]  # one call, every matrix in it


@needs_cc
def test_the_batched_effective_path_trains_as_the_eager_ops_do_in_float64(corpus, monkeypatch):
    fused, ref = double_run(corpus, placement="all"), double_run(corpus, placement="all")
    assert fused.path._plan.batches and not fused.path._plan.rest
    for _ in range(3):
        fused.train_step()
        eager(monkeypatch, ref.train_step)
    for (name, p), q in zip(fused.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)
    for m in fused.path.layers:  # the merged matrices are the rebuild of the current factors, bit for bit
        assert torch.equal(m._matrix(m._effective), eager(monkeypatch, merged_matrix, *m._factors()))


@needs_cc
def test_an_hf_gpt2_with_transposed_and_tied_matrices_trains_batched_as_with_the_eager_ops(corpus, monkeypatch):
    pytest.importorskip("transformers")
    kw = dict(model="hf:gpt2", width=64, base_width=32, head_dim=32, context=16, placement="all")
    fused, ref = (double_run(corpus, **kw) for _ in range(2))
    layers = [m for _, layers, _ in fused.path._plan.batches for m in layers]
    assert any(m.TRANSPOSED for m in layers) and len({id(m.weight) for m in layers}) < len(layers)  # Conv1D, tied
    for _ in range(2):
        fused.train_step()
        eager(monkeypatch, ref.train_step)
    for (name, p), q in zip(fused.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)


@needs_cc
def test_a_path_is_planned_anew_when_its_parameters_move_to_another_storage(corpus):
    run = Run.create(TrainConfig(**TINY, placement="all"), corpus, progress=False)
    ((batch, _, _),) = run.path._plan.batches
    assert batch.dtype == torch.float32
    run.model.double()
    run.train_step()  # its sync sees the new storages
    ((batch, _, _),) = run.path._plan.batches
    assert batch.dtype == torch.float64
    assert all(m._effective.dtype == torch.float64 for m in run.path.layers)


@needs_cc
def test_a_matrix_without_a_gradient_is_skipped_and_one_laid_out_otherwise_is_mapped_alone(corpus, monkeypatch):
    runs = {case: double_run(corpus, placement="all") for case in ("batched", "column-major", "eager")}
    maps = counting(monkeypatch, "map")
    for case, run in runs.items():
        x, y = run.corpus.batch("train", 8, 32, torch.Generator().manual_seed(0))
        run.optimizer.zero_grad(set_to_none=True)
        run.forward(x, y)[1].backward()
        skipped, other = run.path.layers[1], run.path.layers[2]
        skipped._effective.grad = None  # as if this step's forward had not used the layer
        if case == "column-major":  # the same values laid out otherwise: the batch falls back to one call a layer
            other._effective.grad = other._effective.grad.T.contiguous().T  # (this one to the eager ops)
        del maps[:]
        if case == "eager":
            eager(monkeypatch, run.path.map_grads)
        else:
            run.path.map_grads()
        layers = len(run.path.layers)
        assert maps == {"batched": [layers], "column-major": [1] * (layers - 2), "eager": []}[case]
        assert skipped.weight.grad is None and all(p.grad is None for p in skipped.learned_multipliers().values())
    for case in ("batched", "column-major"):
        for (name, p), q in zip(runs[case].model.named_parameters(), runs["eager"].model.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-13, atol=1e-13, msg=f"{case} {name}")


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
