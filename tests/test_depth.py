"""The depth rules (lrm_mup.core.depth): residual branches × (L_base/L)^α, with AdamW's per-block
LR × (L/L_base)^(α-1) and ε × (L_base/L)^α; identity at the base depth; the base depth carried by base shapes and
records; the coordinate check across depth; the LR grid across depth; bad input."""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

import lrm_mup
from benchmarks import bench_depth
from lrm_mup import cli
from lrm_mup.analysis import lr_curves, optimum_spread, slope, stream_correction
from lrm_mup.core import ModelParametrization, apply_parametrization, parametrization_of
from lrm_mup.core.depth import DEPTH_RULES
from lrm_mup.core.shapes import BaseShapes
from lrm_mup.data import load_corpus
from lrm_mup.errors import ConfigError, RecipeError, RoleError, SweepError, TransferError
from lrm_mup.models import GPT, GPTConfig
from lrm_mup.records import SweepTrial, TransferSummary
from lrm_mup.report import write_coord_check_report
from lrm_mup.training import TrainConfig, parametrized_model
from lrm_mup.tuning.coord_check import CoordCheckResult, depth_coord_check
from lrm_mup.tuning.sweep import load_sweep, parse_sweep
from lrm_mup.tuning.transfer import format_summary, plan_runs, run_transfer
from tests.claims import point_pass
from tests.foreign import GPT2Style
from tests.test_report import figures_in

RECIPES = ["sp", "lr-only", "lr-wd", "mup", "lrm"]
RULES = list(DEPTH_RULES)
BASE, DELTA, BASE_DEPTH = 32, 64, 2
ALPHA = {"none": 0.0, "sqrt": 0.5, "complete": 1.0}


def gpt(width, depth=BASE_DEPTH, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(width=width, depth=depth, context=16, head_dim=16)).to(dtype)


def shapes():
    return lrm_mup.base_shapes(gpt(BASE), gpt(DELTA))


def tokens(seed=1, shape=(3, 16)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def group_of(opt) -> dict[int, tuple[float, float, float]]:
    """id(parameter) -> (lr, weight decay, eps) of its optimizer group."""
    return {id(p): (g["lr"], g["weight_decay"], g["eps"]) for g in opt.param_groups for p in g["params"]}


def adam_losses(model, steps=3):
    x = tokens()
    opt = lrm_mup.build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.1)
    out = []
    for _ in range(steps):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_under_every_depth_rule_is_sp_at_base_depth_and_width(rule, recipe):
    x = tokens()
    sp = gpt(BASE)
    model = lrm_mup.parametrize(gpt(BASE), shapes(), recipe=recipe, depth_rule=rule)
    assert torch.equal(model(x), sp(x))
    plain = lrm_mup.parametrize(gpt(BASE), shapes(), recipe=recipe)  # no depth rule
    assert all(p.depth_mult == 1.0 and p.eps_scale == 1.0 for p in parametrization_of(model).layers.values())
    assert adam_losses(model) == adam_losses(plain)  # the same groups: the same training, bit for bit


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("recipe", ["mup", "lrm"])
def test_branch_multipliers_lr_and_eps_follow_the_rule(rule, recipe):
    depth, alpha = 8, ALPHA[rule]
    model = lrm_mup.parametrize(gpt(2 * BASE, depth), shapes(), recipe=recipe, depth_rule=rule)
    width_only = lrm_mup.parametrize(gpt(2 * BASE, depth), shapes(), recipe=recipe)
    rec, ref = parametrization_of(model), parametrization_of(width_only)
    assert (rec.depth, rec.base_depth, rec.depth_rule) == (depth, BASE_DEPTH, rule)
    branch = (BASE_DEPTH / depth) ** alpha
    block_lr = (depth / BASE_DEPTH) ** (alpha - 1) if rule != "none" else 1.0
    for name, p in rec.layers.items():
        q = ref.layers[name]
        in_block = name.startswith("blocks.")
        is_branch = name.endswith(("attn.o", "mlp.down"))
        assert p.depth_mult == (branch if is_branch else 1.0)
        assert p.fixed_mult == pytest.approx(q.fixed_mult * p.depth_mult, rel=1e-15)
        assert p.lr_scale == pytest.approx(q.lr_scale * (block_lr if in_block else 1.0), rel=1e-15)
        assert p.eps_scale == pytest.approx(branch if in_block else 1.0, rel=1e-15)
    eps = 1e-8
    opt = lrm_mup.build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1, eps=eps)
    groups = group_of(opt)
    ref_groups = group_of(lrm_mup.build_optimizer(width_only, "adamw", lr=1e-3, weight_decay=0.1, eps=eps))
    params = dict(model.named_parameters())
    for (name, p), q in zip(params.items(), width_only.parameters()):
        lr, wd, e = groups[id(p)]
        lr0, wd0, e0 = ref_groups[id(q)]
        in_block = name.startswith("blocks.")
        assert lr == pytest.approx(lr0 * (block_lr if in_block else 1.0), rel=1e-15)
        assert wd == wd0  # CompleteP: no depth factor on weight decay
        assert e == pytest.approx(e0 * (branch if in_block else 1.0), rel=1e-15)
    # a wrapper that renames the parameters (torch.compile's _orig_mod.) gets the same groups
    wrapped = group_of(lrm_mup.build_optimizer(torch.compile(model), "adamw", lr=1e-3, weight_decay=0.1, eps=eps))
    assert wrapped == groups


