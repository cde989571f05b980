"""The tuning ablation (tiers) and the tuning-cost curves from hand-made trial records, with no training: best-so-far
curves, budget points, the cost verdict, the tier table and the paper's tier claims; the tiers sweep file; the
report's new section and headline figure."""
import json
import math
from pathlib import Path

import pytest

from lrm_mup import analysis
from lrm_mup.errors import SweepError, TransferError
from lrm_mup.records import BudgetPoint, CostCurve, SweepTrial, TierRow
from lrm_mup.report import write_ablation_report
from lrm_mup.tuning.sweep import load_sweep, parse_sweep
from lrm_mup.tuning.tiers import check_tiers, searched, tier_spec

ROOT = Path(__file__).resolve().parents[1]
CAP = 8.0


def tpe(n, val, *, recipe="lrm", study=None, status="ok", state=None, flops=10.0, width=64, **params):
    """A tpe trial as lrm_mup.tuning.sweep.records returns it: a diverged one is PRUNED at the cap (the sweep's
    rule for tpe), a pruned one PRUNED without a value."""
    state = state or ("COMPLETE" if status == "ok" else "PRUNED")
    log2_lr = params.pop("log2_lr", -7.0 - n / 10)
    if status == "diverged":
        val = CAP
    return SweepTrial(study=study or f"tiers-full/{recipe}", trial=n, state=state, recipe=recipe, width=width,
                      log2_lr=log2_lr, val_bpb=val, train_loss=1.0, status=status, flops=flops,
                      config={"recipe": recipe, "width": width, "lr": 2.0 ** log2_lr, "seed": 0, **params},
                      seed=0, seeds=(0,), params=params)


def study():
    """Seven trials, out of order: a pruned one, a diverged one (pruned at the cap, as tpe does) and a grid-style
    diverged one (COMPLETE at the cap, below the converged 8.3: it must still never win), a failed one."""
    return [tpe(3, 2.5, flops=20.0), tpe(0, 8.3), tpe(1, None, status="pruned", flops=4.0),
            tpe(2, None, status="diverged", flops=6.0), tpe(4, CAP, status="diverged", state="COMPLETE"),
            tpe(5, 2.7), tpe(6, 2.4), tpe(7, None, status="failed", state="FAIL")]


# ----------------------------------------------------------------------------------------------------------
# cost curves and budget points


def test_cost_curve_is_best_so_far_in_trial_order_with_every_paid_trial_counted():
    c = analysis.cost_curve(study())
    assert [p.trial for p in c.points] == [0, 1, 2, 3, 4, 5, 6]  # the failed trial 7 is left out
    assert [p.flops for p in c.points] == [10.0, 14.0, 20.0, 40.0, 50.0, 60.0, 70.0]  # pruned/diverged are paid
    assert [p.trials for p in c.points] == list(range(1, 8))
    assert [p.best_trial for p in c.points] == [0, 0, 0, 3, 3, 3, 6]  # the capped 8.0 never beats the real 8.3
    assert [p.best_val_bpb for p in c.points] == [8.3, 8.3, 8.3, 2.5, 2.5, 2.5, 2.4]
    assert [p.val_bpb for p in c.points][1:3] == [None, None]  # pruned: no final loss (the diverged cap is no loss)
    best = [p.best_val_bpb for p in c.points]
    assert all(b <= a for a, b in zip(best, best[1:]))


def test_cost_curve_has_no_best_until_a_trial_converged():
    c = analysis.cost_curve([tpe(0, None, status="diverged"), tpe(1, None, status="pruned"), tpe(2, 3.0)])
    assert [p.best_trial for p in c.points] == [None, None, 2]
    assert [p.best_val_bpb for p in c.points] == [None, None, 3.0]


def test_cost_curve_refuses_two_studies_or_widths():
    with pytest.raises(TransferError, match="one study"):
        analysis.cost_curve([tpe(0, 3.0), tpe(1, 3.0, recipe="mup")])
    with pytest.raises(TransferError, match="one width"):
        analysis.cost_curve([tpe(0, 3.0), tpe(1, 3.0, width=128)])


