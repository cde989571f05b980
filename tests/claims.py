"""What a small coordinate check in a test can claim about a series (shared by the tests of every model)."""


def point_pass(verdict, threshold: float) -> bool:
    """The series' slope is within `threshold` of the expected one (the point rule) and its band does not exclude
    that. PASS needs the band inside the threshold, which a 2-seed check at 3 widths often cannot give
    (`lrm_mup.analysis.judge`: it is then INCONCLUSIVE, not FAIL)."""
    return verdict.status != "fail" and abs(verdict.slope - verdict.expected) <= threshold