def test_the_rule_scales_each_branch_output_and_nothing_else():
    """The forward under "complete" is the plain model with every branch's output matrix × L_base/L."""
    depth, x = 6, tokens()
    model = lrm_mup.parametrize(gpt(BASE, depth), shapes(), recipe="sp", depth_rule="complete")
    plain = gpt(BASE, depth)
    with torch.no_grad():
        for block in plain.blocks:
            block.attn.o.weight.mul_(BASE_DEPTH / depth)
            block.mlp.down.weight.mul_(BASE_DEPTH / depth)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-13, atol=1e-13)


def test_base_depth_travels_in_base_shapes_and_records(tmp_path):
    base = shapes()
    assert base.depth == BASE_DEPTH
    base.save(tmp_path / "base.json")
    assert BaseShapes.load(tmp_path / "base.json").depth == BASE_DEPTH
    payload = json.loads((tmp_path / "base.json").read_text())
    del payload["depth"]  # a file saved before the depth was recorded: the depth comes from its block names
    (tmp_path / "old.json").write_text(json.dumps(payload))
    old = BaseShapes.load(tmp_path / "old.json")
    assert old.depth is None
    a = lrm_mup.parametrize(gpt(BASE, 4), old, recipe="mup", depth_rule="sqrt")
    b = lrm_mup.parametrize(gpt(BASE, 4), base, recipe="mup", depth_rule="sqrt")
    assert parametrization_of(a).layers == parametrization_of(b).layers
    assert parametrization_of(a).base_depth == BASE_DEPTH
    # the record rebuilds the same parametrization at its depth, and parametrizes another depth the same way
    rec = ModelParametrization.from_json(parametrization_of(b).to_json())
    assert rec == parametrization_of(b)
    apply_parametrization(gpt(BASE, 4), rec)
    deeper = lrm_mup.parametrize(gpt(BASE, 8), rec.base(), **rec.options())
    assert parametrization_of(deeper).layers["blocks.7.mlp.down"].depth_mult == (2 / 8) ** 0.5
    # a record saved before the depth rule existed loads as "none"
    d = json.loads(rec.to_json())
    for key in ("depth_rule", "depth_layout", "depth", "base_depth"):
        d.pop(key)
    assert ModelParametrization.from_dict(d).depth_rule == "none"


