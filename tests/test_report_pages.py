"""The coordinate check's page as a reader sees it, on planted numbers (no training): a verdict card before any
figure, a table of passing series, figures that follow the window, and a check that cannot judge saying so instead
of failing every recipe."""
import re

from lrm_mup.analysis import judgeable
from lrm_mup.report import write_coord_check_report
from lrm_mup.tuning.coord_check import CoordCheckResult
from tests.test_coord_check import WIDTHS, planted, planted_result
from tests.test_report import figures_in


def records():
    return (planted("mup", "flat", "act", lambda w, t: 3.0) + planted("mup", "grows", "act", lambda w, t: w ** 0.5)
            + planted("sp", "flat", "act", lambda w, t: 2.0))


def test_the_page_opens_with_each_recipes_verdict_and_a_table(tmp_path):
    result = planted_result(records(), ["mup", "sp"])
    page = write_coord_check_report(result, tmp_path, plotlyjs="directory")["html"].read_text(encoding="utf-8")
    body = page[page.index("<body>"):]
    card = body[body.index('<div class="card">'):body.index("<h2>Figures</h2>")]
    assert body.index('<div class="card">') < body.index("Plotly.newPlot")
    assert "mup FAIL (1/2 series); sp PASS (1/1 series)." in card
    assert re.search(r"<tr><td[^>]*>mup</td><td class=\"no\">FAIL</td><td[^>]*>1/2</td>", card)
    assert "act grows: slope +0.50" in card  # the worst series, named
    assert "No verdict" not in page
    for fig in figures_in(page):
        assert "width" not in fig["layout"] and fig["layout"]["autosize"] is True


def test_a_check_with_one_seed_says_it_cannot_judge_instead_of_failing(tmp_path):
    one_seed = [r for r in records() if r["seed"] == 0]
    result = CoordCheckResult({**planted_result(one_seed, ["mup", "sp"]).config, "seeds": 1}, one_seed)
    assert judgeable(result.config) == ["1 seed, averaging out seed noise needs at least 2"]
    text = result.summary()
    assert "NO VERDICT: too little data to judge" in text and "FAIL" not in text and "PASS" not in text
    assert re.search(r"^mup +n/a +1/2 series within the threshold$", text, re.M)
    page = write_coord_check_report(result, tmp_path, plotlyjs="directory")["html"].read_text(encoding="utf-8")
    assert "No verdict: too little data to judge (1 seed" in page and "Judging needs at least 3 widths" in page
    two_widths = {**result.config, "widths": list(WIDTHS[:2]), "seeds": 2}
    assert judgeable(two_widths) == ["2 widths, a judged slope needs at least 3"]
