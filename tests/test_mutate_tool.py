"""benchmarks/mutate.py's pure parts: test selection from the coverage map, outcomes, names."""

import importlib.util
import textwrap
from pathlib import Path

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