def test_describe_shows_the_branch_multiplier():
    model = lrm_mup.parametrize(gpt(BASE, 4), shapes(), recipe="lrm", depth_rule="complete")
    rows = {r["module"]: r for r in lrm_mup.describe(model)}
    assert rows["blocks.3.attn.o"]["depth_mult"] == 0.5 and rows["blocks.3.attn.q"]["depth_mult"] == 1.0
    assert rows["blocks.3.attn.q"]["eps_scale"] == 0.5 and rows["embed"]["eps_scale"] == 1.0


def test_train_config_builds_base_and_delta_at_the_base_depth():
    cfg = TrainConfig(recipe="mup", width=64, base_width=32, depth=8, base_depth=2, depth_rule="complete",
                      head_dim=16, context=16)
    rec = parametrization_of(parametrized_model(cfg, device="meta"))
    assert (rec.depth, rec.base_depth) == (8, 2)
    assert rec.layers["blocks.0.mlp.down"].depth_mult == 0.25
    assert rec.layers["blocks.0.mlp.down"].fixed_mult == pytest.approx(0.25 / 2, rel=1e-15)  # × μP's 1/m


def test_a_declared_layout_reaches_a_foreign_model_and_bad_layouts_fail_clearly():
    layout = {"blocks": "h", "branches": ["c_proj", "mlp_proj"]}
    base, delta = GPT2Style(32), GPT2Style(64)
    # GPT2Style has a residual stream like ours: under "none" its depth is just another model of the same family
    lrm_mup.parametrize(GPT2Style(32, depth=4), base, delta, "mup", depth_layout=layout)
    with pytest.raises(RoleError, match="has a bias"):  # its branches carry biases the rule cannot scale
        lrm_mup.parametrize(GPT2Style(32, depth=4), base, delta, "mup", depth_rule="complete", depth_layout=layout)
    with pytest.raises(RoleError, match="declare lrm_depth"):
        lrm_mup.parametrize(GPT2Style(32, depth=4), base, delta, "mup", depth_rule="sqrt")
    with pytest.raises(RoleError, match="no branch layer 'attn.out'"):
        lrm_mup.parametrize(gpt(BASE, 4), shapes(), "mup", depth_rule="sqrt",
                            depth_layout={"blocks": "blocks", "branches": ["attn.out"]})
    with pytest.raises(RoleError, match="depth layout"):
        lrm_mup.parametrize(gpt(BASE, 4), shapes(), "mup", depth_layout={"blocks": "blocks"})


