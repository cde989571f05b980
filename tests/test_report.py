"""The tuning report from a real (tiny) LR-transfer sweep and a real transfer on the committed corpus slice: offline
HTML, the expected figures and traces, the verdict, and JSON numbers that match the sweep's records."""
import json
import re
import shutil

import pytest

from lrm_mup.cli import main
from lrm_mup.pipelines.tuning_report import tuning_report
from lrm_mup.tuning import sweep
from lrm_mup.tuning.transfer import run_transfer

SLICE = "tests/data/shakespeare"
SPEC = f"""
name = "tiny"
recipes = ["sp", "lrm"]
widths = [16, 32]
seeds = [0]
steps = 10

[model]
base_width = 16
depth = 1
head_dim = 8
context = 32
batch = 4
eval_batches = 2
data = "{SLICE}"

[search]
log2_lr = [-8, -6, -4]

[sampler]
type = "grid"
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    (root / "tiny.toml").write_text(SPEC)
    spec = sweep.load_sweep(root / "tiny.toml")
    sweep.run_sweep(spec, root / "sweep", progress=False)
    run_transfer(root / "sweep", root / "transfer", widths=[64], lr_offsets=[-1, 1], log=None)
    path = tuning_report(root / "sweep", root / "transfer", root / "report")
    return root, path, sweep.records(root / "sweep", spec)


def figures_in(page: str) -> list[dict]:
    """Every figure embedded in the page: Plotly.newPlot("id", data, layout, config) parsed as JSON."""
    decoder = json.JSONDecoder()
    out = []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, m.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        out.append({"data": data, "layout": layout})
    return out


def test_report_is_offline_and_has_every_figure(report):
    root, path, records = report
    assert path == root / "report" / "index.html"
    page = path.read_text()
    sources = re.findall(r'<script[^>]*\bsrc=["\']([^"\']*)', page)
    assert sources == []  # no script from anywhere, let alone a CDN
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js is inside the page
    figs = {f["layout"]["meta"]["figure"]: f for f in figures_in(page)}
    assert {"lr_curves", "optimum_vs_width", "target_loss", "cost", "multipliers"} <= set(figs)
    for recipe in ("sp", "lrm"):
        assert f"optuna_history:tiny/{recipe}" in figs and f"optuna_slice:tiny/{recipe}" in figs
        assert f"optuna_importances:tiny/{recipe}" in figs or f"tiny/{recipe}: parameter importances skipped" in page
    # one line per (recipe, width), an optimum star each, the target's direct sweep dashed
    lines = {(t["meta"]["recipe"], t["meta"]["width"], t["meta"]["kind"]) for t in figs["lr_curves"]["data"]}
    for recipe in ("sp", "lrm"):
        assert {(recipe, 16, "sweep"), (recipe, 32, "sweep"), (recipe, 64, "target")} <= lines
        assert {(recipe, 16, "optimum"), (recipe, 32, "optimum")} <= lines
    sweep_lr = [t for t in figs["lr_curves"]["data"] if t["meta"] == {"recipe": "lrm", "width": 32, "kind": "sweep"}]
    mine = sorted((r.log2_lr, r.val_bpb) for r in records if r.recipe == "lrm" and r.width == 32)
    assert list(sweep_lr[0]["x"]) == [lr for lr, _ in mine]
    assert list(sweep_lr[0]["y"]) == pytest.approx([bpb for _, bpb in mine])
    kinds = {t["meta"]["kind"] for t in figs["multipliers"]["data"]}
    assert kinds == {"total", "learned"}
    qk = [t for t in figs["multipliers"]["data"] if t["meta"].get("quantity") == "query×key" and
          t["meta"]["kind"] == "total"]
    assert qk and qk[0]["meta"]["predicted"] == -2


def test_verdict_and_json_numbers_match_the_records(report):
    root, path, records = report
    numbers = json.loads((root / "report" / "tuning.json").read_text())
    transfer = json.loads((root / "transfer" / "transfer.json").read_text())
    page = path.read_text()
    v = numbers["verdict"]
    target = {r: s["target_val_bpb"] for r, s in transfer["recipes"].items()}
    winner = min(target, key=target.get)
    assert v["winner"] == winner and v["target_width"] == 64
    assert v["margin_bpb"] == pytest.approx(max(target.values()) - min(target.values()))
    assert f"Winner at width 64 (target): {winner}" in page
    assert ("LR transferred" in page) or ("LR did NOT transfer" in page)
    for recipe in ("sp", "lrm"):
        for width in (16, 32):
            mine = {r.log2_lr: r.val_bpb for r in records if r.recipe == recipe and r.width == width}
            curve = numbers["sweep"]["curves"][recipe][str(width)]
            assert dict(zip(curve["log2_lr"], curve["val_bpb"])) == pytest.approx(mine)
            assert curve["opt_log2_lr"] == min(mine, key=mine.get)
        opts = [numbers["sweep"]["curves"][recipe][str(w)]["opt_log2_lr"] for w in (16, 32)]
        assert numbers["sweep"]["spread"][recipe]["spread"] == max(opts) - min(opts)
        cost = numbers["costs"][recipe]
        proxy = [r for r in records if r.recipe == recipe and r.width == 16]
        assert cost["proxy"]["trials"] == 3 and cost["all"]["trials"] == 6
        assert cost["proxy"]["flops"] == pytest.approx(sum(r.flops for r in proxy))
        assert cost["proxy"]["seconds"] == pytest.approx(sum(r.seconds for r in proxy))
        t = transfer["recipes"][recipe]["target_cost"]
        assert cost["proxy_over_target_flops"] == pytest.approx(cost["proxy"]["flops"] / t["flops"])
        assert numbers["verdict"]["recipes"][recipe]["lr_gap_log2"] == transfer["recipes"][recipe]["lr_gap_log2"]
    assert "NaN" not in (root / "report" / "tuning.json").read_text()  # strict JSON


def test_cli_report_and_missing_folders(report, tmp_path, capsys):
    root, _, _ = report
    out = tmp_path / "again"
    assert main(["report", str(root / "sweep"), str(root / "transfer"), "--out", str(out)]) == 0
    assert (out / "index.html").exists() and str(out / "index.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope"), str(root / "transfer"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(root / "sweep"), str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "no transfer.json" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_corrupt_files_of_ours_are_one_line_with_the_remedy(report, tmp_path, capsys):
    """A damaged journal, sweep.json, transfer.json or best.json given to `report` or `transfer`: exit 2, one line
    that names the file and says what to do, no traceback, and no report or transfer folder written."""
    root, _, _ = report
    sweep_dir, transfer_dir = tmp_path / "sweep", tmp_path / "transfer"
    shutil.copytree(root / "sweep", sweep_dir)
    shutil.copytree(root / "transfer", transfer_dir)
    report_cmd = ["report", str(sweep_dir), str(transfer_dir), "--out", str(tmp_path / "r")]
    transfer_cmd = ["transfer", str(sweep_dir), "--out", str(tmp_path / "t"), "--widths", "64", "--quiet"]
    journal, manifest = (sweep_dir / "optuna.journal").read_bytes(), (sweep_dir / "sweep.json").read_bytes()
    cases = [  # (file, its damaged bytes, the commands given it, what the line says)
        ("sweep/optuna.journal", b"\x00\xffnot a journal\n" * 3, [report_cmd, transfer_cmd],
         ["optuna.journal is corrupt", "run the sweep again"]),
        ("sweep/sweep.json", b'{"spec": {"name": "ti', [report_cmd, transfer_cmd],
         ["sweep.json is corrupt", "re-run the `lrm-mup sweep` command"]),
        ("sweep/sweep.json", b"[]", [report_cmd, transfer_cmd], ["sweep.json is corrupt"]),
        ("transfer/transfer.json", b"\x89PNG\x00binary", [report_cmd], ["transfer.json", "run `lrm-mup transfer`"]),
        ("transfer/best.json", b"{oops", [["transfer", str(transfer_dir), "--out", str(tmp_path / "t"), "--quiet"]],
         ["best.json", "not a readable JSON file"]),
    ]
    for name, damaged, commands, says in cases:
        (sweep_dir / "optuna.journal").write_bytes(journal)
        (sweep_dir / "sweep.json").write_bytes(manifest)
        (tmp_path / name).write_bytes(damaged)
        for command in commands:
            assert main(command) == 2, (name, command[0])
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"lrm-mup {command[0]}: error:") and "\n" not in err and "Traceback" not in err
            assert all(s in err for s in says), err
            assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo on the corpus slice, shared by the demo's tests: (its folder, the sweep file, the report's
    path, the lines it printed)."""
    from lrm_mup.pipelines.demo import DEMO_TOML, run_demo

    tmp_path = tmp_path_factory.mktemp("demo")
    sweep_file = DEMO_TOML
    if not sweep_file.exists():  # until the demo's sweep file lands: one of the same shape
        sweep_file = tmp_path / "demo.toml"
        sweep_file.write_text(SPEC.replace('name = "tiny"', 'name = "demo"').replace('"lrm"]', '"mup", "lrm"]'))
    lines = []
    path = run_demo(tmp_path / "demo", quick=True, data=SLICE, sweep_file=sweep_file, log=lines.append)
    return tmp_path, sweep_file, path, lines


