"""The training engine on the committed corpus slice: its step loop yields one record per step that counts what the
run counts, stops and continues bit for bit, steps runs in lockstep exactly as alone, and is what `train` writes; the
build function equals parametrizing by hand, and its meta-device build has the real model's layer table."""
import dataclasses
import json
import math

import pytest
import torch

import lrm_mup
from lrm_mup.data import load_corpus
from lrm_mup.errors import ConfigError
from lrm_mup.models import proxy
from lrm_mup.records import RunResult, StepRecord
from lrm_mup.training import Run, TrainConfig, distributed, lockstep, parametrized_model, train

SLICE = "tests/data/shakespeare"
TINY = dict(recipe="lrm", width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, steps=6, eval_every=3,
            eval_batches=2, data=SLICE, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SLICE)


def timeless(record: StepRecord) -> StepRecord:
    """The record without its throughput (wall time)."""
    return dataclasses.replace(record, tokens_per_s=0.0)


def test_the_loop_yields_one_record_per_step_with_the_runs_tokens_and_flops(corpus):
    cfg = TrainConfig(**TINY)
    run = Run.create(cfg, corpus, progress=False)
    records = list(run.steps())
    assert all(isinstance(r, StepRecord) for r in records)
    assert [r.step for r in records] == list(range(1, cfg.steps + 1)) and run.step == cfg.steps
    per_token = run.model.flops_per_token()
    assert per_token > 0 and run.flops_per_token == per_token
    for r in records:
        assert r.tokens == r.step * cfg.batch * cfg.context and r.flops == r.tokens * per_token
        assert (r.val_bpb is not None) == (r.step in (3, 6))  # every eval_every steps and at the last
        assert math.isfinite(r.loss) and r.tokens_per_s > 0
    assert records[-1].val_bpb == run.evaluate()
    assert records[-1].loss < records[0].loss
    result = run.result(records[-1].val_bpb, seconds=1.5)
    assert result == RunResult("ok", 6, records[-1].loss, records[-1].val_bpb, records[-1].tokens, records[-1].flops,
                               1.5)


def test_a_loop_stopped_at_a_step_continues_bit_for_bit_in_the_next_call(corpus):
    cfg = TrainConfig(**TINY)
    straight = [timeless(r) for r in Run.create(cfg, corpus, progress=False).steps()]
    run = Run.create(cfg, corpus, progress=False)
    first = [timeless(r) for r in run.steps(2)]
    assert run.step == 2 and run.status == "stopped"
    rest = [timeless(r) for r in run.steps()]
    assert first + rest == straight and run.status == "ok"


def test_lockstep_runs_equal_the_same_runs_stepped_one_after_another_bit_for_bit(corpus):
    configs = [TrainConfig(**TINY, seed=seed) for seed in (0, 1)]
    together = [Run.create(cfg, corpus, progress=False) for cfg in configs]
    steps = list(lockstep(together))
    assert len(steps) == 6 and all(len(records) == 2 for records in steps)
    for i, (cfg, run) in enumerate(zip(configs, together)):
        single = Run.create(cfg, corpus, progress=False)
        assert [timeless(r) for r in single.steps()] == [timeless(records[i]) for records in steps]
        a, b = single.model.state_dict(), run.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps[-1][0].loss != steps[-1][1].loss  # two seeds: two different runs


def test_lockstep_ends_after_the_step_at_which_any_run_diverged(corpus):
    common = {**TINY, "recipe": "sp", "steps": 30, "clip": 0.0}
    runs = [Run.create(TrainConfig(**common), corpus, progress=False),
            Run.create(TrainConfig(**{**common, "lr": 1e4}), corpus, progress=False)]
    history = list(lockstep(runs, evaluate=False))
    *before, last = history
    assert all(math.isfinite(r.loss) for records in before for r in records)
    assert math.isfinite(last[0].loss) and not math.isfinite(last[1].loss)
    assert runs[0].step == runs[1].step == len(history) < 30  # both took the diverged step, neither another
    assert (runs[0].status, runs[1].status) == ("stopped", "diverged")
    assert all(r.val_bpb is None for records in history for r in records)


def test_train_writes_the_loops_records_and_the_runs_result(tmp_path, corpus):
    cfg = TrainConfig(**TINY)
    result = train(cfg, tmp_path / "run", progress=False, corpus=corpus)
    run = Run.create(cfg, corpus, progress=False)
    records = list(run.steps())
    *written, final = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [{k: v for k, v in dataclasses.asdict(r).items() if v is not None} for r in records]
    assert [{**w, "tokens_per_s": 0} for w in written] == [{**e, "tokens_per_s": 0} for e in expected]
    assert result == run.result(records[-1].val_bpb, result.seconds)
    assert final == {"status": "ok", **dataclasses.asdict(result)}


def test_a_run_refuses_a_batch_its_processes_cannot_split(corpus):
    with pytest.raises(ConfigError, match="batch=3 is invalid: the global batch must split evenly over the 2 "):
        Run.create(TrainConfig(**{**TINY, "batch": 3}), corpus, progress=False, world=distributed.World(0, 0, 2))
    with pytest.raises(ConfigError, match="micro_batch=4 is invalid: it must divide the 2 sequences"):
        Run.create(TrainConfig(**{**TINY, "micro_batch": 4}), corpus, progress=False, world=distributed.World(1, 1, 2))


@pytest.mark.parametrize("recipe, placement", [("mup", None), ("lrm", "symmetry-free")])
def test_the_build_function_equals_a_model_parametrized_by_hand(corpus, recipe, placement):
    cfg = TrainConfig(**{**TINY, "recipe": recipe, "placement": placement, "seed": 3, "alphas": {"readout": 0.5}})
    built = parametrized_model(cfg)
    fields = dict(depth=1, head_dim=8, context=32)
    torch.manual_seed(3)
    by_hand = lrm_mup.parametrize(proxy(32, **fields), proxy(16, **fields), proxy(32, **fields), recipe,
                                  placement=placement, alphas={"readout": 0.5})
    a, b = built.state_dict(), by_hand.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert lrm_mup.describe(built) == lrm_mup.describe(by_hand)
    trained = Run.create(cfg, corpus, progress=False).model.state_dict()  # a run's model is the build function's
    assert all(torch.equal(trained[k], a[k]) for k in a)


@pytest.mark.parametrize("width", [32, 256])
def test_a_meta_device_build_has_the_layer_table_of_a_real_one(width):
    cfg = TrainConfig(**{**TINY, "width": width})
    rng = torch.get_rng_state()
    meta = parametrized_model(cfg, device="meta")
    assert torch.equal(torch.get_rng_state(), rng)  # nothing was initialized
    assert all(p.is_meta for p in meta.parameters())
    real = parametrized_model(cfg)
    assert lrm_mup.describe(meta) == lrm_mup.describe(real)
    other = parametrized_model(cfg, 64, device="meta")  # another width under the same base
    assert lrm_mup.describe(other) == lrm_mup.describe(parametrized_model(dataclasses.replace(cfg, width=64)))
    assert lrm_mup.describe(other) != lrm_mup.describe(meta)