def test_bad_depth_rules_fail_in_one_line(capsys):
    with pytest.raises(RecipeError, match="unknown depth rule 'bogus'; allowed: none, sqrt, complete"):
        lrm_mup.parametrize(gpt(BASE, 4), shapes(), "mup", depth_rule="bogus")
    with pytest.raises(RecipeError, match="derived for AdamW"):
        lrm_mup.parametrize(gpt(BASE, 4), shapes(), "mup", optimizer="muon", depth_rule="complete")
    with pytest.raises(ConfigError, match="depth_rule='bogus' is invalid: allowed: none, sqrt, complete"):
        TrainConfig(depth_rule="bogus")
    with pytest.raises(ConfigError, match="base_depth=0"):
        TrainConfig(base_depth=0)
    for argv in (["train", "--depth-rule", "bogus"], ["coord-check", "--depth-rule", "bogus"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "'bogus'" in err and "complete" in err
    assert cli.main(["describe", "--optimizer", "muon", "--depth-rule", "sqrt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "depth_rule" in err


# the coordinate check across depth ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slice_corpus():
    return load_corpus("tests/data/shakespeare", progress=False)


def _check(rule, corpus):
    build = lambda width, depth: GPT(GPTConfig(width=width, depth=depth, context=16, head_dim=16))  # noqa: E731
    with torch.random.fork_rng():
        return depth_coord_check(build, [2, 4, 8], width=32, base_depth=2, depth_rule=rule, recipes=("mup",),
                                 steps=6, seeds=2, context=16, batch_size=8, last_steps=3, corpus=corpus,
                                 fresh_batches=False, progress=False)  # one fixed batch, as these claims were measured



def _late_slope(result, module, quantity):
    rows = [r for r in result.slopes if (r["module"], r["quantity"]) == (module, quantity) and r["step"] >= 4]
    return sum(r["slope"] for r in rows) / len(rows)


def test_depth_coord_check_the_residual_stream_grows_without_a_rule_and_not_with_one(slice_corpus, one_thread):
    """Theory: without a rule, the stream leaving the last block grows like √L at init and its change under Adam
    grows with L; with α = 1/2 both stay put; with α = 1 neither grows (at depths 2..8 they shrink a little: the
    init's branch noise is ∝ L^(1/2-α) and vanishes with depth). Other series of "sqrt" are not claimed here: its
    branch outputs fall from L^-1/2 at init toward L^-1 as the (LR × L^-1/2) updates take over (README "Depth")."""
    none, sqrt, complete = (_check(rule, slice_corpus) for rule in ("none", "sqrt", "complete"))
    thr = none.config["threshold"]

    def off(result):  # the series outside the threshold by the point rule, or failed by their band
        return {(v.module, v.quantity) for v in result.verdicts if v.recipe == "mup" and not point_pass(v, thr)}

    failed = {(v.module, v.quantity) for v in none.verdicts if v.recipe == "mup" and v.status == "fail"}
    assert {("blocks.last", "act"), ("blocks.last", "dact")} <= failed
    assert _late_slope(none, "blocks.last", "dact") > 0.4 and _late_slope(none, "blocks.last", "act") > 0.4
    passed = {(v.module, v.quantity): point_pass(v, thr) for v in sqrt.verdicts if v.recipe == "mup"}
    assert passed[("blocks.last", "act")] and passed[("blocks.last", "dact")], sqrt.summary()
    assert abs(_late_slope(sqrt, "blocks.last", "dact")) < 0.2
    # under "complete" every series passes but the stream's level, which shrinks a little and never grows
    assert off(complete) <= {("blocks.last", "act"), ("blocks.last", "dact")}
    # ... and that shrinking is the finite-depth correction the rule prescribes, declared: judged against it, it passes
    stream = [v for v in complete.verdicts if v.module == "blocks.last"]
    assert len(stream) == 2 and all(v.status == "pass" and -0.3 < v.expected < -0.1 for v in stream), stream
    assert all(v.expected == 0 for v in none.verdicts + sqrt.verdicts if v.module == "blocks.last")
    assert _late_slope(complete, "blocks.last", "dact") < 0.05 and _late_slope(complete, "blocks.last", "act") < 0.05
    # the branch outputs carry the multiplier: slope -α against log2 depth, as declared
    branch = [v for v in complete.verdicts if v.module == "blocks.last.mlp.down" and v.quantity == "act"]
    assert branch and branch[0].expected == -1.0 and point_pass(branch[0], thr)


DEPTHS = (2, 4, 8)


def planted_depth(module, law, steps=range(4)):
    """Records of a check across depth: value law(depth) with a small seed-to-seed scatter."""
    return [{"recipe": "mup", "depth": d, "width": 32, "seed": s, "step": t, "module": module, "quantity": "act",
             "value": law(d) * (1 + 0.01 * (-1) ** (s + d // 2))} for d in DEPTHS for s in range(2) for t in steps]


def planted_depth_result(records, rule="complete"):
    config = {"axis": "depth", "depths": list(DEPTHS), "width": 32, "base_depth": 2, "depth_rule": rule,
              "depth_alpha": ALPHA[rule], "depth_lr_exponent": ALPHA[rule] - 1 if rule != "none" else 0.0,
              "blocks": "blocks", "branches": ["blocks.last.mlp.down"], "base_width": 32, "delta_width": 64,
              "recipes": ["mup"], "steps": 3, "seeds": 2, "lr": 1e-2, "weight_decay": 0.0, "optimizer": "adamw",
              "corpus": "planted", "batch_size": 1, "context": 1, "fresh_batches": False, "threshold": 0.2,
              "last_steps": 2, "head_dims": {}, "roles": {}}
    return CoordCheckResult(config, records)


def test_the_depth_check_has_the_width_checks_page_with_depth_on_the_x_axis(tmp_path):
    """One renderer: the same card, table and figures, depth on the x-axis, the depth rule's declared slopes."""
    records = (planted_depth("blocks.last", lambda d: 1.0) + planted_depth("blocks.last.mlp.down", lambda d: 1 / d)
               + planted_depth("grows", lambda d: d ** 0.5))
    paths = write_coord_check_report(planted_depth_result(records), tmp_path, plotlyjs="directory")
    assert paths["html"].name == "coord_check_depth.html" and paths["json"].name == "coord_check_depth.json"
    page = paths["html"].read_text(encoding="utf-8")
    card = page[page.index('<div class="card">'):page.index("<h2>Figures</h2>")]
    assert "mup FAIL (2/3 series)." in card and "act grows: slope +0.50" in card
    assert "Depths 2, 4, 8 (base 2, depth rule complete) at width 32" in card
    assert "against log2 depth" in card and "the depth rule prescribes" in card
    (fig,) = figures_in(page)
    assert fig["layout"]["xaxis"]["title"]["text"] == "depth"
    xaxis = fig["layout"]["xaxis"]
    assert xaxis["tickvals"] == [1.0, 2.0, 3.0] and xaxis["ticktext"] == ["2", "4", "8"]
    last = {t["name"]: t for t in fig["data"] if t["meta"]["step"] == 3}
    assert last["grows"]["line"]["dash"] == "dash" and last["blocks.last"]["line"]["dash"] == "solid"
    assert last["blocks.last.mlp.down"]["line"]["dash"] == "solid"  # judged against its declared -1
    assert "expected -1.00" in last["blocks.last.mlp.down"]["hovertemplate"]
    assert "<br>depth %{customdata[0]}" in last["grows"]["hovertemplate"]
    assert last["grows"]["x"] == [1.0, 2.0, 3.0]


def test_under_complete_the_stream_is_judged_against_its_finite_depth_correction_and_a_power_law_still_fails():
    """|x_L|² = e² + (s² − e²)·L_base/L at init (embedding e = 1, stream s² = 3 at L_base = 2: k = 2): the declared
    slope is that curve's over the depths; a stream on the curve passes, one shrinking as L^-1/2 (a wrong exponent)
    or growing as L^1/2 fails; under "sqrt" nothing is declared for the stream."""
    curve = lambda d: math.sqrt(1 + 2 * 2 / d)  # noqa: E731
    expected = slope(list(DEPTHS), [curve(d) for d in DEPTHS])
    assert expected == pytest.approx(-0.25, abs=1e-12)  # (log2 √3 − log2 √1.5) / log2(8/2): √2 in the middle
    embed = planted_depth("embed", lambda d: 1.0)
    for law, status in ((curve, "pass"), (lambda d: d ** -0.5 * 3, "fail"), (lambda d: d ** 0.5, "fail")):
        result = planted_depth_result(embed + planted_depth("blocks.last", lambda d, law=law: law(d) * 3 ** 0.5 /
                                                                       law(2)))
        result = CoordCheckResult({**result.config, "roles": {"embed": "embedding"}}, result.records)
        (v,) = [v for v in result.verdicts if v.module == "blocks.last"]
        assert v.expected == pytest.approx(expected, abs=1e-6) and v.status == status, (v, status)
        assert "residual stream at finite depth (act)" in result.summary()
    sqrt = planted_depth_result(embed + planted_depth("blocks.last", curve), rule="sqrt")
    assert stream_correction({**sqrt.config, "roles": {"embed": "embedding"}}, sqrt.records) is None


def test_coord_check_across_depth_writes_its_page_and_exits_like_the_width_check(tmp_path, capsys):
    argv = ["coord-check", "--depths", "2,4", "--width", "32", "--steps", "1", "--seeds", "1", "--recipes", "mup",
            "--data", SLICE, "--context", "16", "--threads", "1", "--quiet", "--out", str(tmp_path / "c")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'c' / 'coord_check_depth.html'}" in out
    assert "Plotly.newPlot" in (tmp_path / "c" / "coord_check_depth.html").read_text(encoding="utf-8")


# the LR grid across depth -------------------------------------------------------------------------------------


def test_the_depth_sweep_file_varies_depth_and_rule_as_grid_axes():
    spec = load_sweep("sweeps/depth_transfer.toml")
    assert spec.budget("mup") == 8 * 3 * 2  # log2 LR × depth × rule, one width and seed
    assert bench_depth.only_recipes(spec, ("mup", "lrm")).to_dict() == parse_sweep(
        {**tomllib.loads(open("sweeps/depth_transfer.toml", encoding="utf-8").read()),
         "recipes": ["mup", "lrm"]}, "sweeps/depth_transfer.toml").to_dict()  # what bench_depth.py runs
    cfg = spec.config("lrm", 32, 0, {"log2_lr": -5, "depth": 8, "depth_rule": "complete"})
    assert (cfg["depth"], cfg["depth_rule"], cfg["base_depth"], cfg["lr"]) == (8, "complete", 2, 2.0 ** -5)
    text = open("sweeps/depth_transfer.toml", encoding="utf-8").read()
    for good, bad in (("depth = [2, 4, 8]", "depth = [2, 0]"),
                      ('depth_rule = ["none", "complete"]', 'depth_rule = ["none", "bogus"]')):
        with pytest.raises(SweepError, match="has 0: values must be positive|has 'bogus': allowed: none, sqrt"):
            parse_sweep(tomllib.loads(text.replace(good, bad)), "bad.toml")


def test_lr_curves_across_depth_give_the_optimum_per_depth_and_rule():
    def trial(n, rule, depth, log2_lr, loss):
        return SweepTrial(study="s/mup", trial=n, state="COMPLETE", recipe="mup", width=32, log2_lr=log2_lr,
                          val_bpb=loss, train_loss=1.0, status="ok", config={"depth": depth, "depth_rule": rule})
    # "none": the optimum moves 2 in log2 from depth 2 to 8; "complete": it stays
    losses = {("none", 2): {-6: 3.0, -5: 2.0, -4: 2.5}, ("none", 8): {-8: 2.0, -7: 2.1, -6: 2.2, -5: 3.0},
              ("complete", 2): {-6: 3.0, -5: 2.0, -4: 2.5}, ("complete", 8): {-6: 2.4, -5: 1.9, -4: 2.0}}
    trials = [trial(i, rule, depth, x, v) for i, ((rule, depth), by_lr) in enumerate(losses.items())
              for x, v in by_lr.items()]
    curves = lr_curves(trials, axis="depth")
    assert set(curves) == {"mup depth-rule none", "mup depth-rule complete"}
    spread = optimum_spread(curves)
    assert spread["mup depth-rule none"].opt_log2_lr == {2: -5, 8: -8} and spread["mup depth-rule none"].spread == 3
    assert spread["mup depth-rule complete"].spread == 0


# transfer across depth ----------------------------------------------------------------------------------------

SLICE = "tests/data/shakespeare"
TINY_RUN = {"width": 32, "base_width": 32, "depth": 2, "head_dim": 16, "context": 16, "batch": 4, "steps": 3,
            "warmup": 0, "schedule": "constant", "eval_every": 100, "eval_batches": 1, "data": SLICE}


def builder(width):
    """A user's builder `pkg.module:build`: it takes the width alone, so a transfer cannot set its depth."""
    return GPT(GPTConfig(width=width, depth=2, context=16, head_dim=16))


def _names_of(model) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def test_transfer_to_a_deeper_target_trains_it_under_the_proxys_depth_rule(tmp_path, one_thread):
    """Proxy depth 2 under "sqrt" → target depth 4: the target's branches carry (2/4)^1/2 and its saved optimizer
    groups have every block parameter's LR × (4/2)^-1/2 and ε × (2/4)^1/2 against the same model without a rule,
    everything outside the blocks untouched; the records name both widths and depths."""
    best = {"mup": asdict(TrainConfig(recipe="mup", depth_rule="sqrt", lr=2.0 ** -6, **TINY_RUN))}
    summary = run_transfer(best, tmp_path, depths=[4], lr_offsets=[1], log=None)
    runs = {r.name: r for r in summary.runs}
    assert set(runs) == {"mup-w32-d2-lr+0", "mup-w32-d4-lr+0", "mup-w32-d4-lr+1"}
    assert [(runs[n].depth, runs[n].role) for n in sorted(runs)] == [(2, "proxy"), (4, "target"), (4, "lr-sweep")]
    s = summary.recipes["mup"]
    assert (s.proxy_width, s.proxy_depth, s.target_width, s.target_depth) == (32, 2, 32, 4)
    assert (s.depth_rule, s.base_depth, set(s.val_bpb_by_depth)) == ("sqrt", 2, {"2", "4"})
    assert TransferSummary.from_json(tmp_path / "transfer.json") == summary
    assert "proxy w32 d2 → target w32 d4 (depth rule sqrt, base depth 2)" in format_summary(summary)
    folder = tmp_path / "runs" / "mup-w32-d4-lr+0"
    cfg = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert (cfg.depth, cfg.base_depth, cfg.depth_rule, cfg.lr) == (4, 2, "sqrt", 2.0 ** -6)
    rec = parametrization_of(parametrized_model(cfg, device="meta"))
    assert rec.layers["blocks.3.mlp.down"].depth_mult == pytest.approx(0.5 ** 0.5, rel=1e-15)
    assert rec.layers["blocks.3.mlp.up"].depth_mult == 1.0
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    plain = parametrized_model(replace(cfg, depth_rule="none"), device="meta")
    names = _names_of(plain)
    ref = {names[id(p)]: (g["lr"], g["eps"]) for g in lrm_mup.build_optimizer(plain, "adamw", cfg.lr, 0.1)
           .param_groups for p in g["params"]}
    seen = set()
    for g in saved:
        for name in g["params"]:
            in_block = name.startswith("blocks.")
            lr0, eps0 = ref[name]
            assert g["initial_lr"] == pytest.approx(lr0 * (2.0 ** -0.5 if in_block else 1.0), rel=1e-12), name
            assert g["eps"] == pytest.approx(eps0 * (0.5 ** 0.5 if in_block else 1.0), rel=1e-12), name
            seen.add(name)
    assert seen == set(ref)
    proxy = torch.load(tmp_path / "runs" / "mup-w32-d2-lr+0" / "checkpoint.pt", weights_only=True)["optimizer"]
    assert json.loads((tmp_path / "runs" / "mup-w32-d2-lr+0" / "config.json").read_text())["base_depth"] == 2
    assert {g["initial_lr"] for g in proxy["param_groups"]} <= {lr for lr, _ in ref.values()}  # factors 1 at L_base


def test_bad_depth_transfers_fail_in_one_line_before_anything_trains(tmp_path, capsys):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"mup": asdict(TrainConfig(recipe="mup", depth_rule="complete", **TINY_RUN))}))
    for depths, needle in (("0,4", "target depths [0, 4] are invalid"),):
        assert cli.main(["transfer", str(best), "--depths", depths, "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err
    mine = {**asdict(TrainConfig(recipe="mup", **TINY_RUN)), "model": "tests.test_depth:builder"}
    with pytest.raises(TransferError, match="built from the width alone"):
        plan_runs({"mup": mine}, depths=[4])
    plan_runs({"mup": mine}, depths=[2])  # its own depth: nothing to set
    llama = {**asdict(TrainConfig(recipe="mup", **TINY_RUN)), "model": "hf:llama", "depth_rule": "sqrt"}
    with pytest.raises(TransferError, match=r"depth \d: depth rule 'sqrt' needs the model's residual branches"):
        plan_runs({"mup": llama}, depths=[4])  # a model without a depth layout: refused before anything trains
    assert not (tmp_path / "t").exists()
