"""The fast paths of issue 15 compute what the plain ones compute: the one-node reparametrized forward has autograd's
gradients through r ⊙ W̃ ⊙ c (float64), the effective path with gradient accumulation takes the reparametrized
path's steps (and both the unaccumulated steps), the merged matrices are rebuilt in their own storage, the default
path is the rule `engine.training_path` states, and AdamW is torch's fused kernel on CPU with the loop's updates."""
import copy
import itertools

import pytest
import torch

import lrm_mup
from lrm_mup.core.multipliers import _Reparametrize, factor_grads, merged_matrix, multiplied_modules
from lrm_mup.core.optim import fused_adamw, param_groups
from lrm_mup.data import load_corpus
from lrm_mup.training import Run, TrainConfig, distributed
from lrm_mup.training.engine import training_path

SLICE = "tests/data/shakespeare"
TINY = dict(recipe="lrm", width=32, base_width=16, depth=1, head_dim=8, context=32, batch=8, steps=20, eval_every=10,
            eval_batches=2, data=SLICE, device="cpu")
FACTORS = list(itertools.product([True, False], repeat=3))  # which of r, c, s the layer learns

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SLICE)


def factors(rows, cols, present, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    r, c, s = (torch.randn(n, generator=gen, dtype=torch.float64) if on else None
               for n, on in zip((rows, cols, 1), present))
    return [t.requires_grad_(True) if t is not None else None for t in (w, r, c, s)]


def by_autograd(w, r, c, s, fixed_mult):
    """a·r⊙W̃⊙c through autograd's own products (what the reparametrized forward did before issue 15)."""
    out = w
    if r is not None:
        out = out * r[:, None]
    if c is not None:
        out = out * c
    return out * (s * fixed_mult) if s is not None else out * fixed_mult


@pytest.mark.parametrize("present", FACTORS)
def test_the_one_node_forward_has_autograds_gradients_in_float64(present):
    w, r, c, s = factors(5, 3, present)
    inputs = [t for t in (w, r, c, s) if t is not None]
    g = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = _Reparametrize.apply(w, r, c, s, 0.7)
    ref = by_autograd(w, r, c, s, 0.7)
    torch.testing.assert_close(ours, ref, rtol=1e-15, atol=0)
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert torch.autograd.gradcheck(lambda *t: _Reparametrize.apply(*t, 0.7), (w, r, c, s))


def test_factor_grads_in_place_writes_the_weight_gradient_over_g_and_equals_the_copying_call():
    w, r, c, s = (t.detach() for t in factors(6, 4, (True, True, True)))
    g = torch.randn(6, 4, dtype=torch.float64)
    copying = factor_grads(g, w, r, c, s, 0.5)
    own = g.clone()
    in_place = factor_grads(own, w, r, c, s, 0.5, inplace=True)
    assert in_place[0].data_ptr() == own.data_ptr() and copying[0].data_ptr() != g.data_ptr()
    for a, b in zip(copying, in_place):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(merged_matrix(w, r, c, s, 0.5), by_autograd(w, r, c, s, 0.5), rtol=1e-15, atol=0)


def double_run(cfg: TrainConfig, corpus) -> Run:
    """A Run of `cfg` whose parameters (and optimizer, merged matrices) are float64."""
    run = Run.create(cfg, corpus, progress=False)
    run.model.double()  # the same Parameter objects: the optimizer keeps them
    if run.path is not None:
        run.path.refresh()  # the float32 merged matrices are rebuilt in float64
    return run


def test_effective_path_with_accumulation_takes_the_reparametrized_steps_in_float64(corpus):
    runs = {(path, micro): double_run(TrainConfig(**TINY, placement="all", path=path, micro_batch=micro), corpus)
            for path in ("autograd", "effective") for micro in (None, 2)}
    assert runs["effective", 2].path is not None and runs["autograd", 2].path is None
    for _ in range(4):
        for run in runs.values():
            run.train_step()
    ref = dict(runs["autograd", 2].model.named_parameters())
    assert any(n.endswith("mult_row") for n in ref) and any(n.endswith("mult_col") for n in ref)
    for key, run in runs.items():
        tol = 1e-12 if key[1] == 2 else 1e-9  # without accumulation: the same mean loss, summed in another order
        for name, p in run.model.named_parameters():
            torch.testing.assert_close(p, ref[name], rtol=tol, atol=tol, msg=f"{key} {name}")
    moved = [n for n, p in ref.items() if ".mult_" in n and not torch.equal(p, torch.ones_like(p))]
    assert len(moved) > 3  # the multipliers trained: the comparison is not of untouched ones


def test_the_merged_matrices_are_rebuilt_in_their_own_storage(corpus):
    run = Run.create(TrainConfig(**TINY, path="effective"), corpus, progress=False)
    layers = [m for _, m in multiplied_modules(run.model)]
    before = [m._effective.data_ptr() for m in layers]
    run.train_step()
    assert [m._effective.data_ptr() for m in layers] == before
    for m in layers:
        torch.testing.assert_close(m._effective, m.effective_weight().detach(), rtol=0, atol=0)


def test_the_effective_path_sees_weights_edited_in_place_between_steps(corpus):
    """The merged matrices are a cache: an in-place edit of W̃ or a multiplier between steps (a user's `zero_()`,
    a `load_state_dict`) reaches the next evaluation and step exactly as on the reparametrized path."""
    runs = {path: double_run(TrainConfig(**TINY, placement="all", path=path), corpus)
            for path in ("autograd", "effective")}
    for run in runs.values():
        run.train_step()
        with torch.no_grad():
            run.model.head.weight.mul_(0.5)
            next(p for n, p in run.model.named_parameters() if n.endswith("mult_row")).fill_(2.0)
    losses = {path: run.evaluate() for path, run in runs.items()}
    assert losses["effective"] == pytest.approx(losses["autograd"], rel=1e-12, abs=0)
    for run in runs.values():
        run.train_step()
    ref = dict(runs["autograd"].model.named_parameters())
    for name, p in runs["effective"].model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("recipe,path,parallel,size,expected", [
    ("lrm", "auto", "ddp", 1, "effective"),
    ("mup", "auto", "ddp", 1, "autograd"),
    ("sp", "auto", "ddp", 1, "autograd"),
    ("lrm", "auto", "ddp", 2, "autograd"),
    ("lrm", "auto", "fsdp", 2, "autograd"),
    ("lrm", "autograd", "ddp", 1, "autograd"),
    ("mup", "effective", "ddp", 1, "effective"),
])
def test_the_auto_path_is_effective_for_learnable_multipliers_in_one_process_only(recipe, path, parallel, size,
                                                                                    expected):
    cfg = TrainConfig(**{**TINY, "recipe": recipe}, path=path, parallel=parallel)
    model = lrm_mup.training.parametrized_model(cfg)
    assert training_path(cfg, model, distributed.World(size=size)) == expected


def test_the_auto_path_keeps_autograd_under_torch_compile():
    cfg = TrainConfig(**TINY)
    model = lrm_mup.training.parametrized_model(cfg)
    assert training_path(cfg, model, distributed.World(size=1)) == "effective"
    assert training_path(cfg, model, distributed.World(size=1), compiled=True) == "autograd"


def test_the_default_path_is_auto_and_a_run_resolves_it(corpus):
    assert TrainConfig().path == "auto"
    assert Run.create(TrainConfig(**TINY), corpus, progress=False).path is not None
    assert Run.create(TrainConfig(**{**TINY, "recipe": "mup"}), corpus, progress=False).path is None


def test_adamw_is_fused_on_cpu_with_the_loops_updates():
    cfg = TrainConfig(**TINY)
    model = lrm_mup.training.parametrized_model(cfg).double()
    assert fused_adamw(model) is True
    assert lrm_mup.build_optimizer(model, "adamw").defaults["fused"] is True
    loop_model = copy.deepcopy(model)
    fused = torch.optim.AdamW(param_groups(model, "adamw", 1e-2, 0.1), fused=True)
    loop = torch.optim.AdamW(param_groups(loop_model, "adamw", 1e-2, 0.1), foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(model.parameters(), loop_model.parameters()):
            a.grad = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for a, b in zip(model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
