"""The README's speed table is exactly what ``benchmarks/run_all.py --table-only`` renders."""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_speed_table_is_generated_from_the_saved_results(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run_all = importlib.import_module("run_all")
    try:
        rendered = run_all.render(run_all.SECTIONS)
    finally:
        sys.modules.pop("run_all", None)
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(run_all.START), readme.index(run_all.END)
    assert readme[start + len(run_all.START) : end].strip() == rendered.strip()
    assert (ROOT / "benchmarks" / "results" / "speed.md").read_text() == rendered
    # every section has saved results (none says "not run yet")
    assert "not run yet" not in rendered
