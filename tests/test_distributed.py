"""Data-parallel training of an `lrm` model with real torch.distributed (gloo, 2 CPU processes, float64).

One `mp.spawn` runs every distributed scenario (start-up dominates the cost); the tests below check what each rank
saved against a single-process run on the full global batch.

Findings pinned here:
- the reparametrized (autograd) path is DDP-compatible: the multipliers are ordinary parameters, DDP broadcasts them
  at wrap time and all-reduces their gradients, and `build_optimizer` / `clip_grad_norm_` find the metadata through
  the wrapper; 3 AdamW steps on two half batches equal 3 steps on the full batch;
- `lrm_mup.train.Run` under a process group: each rank trains on its own rows of the global batch and evaluates its
  own rows of the validation windows (tests/test_torchrun.py checks the whole loop against one process);
- `EffectivePath` is NOT DDP-compatible: the forward/backward run through `_effective`, a detached leaf tensor per
  layer that is not a parameter, so autograd never reaches `weight` / `mult_*` and DDP's reducer (which hooks
  parameters only) never sees those gradients. Without `find_unused_parameters` the second step raises; with it,
  `map_grads()` maps each rank's *local* gradient and the replicas silently drift apart. Doing the all-reduce by hand
  after `map_grads()` (no DDP wrapper) is exact, because the mapping is linear in the merged matrix's gradient and
  the factors are equal on all ranks.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import lrm_mup
from lrm_mup.core.multipliers import multiplied_modules
from lrm_mup.data import load_corpus
from lrm_mup.models import proxy
from lrm_mup.training import Run, TrainConfig, distributed

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD, WIDTH, BASE, DELTA = 2, 64, 32, 64
STEPS, LR, WD, CLIP = 3, 1e-2, 0.1, 0.5
GLOBAL_BATCH, CONTEXT = 4, 16


def build(width, seed=0):
    torch.manual_seed(seed)
    return proxy(width, depth=2, context=CONTEXT, head_dim=16).double()


def make(seed=0):
    """The lrm model, with multipliers moved off 1 (seeded) so that they matter in every comparison."""
    model = lrm_mup.parametrize(build(WIDTH, seed), build(BASE), build(DELTA), "lrm")
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for _, p in lrm_mup.multiplier_parameters(model):
            p.copy_(torch.exp(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)))
    return model


def global_batch():
    return torch.randint(0, 256, (GLOBAL_BATCH, CONTEXT + 1), generator=torch.Generator().manual_seed(1))


def shard(x, rank):
    per = GLOBAL_BATCH // WORLD
    return x[rank * per:(rank + 1) * per]


def loss_of(model, x):
    _, loss = model(x[:, :-1], x[:, 1:])  # mean over the shard's tokens; DDP averages the shards' gradients
    return loss


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def mult_grads(model):
    return {n: p.grad.detach().clone() for n, p in lrm_mup.multiplier_parameters(model)}


# the distributed side ------------------------------------------------------------------------------------------


def _ddp_reparametrized(rank, x):
    # rank 1 starts from another init: DDP's broadcast from rank 0 at wrap time must make the replicas equal
    model = make(seed=rank)
    before_wrap = snapshot(model)
    ddp = DDP(model)
    opt = lrm_mup.build_optimizer(ddp, "adamw", lr=LR, weight_decay=WD)
    inner_groups = lrm_mup.build_optimizer(model, "adamw", lr=LR, weight_decay=WD).param_groups
    groups_match = [(g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups] \
        == [(g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in inner_groups]
    out = {"before_wrap": before_wrap, "init": snapshot(model), "groups_match": groups_match,
           "group_names": [g["name"] for g in opt.param_groups], "mult_grads": [], "norms": [], "norms_by_hand": []}
    mult_ids = {id(p) for _, p in lrm_mup.multiplier_parameters(model)}
    units = {id(m.weight): m.parametrization.grad_unit for _, m in multiplied_modules(model)}  # hidden: × m
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(ddp, x).backward()
        by_hand = torch.linalg.vector_norm(torch.stack(
            [p.grad.norm() * units.get(id(p), 1.0) for p in model.parameters() if id(p) not in mult_ids]))
        out["norms"].append(lrm_mup.clip_grad_norm_(ddp, CLIP).item())
        out["norms_by_hand"].append(by_hand.item())
        out["mult_grads"].append(mult_grads(model))
        opt.step()
    out["final"] = snapshot(model)
    return out


def _ddp_effective(rank, x, find_unused):
    model = make()
    ddp = DDP(model, find_unused_parameters=find_unused)
    path = lrm_mup.EffectivePath(ddp)  # after wrapping: the merged matrices are built from the synced parameters
    opt = lrm_mup.build_optimizer(ddp, "adamw", lr=LR, weight_decay=WD)
    out = {"error": None}
    try:
        for step in range(STEPS):
            opt.zero_grad()
            loss_of(ddp, x).backward()
            if step == 0:
                out["with_grad_after_backward"] = sorted(n for n, p in model.named_parameters() if p.grad is not None)
            path.map_grads()
            if step == 0:
                out["mult_grads"] = mult_grads(model)
            lrm_mup.clip_grad_norm_(ddp, CLIP)
            opt.step()
            path.refresh()
    except RuntimeError as e:
        out["error"] = (step, str(e))
    out["final"] = snapshot(model)
    return out


def _effective_manual_all_reduce(x):
    """No DDP: the effective path, then every parameter's gradient averaged by hand before clipping."""
    model = make()
    path = lrm_mup.EffectivePath(model)
    opt = lrm_mup.build_optimizer(model, "adamw", lr=LR, weight_decay=WD)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(model, x).backward()
        path.map_grads()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        lrm_mup.clip_grad_norm_(model, CLIP)
        opt.step()
        path.refresh()
    return {"final": snapshot(model)}


