"""The analysis from hand-made records, with no training: best settings, LR curves, optimum spread, costs, the
transfer summary, the tuning verdict, the one log-log slope fit, the coordinate check's judge, and the records' JSON
round trips (with their schema and version refusals)."""
import json
import math
import re

import numpy as np
import pytest

from lrm_mup import analysis
from lrm_mup.errors import RecordError, TransferError
from lrm_mup.records import (
    LayerMultipliers,
    MultiplierValues,
    RecipeTransfer,
    SweepTrial,
    TransferRun,
    TransferSummary,
    TuningVerdict,
)

CAP = 8.0


def trial(recipe, width, log2_lr, val_bpb, *, seed=0, status="ok", state="COMPLETE", n=0, params=None, **cost):
    """A sweep trial as lrm_mup.tuning.sweep.records returns it."""
    return SweepTrial(study=f"s/{recipe}", trial=n, state=state, recipe=recipe, width=width, log2_lr=log2_lr,
                      val_bpb=val_bpb, train_loss=math.nan if status == "diverged" else 1.0, status=status,
                      tokens=cost.get("tokens", 100), flops=cost.get("flops", 1e6), seconds=cost.get("seconds", 2.0),
                      config={"recipe": recipe, "width": width, "lr": 2.0 ** log2_lr, "seed": seed}, seed=seed,
                      seeds=(seed,), params=params or {})


def grid():
    """Two recipes, widths 16 and 32, LRs 2^-8..2^-4, two seeds; mup's optimum stays at -6, sp's moves from -6 to
    -8; sp diverges at -4 on width 32 (capped, as a grid trial is) and one sp trial at width 16 was pruned."""
    losses = {
        ("mup", 16): {-8: 2.0, -6: 1.5, -4: 1.9},
        ("mup", 32): {-8: 1.9, -6: 1.4, -4: 1.8},
        ("sp", 16): {-8: 2.1, -6: 1.6, -4: 2.5},
        ("sp", 32): {-8: 1.5, -6: 1.7, -4: None},
    }
    out = []
    for (recipe, width), by_lr in losses.items():
        for lr, loss in by_lr.items():
            for seed in (0, 1):
                jitter = 0.01 * (seed - 0.5)
                if loss is None:
                    out.append(trial(recipe, width, lr, CAP, seed=seed, status="diverged", n=len(out)))
                else:
                    out.append(trial(recipe, width, lr, loss + jitter, seed=seed, n=len(out), tokens=width * 10,
                                     flops=width * 1e6, seconds=width / 8))
    out.append(trial("sp", 16, -2, None, status="pruned", state="PRUNED", n=len(out)))
    return out


# ----------------------------------------------------------------------------------------------------------
# sweep trials


def test_best_settings_pick_the_lowest_seed_mean_per_recipe_and_width():
    best = analysis.best_settings(grid())
    assert set(best) == {"mup", "sp"}  # sorted recipes, at each one's smallest width
    assert best["mup"].width == 16 and best["mup"].params == {"log2_lr": -6} and best["mup"].trials == 2
    assert best["mup"].val_bpb == pytest.approx(1.5)
    assert best["mup"].config == {"recipe": "mup", "width": 16, "lr": 2.0 ** -6, "seed": 0}  # the first trial's
    assert analysis.best_settings(grid(), 32)["sp"].params == {"log2_lr": -8}
    assert list(analysis.best_configs(grid(), recipes=["sp", "mup", "lrm"])) == ["sp", "mup"]  # no lrm trial


def test_a_capped_diverged_trial_never_ranks_above_a_converged_one_and_pruned_ones_not_at_all():
    trials = [trial("sp", 16, -6, 9.0, n=0), trial("sp", 16, 0, CAP, status="diverged", n=1),
              trial("sp", 16, 2, None, status="pruned", state="PRUNED", n=2)]
    best = analysis.best_settings(trials)["sp"]
    assert best.params == {"log2_lr": -6} and best.val_bpb == 9.0  # issue 14: status first, the cap is no loss
    nan_diverged = [trial("sp", 16, -6, 9.0, n=0), trial("sp", 16, 0, math.nan, status="diverged", n=1)]
    assert analysis.best_settings(nan_diverged)["sp"].params == {"log2_lr": -6}  # a NaN loss never wins