def test_demo_quick_runs_every_stage_and_resumes(quick_demo):
    from lrm_mup.pipelines.demo import run_demo

    tmp_path, sweep_file, path, lines = quick_demo
    lines = list(lines)
    text = "\n".join(lines)
    for i, stage in enumerate(["coordinate check", "sweep", "transfer", "tuning report"], start=1):
        assert f"[demo {i}/4] {stage}" in text
    assert path == tmp_path / "demo" / "report" / "index.html" and path.exists()
    assert (tmp_path / "demo" / "coord_check" / "coord_check.html").exists()
    assert str(path) in lines[-1]
    numbers = json.loads((tmp_path / "demo" / "report" / "tuning.json").read_text())
    assert numbers["verdict"]["winner"] is not None
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verdict: Winner at width 64 (target)"))
    assert len(lines) - verdict <= 10  # the demo ends with the verdict
    assert "the time left follows each trial" in text  # a fresh sweep: no estimate before a trial is measured
    lines.clear()
    run_demo(tmp_path / "demo", quick=True, data=SLICE, sweep_file=sweep_file, log=lines.append)  # all done before
    text = "\n".join(lines)
    assert "done before: re-using its saved result" in text
    assert "24 trials (24 done before)" in text and "transfer to width 64 with a direct LR sweep (-1, +1 in log2) " \
        "(done before)" in text and "roughly" not in text  # nothing to do: no time estimate
    runs = [line for line in lines if line.lstrip().startswith("[") and " w" in line and "bpb" in line]
    assert runs and all("done before" in line for line in runs)


