"""The noise–WD equilibrium (issue 13): the ABM reproduces the predicted steady states, training logs the norms it
needs, and `lrm-mup equilibrium` compares a real run's matrices and multipliers with their own ABMs."""
import json
import math
import re

import pytest
import torch

from lrm_mup import analysis
from lrm_mup.cli import main
from lrm_mup.core.optim import MULTIPLIER_WD
from lrm_mup.errors import SweepError
from lrm_mup.records import Equilibrium, SweepTrial
from lrm_mup.report import drift_figure, equilibrium_figure, write_equilibrium_report, write_tuning_report
from lrm_mup.training import TrainConfig, train
from lrm_mup.training.config import lr_factor
from lrm_mup.tuning import equilibrium as eq
from lrm_mup.tuning.sweep import load_sweep, records, run_sweep
from lrm_mup.tuning.sweep._spec import parse_sweep

SLICE = "tests/data/shakespeare"
TINY = dict(width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, eval_every=4, eval_batches=1,
            data=SLICE)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_abm_settles_at_sqrt_lr_over_2wd_within_3_percent():
    """η = 1e-3, λ = 0.1: sqrt(η/(2λ)) = 0.0707, reached from zeros in 40k steps (4/(ηλ); the mean square relaxes
    as exp(-2ηλt)), averaged over the last half."""
    rms = eq.steady_rms(40_000, 1e-3, 0.1, shape=(8, 16))
    assert rms == pytest.approx(math.sqrt(1e-3 / 0.2), rel=0.03)
    assert analysis.abm_prediction("adamw", 1e-3, 0.1)[0] == pytest.approx(0.0707, abs=1e-4)


def test_muon_abm_scales_as_sqrt_lr_over_wd_with_the_reference_constant():
    """torch.optim.Muon (RMS-matched updates, Nesterov 0.95): ‖W‖_rms / sqrt(η/λ) is one constant for two η/λ 4×
    apart at fixed ηλ (within 5%: the sqrt(η/λ) law), and that constant is REFERENCE §1's 0.54 to 10% (measured
    0.55–0.59 by shape here, RESULTS.md: the 5% the issue asks for holds at 48×48, not at every shape)."""
    a = eq.steady_rms(1500, 5e-3, 1.0, optimizer="muon", shape=(32, 32)) / math.sqrt(5e-3 / 1.0)
    b = eq.steady_rms(1500, 2e-2, 0.25, optimizer="muon", shape=(32, 32)) / math.sqrt(2e-2 / 0.25)
    assert a == pytest.approx(b, rel=0.05)
    assert a == pytest.approx(analysis.MUON_CONSTANT, rel=0.10)


def test_the_abm_follows_the_lr_schedule_it_is_given():
    """Under warmup + cosine the ABM's LR is the run's: with the same seed, a constant-LR ABM and a scheduled one part
    ways exactly where the schedule departs from 1, and a schedule of 0 freezes the tensor."""
    cfg = TrainConfig(steps=40, warmup=0, schedule="constant", **TINY)
    const = eq.simulate((4, 4), 40, 1e-2, 0.1, seed=3)
    same = eq.simulate((4, 4), 40, 1e-2, 0.1, schedule=lambda s: lr_factor(s, cfg), seed=3)
    assert const == same
    frozen = eq.simulate(torch.ones(4, 4), 5, 1e-2, 0.1, schedule=lambda s: 0.0)
    assert set(frozen.values()) == {1.0}