def test_budget_grid_is_geometric_between_every_curves_first_trial_and_the_smallest_total():
    a = analysis.cost_curve(study())                                   # first 10, total 70
    b = analysis.cost_curve([tpe(0, 3.0, recipe="mup", flops=5.0), tpe(1, 2.0, recipe="mup", flops=35.0)])  # 5, 40
    grid = analysis.budget_grid([a, b], 3)
    assert grid == pytest.approx((10.0, 20.0, 40.0))
    assert analysis.budget_grid([a, b], 1) == (40.0,)


def test_budget_points_pick_the_best_so_far_within_each_budget():
    trials = study()
    c = analysis.cost_curve(trials)
    points = analysis.budget_points(c, trials, [5.0, 14.0, 39.9, 40.0, 1e9])
    assert [p.best_trial for p in points] == [None, 0, 0, 3, 6]
    assert [p.trials for p in points] == [0, 2, 3, 4, 7]
    assert [p.flops for p in points] == [0.0, 14.0, 20.0, 40.0, 70.0]  # spent, never above the budget
    assert points[3].params == {"log2_lr": pytest.approx(-7.3)} and points[3].proxy_val_bpb == 2.5
    assert points[3].config["lr"] == pytest.approx(2.0 ** -7.3)
    assert points[0].config == {} and points[0].proxy_val_bpb is None


def _point(label_study, flops, val, trials=1, best=0):
    return BudgetPoint(label_study, "lrm", flops, trials, flops, best, {}, None, {})


def test_cost_verdict_names_the_recipe_that_reaches_the_target_loss_with_the_fewest_flops():
    curves = {
        "mup LR": [analysis.target_point(_point("m", 10.0, None), 256, [3.2, 3.3]),
                   analysis.target_point(_point("m", 40.0, None, 4), 256, [3.05, 3.07])],
        "lrm LR": [analysis.target_point(_point("l", 10.0, None), 256, [3.1, None]),  # a diverged seed: no mean
                   analysis.target_point(_point("l", 20.0, None, 2), 256, [3.04, 3.06]),
                   analysis.target_point(_point("l", 40.0, None, 4), 256, [3.00, 3.02])],
    }
    assert curves["lrm LR"][0].val_bpb is None and curves["mup LR"][1].seed_range_bpb == pytest.approx(0.02)
    v = analysis.cost_verdict(curves)
    assert v.target_loss == pytest.approx(3.06)  # the largest best: every curve reaches it
    assert v.flops_to_reach == {"mup LR": 40.0, "lrm LR": 20.0} and v.trials_to_reach == {"mup LR": 4, "lrm LR": 2}
    assert v.winner == "lrm LR" and v.direct is None
    direct = analysis.cost_curve([tpe(0, 3.2, flops=100.0), tpe(1, 3.05, flops=100.0), tpe(2, 3.0, flops=100.0)])
    v = analysis.cost_verdict(curves, ("lrm LR", direct))
    assert (v.direct_flops, v.direct_trials, v.direct_budget_flops) == (200.0, 2, 300.0)
    assert "10.0x the winner's proxy cost" in v.sentence
    v = analysis.cost_verdict(curves, ("lrm LR", direct), target_loss=2.9)
    assert v.winner is None and v.direct_flops is None


# ----------------------------------------------------------------------------------------------------------
# the tier table and the paper's claims


def test_tier_row_takes_the_studys_winner_and_its_seed_spread():
    trials = study()
    row = analysis.tier_row("lrm", "FULL", ("log2_lr", "log2_mult_lr"), trials, 256, [3.0, 3.04])
    assert row.trials == 7 and row.proxy_flops == 70.0
    assert row.params == {"log2_lr": pytest.approx(-7.6)} and row.proxy_val_bpb == 2.4
    assert row.val_bpb == pytest.approx(3.02) and row.seed_range_bpb == pytest.approx(0.04)
    none = analysis.tier_row("lrm", "NONE", (), [], 256, [3.1, None])
    assert none.trials == 0 and none.params == {} and none.val_bpb is None and none.seed_val_bpb == (3.1, None)


