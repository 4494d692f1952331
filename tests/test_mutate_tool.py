"""benchmarks/mutate.py's pure parts: test selection from the coverage map, outcomes, names."""

import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutate", ROOT / "benchmarks" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)

SOURCE = textwrap.dedent(
    """\
    X = 1


    def f(a=2):
        b = a + 1
        return b


    def g():
        return 3
    """
)


def test_tests_run_the_mutated_lines_fastest_first_within_the_budget():
    lines = {"5": ["t::slow", "t::fast", "t::mid"], "6": ["t::other"]}
    durations = {"t::slow": 9.0, "t::fast": 0.1, "t::mid": 1.0, "t::other": 0.2}
    spans = mutate.function_spans(SOURCE)
    # a signature's mutant also runs the rest of those tests' files (a call that fails to
    # bind runs none of the body), not tests of other files
    binds = {**durations, "t::binds": 0.05, "u::unrelated": 0.01}
    assert mutate.select_tests(lines, spans, (4, 4), binds, 0.2) == ["t::binds", "t::fast"]
    assert "u::unrelated" not in mutate.select_tests(lines, spans, (4, 4), binds, 100.0)
    assert mutate.select_tests(lines, spans, (5, 5), binds, 0.5) == ["t::fast"]
    assert mutate.select_tests(lines, spans, (5, 5), durations, 2.0) == ["t::fast", "t::mid"]
    # at least one test even when the fastest alone exceeds the budget
    assert mutate.select_tests(lines, spans, (5, 5), durations, 0.01) == ["t::fast"]
    # a default argument (line 4, run at import) takes the tests of the function's body
    assert mutate.select_tests(lines, spans, (4, 4), durations, 100.0) == [
        "t::fast", "t::other", "t::mid", "t::slow",
    ]  # fmt: skip
    # nothing runs g: the fallback list, else nothing
    assert mutate.select_tests(lines, spans, (10, 10), durations, 100.0) == []
    assert mutate.select_tests(lines, spans, (10, 10), durations, 100.0, ["x.py"]) == ["x.py"]
    # subprocess tests join whenever the lines themselves run in no in-process test
    assert mutate.select_tests(lines, spans, (4, 4), durations, 0.5, ["x.py"]) == [
        "t::fast", "t::other", "x.py",
    ]  # fmt: skip
    assert mutate.select_tests(lines, spans, (5, 5), durations, 0.5, ["x.py"]) == ["t::fast"]


def test_a_mutant_selects_the_tests_of_its_whole_statement():
    source = textwrap.dedent(
        """\
        def same(a, b):
            return (
                a.shape == b.shape
                and a.dtype == b.dtype
            )


        def f(x):
            if (x
                    and x > 1):
                return 1
            return 2
        """
    )
    assert mutate.statement_lines(source, (4, 4)) == (2, 5)
    assert mutate.statement_lines(source, (10, 10)) == (9, 10)  # the header, not the body
    assert mutate.statement_lines(source, (11, 11)) == (11, 11)
    assert mutate.statement_lines(source, (1, 1)) == (1, 1)  # the signature


def test_function_spans_include_decorators_and_put_the_innermost_last():
    spans = mutate.function_spans("def a():\n    def b():\n        pass\n    return b\n")
    assert spans == [(1, 4), (2, 3)]


def test_outcomes_and_module_names():
    assert mutate.classify(0) == "survived"
    assert mutate.classify(1) == "killed" and mutate.classify(None) == "killed (timeout)"
    assert mutate.classify(2) == "killed (error)" and mutate.classify(5) == "no tests"
    assert mutate.classify(3) == "error (3)" and mutate.classify(4) == "killed (error)"
    assert mutate.module_name("guides/iaf.py") == "ppl_vi.guides.iaf"
    assert mutate.module_name("ppl_vi/elbos/iwae.py") == "ppl_vi.elbos.iwae"