def test_demo_report_leads_with_the_cost_curves_then_the_tier_table(quick_demo):
    root, _, path, lines = quick_demo
    body = path.read_text()
    body = body[body.index("<body>"):]
    headings = re.findall(r"<h2>(.*?)</h2>", body)
    assert headings[:3] == ["Tuning-cost curves", "Tier table", "Tuning cost"]  # then the transfer's report
    assert body.index("Tier table") < body.index("Winner at width 64 (target)")
    assert figures_in(body)[0]["layout"]["meta"]["figure"] == "cost_curves"  # the headline figure comes first
    numbers = json.loads((root / "demo" / "report" / "tuning.json").read_text())
    ablation = numbers["ablation"]
    assert ablation == json.loads((root / "demo" / "tiers" / "ablation.json").read_text())
    tier_table = re.findall(r"<table>.*?</table>", body[body.index("Tier table"):], re.S)[0]
    for r in ablation["tiers"]:
        assert re.search(rf"<tr><td[^>]*>{r['recipe']}</td><td[^>]*>{r['tier']}</td>", tier_table)
        assert f"{r['val_bpb']:.4f}" in tier_table and len(r["seed_val_bpb"]) == 2  # two seeds: a seed range
    assert {(r["recipe"], r["tier"]) for r in ablation["tiers"]} == {
        (r, t) for r in ("mup", "lrm") for t in ("NONE", "LR", "FULL")}
    # the terminal: the cost verdict and the tier table, before the transfer's verdict lines
    start = lines.index("tuning cost: " + ablation["verdict"]["sentence"])
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verdict: Winner at width"))
    table = lines[start + 1:verdict]
    assert table[0].startswith("tiers at width 64") and table[1].split() == ["NONE", "LR", "FULL"]
    for row in ablation["tiers"]:
        line = next(x for x in table if x.split()[0] == row["recipe"])
        assert f"{row['val_bpb']:.4f} [{row['seed_range_bpb']:.4f}] ({row['trials']} trial" in line
    assert ablation["verdict"]["winner"] in ablation["verdict"]["sentence"]