def _row(recipe, tier, val, spread):
    return TierRow(recipe, tier, (), 0, 0.0, {}, None, 256, (val - spread / 2, val + spread / 2), val, spread)


def test_tier_claims_judge_each_difference_against_the_seed_range():
    rows = [_row("mup", "NONE", 3.30, 0.01), _row("mup", "LR", 3.10, 0.02), _row("mup", "FULL", 3.09, 0.02),
            _row("lrm", "NONE", 3.11, 0.02), _row("lrm", "LR", 3.20, 0.01), _row("lrm", "FULL", 3.00, 0.01)]
    claims = {c.claim: c for c in analysis.tier_claims(rows)}
    assert claims["untuned fixed multipliers are worse than fixed + tuned LR"].holds is True
    c = claims["fixed multipliers + tuned LR ≈ LRM untuned"]
    assert c.holds is True and c.difference_bpb == pytest.approx(-0.01) and c.seed_range_bpb == 0.02
    assert claims["LRM + tuned LR beats fixed multipliers + tuned LR"].holds is False  # +0.10, outside the range
    assert claims["mup: tuning the forward multipliers α too beats tuning the LR alone"].holds is None  # in noise
    assert claims["fully tuned LRM beats fully tuned fixed multipliers"].holds is True


def test_ablation_numbers_key_every_target_loss_to_its_setting():
    full = [tpe(0, 3.0, flops=10.0), tpe(1, 2.8, flops=10.0),
            tpe(0, 3.1, recipe="mup", flops=10.0), tpe(1, None, recipe="mup", status="diverged", flops=10.0)]
    lr = [tpe(0, 3.2, study="tiers-lr/lrm"), tpe(1, 3.3, study="tiers-lr/lrm"),
          tpe(0, 3.4, recipe="mup", study="tiers-lr/mup"), tpe(1, 3.0, recipe="mup", study="tiers-lr/mup")]
    studies = {"LR": lr, "FULL": full}
    plan = analysis.ablation_plan(studies, ["mup", "lrm"], 2)
    assert plan["budgets"] == pytest.approx((10.0, 20.0))
    assert set(plan["curves"]) == {"mup LR", "lrm LR", "mup FULL", "lrm FULL"}
    losses = {"mup NONE": [3.5, 3.6], "lrm NONE": [3.3, 3.4], "tiers-full/lrm#0": [3.1, 3.1],
              "tiers-full/lrm#1": [2.9, 3.0], "tiers-full/mup#0": [3.2, 3.3], "tiers-lr/lrm#0": [3.25, 3.3],
              "tiers-lr/mup#0": [3.45, 3.5], "tiers-lr/mup#1": [3.1, 3.15]}
    numbers = analysis.ablation_numbers(studies, plan, {("lrm", "FULL"): ("log2_lr", "log2_mult_lr")}, 256, losses)
    json.dumps(numbers, allow_nan=False)
    rows = {(r["recipe"], r["tier"]): r for r in numbers["tiers"]}
    assert rows[("lrm", "FULL")]["val_bpb"] == pytest.approx(2.95)
    assert rows[("lrm", "FULL")]["searched"] == ["log2_lr", "log2_mult_lr"]
    assert rows[("mup", "FULL")]["val_bpb"] == pytest.approx(3.25)  # the diverged trial 1 never won
    assert rows[("mup", "NONE")]["val_bpb"] == pytest.approx(3.55)
    assert [p["val_bpb"] for p in numbers["targets"]["mup LR"]] == pytest.approx([3.475, 3.125])
    assert numbers["verdict"]["winner"] == "lrm FULL" and numbers["verdict"]["target_loss"] == pytest.approx(3.275)
    assert CostCurve.from_dict(numbers["curves"]["lrm FULL"]).points[-1].best_trial == 1


