"""Packaging: a wheel built from the checkout carries the demo's sweep file (so `lrm-mup demo` works from any
install) and the one version of lrm_mup/_version.py. (.ci/run goes further: it installs the wheel in a fresh venv
outside the checkout and runs `lrm-mup demo --quick` there.)"""
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lrm_mup

REPO = Path(__file__).resolve().parent.parent
DEMO_TOML = "lrm_mup/pipelines/demo.toml"
# what a build must not see: outputs of earlier builds (stale files would end up in the wheel) and local state
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", "__pycache__", ".venv*",
                                    ".pytest_cache", ".import_linter_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built by pip from a copy of the checkout. Without build isolation when setuptools is already here
    (offline and fast); otherwise pip fetches the build backend pyproject.toml names."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE, symlinks=True)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp / "dist"),
                           str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("lrm_mup-*.whl")
    with zipfile.ZipFile(path) as z:
        yield z


def _dist_info(z: zipfile.ZipFile, name: str) -> str:
    (entry,) = [n for n in z.namelist() if re.fullmatch(r"lrm_mup-[^/]+\.dist-info/" + name, n)]
    return z.read(entry).decode()


def test_the_wheel_carries_the_demo_sweep_file(wheel):
    assert wheel.read(DEMO_TOML) == (REPO / DEMO_TOML).read_bytes()
    assert not [n for n in wheel.namelist() if n.startswith(("tests/", "sweeps/", "benchmarks/"))]
    assert re.search(r"^lrm-mup = lrm_mup\.cli:main$", _dist_info(wheel, "entry_points.txt"), re.M)


def test_the_wheel_metadata_has_the_one_version_of_version_py(wheel):
    assert re.search(r"^Version: (.+)$", _dist_info(wheel, "METADATA"), re.M).group(1) == lrm_mup.__version__
    assert wheel.read("lrm_mup/_version.py") == (REPO / "lrm_mup" / "_version.py").read_bytes()


def test_the_version_is_written_in_one_place():
    literal = re.escape(lrm_mup.__version__)
    files = [*REPO.glob("lrm_mup/**/*.py"), REPO / "setup.cfg", REPO / "pyproject.toml"]
    holders = sorted(str(f.relative_to(REPO)) for f in files if re.search(literal, f.read_text(encoding="utf-8")))
    assert holders == ["lrm_mup/_version.py"]


def test_the_shipped_demo_sweep_file_is_the_package_data():
    # sweeps/demo.toml, the one users open in the checkout, is the file the wheel carries, not a copy of it
    assert (REPO / "sweeps" / "demo.toml").resolve() == (REPO / DEMO_TOML).resolve()