def test_demo_tiers_come_from_the_demos_own_sweep_and_transfer(quick_demo):
    from lrm_mup.pipelines.demo import FULL_EXTRA
    from lrm_mup.tuning.transfer import sweep_records

    root, _, _, _ = quick_demo
    demo = root / "demo"
    ablation = json.loads((demo / "tiers" / "ablation.json").read_text())
    rows = {(r["recipe"], r["tier"]): r for r in ablation["tiers"]}
    _, trials = sweep_records(demo / "sweep")
    transfer = json.loads((demo / "transfer" / "transfer.json").read_text())
    proxy = min(t.width for t in trials)
    for recipe in ("mup", "lrm"):
        mine = [t for t in trials if t.recipe == recipe and t.width == proxy and t.status == "ok"]
        best = min(mine, key=lambda t: t.val_bpb)
        lr, full, none = rows[(recipe, "LR")], rows[(recipe, "FULL")], rows[(recipe, "NONE")]
        # LR = the demo sweep's own LR grid at the proxy: its winner is the sweep's best LR trial
        assert lr["params"] == {"log2_lr": best.log2_lr} and lr["proxy_val_bpb"] == pytest.approx(best.val_bpb)
        assert lr["trials"] == len([t for t in trials if t.recipe == recipe and t.width == proxy])
        # ... and its seed-0 target loss is the transfer's own run of that winner, not a second run of it
        run = next(x for x in transfer["runs"] if x["recipe"] == recipe and x["role"] == "target" and x["offset"] == 0
                   and x["seed"] == 0)
        assert lr["seed_val_bpb"][0] == pytest.approx(run["val_bpb"])
        again = 0
        for folder in (demo / "tiers" / "target").iterdir():
            trained = json.loads((folder / "best.json").read_text())
            if trained.get(recipe) == transfer["best"][recipe]:  # the LR winner again: seed 1 only
                seeds = json.loads((folder / "transfer.json").read_text())["runs"]
                assert {x["seed"] for x in seeds if x["recipe"] == recipe} == {1}
                again += 1
        assert again == 1
        # FULL = those trials then 4 more over the multipliers' hyperparameters: never worse at the proxy
        assert full["trials"] == lr["trials"] + 4 and full["searched"] == ["log2_lr", *FULL_EXTRA[recipe]]
        assert full["proxy_val_bpb"] <= lr["proxy_val_bpb"]
        curves = ablation["curves"]
        head = [p["best_val_bpb"] for p in curves[f"{recipe} FULL"]["points"][:lr["trials"]]]
        assert head == [p["best_val_bpb"] for p in curves[f"{recipe} LR"]["points"]]  # FULL continues LR's search
        # NONE = the recipe's defaults, untuned
        assert none["trials"] == 0 and none["params"] == {} and none["val_bpb"] is not None


