"""The options issue 12's measurements added or set: μP's zero readout / zero query init (`parametrize(zero_init=...)`,
`TrainConfig.zero_init`, `--zero-init`), the "no-embedding" placement, and the multipliers' default LR (the AdamW LR
/ 4, `core.optim.MULT_LR_RATIO`, chosen from the mult_lr grid in benchmarks/RESULTS.md)."""
import math

import pytest
import torch

import lrm_mup
from lrm_mup.cli import build_parser
from lrm_mup.core import apply_parametrization, parametrization_of
from lrm_mup.core.multipliers import multiplied_modules
from lrm_mup.core.optim import MULT_LR_RATIO
from lrm_mup.core.recipes import PLACEMENTS
from lrm_mup.errors import ConfigError, RecipeError
from lrm_mup.training.build import parametrized_model
from lrm_mup.training.config import TrainConfig
from tests.test_core import BASE, RECIPES, gpt, loss_of, make, tokens

ZERO = ["readout", "query"]


def weights_of(model, role):
    return [m.weight for _, m in multiplied_modules(model) if m.parametrization.role == role]


@pytest.mark.parametrize("recipe", RECIPES)
def test_zero_readout_predicts_uniformly_at_every_width(recipe):
    x = tokens()
    for width in (BASE, 4 * BASE):
        model = make("gpt", recipe, width, zero_init=["readout"])
        logits = model(x)
        assert torch.equal(logits, torch.zeros_like(logits))
        assert loss_of(model, x).item() == pytest.approx(math.log(logits.shape[-1]), rel=1e-12)


def test_with_zero_init_lrm_is_mup_and_every_recipe_is_one_model_at_base_width():
    x = tokens()
    # the readout zero would make every output 0; only the query is zeroed here, so the outputs differ from zero
    wide = {r: make("gpt", r, 4 * BASE, zero_init=["query"]) for r in ("mup", "lrm")}
    assert torch.equal(wide["lrm"](x), wide["mup"](x))
    base = {r: make("gpt", r, BASE, zero_init=["query"]) for r in RECIPES}
    out = base["sp"](x)
    assert out.abs().max() > 0
    for recipe, model in base.items():
        assert torch.equal(model(x), out), recipe
    # zero init is a different init by definition: not the model's own SP at the base width
    assert not torch.equal(out, make("gpt", "sp", BASE)(x))


@pytest.mark.parametrize("recipe", ["mup", "lrm"])
def test_zeroed_readout_and_query_move_after_one_step(recipe):
    model = make("gpt", recipe, 2 * BASE, zero_init=ZERO)
    for role in ZERO:
        assert all(torch.count_nonzero(w) == 0 for w in weights_of(model, role)), role
    opt = lrm_mup.build_optimizer(model, "adamw", 1e-3, 0.0)
    x = tokens()
    for _ in range(2):  # step 1 moves the readout; with a nonzero readout, step 2 reaches the query
        opt.zero_grad()
        loss_of(model, x).backward()
        opt.step()
    for role in ZERO:
        assert all(torch.count_nonzero(w) == w.numel() for w in weights_of(model, role)), role


def test_zero_init_is_recorded_and_rebuilt():
    model = make("gpt", "lrm", 2 * BASE, zero_init=["query", "readout"])
    record = parametrization_of(model)
    assert record.zero_init == ("readout", "query")  # the table's order, whatever order was given
    assert type(record).from_json(record.to_json()) == record
    rebuilt = apply_parametrization(gpt(2 * BASE), record)
    assert all(torch.count_nonzero(w) == 0 for w in weights_of(rebuilt, "readout"))
    assert parametrization_of(make("gpt", "lrm", 2 * BASE)).zero_init == ()


def test_train_config_and_cli_carry_zero_init():
    cfg = TrainConfig(recipe="mup", width=64, base_width=32, depth=1, context=16, zero_init=["query", "readout"])
    assert cfg.zero_init == ["readout", "query"]
    model = parametrized_model(cfg)
    assert all(torch.count_nonzero(w) == 0 for w in weights_of(model, "readout") + weights_of(model, "query"))
    assert TrainConfig().zero_init == []
    args = build_parser().parse_args(["train", "--zero-init", "readout,query"])
    assert args.zero_init == ["readout", "query"]


def test_bad_zero_init_fails_in_one_line():
    with pytest.raises(RecipeError, match="'key' is not allowed; allowed: readout, query"):
        make("gpt", "mup", BASE, zero_init=["key"])
    with pytest.raises(RecipeError, match="must be a list"):
        make("gpt", "mup", BASE, zero_init="readout")
    with pytest.raises(ConfigError, match="'embedding' is not allowed") as err:
        TrainConfig(zero_init=["embedding"])
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="tied"):  # GPT-2's readout is the embedding's weight
        make("gpt2", "mup", BASE, zero_init=["readout"])


def test_no_embedding_placement_is_all_without_the_input_multipliers():
    x = tokens()
    model = make("gpt", "lrm", 2 * BASE, placement="no-embedding")
    every = make("gpt", "lrm", 2 * BASE, placement="all")
    got = {n: m.parametrization.learned for n, m in multiplied_modules(model)}
    want = {n: m.parametrization.learned for n, m in multiplied_modules(every)}
    for name, learned in want.items():
        kind = dict(multiplied_modules(every))[name].parametrization.kind
        assert got[name] == (() if kind == "input" else learned), name
    assert any(want[n] for n in want if dict(multiplied_modules(every))[n].parametrization.kind == "input")
    assert torch.equal(model(x), make("gpt", "mup", 2 * BASE)(x))  # at init lrm is mup, whatever the placement
    assert set(PLACEMENTS) == {"all", "symmetry-free", "scalar", "no-embedding"}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_multipliers_default_lr_is_a_quarter_of_the_adamw_lr(optimizer):
    model = make("gpt", "lrm", 2 * BASE, optimizer=optimizer)
    adam_lr = 3e-3 if optimizer == "adamw" else 1e-3

    def multiplier_lrs(**kw):
        opt = lrm_mup.build_optimizer(model, optimizer, lr=3e-3, weight_decay=0.1, **kw)
        return sorted({g["lr"] for g in opt.param_groups if g["name"].startswith("adamw/multiplier")})

    assert MULT_LR_RATIO == 0.25
    given = {"adam_lr": 1e-3} if optimizer == "muon" else {}
    assert multiplier_lrs(**given) == [pytest.approx(adam_lr / 4, rel=1e-15)]  # follows the AdamW LR, not Muon's
    assert multiplier_lrs(**given, mult_lr=7e-4) == [pytest.approx(7e-4, rel=1e-15)]  # an explicit LR is kept
    assert TrainConfig().mult_lr is None  # a run's config stores "the default", which follows its LR under transfer