RUN = dict(recipe="lrm", width=32, base_width=16, depth=1, head_dim=8, context=16, batch=6, eval_batches=2,
           data=os.path.abspath("tests/data/shakespeare"), device="cpu")


def _run_shards():
    """What one training step and one evaluation of `Run` feed the model on this rank."""
    world = distributed.setup()  # the group opened by the test: this rank's place in it
    cfg = TrainConfig(**RUN)
    run = Run.create(cfg, load_corpus(cfg.data), progress=False, world=world)
    seen = {"train": [], "val": []}

    def recording(split, forward):
        def fwd(x, y):
            seen[split].append(x.clone())
            return forward(x, y)
        return fwd

    run.train_step(recording("train", run.wrapped))
    run.evaluate(recording("val", run.model))
    fsdp = Run.create(TrainConfig(**RUN, parallel="fsdp"), run.corpus, progress=False, world=world)
    q = fsdp.model.blocks[0].attn.q
    sharded = {name: (type(p).__name__, tuple(p.to_local().shape), tuple(p.shape)) for name, p in
               (("weight", q.weight), ("mult_row", q.mult_row))}
    opt_params = {id(p) for g in fsdp.optimizer.param_groups for p in g["params"]}
    return {"world": world, "seen": seen, "ddp": type(run.wrapped).__name__, "fsdp": sharded,
            "fsdp_optimizer_has_sharded_params": opt_params == {id(p) for p in fsdp.model.parameters()}}


