"""The hybrid's SSM fields (models.hybrid.SSM_FIELDS) where a model is chosen by name: `--ssm-NAME` flags of train,
describe and coord-check (cli.add_ssm_args), TrainConfig.ssm, a sweep file's [model.ssm] table; refused in one line
for a model without an SSM."""

import json
import os
import subprocess
import sys

import pytest

from lrm_mup import _commands
from lrm_mup.cli import build_parser
from lrm_mup.errors import ConfigError, SweepError
from lrm_mup.models.hybrid import SSM_FIELDS, ssm_fields
from lrm_mup.training import TrainConfig
from lrm_mup.tuning.sweep import load_sweep

SMALL = ["--width", "64", "--base-width", "32", "--depth", "1", "--head-dim", "16", "--context", "16"]
FLAGS = ["--ssm-heads", "2", "--ssm-expand", "1.5", "--ssm-state", "4", "--ssm-conv", "3", "--ssm-chunk", "8",
         "--ssm-norm"]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lrm_mup", *args], capture_output=True, text=True, env=env)


def test_every_ssm_field_has_a_flag_in_every_command_that_builds_a_model():
    parser = build_parser()
    for command in ("train", "describe", "coord-check"):
        sub = parser._subparsers._group_actions[0].choices[command]
        dests = {a.dest[4:] for a in sub._actions if a.dest.startswith("ssm.")}
        assert dests == set(SSM_FIELDS), command


def test_flags_reach_the_train_config_and_the_built_mixer():
    args = build_parser().parse_args(["train", "--model", "hybrid", *SMALL, *FLAGS])
    cfg = _commands.train_config(args)
    assert cfg.ssm == {"heads": 2, "expand": 1.5, "state": 4, "conv": 3, "chunk": 8, "norm": True}
    c = cfg.build(64).config
    assert (c.ssm_heads, c.ssm_head_dim, c.ssm_expand, c.ssm_state, c.ssm_conv, c.ssm_chunk, c.ssm_norm) == \
        (2, None, 1.5, 4, 3, 8, True)
    assert cfg.build(128).blocks[0].ssm.head_dim == 96  # fixed heads: width grows by SSM head dim (1.5 · 128 / 2)
    plain = _commands.train_config(build_parser().parse_args(["train", "--model", "hybrid", *SMALL]))
    assert plain.ssm == {} and plain.build(64).config.ssm_head_dim == 32  # no flag: HybridConfig's defaults
    assert TrainConfig.from_dict(json.loads(json.dumps(vars(cfg)))) == cfg  # the run record round-trips


def test_ssm_fields_for_a_model_without_an_ssm_are_a_one_line_error():
    for model in ("proxy", "hf:llama"):
        with pytest.raises(ConfigError, match=rf"--ssm-state \(ssm.state\) is a field of model 'hybrid'; model "
                                              rf"'{model}' has no SSM"):
            TrainConfig(model=model, width=64, ssm={"state": 8})
    with pytest.raises(ConfigError, match="ssm field 'heads_dim' is unknown; allowed: heads, head_dim"):
        TrainConfig(model="hybrid", width=64, ssm={"heads_dim": 8})
    with pytest.raises(ConfigError, match="ssm_heads=3 is invalid: must be a positive int dividing d_ssm"):
        TrainConfig(model="hybrid", width=64, ssm={"heads": 3})
    with pytest.raises(ConfigError, match="set exactly one of ssm_heads / ssm_head_dim"):
        TrainConfig(model="hybrid", width=64, ssm={"heads": 2, "head_dim": 32})
    assert ssm_fields("hybrid", {"heads": 2}) == {"ssm_heads": 2, "ssm_head_dim": None}


def test_describe_takes_the_flags_and_the_cli_refuses_them_for_the_proxy_in_one_line(capsys):
    args = build_parser().parse_args(["describe", "--model", "hybrid", "--recipe", "lrm", *SMALL, *FLAGS])
    assert _commands.cmd_describe(args) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if ".ssm." in line}
    assert rows["blocks.0.ssm.dt_proj"] == "ssm_dt_readout" and rows["blocks.0.ssm.out_proj"] == "ssm_out_normed"
    bad = cli("describe", "--model", "proxy", "--ssm-state", "8", *SMALL)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["lrm-mup describe: error: --ssm-state (ssm.state) is a field of model "
                                               "'hybrid'; model 'proxy' has no SSM"]


def test_coord_check_builds_the_hybrid_with_the_flags(tmp_path):
    common = ["coord-check", "--widths", "32,64", "--base-width", "32", "--delta-width", "64", "--steps", "1",
              "--seeds", "1", "--recipes", "mup", "--context", "16", "--threads", "1", "--quiet"]
    args = build_parser().parse_args([*common, "--model", "hybrid", "--ssm-heads", "2", "--ssm-state", "4",
                                      "--ssm-chunk", "8", "--out", str(tmp_path / "cc")])
    assert _commands.cmd_coord_check(args) == 0
    roles = json.loads((tmp_path / "cc" / "coord_check.json").read_text())["config"]["roles"]
    assert roles["blocks.0.ssm.dt_proj"] == "ssm_dt_readout"  # --ssm-heads: a fixed number of SSM heads
    args = build_parser().parse_args([*common, "--ssm-state", "4", "--out", str(tmp_path / "proxy")])
    with pytest.raises(ConfigError, match="model 'proxy' has no SSM"):
        _commands.cmd_coord_check(args)


def test_a_sweep_file_s_model_ssm_table_reaches_every_trial(tmp_path):
    text = ('name = "s"\nrecipes = ["mup"]\nwidths = [32, 64]\nseeds = [0]\nsteps = 2\n\n[model]\nname = "{}"\n'
            'depth = 1\nhead_dim = 16\ncontext = 16\nbase_width = 32\n\n[model.ssm]\nheads = 2\nstate = 4\n'
            'norm = true\n\n[search]\nlog2_lr = [-8]\n\n[sampler]\ntype = "grid"\n')
    (tmp_path / "h.toml").write_text(text.format("hybrid"))
    spec = load_sweep(tmp_path / "h.toml")
    cfg = TrainConfig(**spec.config("mup", 64, 0, {"log2_lr": -8}))
    assert cfg.ssm == {"heads": 2, "state": 4, "norm": True} and cfg.build(64).config.ssm_heads == 2
    (tmp_path / "p.toml").write_text(text.format("proxy"))
    with pytest.raises(SweepError, match="model 'proxy' has no SSM"):
        load_sweep(tmp_path / "p.toml")