def test_diverged_grid_points_never_rank_above_converged_ones():
    """The issue-14 case: a diverged grid point scores the cap (8.0 bits/byte), which is below a converged run still
    at 8.018; ranking by status first, the converged point is best, and the LR curve's optimum agrees."""
    trials = [trial("mup", 16, -8, 8.018, seed=0, n=0), trial("mup", 16, -8, 8.02, seed=1, n=1),
              trial("mup", 16, 10, CAP, seed=0, status="diverged", n=2),
              trial("mup", 16, 10, CAP, seed=1, status="diverged", n=3),
              trial("mup", 16, 9, 7.9, seed=0, n=4), trial("mup", 16, 9, CAP, seed=1, status="diverged", n=5)]
    best = analysis.best_settings(trials)["mup"]
    assert best.params == {"log2_lr": -8} and best.val_bpb == pytest.approx(8.019) and best.trials == 2
    assert analysis.best_configs(trials)["mup"]["lr"] == 2.0 ** -8
    curve = analysis.lr_curves(trials)["mup"][16]
    assert curve.opt_log2_lr == -8 == best.params["log2_lr"] and curve.opt_val_bpb == pytest.approx(8.019)
    assert analysis.rank(trials[4:6]) > analysis.rank(trials[:2])  # one diverged seed is enough to rank below
    only_diverged = trials[2:4]
    assert analysis.best_settings(only_diverged) == {}  # nothing converged: no best setting to transfer
    assert analysis.lr_curves(only_diverged)["mup"][16].opt_log2_lr is None


def test_best_settings_group_seeds_by_every_search_parameter():
    trials = [trial("lrm", 16, -6, 1.0, params={"log2_mult_lr": -8}, seed=0, n=0),
              trial("lrm", 16, -6, 2.0, params={"log2_mult_lr": -6}, seed=0, n=1),
              trial("lrm", 16, -6, 1.2, params={"log2_mult_lr": -8}, seed=1, n=2),
              trial("lrm", 16, -6, 0.9, params={"log2_mult_lr": -6}, seed=1, n=3)]
    best = analysis.best_settings(trials)["lrm"]
    assert best.params == {"log2_lr": -6, "log2_mult_lr": -8} and best.val_bpb == pytest.approx(1.1)


def test_lr_curves_and_spread_say_mup_transfers_and_sp_does_not():
    curves = analysis.lr_curves(grid())
    c = curves["sp"][32]
    assert c.log2_lr == (-8, -6, -4) and c.seeds == (2, 2, 2)
    assert c.val_bpb[2] == math.inf and c.opt_log2_lr == -8 and c.opt_val_bpb == pytest.approx(1.5)
    assert curves["sp"][16].seeds == (2, 2, 2)  # the pruned trial is not a point of the curve
    spread = analysis.optimum_spread(curves)
    assert spread["mup"].spread == 0 and spread["mup"].transfers is True
    assert spread["sp"].spread == 2 and spread["sp"].transfers is False and spread["sp"].width_ratio == 2
    assert spread["sp"].opt_log2_lr == {16: -6, 32: -8}
    every_point_diverged = analysis.lr_curves([trial("sp", 16, 0, CAP, status="diverged")])
    assert every_point_diverged["sp"][16].opt_log2_lr is None


def test_costs_count_every_trial_and_the_proxy_part():
    costs = analysis.sweep_costs(grid())
    sp = costs["sp"]
    assert sp.proxy_width == 16 and sp.all.trials == 13 and sp.proxy.trials == 7  # pruned and diverged included
    assert sp.proxy.flops == pytest.approx(6 * 16e6 + 1e6) and sp.proxy.tokens == 6 * 160 + 100
    assert analysis.sweep_costs(grid(), {"sp": 32})["sp"].proxy.trials == 6


# ----------------------------------------------------------------------------------------------------------
# a transfer


def run(recipe, width, offset, val_bpb, status="ok", seed=0):
    lr = 2.0 ** (-6 + offset)
    return TransferRun(f"{recipe}-w{width}-lr{offset:+d}", recipe, width, offset, seed, "x", math.log2(lr), lr, status,
                       val_bpb, 1.0, 1000, 1e9, 3.0, f"runs/{recipe}-w{width}-lr{offset:+d}")