def _worker(rank, store, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        x = shard(global_batch(), rank)
        results = {
            "ddp": _ddp_reparametrized(rank, x),
            "manual": _effective_manual_all_reduce(x),
            "run": _run_shards(),
            "eff_unused": _ddp_effective(rank, x, find_unused=True),
            "eff_strict": _ddp_effective(rank, x, find_unused=False),  # last: its reducer is left mid-iteration
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    """One process, full global batch, same init as rank 0, same optimizer and clipping."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add contention on a busy machine
    try:
        model = make()
        opt = lrm_mup.build_optimizer(model, "adamw", lr=LR, weight_decay=WD)
        x = global_batch()
        norms = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss_of(model, x).backward()
            norms.append(lrm_mup.clip_grad_norm_(model, CLIP).item())
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return {"final": snapshot(model), "norms": norms}


def assert_params_close(actual, expected, tol=1e-9):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=tol, atol=tol, msg=name)


# the tests -----------------------------------------------------------------------------------------------------


def test_ddp_broadcasts_rank0_parameters_and_multipliers(ranks):
    before = [r["ddp"]["before_wrap"] for r in ranks]
    differ = [n for n in before[0] if not torch.equal(before[0][n], before[1][n])]
    assert any("mult_" in n for n in differ) and "blocks.0.attn.q.weight" in differ
    # after wrapping every parameter, multipliers included, is rank 0's
    expected = snapshot(make(seed=0))
    for r in ranks:
        for name, p in r["ddp"]["init"].items():
            assert torch.equal(p, expected[name]), name


def test_multipliers_get_gradients_identical_across_ranks(ranks):
    for step in range(STEPS):
        g0, g1 = ranks[0]["ddp"]["mult_grads"][step], ranks[1]["ddp"]["mult_grads"][step]
        assert len(g0) == 2 * 14 + 2  # row+col on 7 matrices per block, and on the embedding
        for name in g0:
            assert g0[name].abs().sum() > 0, name
            assert torch.equal(g0[name], g1[name]), name
    for name, p in ranks[0]["ddp"]["final"].items():
        assert torch.equal(p, ranks[1]["ddp"]["final"][name]), name


def test_ddp_training_equals_single_process_full_batch(ranks, reference):
    for r in ranks:
        assert_params_close(r["ddp"]["final"], reference["final"])
    ddp0 = ranks[0]["ddp"]
    moved = [n for n, p in ddp0["final"].items() if "mult_" in n and not torch.equal(p, ddp0["init"][n])]
    assert len(moved) == 2 * 14 + 2


def test_build_optimizer_and_clipping_work_on_the_ddp_wrapper(ranks, reference):
    r = ranks[0]["ddp"]
    assert r["groups_match"]  # same groups, LRs, WDs and parameter objects as built from the inner model
    assert set(r["group_names"]) == {"adamw/input", "adamw/hidden", "adamw/readout", "adamw/vector",
                                     "adamw/multiplier"}
    # the norm excludes the multipliers, is the all-reduced gradient's (equal to the full-batch one) and clips
    assert r["norms"] == pytest.approx(r["norms_by_hand"], rel=1e-12)
    assert r["norms"] == pytest.approx(reference["norms"], rel=1e-9)
    assert ranks[1]["ddp"]["norms"] == r["norms"]
    assert r["norms"][0] > CLIP


def test_run_trains_and_evaluates_each_rank_on_its_own_rows(ranks):
    assert [r["run"]["world"] for r in ranks] == [distributed.World(0, 0, 2), distributed.World(1, 1, 2)]
    assert {r["run"]["ddp"] for r in ranks} == {"DistributedDataParallel"}
    cfg = TrainConfig(**RUN)
    corpus = load_corpus(cfg.data)
    x, _ = corpus.batch("train", cfg.batch, cfg.context, torch.Generator().manual_seed(cfg.seed))
    shards = [r["run"]["seen"]["train"][0] for r in ranks]
    assert [len(s) for s in shards] == [3, 3] and torch.equal(torch.cat(shards), x)
    val = [x for x, _ in corpus.val_batches(cfg.batch, cfg.context, cfg.eval_batches)]
    assert [len(s) for s in ranks[0]["run"]["seen"]["val"]] == [3, 3]
    for i, batch in enumerate(val):
        assert torch.equal(torch.cat([r["run"]["seen"]["val"][i] for r in ranks]), batch)


def test_fsdp_run_shards_matrices_and_multipliers_and_optimizes_the_shards(ranks):
    for r in ranks:
        assert r["run"]["fsdp"] == {"weight": ("DTensor", (16, 32), (32, 32)), "mult_row": ("DTensor", (16,), (32,))}
        assert r["run"]["fsdp_optimizer_has_sharded_params"]


def test_effective_path_is_not_ddp_compatible(ranks):
    """The limitation, precisely: DDP only sees the gradients of the RMSNorm weights (the only parameters autograd
    reaches on the effective path); the matrices' and multipliers' gradients appear in `map_grads()`, after DDP's
    all-reduce, and stay rank-local."""
    for r in ranks:
        for key in ("eff_unused", "eff_strict"):
            assert r[key]["with_grad_after_backward"] == sorted(
                n for n in r["ddp"]["init"] if n.endswith("norm.weight")), key
    # without find_unused_parameters: DDP refuses the next step
    step, message = ranks[0]["eff_strict"]["error"]
    assert step == 1 and "Expected to have finished reduction in the prior iteration" in message
    # with it: no error, but the multipliers' gradients are each rank's own and the replicas drift apart
    assert ranks[0]["eff_unused"]["error"] is None
    g0, g1 = ranks[0]["eff_unused"]["mult_grads"], ranks[1]["eff_unused"]["mult_grads"]
    assert all(not torch.allclose(g0[n], g1[n]) for n in g0)
    f0, f1 = ranks[0]["eff_unused"]["final"], ranks[1]["eff_unused"]["final"]
    drift = max((f0[n] - f1[n]).abs().max().item() for n in f0)
    assert drift > 1e-3


def test_effective_path_with_all_reduce_after_map_grads_equals_single_process(ranks, reference):
    for r in ranks:
        assert_params_close(r["manual"]["final"], reference["final"])
