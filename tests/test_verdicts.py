"""Coordinate-check verdicts with their uncertainty, end to end: a clearly failing recipe (sp) fails on every seed
set tried, and the CLI's exit status follows the verdict (--strict: 1 on FAIL only; --strict-inconclusive: 3 on
INCONCLUSIVE). The band maths and the pass / inconclusive / fail rules are tested torch-free on hand-made records
in tests/test_analysis.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrm_mup._commands import coord_check_exit
from lrm_mup.data import load_corpus
from lrm_mup.models import GPT, GPTConfig
from lrm_mup.report import write_coord_check_report
from lrm_mup.tuning.coord_check import CoordCheckResult, coord_check
from tests.test_analysis import NOISE, band_result, series_records
from tests.test_coord_check import plotly_figures

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY_CLI = ["coord-check", "--widths", "32,64,128", "--base-width", "32", "--delta-width", "64", "--steps", "3",
            "--seeds", "2", "--context", "16", "--data", SLICE, "--threads", "1", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(width):
    return GPT(GPTConfig(width=width, depth=1, head_dim=16, context=16))


def test_sp_fails_on_every_seed_set_tried():
    corpus = load_corpus(SLICE, progress=False)
    seen = []
    for seed_base in (0, 2, 4):
        result = coord_check(tiny, (32, 64, 128), base_width=32, delta_width=64, recipes=("sp",), steps=4, seeds=2,
                             seed_base=seed_base, last_steps=2, corpus=corpus, batch_size=4, context=16,
                             progress=False)
        assert {r["seed"] for r in result.records} == {seed_base, seed_base + 1}
        assert result.status("sp") == "FAIL", result.summary()
        worst = result.failures("sp")[0]
        assert worst.status == "fail" and worst.low > worst.expected + result.config["threshold"]
        seen.append(worst.slope)
    assert len(set(seen)) == 3  # three independent seed sets, not one measured three times


def test_the_exit_status_follows_the_verdict():
    fail = band_result(series_records("sp", "grows", 0.5, NOISE), ["sp"])
    undecided = band_result(series_records("mup", "near", 0.17, NOISE), ["mup"])
    passing = band_result(series_records("mup", "flat", 0.0, NOISE), ["mup"])
    both = band_result(series_records("sp", "grows", 0.5, NOISE) + series_records("mup", "near", 0.17, NOISE),
                       ["sp", "mup"])
    assert [r.status(r.config["recipes"][0]) for r in (fail, undecided, passing)] == ["FAIL", "INCONCLUSIVE", "PASS"]
    for result, plain, strict, strict_inconclusive in ((fail, 0, 1, 1), (undecided, 0, 0, 3), (passing, 0, 0, 0),
                                                       (both, 0, 1, 1)):
        assert coord_check_exit(result, strict=False, strict_inconclusive=False) == plain
        assert coord_check_exit(result, strict=True, strict_inconclusive=False) == strict
        assert coord_check_exit(result, strict=False, strict_inconclusive=True) == strict_inconclusive


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lrm_mup", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_the_cli_exits_1_for_sp_under_strict_on_any_seed_base(tmp_path):
    strict = cli(*TINY_CLI, "--recipes", "sp", "--strict", "--seed-base", "5", "--out", "a", cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr
    assert "sp       FAIL" in strict.stdout and "95% band [" in strict.stdout
    saved = CoordCheckResult.from_json(tmp_path / "a" / "coord_check.json")
    assert saved.status("sp") == "FAIL" and saved.config["seed_base"] == 5
    assert {r["seed"] for r in saved.records} == {5, 6}


@pytest.mark.parametrize("flag, value, named", [("--seed-base", "-1", "--seed-base -1"),
                                                 ("--confidence", "1.5", "--confidence 1.5")])
def test_bad_verdict_options_are_one_line_and_exit_2(tmp_path, flag, value, named):
    bad = cli(*TINY_CLI, "--recipes", "sp", flag, value, "--out", "c", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and named in bad.stderr
    assert not (tmp_path / "c").exists()


def test_the_help_documents_the_strict_exit_status():
    text = cli("coord-check", "--help", cwd=REPO).stdout
    assert "--strict-inconclusive" in text and "INCONCLUSIVE" in text and "exit status" in text


def test_the_page_shows_each_band_and_the_inconclusive_verdict(tmp_path):
    result = band_result(series_records("mup", "near", 0.17, NOISE) + series_records("mup", "flat", 0.0, NOISE)
                         + series_records("sp", "grows", 0.5, NOISE), ["mup", "sp"])
    page = write_coord_check_report(result, tmp_path, plotlyjs="directory")["html"].read_text(encoding="utf-8")
    card = page[page.index('<div class="card">'):page.index("<h2>Series that do not pass</h2>")]
    assert "mup INCONCLUSIVE (1/2 series); sp FAIL (0/1 series)." in card
    near = result.failures("mup")[0]
    table = page[page.index("<h2>Series that do not pass</h2>"):page.index("<h2>Figures</h2>")]
    assert f"[{near.low:+.2f}, {near.high:+.2f}]" in table and "inconclusive" in table
    assert f"about {near.seeds_needed} seeds" in table
    hovers = [t["hovertemplate"] for fig in plotly_figures(page) for t in fig if t["name"] == "near"]
    assert hovers and all(f"verdict: slope {near.slope:+.2f}" in h and "95% band [" in h for h in hovers)
    assert {t["line"]["dash"] for fig in plotly_figures(page) for t in fig if t["name"] == "near"} == {"dot"}