def test_recipe_summary_reads_the_gaps_off_the_direct_lr_sweep():
    cfg = {"width": 16, "lr": 2.0 ** -6}
    runs = [run("mup", 16, 0, 1.5), run("mup", 64, 0, 1.3), run("mup", 64, -1, 1.25), run("mup", 64, 1, 1.4)]
    s = analysis.recipe_summary(cfg, runs)
    assert s.target_width == 64 and s.target_val_bpb == 1.3 and s.val_bpb_by_width == {"16": 1.5, "64": 1.3}
    assert s.lr_sweep.offset == (-1, 0, 1) and s.lr_sweep.log2_lr == (-7, -6, -5)
    assert s.target_optimum_log2_lr == -7 and s.lr_gap_log2 == 1 and s.optimum_at_edge
    assert s.loss_gap_bpb == pytest.approx(0.05) and s.target_cost.runs == 1 and s.target_cost.flops == 1e9
    diverged = analysis.recipe_summary(cfg, [run("sp", 64, 0, None, "diverged"), run("sp", 64, 1, 1.4)])
    assert diverged.target_val_bpb is None and diverged.lr_gap_log2 == -1 and diverged.loss_gap_bpb is None


def test_tuning_verdict_ranks_at_the_target_and_falls_back_to_the_widest_sweep_width():
    curves = analysis.lr_curves(grid())
    spread = analysis.optimum_spread(curves)
    alone = analysis.tuning_verdict(curves, spread)
    assert alone.where == "widest sweep width" and alone.winner == "mup" and alone.target_width == 32
    assert alone.margin_bpb == pytest.approx(0.1) and alone.ranking == ("mup", "sp") and alone.seeds == 2
    assert alone.recipes["mup"].transfers is True and alone.recipes["sp"].transfers is None  # sp is not μP
    cfg = {"width": 16, "lr": 2.0 ** -6}
    target = {"mup": analysis.recipe_summary(cfg, [run("mup", 64, 0, 1.6), run("mup", 64, 1, 1.5)]),
              "sp": analysis.recipe_summary(cfg, [run("sp", 64, 0, 1.2), run("sp", 64, 1, 1.3)])}
    at_target = analysis.tuning_verdict(curves, spread, target)
    assert at_target.where == "target" and at_target.winner == "sp" and at_target.winner_val_bpb == 1.2
    assert at_target.recipes["mup"].lr_gap_log2 == -1 and at_target.seeds == 1
    nothing = analysis.tuning_verdict({}, {}, {"sp": analysis.recipe_summary(cfg, [run("sp", 64, 0, None,
                                                                                           "diverged")])})
    assert nothing.winner is None and nothing.ranking == ()


def test_tuning_numbers_are_strict_json_with_string_keys():
    numbers = analysis.tuning_numbers(grid())
    assert json.loads(json.dumps(numbers, allow_nan=False)) == numbers
    assert numbers["sweep"]["curves"]["sp"]["32"]["val_bpb"][2] is None  # inf: diverged
    assert numbers["sweep"]["statuses"] == {"ok": 22, "diverged": 2, "pruned": 1}
    assert numbers["verdict"]["winner"] == "mup" and numbers["transfer"] is None


# ----------------------------------------------------------------------------------------------------------
# the slope fit and the multipliers' width scaling


def test_the_slope_fit_recovers_a_power_law():
    widths = [64, 128, 256, 512]
    fit = analysis.loglog_fit(widths, [5 * w ** -1.5 for w in widths])
    assert fit.slope == pytest.approx(-1.5) and 2 ** fit.intercept == pytest.approx(5) and fit.r2 == pytest.approx(1)
    assert analysis.fit_exponent(widths, [None, 2.0, math.nan, 8.0]).slope == pytest.approx(2 / math.log2(4))
    assert analysis.fit_exponent(widths, [1.0, 0.0, -1.0, None]).slope is None  # one usable width
    assert analysis.slope(widths, [3.0] * 4) == 0
    assert math.isnan(analysis.slope(widths, [1.0, math.inf, 1.0, 1.0]))
    assert analysis.slope(widths, [1.0, 0.0, 1.0, 1.0]) == math.inf
    assert analysis.gmean([2.0, -8.0]) == pytest.approx(4.0) and math.isnan(analysis.gmean([]))


