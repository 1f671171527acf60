"""The worked examples in examples/ run top to bottom and draw their figures.

Each ``examples/plot_*.py`` runs in its own process, outside the source tree, with the
output folder given on the command line (so nothing is written into examples/); the
PNG it names (by file name, so no build path is printed into the gallery) must exist
in that folder, be a real PNG and not be blank. Their printed numbers are checked
where the example states a result (ranks agree with the theory, the pooled linear
spectrum is close to the law). Every line fits the gallery's page width.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("plot_*.py"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: characters a code line may have before the docs page cuts it off
PAGE_WIDTH = 88


def test_every_example_is_collected():
    """A gallery script that is not named plot_*.py would silently leave the docs and this test."""
    others = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("plot_"))
    assert SCRIPTS and not others, others


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_line_fits_the_page(script):
    long = [(i, len(line)) for i, line in enumerate(script.read_text().splitlines(), 1) if len(line) > PAGE_WIDTH]
    assert not long, f"{script.name}: lines (number, length) wider than {PAGE_WIDTH}: {long}"



def _run(script: Path, out: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NEAROPT_EXAMPLES_OUT"}
    env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(out)], check=False, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _check_polynomial_rank(stdout: str) -> None:
    rows = re.findall(r"\((\d+)/(\d+) agree\)", stdout)
    assert len(rows) == 3 and all(a == b for a, b in rows), stdout


def _check_linear_law(stdout: str) -> None:
    ks = [float(x) for x in re.findall(r"KS distance ([0-9.]+)", stdout)]
    # 300 teachers at these sizes: measured 0.022 (q = 1/2) and 0.040 (q = 2: the MP part is a large-size limit)
    assert len(ks) == 2 and max(ks) < 0.08, stdout


def _check_time_to_eps(stdout: str) -> None:
    m = re.search(r"measured ([0-9.]+) steps;\s+predicted from the spectrum ([0-9.]+) \(same draws ([0-9.]+)\)", stdout)
    assert m, stdout
    measured, _, same_draws = map(float, m.groups())
    assert abs(measured - same_draws) <= 2.0, stdout  # quadratic regime: the per-draw prediction is exact


CHECKS = {"plot_polynomial_rank": _check_polynomial_rank, "plot_linear_law": _check_linear_law, "plot_time_to_eps": _check_time_to_eps}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs_and_draws_its_figure(script, tmp_path):
    stdout = _run(script, tmp_path)
    written = re.findall(r"^wrote (.+\.png)$", stdout, re.MULTILINE)
    assert written, f"{script.name} does not say which figure it wrote:\n{stdout}"
    assert str(tmp_path) not in stdout, f"{script.name} prints the output folder's path"
    wide = [line for line in stdout.splitlines() if len(line) > PAGE_WIDTH]  # shown under the code too
    assert not wide, f"{script.name} prints lines wider than {PAGE_WIDTH}: {wide}"
    for name in written:
        png = tmp_path / name
        assert Path(name).name == name and png.is_file(), f"{script.name} did not write {name} into the folder it was given"
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        image = matplotlib.image.imread(png)
        assert image.shape[0] >= 300 and image.shape[1] >= 400
        assert float(np.std(image[..., :3])) > 0.05, f"{png.name} is (nearly) blank"
    if script.stem in CHECKS:
        CHECKS[script.stem](stdout)
