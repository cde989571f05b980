"""The layering of lrm_mup, as import-linter contracts (setup.cfg, [importlinter] sections): lower layers never
import higher ones, report never imports optuna, tuning or training, nothing imports cli. `lint-imports` reads the
source files (nothing is imported), so this runs in a second or two."""
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint_imports() -> list[str]:
    """The lint-imports command of this interpreter's environment (the one pytest runs in)."""
    here = Path(sys.executable).parent / "lint-imports"
    found = str(here) if here.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' (import-linter is in the test extra)")
    return [found]


def test_the_import_contracts_are_kept():
    # --no-cache: nothing is written into the checkout; PYTHONPATH: the lrm_mup of this checkout is the one read
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(lint_imports() + [str(REPO / "setup.cfg"), "--no-cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"lint-imports found broken contracts:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    contracts = sum(s.startswith("importlinter:contract:") for s in config.sections())
    assert contracts >= 3 and f"Contracts: {contracts} kept, 0 broken." in proc.stdout  # every one of them ran