def values(width, readout):
    """A two-block lrm run whose readout's learned scalar is `readout` (query/key learned 1)."""
    layers = [LayerMultipliers("head", "readout", "linear", None, 1.0 / width, {"scale": readout}, readout,
                               readout / width)]
    for b in range(2):
        for role in ("query", "key"):
            layers.append(LayerMultipliers(f"blocks.{b}.attn.{role[0]}", role, "linear", b, width ** -0.5,
                                           {"scale": 1.0}, 1.0, width ** -0.5))
    return MultiplierValues(f"w{width}", width, "adamw", "scalar", tuple(layers))


def test_multiplier_scaling_fits_planted_values():
    scaling = analysis.multiplier_scaling([values(w, 0.5 * w ** -1) for w in (16, 32, 64)])
    head = scaling.quantities["readout"]
    assert head.slope_learned == pytest.approx(-1) and head.slope_fixed == pytest.approx(-1)
    assert head.slope_total == pytest.approx(-2) and head.predicted == -1.0
    qk = scaling.quantities["query×key"]
    assert qk.slope_fixed == pytest.approx(-1) and qk.slope_learned == pytest.approx(0) and qk.predicted == -2.0
    assert scaling.quantities["readout.scale"].predicted is None
    with pytest.raises(TransferError, match="≥ 2 widths"):
        analysis.multiplier_scaling([values(16, 1.0), values(16, 1.0)])
    with pytest.raises(TransferError, match="no lrm run"):
        analysis.multiplier_scaling([])


# ----------------------------------------------------------------------------------------------------------
# the coordinate check's judge


def slope_rows(recipe, module, by_step, expected=0.0):
    return [{"recipe": recipe, "module": module, "quantity": "act", "step": t, "slope": s, "expected": expected}
            for t, s in by_step.items()]


def test_the_judge_takes_the_worse_of_init_and_the_late_mean():
    rows = (slope_rows("mup", "flat", {0: 0.05, 1: 0.9, 2: 0.1, 3: -0.1})  # the transient at t=1 is not judged
            + slope_rows("mup", "drifts", {0: 0.0, 1: 0.0, 2: 0.3, 3: 0.3})
            + slope_rows("mup", "bad init", {0: 0.5, 1: 0.0, 2: 0.0, 3: 0.0})
            + slope_rows("mup", "declared", {0: -0.5, 1: 0.0, 2: -0.45, 3: -0.55}, expected=-0.5)
            + slope_rows("mup", "dead", {0: math.inf, 1: 0.0, 2: 0.0, 3: 0.0}))
    verdicts = {v.module: v for v in analysis.judge(rows, steps=3, last_steps=2, threshold=0.2)}
    assert verdicts["flat"].passed and verdicts["declared"].passed
    assert not verdicts["drifts"].passed and verdicts["drifts"].at == "t=2..3"
    assert verdicts["drifts"].slope == pytest.approx(0.3)
    assert not verdicts["bad init"].passed and verdicts["bad init"].at == "t=0"
    assert not verdicts["dead"].passed


def test_a_result_without_mup_readout_recipes_is_refused():
    with pytest.raises(ValueError, match="mup_readout"):
        analysis.CoordCheckResult({"recipes": ["mup"], "steps": 1, "last_steps": 1, "threshold": 0.2}, [])


# ----------------------------------------------------------------------------------------------------------
# records: JSON round trips, schema and version refusals