def test_processes_the_tests_spawn_import_the_mutant_named_in_the_environment(tmp_path):
    import os
    import subprocess
    import sys

    source = tmp_path / "mutant.py"
    source.write_text("VALUE = 42\n")
    env = {**os.environ, "PYTHONPATH": f"{mutate.MUTANT_SITE}{os.pathsep}{ROOT / 'benchmarks'}"}
    named = ("probe_mod", str(tmp_path / "probe_mod.py"), str(source))
    env.update(zip(mutate.ENV, named, strict=True))
    cmd = [sys.executable, "-c", "import probe_mod; print(probe_mod.VALUE)"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "42", out.stderr
    env.pop("PPL_VI_MUTANT_MODULE")  # without the name, nothing is served
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode != 0


def test_survivor_reruns_keep_killed_mutants_only_while_the_source_is_unchanged(
    tmp_path, monkeypatch
):
    import json

    pytest.importorskip("cosmic_ray", reason="the mutation extra: pip install -e '.[mutation]'")
    module = tmp_path / "mod.py"
    module.write_text(SOURCE)
    monkeypatch.setattr(mutate, "RESULTS", tmp_path)
    todo = mutate.mutants(module)
    assert len(todo) >= 3
    saved = []
    for i, m in enumerate(todo):
        diff = mutate.diff_of(SOURCE, mutate.mutated_source(module, m))
        saved.append({**m, "diff": diff, "outcome": "survived" if i == 0 else "killed"})
    (tmp_path / "mod.json").write_text(json.dumps({"mutants": saved}))
    kept = mutate.kept_killed("mod.py", module, SOURCE, todo)
    assert sorted(kept) == list(range(1, len(todo)))  # the survivor (index 0) reruns
    changed = SOURCE.replace("a + 1", "a + 2")  # same mutants, other diffs
    module.write_text(changed)
    assert len(mutate.mutants(module)) == len(todo)
    assert mutate.kept_killed("mod.py", module, changed, todo) == {}


def test_mutants_argued_equivalent_leave_the_score_but_a_killed_one_stays_killed(
    tmp_path, monkeypatch
):
    registry = tmp_path / "eq.toml"
    registry.write_text(
        '[[equivalent]]\nmodule = "m.py"\ndiff = """\n-X = 1\n+X = 2\n"""\nwhy = "unused"\n'
        '[[equivalent]]\nmodule = "m.py"\ndiff = """\n-b = a + 1\n+b = a - 1\n"""\nwhy = "w"\n'
    )  # fmt: skip
    monkeypatch.setattr(mutate, "EQUIVALENTS", registry)
    monkeypatch.setattr(mutate, "RESULTS", tmp_path)
    results = [
        {"operator": "core/NumberReplacer", "occurrence": 0, "lines": (1, 1),
         "diff": "@@ -1 +1 @@\n-X = 1\n+X = 2\n", "outcome": "survived", "num_tests": 3},
        {"operator": "core/ReplaceBinaryOperator_Add_Sub", "occurrence": 0, "lines": (5, 5),
         "diff": "@@ -5 +5 @@\n-b = a + 1\n+b = a - 1\n", "outcome": "killed", "num_tests": 1},
        {"operator": "core/NumberReplacer", "occurrence": 1, "lines": (5, 5),
         "diff": "@@ -5 +5 @@\n-b = a + 1\n+b = a + 2\n", "outcome": "survived", "num_tests": 1},
    ]  # fmt: skip
    summary = mutate.report("m.py", results, 1.0)
    assert [m["outcome"] for m in results] == ["equivalent", "killed", "survived"]
    assert summary["score"] == 0.5 and summary["raw_score"] == round(1 / 3, 4)
    text = (tmp_path / "m.md").read_text()
    assert "(equivalent; 3 tests): unused" in text and "+b = a + 2" in text


def test_a_preferred_name_puts_the_modules_own_tests_first():
    lines = {"5": ["tests/test_a.py::slow", "tests/test_mod.py::own", "tests/test_b.py::fast"]}
    durations = {"tests/test_a.py::slow": 9.0, "tests/test_mod.py::own": 5.0,
                 "tests/test_b.py::fast": 0.1}  # fmt: skip
    spans = mutate.function_spans(SOURCE)
    assert mutate.select_tests(lines, spans, (5, 5), durations, 6.0, (), "mod") == [
        "tests/test_mod.py::own", "tests/test_b.py::fast",
    ]  # fmt: skip
    assert mutate.select_tests(lines, spans, (5, 5), durations, 6.0) == [
        "tests/test_b.py::fast", "tests/test_mod.py::own",
    ]  # fmt: skip


def test_a_survivor_runs_again_once_with_the_modules_own_tests_first():
    lines = {"5": ["tests/test_a.py::mid", "tests/test_mod.py::own", "tests/test_b.py::fast"]}
    durations = {"tests/test_a.py::mid": 4.0, "tests/test_mod.py::own": 5.0,
                 "tests/test_b.py::fast": 0.1}  # fmt: skip
    spans = mutate.function_spans(SOURCE)
    args = (lines, spans, (5, 5), durations, (1.0, 6.0), (), "mod")
    assert mutate.mutant_tests(*args, False) == (["tests/test_b.py::fast"], True)
    # within 6 s the rerun takes own + fast where fastest-first would take fast + mid: the
    # selections differ, and the rerun must still not ask for another (it would loop)
    assert mutate.mutant_tests(*args, True) == (
        ["tests/test_mod.py::own", "tests/test_b.py::fast"], False,
    )  # fmt: skip
    everything = (lines, spans, (5, 5), durations, (20.0, 20.0), (), "mod")
    assert mutate.mutant_tests(*everything, False)[1] is False  # the first pass ran them all


def test_a_mutants_memory_is_capped_above_what_the_child_already_holds():
    import subprocess
    import sys

    # in a fresh process: the cap cannot be lifted again in this one
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('m', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.limit_memory(0.25)\n"
        "small = bytearray(2**27)\n"  # 128 MiB: within the cap
        "try:\n    bytearray(2**29)\nexcept MemoryError:\n    sys.exit(7)\n"
    )
    script = str(ROOT / "benchmarks" / "mutate.py")
    out = subprocess.run([sys.executable, "-c", code, script], capture_output=True, timeout=60)
    assert out.returncode == 7, out.stderr