# ----------------------------------------------------------------------------------------------------------
# the tiers sweep file


def test_tiers_file_validates_and_each_tier_searches_what_it_says():
    spec = load_sweep(ROOT / "sweeps" / "tiers.toml")
    check_tiers(spec)
    assert spec.recipes == ("mup", "lrm") and len(spec.widths) == 1 and spec.sampler["type"] == "tpe"
    assert searched(spec, "NONE", "mup") == searched(spec, "NONE", "lrm") == ()
    assert searched(spec, "LR", "mup") == searched(spec, "LR", "lrm") == ("log2_lr",)
    assert searched(spec, "FULL", "mup") == ("log2_lr", "log2_alpha_in", "log2_alpha_out", "log2_alpha_hidden")
    assert searched(spec, "FULL", "lrm") == ("log2_lr", "log2_mult_lr")
    lr, full = tier_spec(spec, "LR"), tier_spec(spec, "FULL")
    assert (lr.name, full.name) == ("tiers-lr", "tiers-full")
    assert lr.budget("mup") == full.budget("lrm") == spec.sampler["trials"]  # equal budgets
    direct = tier_spec(spec, "LR", width=256)
    assert direct.name == "tiers-lr-direct" and direct.widths == (256,)
    # the FULL tier's values reach the config: α for mup, the multipliers' LR for lrm
    cfg = full.config("mup", 64, 0, {"log2_lr": -7.0, "log2_alpha_in": 1.0, "log2_alpha_out": -1.0,
                                     "log2_alpha_hidden": 0.5})
    assert cfg["alphas"] == {"embedding": 2.0, "readout": 0.5, "hidden": pytest.approx(2 ** 0.5)}
    cfg = full.config("lrm", 64, 0, {"log2_lr": -7.0, "log2_mult_lr": -9.0})
    assert (cfg["lr"], cfg["mult_lr"]) == (2.0 ** -7, 2.0 ** -9)
    assert lr.config("lrm", 64, 0, {"log2_lr": -7.0})["mult_lr"] is None  # LR tier: follows the AdamW LR


def _raw(**changes):
    raw = {"name": "t", "recipes": ["mup", "lrm"], "widths": [16], "seeds": [0], "steps": 4,
           "model": {"base_width": 16, "depth": 1, "head_dim": 8, "context": 16},
           "search": {"log2_lr": {"low": -9.0, "high": -5.0}, "log2_alpha_in": {"low": -1.0, "high": 1.0},
                      "log2_mult_lr": {"low": -9.0, "high": -5.0}},
           "sampler": {"type": "tpe", "trials": 3}}
    raw.update(changes)
    return parse_sweep(raw)


def test_a_tiers_file_must_give_every_recipe_more_than_its_lr_and_a_trial_budget():
    check_tiers(_raw())
    with pytest.raises(SweepError, match="'lrm' tunes only its LR"):
        check_tiers(_raw(search={"log2_lr": {"low": -9.0, "high": -5.0}, "log2_alpha_in": {"low": -1.0, "high": 1.0}}))
    with pytest.raises(SweepError, match="not 'grid'"):
        check_tiers(_raw(sampler={"type": "grid"}, search={"log2_lr": [-8, -7], "log2_mult_lr": [-8],
                                                           "log2_alpha_in": [0]}))
    with pytest.raises(SweepError, match="one LR entry"):
        check_tiers(_raw(search={"log2_alpha_in": {"low": -1.0, "high": 1.0},
                                 "log2_mult_lr": {"low": -9.0, "high": -5.0}}))
    with pytest.raises(SweepError, match="tier 'NONE' has no sweep"):
        tier_spec(_raw(), "NONE")


# ----------------------------------------------------------------------------------------------------------
# the report