def test_records_round_trip_through_json(tmp_path):
    t = trial("lrm", 16, -6, 1.5, params={"log2_mult_lr": -8})
    back = SweepTrial.from_json(t.to_json())
    assert back == t
    assert back.row()["log2_mult_lr"] == -8 and back.param("log2_mult_lr") == -8
    cfg = {"width": 16, "lr": 2.0 ** -6}
    runs = (run("lrm", 16, 0, 1.5), run("lrm", 64, 0, 1.3), run("lrm", 64, 1, 1.4))
    summary = TransferSummary("dict", (1,), {"lrm": cfg}, {"lrm": analysis.recipe_summary(cfg, runs)}, runs,
                              analysis.multiplier_scaling([values(w, 1.0) for w in (16, 64)]), None, 12.5)
    summary.to_json(tmp_path / "transfer.json")
    assert TransferSummary.from_json(tmp_path / "transfer.json") == summary
    raw = json.loads((tmp_path / "transfer.json").read_text())
    assert raw["schema"] == "lrm_mup/transfer-summary" and raw["recipes"]["lrm"]["lr_gap_log2"] == 0
    verdict = analysis.tuning_verdict(analysis.lr_curves(grid()), analysis.optimum_spread(analysis.lr_curves(grid())))
    assert TuningVerdict.from_json(verdict.to_json()) == verdict
    v = analysis.judge(slope_rows("mup", "m", {0: 0.1}), 1, 1, 0.2)[0]
    assert analysis.Verdict.from_dict(v.to_dict()) == v


def test_records_of_another_schema_or_a_newer_version_are_refused():
    d = trial("sp", 16, -6, 1.5).to_dict()
    with pytest.raises(RecordError, match="is not 'lrm_mup/recipe-transfer'"):
        RecipeTransfer.from_dict(d)
    with pytest.raises(RecordError, match="version 2 is not supported"):
        SweepTrial.from_dict({**d, "version": 2})
    with pytest.raises(RecordError, match="unknown field 'wdith'"):
        SweepTrial.from_dict({**d, "wdith": 3})


# ----------------------------------------------------------------------------------------------------------
# the coordinate check's confidence bands (records built by hand: no training)

BAND_WIDTHS = (64, 128, 256)


def series_records(recipe, module, slope, noise, *, steps=range(4), seeds=(0, 1), quantity="act"):
    """value = width^slope × 2^(noise[seed][width index]) at every step: a series whose per-seed log2 values scatter
    by `noise` around a line of slope `slope`."""
    return [{"recipe": recipe, "width": w, "seed": s, "step": t, "module": module, "quantity": quantity,
             "value": w ** slope * 2.0 ** noise[i][j]}
            for i, s in enumerate(seeds) for j, w in enumerate(BAND_WIDTHS) for t in steps]


def band_result(records, recipes, seeds=2, threshold=0.2):
    config = {"widths": list(BAND_WIDTHS), "base_width": 64, "delta_width": 128, "recipes": recipes, "steps": 3,
              "seeds": seeds, "lr": 1e-2, "weight_decay": 0.0, "optimizer": "adamw", "corpus": "planted",
              "batch_size": 1, "context": 1, "fresh_batches": True, "threshold": threshold, "last_steps": 2,
              "head_dims": {}, "roles": {}, "mup_readout": recipes}
    return analysis.CoordCheckResult(config, records)


NOISE = [[0.03, -0.02, 0.01], [-0.01, 0.02, -0.03]]   # seed 0, seed 1 at widths 64, 128, 256


def test_t_quantiles_are_students():
    q = analysis.t_quantile
    assert [round(q(0.95, df), 3) for df in (1, 2, 3, 5, 8, 30)] == [12.706, 4.303, 3.182, 2.571, 2.306, 2.042]
    assert q(0.95, 10_000) == pytest.approx(1.960, abs=1e-3) and q(0.90, 3) == pytest.approx(2.353, abs=1e-3)
    for df in (1, 2, 7, 12):
        assert analysis.t_central(q(0.8, df), df) == pytest.approx(0.8, abs=1e-12)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        q(1.0, 3)


