"""Adam's ε across width (issue 13 item 3): ε is set in lr-only's gradient units, so mup (whose stored hidden
gradients are 1/m of lr-only's) takes lr-only's Adam steps even where ε is as large as the gradients."""
import pytest
import torch

import lrm_mup
from lrm_mup.core.multipliers import multiplied_modules
from tests.test_core import BASE, loss_of, make, tokens

WIDTH = 4 * BASE  # m = 4


def _steps(model, eps, *, fixed=False, steps=3):
    """Adam steps without WD, in float64. `fixed`: one ε for every group, as before the rule (the control)."""
    opt = lrm_mup.build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.0, eps=eps)
    if fixed:
        for g in opt.param_groups:
            g["eps"] = eps
    x = tokens()
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, x).backward()
        opt.step()
    return model(x)


def _hidden_grad_scale(recipe):
    """The median |gradient| of the hidden matrices at init (stored units)."""
    model = make("gpt", recipe, WIDTH)
    loss_of(model, tokens()).backward()
    grads = torch.cat([m.weight.grad.abs().flatten() for _, m in multiplied_modules(model)
                       if m.parametrization.kind == "hidden"])
    return grads.median().item()


def test_each_adamw_group_gets_eps_over_its_grad_unit():
    opt = lrm_mup.build_optimizer(make("gpt", "mup", WIDTH), "adamw", eps=1e-6)
    eps = {g["name"]: g["eps"] for g in opt.param_groups}
    assert eps["adamw/hidden"] == pytest.approx(1e-6 / 4, rel=1e-15)
    assert eps["adamw/input"] == eps["adamw/readout"] == eps["adamw/vector"] == 1e-6


@pytest.mark.parametrize("recipe", ["mup", "lrm"])
def test_mup_equals_lr_only_when_eps_is_as_large_as_the_gradients(recipe):
    """ε = lr-only's median hidden gradient: ε removes about half of each update. With ε per group, mup (and lrm,
    multipliers at 1 and untrained here: their group's lr is the same) still equal lr-only to float64 precision;
    with one fixed ε mup's hidden ε weighs 4× more and the models part."""
    eps = _hidden_grad_scale("lr-only")
    assert _hidden_grad_scale("mup") == pytest.approx(eps / 4, rel=1e-9)  # stored gradients are 1/m of lr-only's
    ref = _steps(make("gpt", "lr-only", WIDTH), eps)
    model = make("gpt", recipe, WIDTH)
    if recipe == "lrm":
        for _, p in lrm_mup.multiplier_parameters(model):
            p.requires_grad_(False)
    torch.testing.assert_close(_steps(model, eps), ref, rtol=1e-9, atol=1e-9)
    assert (_steps(make("gpt", "mup", WIDTH), eps, fixed=True) - ref).abs().max() > 1e-4