def test_ablation_report_leads_with_the_cost_curve_and_shows_the_tier_table(tmp_path):
    full = [tpe(0, 3.0), tpe(1, 2.8), tpe(0, 3.1, recipe="mup"), tpe(1, None, recipe="mup", status="pruned")]
    lr = [tpe(0, 3.2, study="tiers-lr/lrm"), tpe(0, 3.4, recipe="mup", study="tiers-lr/mup")]
    studies = {"LR": lr, "FULL": full}
    plan = analysis.ablation_plan(studies, ["mup", "lrm"], 2)
    losses = {"mup NONE": [3.5, 3.6], "lrm NONE": [3.3, 3.4], "tiers-full/lrm#0": [3.1, 3.1],
              "tiers-full/lrm#1": [2.9, 3.0], "tiers-full/mup#0": [3.2, 3.3], "tiers-lr/lrm#0": [3.25, 3.3],
              "tiers-lr/mup#0": [3.45, 3.5]}
    direct = {"lrm LR": analysis.cost_curve([tpe(0, 3.2, study="d/lrm", flops=80.0),
                                             tpe(1, 3.0, study="d/lrm", flops=80.0)])}
    numbers = analysis.ablation_numbers(studies, plan, {}, 256, losses, direct)
    numbers["spec"] = {"name": "tiers", "proxy_width": 64, "steps": 250, "trials": 2, "seeds": [0, 1]}
    path = write_ablation_report(numbers, tmp_path / "report", plotlyjs="directory")
    html = path.read_text(encoding="utf-8")
    assert html.index("Tuning cost") < html.index("Tier table")  # the cost curve is the headline
    assert numbers["verdict"]["sentence"] in html.replace("&#x27;", "'")
    assert html.count('class="plotly-graph-div"') >= 2  # the cost curve and the tier plot
    for cell in ("mup", "lrm", "NONE", "FULL", "3.5500"):
        assert cell in html
    saved = json.loads((tmp_path / "report" / "ablation.json").read_text())
    assert saved["verdict"] == numbers["verdict"] and math.isclose(saved["tiers"][0]["val_bpb"], 3.55)


# ----------------------------------------------------------------------------------------------------------
# the command, end to end at a tiny size


def test_ablation_command_refuses_a_grid_file_and_a_zero_budget_in_one_line(tmp_path, capsys):
    from lrm_mup.cli import main

    assert main(["ablation", str(ROOT / "sweeps" / "demo.toml"), "--target", "512", "--out", str(tmp_path / "a")]) == 2
    assert "needs sampler 'tpe' or 'random'" in capsys.readouterr().err
    assert main(["ablation", str(ROOT / "sweeps" / "tiers.toml"), "--target", "256", "--budgets", "0",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--budgets 0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_tiers_trains_every_tier_winner_and_budget_point_at_the_target(tmp_path):
    from lrm_mup.tuning.tiers import load_ablation, run_tiers

    spec = _raw(steps=3, sampler={"type": "tpe", "trials": 2, "startup_trials": 2},
                model={"base_width": 16, "depth": 1, "head_dim": 8, "context": 16, "batch": 2, "eval_batches": 1})
    numbers = run_tiers(spec, tmp_path / "abl", target=32, seeds=[0], budgets=1, log=None)
    assert numbers == load_ablation(tmp_path / "abl")
    rows = {(r["recipe"], r["tier"]): r for r in numbers["tiers"]}
    assert set(rows) == {(r, t) for r in ("mup", "lrm") for t in ("NONE", "LR", "FULL")}
    assert rows[("lrm", "FULL")]["searched"] == ["log2_lr", "log2_mult_lr"] and rows[("lrm", "LR")]["trials"] == 2
    assert all(len(r["seed_val_bpb"]) == 1 for r in rows.values())
    runs = sorted(p.name for p in (tmp_path / "abl" / "target").iterdir())
    assert "lrm-NONE" in runs and "mup-NONE" in runs and len(runs) <= 2 + 4  # winners = the one budget's points
    for pts in numbers["targets"].values():
        assert [p["target_width"] for p in pts] == [32]