def test_the_band_is_the_pooled_fit_with_a_level_per_seed():
    """se of the common slope in z_sw = a_s + b·x_w + e_sw, checked against numpy's least squares with one
    intercept column per seed (float64)."""
    logs = [[6 * 0.1 + 0.03, 7 * 0.1 - 0.02, 8 * 0.1 + 0.01], [6 * 0.1 - 0.01 + 1, 7 * 0.1 + 0.02 + 1, 8 * 0.1 + 0.97]]
    band = analysis.slope_band(BAND_WIDTHS, logs)
    x = np.log2(np.array(BAND_WIDTHS, dtype=np.float64))
    design = np.array([[xi, s == 0, s == 1] for s in range(2) for xi in x], dtype=np.float64)
    y = np.array(logs, dtype=np.float64).ravel()
    coef, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    se = math.sqrt(rss[0] / (6 - 3) * np.linalg.inv(design.T @ design)[0, 0])
    assert band.df == 3 and band.seeds == 2
    assert band.sigma / math.sqrt(band.seeds * band.sxx) == pytest.approx(se, rel=1e-12)
    assert band.half_width(0.95) == pytest.approx(3.182446 * se, rel=1e-6)
    assert band.half_width(0.95, seeds=8) < band.half_width(0.95) / 2  # more seeds: more df and a smaller se
    assert analysis.slope_band(BAND_WIDTHS[:2], [[0.0, 0.1]]) is None  # no residual degree of freedom


def test_a_slope_on_the_threshold_is_inconclusive_not_pass_or_fail():
    on = band_result(series_records("mup", "on the limit", 0.2, NOISE), ["mup"])
    v = on.verdicts[0]
    assert v.slope == pytest.approx(0.2, abs=0.01) and v.low < 0.2 < v.high
    assert v.status == "inconclusive" and not v.passed and on.status("mup") == "INCONCLUSIVE"
    assert not on.passed("mup") and not on.failed("mup")
    assert v.seeds_needed is None or v.seeds_needed > 2  # on the limit itself: no seed count decides it
    exact = band_result(series_records("mup", "noiseless", 0.2, [[0.0] * 3] * 2), ["mup"])
    assert exact.verdicts[0].status == "inconclusive"  # a zero-width band sitting on the limit
    text = on.summary()
    assert re.search(r"^mup +INCONCLUSIVE +0/1 series pass, 1 inconclusive$", text, re.M), text
    assert "95% band [" in text and "rerun with more seeds (--seeds" in text


def test_the_band_decides_pass_fail_and_inconclusive_and_the_recipe_takes_the_worst():
    records = (series_records("mup", "flat", 0.0, NOISE) + series_records("mup", "near", 0.17, NOISE)
               + series_records("sp", "flat", 0.0, NOISE) + series_records("sp", "grows", 0.5, NOISE)
               + series_records("sp", "near", 0.17, NOISE) + series_records("lrm", "flat", 0.01, NOISE))
    result = band_result(records, ["mup", "sp", "lrm"])
    v = {(x.recipe, x.module): x for x in result.verdicts}
    assert v["mup", "flat"].status == "pass" and v["mup", "flat"].high < 0.2
    assert v["mup", "near"].status == "inconclusive" and v["mup", "near"].seeds_needed > 2
    assert v["sp", "grows"].status == "fail" and v["sp", "grows"].low > 0.2
    assert [result.status(r) for r in ("mup", "sp", "lrm")] == ["INCONCLUSIVE", "FAIL", "PASS"]
    assert [x.module for x in result.failures("sp")] == ["grows", "near"]  # failed before inconclusive
    # the same "near" series with 8 seeds of the same scatter: the band clears the limit
    many = [NOISE[i % 2] for i in range(8)]
    tight = band_result(series_records("mup", "near", 0.17, many, seeds=range(8)), ["mup"], seeds=8)
    assert tight.verdicts[0].status == "pass" and tight.verdicts[0].high < 0.2


def test_bands_appear_in_the_json_and_survive_a_round_trip(tmp_path):
    result = band_result(series_records("mup", "near", 0.17, NOISE), ["mup"])
    result.to_json(tmp_path / "cc.json")
    raw = json.loads((tmp_path / "cc.json").read_text())
    assert raw["recipes"] == {"mup": "INCONCLUSIVE"} and raw["config"]["level"] == 0.95
    (verdict,) = raw["verdicts"]
    assert verdict["status"] == "inconclusive" and verdict["low"] < 0.2 < verdict["high"]
    assert analysis.CoordCheckResult.from_json(tmp_path / "cc.json").verdicts == result.verdicts
    assert analysis.Verdict.from_dict(result.verdicts[0].to_dict()) == result.verdicts[0]