def test_abm_command_prints_steady_state_and_prediction_on_its_last_line(capsys):
    assert main(["equilibrium", "--abm", "--lr", "0.01", "--weight-decay", "0.1", "--steps", "4000",
                 "--shape", "8,16"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"abm adamw lr=0\.01 wd=0\.1: steady rms 0\.2[12]\d\d, predicted sqrt\(lr/\(2 wd\)\) = 0\.2236",
                    last), last


@pytest.mark.parametrize("argv, needle", [
    (["--abm", "--weight-decay", "0"], "--weight-decay 0"),
    (["--abm", "--shape", "3"], "--shape [3]"),
    ([], "give a run folder"),
    (["nowhere"], "'nowhere' is not a run folder (no config.json)"),
])
def test_bad_equilibrium_input_is_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["equilibrium", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_a_run_logs_the_rms_of_every_matrix_and_multiplier_at_its_evaluations(tmp_path):
    train(TrainConfig(recipe="lrm", steps=8, **TINY), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "norms" in r]
    assert [r["step"] for r in logged] == [4, 8] and all("val_bpb" in r for r in logged)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    norms = logged[-1]["norms"]
    assert "blocks.0.attn.q.weight" in norms and "blocks.0.attn.q.mult_row" in norms
    for name, value in norms.items():
        assert value == pytest.approx(state[name].double().pow(2).mean().sqrt().item(), rel=1e-6), name


@pytest.mark.parametrize("recipe", ["mup", "lrm"])
def test_equilibrium_of_a_run_compares_every_parameter_with_its_own_abm(tmp_path, capsys, recipe):
    """Every stored matrix (and, under lrm, every multiplier) gets its ABM from its own initial values: at the first
    logged step both sit near the init, so the run-vs-ABM distance is small for the matrices; the record round-trips
    and the figure draws run and ABM per parameter."""
    run = tmp_path / "run"
    train(TrainConfig(recipe=recipe, steps=8, lr=3e-3, **TINY), run, progress=False)
    assert main(["equilibrium", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rms/scale" in out.splitlines()[0] and "equilibrium.html" in out
    rec = Equilibrium.from_json(run / "equilibrium.json")
    kinds = {s.kind for s in rec.series}
    assert kinds == ({"matrix", "multiplier"} if recipe == "lrm" else {"matrix"})
    q = next(s for s in rec.series if s.name == "blocks.0.attn.q.weight")
    assert q.steps == (4, 8) and q.scale == pytest.approx(math.sqrt(3e-3 / 0.1))
    assert q.ratio == pytest.approx(q.rms[-1] / q.scale) and q.distance < 0.05
    assert len(equilibrium_figure(rec).data) == 2 * len(rec.series)


def _norm_symmetry_rms(weight_decay: float, steps: int = 1000, lr: float = 2.0, n: int = 16) -> list[float]:
    """A multiplier vector v that feeds an RMSNorm (the residual stream's symmetry: the loss is blind to v's scale),
    forward in bfloat16, AdamW: RMS of v every 100 steps."""
    gen = torch.Generator().manual_seed(0)
    v = torch.nn.Parameter(torch.ones(n))
    w, teacher = torch.randn(n, 4, generator=gen).bfloat16(), torch.randn(n, 4, generator=gen)
    opt = torch.optim.AdamW([v], lr=lr, weight_decay=weight_decay)
    out = []
    for step in range(1, steps + 1):
        x = torch.randn(32, n, generator=gen)
        y = (torch.nn.functional.rms_norm(x, (n,)) @ teacher).bfloat16()
        h = torch.nn.functional.rms_norm(x.bfloat16() * v.bfloat16(), (n,))
        loss = (h @ w - y).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            out.append(v.detach().pow(2).mean().sqrt().item())
    return out


def test_in_bf16_a_scale_free_multiplier_drifts_without_its_weight_decay_and_is_bounded_with_2e_3():
    """No gradient holds the scale of what feeds an RMSNorm, so Adam's noisy steps (⟂ v) grow ‖v‖ without bound;
    the multipliers' WD (MULTIPLIER_WD = 2e-3) bounds it at the noise equilibrium sqrt(η/(2λ)). η = 2 makes ηλT = 4
    in 1000 steps (the decay's time constants); the real proxy at the paper's scale: benchmarks/bench_drift.py."""
    lr = 2.0
    bound = math.sqrt(lr / (2 * MULTIPLIER_WD))
    free, pinned = _norm_symmetry_rms(0.0, lr=lr), _norm_symmetry_rms(MULTIPLIER_WD, lr=lr)
    assert max(pinned) < bound
    assert free[-1] > bound and free[-1] > 1.5 * pinned[-1]
    assert all(b > a for a, b in zip(free[4:], free[5:]))  # still growing over the second half


def test_s_sweep_preset_holds_lr_times_wd_fixed_and_varies_lr_over_wd():
    spec = load_sweep("sweeps/equilibrium_s.toml")
    configs = [spec.config(r, w, 0, {"log2_lr": v}) for r in spec.recipes for w in spec.widths
               for v in dict((p.name, p.values) for p in spec.search)["log2_lr"]]
    assert all(c["lr"] * c["weight_decay"] == pytest.approx(3e-4, rel=1e-12) for c in configs)
    ratios = sorted(c["lr"] / c["weight_decay"] for c in configs)
    assert ratios[-1] / ratios[0] == pytest.approx(2.0 ** 10)
    assert spec.to_dict()["lr_times_weight_decay"] == 3e-4


@pytest.mark.parametrize("extra, needle", [
    ({"lr_times_weight_decay": -1}, "lr_times_weight_decay must be a positive number"),
    ({"lr_times_weight_decay": 3e-4, "search": {"log2_lr": [-8], "weight_decay": [0.1]}},
     "search.weight_decay is set by lr_times_weight_decay"),
    ({"lr_times_weight_decay": 3e-4, "model": {"weight_decay": 0.1}}, "model.weight_decay is set by"),
])
def test_a_fixed_product_that_cannot_hold_is_refused_in_one_line(extra, needle):
    raw = {"name": "s", "recipes": ["mup"], "widths": [32], "seeds": [0], "search": {"log2_lr": [-8]},
           "sampler": {"type": "grid"}, **extra}
    with pytest.raises(SweepError, match=needle):
        parse_sweep(raw)


def test_the_tuning_report_gets_a_section_per_measured_transfer_run(tmp_path):
    """`tuning_report` finds the equilibrium.json that `lrm-mup equilibrium` wrote into a transfer's run folder and
    the page carries its section; a report without one has none."""
    trials = [SweepTrial("s/mup", i, "COMPLETE", "mup", w, lr, 3.0 + abs(lr + 8) * 0.1, 2.0, "ok", seed=0)
              for i, (w, lr) in enumerate([(32, -8), (32, -6), (64, -8), (64, -6)])]
    rec = Equilibrium("runs/x", "lrm", "adamw", 64, 10, (analysis.equilibrium_series(
        "blocks.0.attn.q.weight", "matrix", (4, 4), "adamw", 1e-2, 0.1, [5, 10], [0.3, 0.31], [0.3, 0.3]),))
    with_section = write_tuning_report(trials, None, tmp_path / "a", sweep_name="s", equilibria=[rec]).read_text()
    without = write_tuning_report(trials, None, tmp_path / "b", sweep_name="s").read_text()
    assert "Noise–WD equilibrium: lrm, width 64" in with_section and "blocks.0.attn.q.weight" in with_section
    assert "Noise–WD equilibrium" not in without


def test_a_sweep_trial_logs_the_norms_a_train_run_logs_and_equilibrium_reads_them(tmp_path, capsys):
    """A trial keeps no run folder: its first seed's norms at the eval interval go into the trial record, equal to
    what `train` logs for the same config, and `lrm-mup equilibrium SWEEP --trial N` reads them from there."""
    model = {k: v for k, v in TINY.items() if k != "width"}
    spec = parse_sweep({"name": "s", "recipes": ["lrm"], "widths": [32], "seeds": [0], "steps": 8, "model": model,
                        "search": {"log2_lr": [-8]}, "sampler": {"type": "grid"}})
    run_sweep(spec, tmp_path / "sweep", progress=False)
    (trial,) = records(tmp_path / "sweep", spec)
    assert set(trial.norms) == {"4", "8"}
    train(TrainConfig.from_dict(trial.config), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {str(r["step"]): r["norms"] for r in rows if "norms" in r}
    assert set(logged) == set(trial.norms)
    for step, norms in logged.items():
        assert set(norms) == set(trial.norms[step]) and "blocks.0.attn.q.mult_row" in norms
        for name, value in norms.items():
            assert trial.norms[step][name] == pytest.approx(value, rel=1e-6), (step, name)
    assert SweepTrial.from_dict(trial.to_dict()) == trial
    rec = eq.trial_equilibrium(trial)
    assert rec.run == f"{trial.study} trial {trial.trial}" and {s.kind for s in rec.series} == {"matrix", "multiplier"}
    argv = ["equilibrium", str(tmp_path / "sweep"), "--trial", str(trial.trial), "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    assert "equilibrium.html" in capsys.readouterr().out
    assert Equilibrium.from_json(tmp_path / "e" / "equilibrium.json") == rec
    assert main(["equilibrium", str(tmp_path / "sweep"), "--trial", "7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trial 7" in err


def test_the_equilibrium_page_draws_the_committed_bf16_drift_with_the_reports_renderer(tmp_path):
    """benchmarks/drift.json (bench_drift.py) as the page's drift section: per run, the Q/K ratio and the
    residual-branch RMS (log axis) against the step, the numbers of the file."""
    drift = json.loads(open("benchmarks/drift.json", encoding="utf-8").read())
    fig = drift_figure(drift)
    assert [t.name for t in fig.data] == [label for label in drift["runs"] for _ in range(2)]
    for trace, (label, key) in zip(fig.data, [(label, k) for label in drift["runs"] for k in ("qk", "branch")]):
        assert list(trace.y) == [r[key] for r in drift["runs"][label]]
    assert fig.layout.yaxis2.type == "log"
    rec = Equilibrium("runs/x", "lrm", "adamw", 64, 10, (analysis.equilibrium_series(
        "blocks.0.attn.q.weight", "matrix", (4, 4), "adamw", 1e-2, 0.1, [5, 10], [0.3, 0.31], [0.3, 0.3]),))
    page = write_equilibrium_report(rec, tmp_path, plotlyjs="directory", drift=drift)["html"].read_text()
    assert "Symmetry drift in bf16" in page and page.count("Plotly.newPlot") == 2
    plain = write_equilibrium_report(rec, tmp_path / "b", plotlyjs="directory")["html"].read_text()
    assert "Symmetry drift" not in plain
