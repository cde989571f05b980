"""Transfer of the proxy's best settings to wider targets, the direct LR sweep there, and the width-scaling fit of the
learned multipliers, on real runs of the committed corpus slice (tiny widths, a few steps)."""
import json
import math
from dataclasses import asdict

import pytest
import torch

from lrm_mup.analysis import best_configs, fit_exponent, lr_curves, optimum_spread, sweep_costs
from lrm_mup.cli import main
from lrm_mup.errors import TransferError
from lrm_mup.records import SweepTrial, TransferSummary
from lrm_mup.training import TrainConfig, train
from lrm_mup.tuning.transfer import load_best, multiplier_scaling, multiplier_values, plan_runs, run_transfer

SLICE = "tests/data/shakespeare"
TINY = {"base_width": 16, "depth": 1, "head_dim": 8, "context": 32, "batch": 4, "steps": 12, "eval_every": 100,
        "eval_batches": 2, "data": SLICE}


pytestmark = pytest.mark.usefixtures("one_thread")


def record(cfg: TrainConfig, trial: int) -> SweepTrial:
    """A real sweep record (what lrm_mup.tuning.sweep.records returns) from one real training run."""
    r = train(cfg, progress=False)
    return SweepTrial(study="test", trial=trial, state="COMPLETE", recipe=cfg.recipe, width=cfg.width,
                      seed=cfg.seed, log2_lr=math.log2(cfg.lr), val_bpb=r.val_bpb, train_loss=r.train_loss,
                      status=r.status, tokens=r.tokens, flops=r.flops, seconds=r.seconds, config=asdict(cfg))


@pytest.fixture(scope="module")
def records():
    grid = [(recipe, lr) for recipe in ("sp", "lrm") for lr in (-7, -5)]
    rows = [record(TrainConfig(recipe=recipe, width=16, lr=2.0 ** lr, **TINY), i) for i, (recipe, lr) in
            enumerate(grid)]
    diverged = record(TrainConfig(recipe="sp", width=16, lr=2.0 ** 13, **{**TINY, "clip": 0.0, "steps": 30}), 4)
    assert diverged.status == "diverged"
    return rows + [diverged]