def test_the_page_opens_with_the_headline_verdict_then_html_tables_and_wrapped_text(report):
    root, path, _ = report
    page = path.read_text()
    body = page[page.index("<body>"):]
    card = body[body.index('<div class="card">'):body.index("<h2>Tuning cost</h2>")]
    assert body.index('<div class="card">') < body.index("Plotly.newPlot")  # the verdict comes before any figure
    numbers = json.loads((root / "report" / "tuning.json").read_text())
    winner = numbers["headline"]["winner"]
    assert f"Winner at width 64 (target): {winner}" in card and "Criterion: an LR transferred when" in card
    assert "One seed per point" in card  # the sweep and the transfer have seed 0 only: said, not hidden
    tables = re.findall(r"<table>.*?</table>", body, re.S)
    verdict_table, cost_table = tables[0], tables[1]
    for recipe in ("sp", "lrm"):
        assert re.search(rf"<tr><td[^>]*>{recipe}</td>", verdict_table)
        assert re.search(rf"<tr><td[^>]*>{recipe}</td>", cost_table)
    assert "proxy FLOPs" in cost_table and "compare costs in FLOPs" in cost_table
    for block in re.findall(r"<pre>(.*?)</pre>", body, re.S):
        assert max(map(len, block.splitlines()), default=0) <= 120
    assert "white-space: pre-wrap" in page  # and any preformatted text wraps
    for fig in figures_in(page):  # every figure follows the window: no fixed width
        assert "width" not in fig["layout"] and fig["layout"].get("autosize") is True
    assert page.count('"responsive": true') == len(figures_in(page))


def test_headline_applies_its_stated_transfer_criterion(report):
    root, _, _ = report
    numbers = json.loads((root / "report" / "tuning.json").read_text())
    h = numbers["headline"]
    assert set(h["recipes"]) == {"sp", "lrm"}
    for recipe, s in h["recipes"].items():
        curves = numbers["sweep"]["curves"][recipe]
        edges = [int(w) for w, c in curves.items() if c["opt_log2_lr"] in (min(c["log2_lr"]), max(c["log2_lr"]))]
        assert s["edge_widths"] == edges
        spread = numbers["sweep"]["spread"][recipe]["spread"]
        gap = numbers["transfer"]["recipes"][recipe]["loss_gap_bpb"]
        expected = False if spread > 1 or gap > 0.02 else None if edges else True
        assert s["transferred"] is expected, (recipe, s)
        assert s["val_bpb"] == pytest.approx(numbers["transfer"]["recipes"][recipe]["target_val_bpb"])
    any_edge = any(s["edge_widths"] for s in h["recipes"].values())
    assert any("edge of its LR grid" in w for w in h["warnings"]) == any_edge


def test_cli_report_ends_with_the_verdict_lines(report, tmp_path, capsys):
    root, _, _ = report
    assert main(["report", str(root / "sweep"), str(root / "transfer"), "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    numbers = json.loads((tmp_path / "r" / "tuning.json").read_text())
    assert lines[0].startswith(f"verdict: Winner at width 64 (target): {numbers['headline']['winner']}, val ")
    for recipe in ("sp", "lrm"):
        assert any(re.match(rf"  {recipe} +(LR transferred|LR did NOT transfer|open): ", line) for line in lines)
    assert lines[-1] == f"tuning report: {tmp_path / 'r' / 'index.html'}"
    assert len(lines) <= 8  # a few lines: the page has the rest


def test_demo_full_tier_searches_the_multipliers_at_the_lr_tiers_winner():
    import tomllib

    from lrm_mup.pipelines.demo import DEMO_TOML, demo_spec, full_extra_spec

    raw = demo_spec(tomllib.loads(DEMO_TOML.read_text()))
    lrm = full_extra_spec(raw, "lrm", -7.0)
    assert lrm.recipes == ("lrm",) and lrm.widths == (64,) and lrm.budget("lrm") == 4 and lrm.steps == raw["steps"]
    mult = sorted(lrm.config("lrm", 64, 0, {"log2_lr": -7.0, "log2_mult_lr": v})["mult_lr"]
                  for v in lrm.grid_space("lrm")["log2_mult_lr"])
    # around the default LR/4 (core.optim.MULT_LR_RATIO), never the default itself (the LR tier's trial)
    assert mult == [2.0 ** -11, 2.0 ** -10, 2.0 ** -8, 2.0 ** -7]
    mup = full_extra_spec(raw, "mup", -6.0)
    space = mup.grid_space("mup")
    assert space["log2_lr"] == [-6.0] and mup.budget("mup") == 4
    assert (space["log2_alpha_in"], space["log2_alpha_out"]) == ([-1.0, 1.0], [-1.0, 1.0])