@pytest.fixture(scope="module")
def transfer(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    lines = []
    summary = run_transfer(best_configs(records), out, widths=[32], lr_offsets=[-1, 1], log=lines.append)
    return out, summary, lines


def test_record_analysis_finds_the_seed_mean_optimum(records):
    curves = lr_curves(records)
    for recipe in ("sp", "lrm"):
        mine = {r.log2_lr: r.val_bpb for r in records if r.recipe == recipe and r.status == "ok"}
        best = min(mine, key=mine.get)
        assert curves[recipe][16].opt_log2_lr == best and curves[recipe][16].opt_val_bpb == mine[best]
        assert curves[recipe][16].log2_lr[:2] == (-7, -5)
    assert curves["sp"][16].log2_lr[2] == 13 and curves["sp"][16].val_bpb[2] == math.inf  # diverged
    assert optimum_spread(curves)["lrm"].spread is None  # one width: no spread to speak of
    best = best_configs(records)
    assert set(best) == {"sp", "lrm"} and best["lrm"]["lr"] == 2.0 ** curves["lrm"][16].opt_log2_lr
    costs = sweep_costs(records)
    assert costs["lrm"].proxy.trials == 2 and costs["sp"].proxy.trials == 3  # diverged ones cost too
    assert costs["lrm"].proxy.tokens == sum(r.tokens for r in records if r.recipe == "lrm")


def test_transfer_trains_targets_and_the_direct_lr_sweep(transfer, records):
    out, summary, lines = transfer
    assert TransferSummary.from_json(out / "transfer.json") == summary
    names = {p.name for p in (out / "runs").iterdir()}
    for recipe in ("sp", "lrm"):
        assert {f"{recipe}-w16-lr+0", f"{recipe}-w32-lr+0", f"{recipe}-w32-lr-1", f"{recipe}-w32-lr+1"} <= names
    assert len(lines) == 8 and all(line.startswith("[") and "bpb" in line for line in lines)
    for recipe, s in summary.recipes.items():
        runs = {(r.width, r.offset): r for r in summary.runs if r.recipe == recipe}
        assert s.proxy_width == 16 and s.target_width == 32
        # same base for proxy and target; only the width and the LR move
        cfg = json.loads((out / "runs" / f"{recipe}-w32-lr+1" / "config.json").read_text())
        assert cfg["base_width"] == 16 and cfg["lr"] == pytest.approx(2 * summary.best[recipe]["lr"])
        # the gaps are what the three target runs say
        sweep = {o: runs[(32, o)].val_bpb for o in (-1, 0, 1)}
        best_offset = min(sweep, key=sweep.get)
        assert s.target_val_bpb == sweep[0]
        assert s.lr_gap_log2 == -best_offset
        assert s.target_optimum_log2_lr == pytest.approx(s.transferred_log2_lr + best_offset)
        assert s.loss_gap_bpb == pytest.approx(sweep[0] - sweep[best_offset]) and s.loss_gap_bpb >= 0
        assert s.optimum_at_edge == (best_offset != 0)
        assert s.target_cost.tokens == runs[(32, 0)].tokens > 0
    # the lrm runs at 16 and 32 feed the multiplier fit
    assert summary.multipliers.widths == (16, 32)
    assert summary.multipliers.quantities["query×key"].predicted == -2.0


def test_an_interrupted_transfer_continues_without_retraining(transfer):
    out, summary, _ = transfer
    lines = []
    again = run_transfer(out, out, widths=[32], lr_offsets=[-1, 1], log=lines.append)  # best.json of the folder
    assert all("done before" in line for line in lines)
    assert again.recipes == summary.recipes


def test_parallel_workers_give_the_same_runs(transfer, tmp_path):
    out, summary, _ = transfer
    lines = []
    again = run_transfer(out / "best.json", tmp_path / "par", widths=[32], lr_offsets=[-1, 1], workers=2,
                         log=lines.append)
    assert len(lines) == 8 and not any("done before" in line for line in lines)
    for a, b in zip(summary.runs, again.runs):
        assert a.name == b.name and b.status == "ok"
        assert b.val_bpb == pytest.approx(a.val_bpb, rel=1e-4)  # one thread per worker: same numbers


def test_exponent_fit_recovers_planted_multipliers(tmp_path):
    dirs = []
    for w in (16, 32, 64):
        cfg = TrainConfig(recipe="lrm", placement="scalar", width=w, **{**TINY, "steps": 3})
        train(cfg, tmp_path / f"w{w}", progress=False)
        dirs.append(tmp_path / f"w{w}")
    before = multiplier_scaling(dirs).quantities
    for d in dirs:  # plant: readout s = 0.7·w^-1 exactly; query and key scaled by w^-1/2 each
        w = json.loads((d / "config.json").read_text())["width"]
        state = torch.load(d / "checkpoint.pt", weights_only=True)
        state["model"]["head.mult_scale"].fill_(0.7 / w)
        for name in ("blocks.0.attn.q.mult_scale", "blocks.0.attn.k.mult_scale"):
            state["model"][name].mul_(w ** -0.5)
        torch.save(state, d / "checkpoint.pt")
    fits = multiplier_scaling(dirs).quantities
    head = fits["readout"]
    assert head.slope_learned == pytest.approx(-1.0, abs=1e-6)
    assert head.slope_fixed == pytest.approx(-1.0, abs=1e-6)  # μP's fixed readout factor 1/m
    assert head.slope_total == pytest.approx(-2.0, abs=1e-6) and head.predicted == -1.0
    assert head.learned[0] == pytest.approx(0.7 / 16, rel=1e-6)
    qk = fits["query×key"]
    assert qk.slope_learned == pytest.approx(before["query×key"].slope_learned - 1.0, abs=1e-5)
    assert qk.slope_fixed == pytest.approx(-2.0, abs=1e-6) and qk.predicted == -2.0
    # untouched roles stay as trained: 3 steps leave the learned part flat
    assert abs(fits["mlp_down"].slope_learned) < 0.05 and fits["mlp_down"].predicted == -1.0
    assert fits["embedding"].predicted == 0.0
    table = multiplier_values(dirs[0])
    assert {x.role for x in table.layers} >= {"readout", "query", "key", "embedding"}


def test_fit_exponent_on_exact_power_laws():
    widths = [128, 256, 512, 1024]
    assert fit_exponent(widths, [3 * w ** -2 for w in widths]).slope == pytest.approx(-2.0)
    assert fit_exponent([64], [1.0]).slope is None


def test_bad_input_is_a_clear_error(tmp_path, records, transfer, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_best(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a sweep run folder"):
        load_best(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"lrm": {"recipe": "lrm", "wdith": 32}}))
    with pytest.raises(TransferError, match="unknown config field 'wdith'"):
        load_best(tmp_path / "bad.json")
    with pytest.raises(TransferError, match="must divide width"):
        plan_runs(best_configs(records), [36])
    runs = transfer[0] / "runs"
    with pytest.raises(TransferError, match="≥ 2 widths"):
        multiplier_scaling([runs / "lrm-w32-lr+0", runs / "lrm-w32-lr+1"])
    with pytest.raises(TransferError, match="need recipe 'lrm'"):
        multiplier_values(runs / "sp-w32-lr+0")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        multiplier_values(tmp_path)
    assert main(["transfer", str(tmp_path / "missing"), "--out", str(tmp_path / "t"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def tree(path) -> dict:
    """Every entry under `path` with its bytes (None for a folder): a snapshot to compare before and after."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_a_transfer_with_bad_input_writes_nothing(tmp_path, records, capsys):
    best = best_configs(records)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be " * 10)  # a validation split of 19 bytes, shorter than the context
    afile, empty = tmp_path / "afile", tmp_path / "empty"
    afile.write_text("mine")
    empty.mkdir()

    def source(**over) -> str:
        path = tmp_path / f"best{len(list(tmp_path.glob('best*.json')))}.json"
        path.write_text(json.dumps({r: {**cfg, **over} for r, cfg in best.items()}))
        return str(path)

    cases = [
        ([source(data=str(tmp_path / "missing"))], tmp_path / "out", "does not exist"),
        ([source(data=str(short))], tmp_path / "out", "context 32 is too long"),
        ([source(data=str(short))], empty, "context 32 is too long"),
        ([source()], afile, "is a file"),
        ([source()], afile / "out", "is a file"),
        ([source(), "--storage", "postgresql://u:pw@h/db"], tmp_path / "out", "leave --storage out"),
    ]
    for args, out, message in cases:
        before = {p: tree(p) for p in (tmp_path / "out", afile, empty)}
        assert main(["transfer", *args, "--out", str(out), "--widths", "32", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lrm-mup transfer: error:") and message in err and "\n" not in err, err
        assert "pw@" not in err
        assert {p: tree(p) for p in before} == before  # nothing created, nothing modified
