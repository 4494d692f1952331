"""Mutation testing of the engine, ELBOs, guides and results: which realistic bugs the suite kills.

Mutants come from cosmic-ray's operators (a maintained mutation tool whose operators and AST
positions are used as a library), restricted to the realistic ones (``OPERATORS``: ``+``/``-``,
``*``/``/``, comparison boundaries and negations, ``and``/``or``, ``not`` added or dropped,
numbers off by one, ``True``/``False``, ``break``/``continue``, loops that never run). Each
mutant runs only the tests that execute its lines, found from a per-test coverage map (pytest-cov
contexts over the default suite, built once per source state and cached in ``.mutation/``), the
fastest first, up to ``--budget`` seconds of measured test time; a mutant that survives them runs
again with every covering test up to ``--final-budget`` seconds.

Why not ``cosmic-ray exec`` or mutmut: both rerun a whole test command per mutant (about 3 s of
torch/pyro import before any test) and cosmic-ray rewrites the file on disk, so no two mutants of
a module can run at once; mutmut 3 copies the sources into ``mutants/`` and cannot follow this
package's ``package-dir`` mapping (``guides/`` is ``ppl_vi.guides``). Here a parent process
imports torch, Pyro and pytest once, and each mutant runs in a forked child that imports the
mutated module from memory (an import hook; the file on disk is never changed), so several run
at once and a mutant costs its tests plus ~1 s.

    python benchmarks/mutate.py ppl_vi/engine.py guides/iaf.py   # per-module runs
    python benchmarks/mutate.py --all                             # every module of the issue
    python benchmarks/mutate.py --map-only                        # (re)build the coverage map
    python benchmarks/mutate.py --survivors ppl_vi/engine.py      # rerun only last survivors
    python benchmarks/mutate.py guides/iaf.py --lines 80-95 --tests tests/guides/test_iaf.py
                                               # probe: do these tests kill these lines' mutants?

``--survivors`` reruns only the mutants that survived (or had no tests) in the module's last
report, keeping its killed ones, as long as the module's source is unchanged (each kept mutant's
diff is recomputed and must match; a changed module is run whole): after adding tests, a killed
mutant stays killed, so the new score costs only the survivors. Modules whose code also runs in
worker processes (``SUBPROCESS_TESTS``, the data-parallel ranks) get the mutant there too: the
child writes the mutated source to a file and ``benchmarks/_mutant_site/sitecustomize.py``
installs the same import hook in every Python process the tests start.

Writes ``benchmarks/results/mutation/<module>.md`` (score, every surviving mutant with its diff)
and ``benchmarks/results/mutation/summary.json``. Killed = some selected test failed (or the
tests hit the timeout); survived = all passed; no tests = no test executes the mutated lines.
Score = killed / (killed + survived + no tests).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # also when loaded by path (its tests)
from _mutant_hook import ENV, MutatedModule  # noqa: E402

CACHE = ROOT / ".mutation"
RESULTS = Path(__file__).parent / "results" / "mutation"
#: The modules the issue names: engine, ELBOs, results and diagnostics, compare, jit, guides.
TARGETS = [
    "ppl_vi/engine.py", "ppl_vi/policies.py", "ppl_vi/optim.py", "ppl_vi/anneal.py",
    "ppl_vi/elbos/_base.py", "ppl_vi/elbos/iwae.py", "ppl_vi/elbos/renyi.py",
    "ppl_vi/elbos/score_function.py", "ppl_vi/elbos/stein.py", "ppl_vi/result.py",
    "ppl_vi/diagnostics.py", "ppl_vi/compare.py", "ppl_vi/stats.py", "ppl_vi/jit.py",
    "ppl_vi/compiled.py", "guides/_base.py", "guides/mean_field.py", "guides/full_rank.py",
    "guides/low_rank.py", "guides/iaf.py", "guides/hvm.py", "guides/amortized.py",
    "guides/ladder.py", "guides/diffusion.py", "guides/gaussian_mixture.py",
]  # fmt: skip
#: cosmic-ray operators kept: one realistic alternative per operator (mutmut's choice), not
#: every binary operator for every other (``+`` -> ``<<``), which multiplies the count by 10.
OPERATORS = {
    "core/ReplaceBinaryOperator_Add_Sub", "core/ReplaceBinaryOperator_Sub_Add",
    "core/ReplaceBinaryOperator_Mul_Div", "core/ReplaceBinaryOperator_Div_Mul",
    "core/ReplaceBinaryOperator_FloorDiv_Div", "core/ReplaceBinaryOperator_Pow_Mul",
    "core/ReplaceComparisonOperator_Lt_LtE", "core/ReplaceComparisonOperator_LtE_Lt",
    "core/ReplaceComparisonOperator_Gt_GtE", "core/ReplaceComparisonOperator_GtE_Gt",
    "core/ReplaceComparisonOperator_Eq_NotEq", "core/ReplaceComparisonOperator_NotEq_Eq",
    "core/ReplaceComparisonOperator_Is_IsNot", "core/ReplaceComparisonOperator_IsNot_Is",
    "core/ReplaceComparisonOperator_In_NotIn", "core/ReplaceComparisonOperator_NotIn_In",
    "core/ReplaceUnaryOperator_USub_UAdd", "core/ReplaceUnaryOperator_Delete_Not",
    "core/AddNot", "core/ReplaceAndWithOr", "core/ReplaceOrWithAnd",
    "core/ReplaceTrueWithFalse", "core/ReplaceFalseWithTrue", "core/NumberReplacer",
    "core/ReplaceBreakWithContinue", "core/ReplaceContinueWithBreak",
    "core/ZeroIterationForLoop",
}  # fmt: skip
#: Tests that run a module's code in subprocesses (torchrun workers), where the coverage map
#: cannot see it: the fallback for mutated lines that no test executes in-process.
SUBPROCESS_TESTS = {
    "ppl_vi/engine.py": ["tests/test_distributed.py"],
    "ppl_vi/policies.py": ["tests/test_distributed.py"],
}
PRELOAD = ("torch", "pyro", "pyro.infer", "pyro.distributions", "numpy", "scipy", "pandas",
           "arviz", "sklearn.datasets", "matplotlib", "pytest", "tqdm")  # fmt: skip


# ----------------------------------------------------------------------------- coverage map
def source_digest() -> str:
    h = hashlib.sha256()
    for folder in ("ppl_vi", "guides", "models", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_map(workers: int, tests: list) -> dict:
    """Per-test coverage contexts of the default suite: ``{file: {line: [test ids]}}`` and each
    test's duration (seconds), cached per source state."""
    digest = source_digest()
    if tests:
        digest += "-" + hashlib.sha256(" ".join(tests).encode()).hexdigest()[:8]
    path = CACHE / f"coverage-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    CACHE.mkdir(exist_ok=True)
    data_file = CACHE / f".coverage-{digest}"
    durations = CACHE / f"durations-{digest}.json"
    env = {**os.environ, "COVERAGE_FILE": str(data_file), "PPL_VI_DURATIONS": str(durations),
           "PYTHONPATH": str(Path(__file__).parent)}  # fmt: skip
    cmd = [
        sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "_mutation_durations",
        "--cov=ppl_vi", "--cov=guides", "--cov-context=test", "--cov-report=", "-n", str(workers),
        "-p", "no:cacheprovider", *tests,
    ]  # fmt: skip
    print("building the per-test coverage map (the default suite under coverage) ...", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    import coverage

    cov = coverage.CoverageData(basename=str(data_file))
    cov.read()
    files = {}
    for measured in cov.measured_files():
        rel = os.path.relpath(measured, ROOT)
        by_line = cov.contexts_by_lineno(measured)
        files[rel] = {
            str(line): sorted({c.rsplit("|", 1)[0] for c in ctxs if c})
            for line, ctxs in by_line.items()
        }
    out = {"files": files, "durations": json.loads(durations.read_text())}
    path.write_text(json.dumps(out))
    print(f"coverage map: {len(files)} files, {time.perf_counter() - start:.0f} s", flush=True)
    return out


# --------------------------------------------------------------------------------- mutants
def mutants(path: Path) -> list[dict]:
    import cosmic_ray.plugins
    from cosmic_ray.ast import ast_nodes, get_ast_from_path

    tree = get_ast_from_path(path)
    nodes = list(ast_nodes(tree))
    out = []
    for name in sorted(cosmic_ray.plugins.operator_names()):
        if name not in OPERATORS:
            continue
        operator = cosmic_ray.plugins.get_operator(name)()
        positions = [p for node in nodes for p in operator.mutation_positions(node)]
        for occurrence, (start, end) in enumerate(positions):
            out.append({"operator": name, "occurrence": occurrence, "lines": (start[0], end[0])})
    return out


def mutated_source(path: Path, mutant: dict) -> str | None:
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    operator = cosmic_ray.plugins.get_operator(mutant["operator"])()
    return mutate_code(path.read_text(), operator, mutant["occurrence"])


@functools.lru_cache(maxsize=4)
def _statement_spans(source: str) -> tuple:
    """(first, last) line of every statement (a compound statement's header only), parsed
    once per module rather than once per mutant."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt):
            body = getattr(node, "body", None)
            end = body[0].lineno - 1 if isinstance(body, list) and body else node.end_lineno
            spans.append((node.lineno, end))
    return tuple(spans)


def statement_lines(source: str, lines: tuple) -> tuple[int, int]:
    """The lines of the smallest statement holding ``lines`` (a compound statement's header
    only): a mutant of one line of a multi-line condition (``and`` -> ``or``) changes which of
    its other lines run, so the tests that reach any line of the statement are the ones that
    can see it."""
    first, last = lines
    holding = [(lo, hi) for lo, hi in _statement_spans(source) if lo <= first and last <= hi]
    return min(holding, key=lambda s: s[1] - s[0], default=(first, last))


def function_spans(source: str) -> list[tuple[int, int]]:
    """(first, last) line of every function, innermost last."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            spans.append((first, node.end_lineno))
    return sorted(spans, key=lambda s: s[1] - s[0], reverse=True)


def select_tests(
    lines_map: dict, spans, lines: tuple, durations: dict, budget: float, extra=(), prefer=""
) -> list:
    """Tests that execute the mutated lines, fastest first, up to ``budget`` seconds (at least
    one); with ``prefer``, the tests whose id contains it come first. For lines no test
    executes in-process (run only at import, such as a default
    argument, or only in subprocesses) the tests that run the enclosing function (for module
    level lines, any test of the module) and the other tests of their files, plus the
    subprocess tests ``extra``."""
    first, last = lines
    tests = {t for line in range(first, last + 1) for t in lines_map.get(str(line), ())}
    if tests:
        extra = ()
    else:  # also the subprocess tests: the lines may run only there
        enclosing = [s for s in spans if s[0] <= first and last <= s[1]]
        lo, hi = enclosing[-1] if enclosing else (1, 10**9)
        tests = {t for line, ts in lines_map.items() if lo <= int(line) <= hi for t in ts}
        # a signature: a call that fails to bind (keyword-only, a missing default) raises
        # before the body runs, so no coverage names its test; the rest of the test files
        # that exercise the function join
        files = {t.split("::")[0] for t in tests}
        tests |= {t for t in durations if t.split("::")[0] in files}
    if not tests:
        return list(extra)
    ordered = sorted(
        tests, key=lambda t: (bool(prefer) and prefer not in t, durations.get(t, 1.0), t)
    )
    chosen, spent = [], 0.0
    for t in ordered:
        if chosen and spent + durations.get(t, 1.0) > budget:
            break
        chosen.append(t)
        spent += durations.get(t, 1.0)
    return chosen + [t for t in extra if t not in chosen]


def mutant_tests(lines_map, spans, lines, durations, budgets, extra, prefer, final):
    """The tests a mutant runs and whether a survivor runs again: the first pass takes the
    fastest covering tests within ``budgets[0]``; the rerun (``final``) takes the module's own
    tests (``prefer``) first, then the fastest, within ``budgets[1]``, and is never repeated."""
    rerun = select_tests(lines_map, spans, lines, durations, budgets[1], extra, prefer)
    if final:
        return rerun, False
    tests = select_tests(lines_map, spans, lines, durations, budgets[0], extra)
    return tests, bool(set(rerun) - set(tests))


# --------------------------------------------------------------------------------- running
def module_name(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    if parts[0] in ("guides", "models"):
        parts = ("ppl_vi", *parts)
    return ".".join(parts)


#: Folder whose ``sitecustomize.py`` serves the mutant in processes the tests spawn.
MUTANT_SITE = Path(__file__).parent / "_mutant_site"


#: Address space a mutant's tests may add to the forked child (GiB): a mutant that turns a
#: bounded loop or shape into an unbounded one fails with MemoryError (killed) instead of
#: filling the machine's memory before the timeout.
MEMORY_GIB = 6.0


def limit_memory(extra_gib: float) -> None:
    """Cap this process's address space at its current size plus ``extra_gib``."""
    import resource

    pages = int(Path("/proc/self/statm").read_text().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + int(extra_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_child(rel: str, source: str, tests: list, log: Path, memory_gib=MEMORY_GIB) -> None:
    """In the forked child: import the mutant, run the tests, exit with pytest's code. The
    child leads its own process group, so a timeout kills the ranks it spawned too."""
    import pytest

    os.setpgid(0, 0)
    if memory_gib:
        limit_memory(memory_gib)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.meta_path.insert(0, MutatedModule(module_name(rel), ROOT / rel, source))
    if rel in SUBPROCESS_TESTS:
        source_file = log.with_suffix(".py")
        source_file.write_text(source)
        values = (module_name(rel), str(ROOT / rel), str(source_file))
        os.environ.update(zip(ENV, values, strict=True))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p
            for p in (str(MUTANT_SITE), str(Path(__file__).parent), os.environ.get("PYTHONPATH"))
            if p
        )
    code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests])
    os._exit(int(code))


def check_unmutated(rel: str, source: str, lines_map: dict, durations: dict, log_dir) -> None:
    """The module's fastest tests pass through the same machinery without a mutation (else
    every mutant would count as killed)."""
    tests = sorted({t for ts in lines_map.values() for t in ts}, key=lambda t: durations.get(t, 1))
    if not tests:
        return
    pid = os.fork()
    if pid == 0:
        run_child(rel, source, tests[:5], log_dir / "unmutated.log")
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status != 0:
        raise SystemExit(
            f"{rel}: its tests fail without any mutation (pytest exit code {status}); see "
            f"{log_dir / 'unmutated.log'}"
        )


#: pytest's exit codes: 1 a test failed; 2 an error while collecting and 4 an error loading a
#: conftest (a mutant that breaks an import, e.g. a default argument evaluated at import): the
#: mutant is detected by any test run (``check_unmutated`` rules out the selection's fault).
OUTCOMES = {0: "survived", 1: "killed", 2: "killed (error)", 4: "killed (error)", 5: "no tests"}


def classify(status: int | None) -> str:
    """pytest's exit code (None: timed out, which kills the mutant) -> outcome."""
    if status is None:
        return "killed (timeout)"
    return OUTCOMES.get(status, f"error ({status})")


def rescore(rel: str) -> dict:
    """Rewrite a module's report from its JSON with the current ``OUTCOMES``."""
    name = rel.replace("/", ".").removesuffix(".py")
    saved = json.loads((RESULTS / f"{name}.json").read_text())
    for m in saved["mutants"]:
        if m["outcome"].startswith("error ("):
            m["outcome"] = classify(int(m["outcome"][7:-1]))
    return report(rel, saved["mutants"], saved["seconds"])


def diff_of(source: str, code: str) -> str:
    return "".join(
        line
        for line in difflib.unified_diff(source.splitlines(True), code.splitlines(True), n=0)
        if not line.startswith(("---", "+++"))
    )


def kept_killed(rel: str, path: Path, source: str, todo: list) -> dict:
    """For ``--survivors``: index in ``todo`` -> the last report's result, for the mutants it
    killed or marked equivalent, provided the module is unchanged (every mutant of the report
    recomputes to the same diff); ``{}`` when there is no report or the source changed."""
    saved_path = RESULTS / f"{rel.replace('/', '.').removesuffix('.py')}.json"
    if not saved_path.exists():
        return {}
    saved = json.loads(saved_path.read_text())["mutants"]
    key = {(m["operator"], m["occurrence"]): i for i, m in enumerate(todo)}
    if len(saved) != len(todo) or any((m["operator"], m["occurrence"]) not in key for m in saved):
        print(f"{rel}: changed since its last report, every mutant runs", flush=True)
        return {}
    for m in saved:
        code = mutated_source(path, m)
        if code is None or diff_of(source, code) != m["diff"]:
            print(f"{rel}: changed since its last report, every mutant runs", flush=True)
            return {}
    return {key[(m["operator"], m["occurrence"])]: m for m in saved
            if m["outcome"].startswith(("killed", "equivalent"))}  # fmt: skip


def run_module(rel: str, cov: dict, args) -> dict:
    path = ROOT / rel
    source = path.read_text()
    spans = function_spans(source)
    lines_map = cov["files"].get(rel, {})
    todo = mutants(path)
    if args.limit:
        todo = todo[: args.limit]
    if args.lines:  # a probe: these lines' mutants only, reported on the terminal
        lo, _, hi = args.lines.partition("-")
        todo = [m for m in todo if int(lo) <= m["lines"][0] <= int(hi or lo)]
    kept = kept_killed(rel, path, source, todo) if args.survivors else {}
    print(f"{rel}: {len(todo)} mutants, {len(todo) - len(kept)} to run", flush=True)
    results, running = list(kept.values()), {}
    log_dir = CACHE / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    check_unmutated(rel, source, lines_map, cov["durations"], log_dir)
    # a mutant that survives the fastest tests within --budget runs again with every covering
    # test (the module's own first) up to --final-budget, once, before it counts as survived
    queue = [(i, m, False) for i, m in enumerate(todo) if i not in kept]
    start = time.perf_counter()
    while queue or running:
        while queue and len(running) < args.workers:
            i, m, final = queue.pop(0)
            code = mutated_source(path, m)
            if code is None:
                continue
            m["diff"] = diff_of(source, code)
            # (the rerun takes the module's own test files first: test_<module>*.py)
            tests, more = mutant_tests(
                lines_map, spans, statement_lines(source, m["lines"]), cov["durations"],
                (args.budget, args.final_budget),
                SUBPROCESS_TESTS.get(rel, ()), Path(rel).stem, final,
            )  # fmt: skip
            m["tests"] = args.tests or tests
            m["more"] = not args.tests and more
            if not m["tests"]:
                m["outcome"] = "no tests"
                results.append(m)
                continue
            pid = os.fork()
            if pid == 0:
                run_child(rel, code, m["tests"], log_dir / f"{i}.log")
            limit = args.timeout + (2 * (args.final_budget - args.budget) if final else 0.0)
            running[pid] = (m, time.monotonic(), limit, i)
        time.sleep(0.05)
        for pid, (m, t0, limit, i) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                m["outcome"] = classify(os.waitstatus_to_exitcode(status))
            elif time.monotonic() - t0 > limit:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # the group's leader exited meanwhile
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                m["outcome"] = classify(None)
            else:
                continue
            m["seconds"] = round(time.monotonic() - t0 + m.get("seconds", 0.0), 2)
            running.pop(pid)
            if m["outcome"] == "survived" and m.pop("more"):
                queue.append((i, m, True))
            else:
                m.pop("more", None)
                results.append(m)
    if args.lines or args.tests:  # a probe writes no report
        for m in sorted(results, key=lambda m: tuple(m["lines"])):
            print(f"line {m['lines'][0]} {m['operator']}: {m['outcome']}\n{m['diff']}")
        return None
    return report(rel, results, time.perf_counter() - start)


#: Survivors argued equivalent (no test can tell them from the original): module, the
#: mutant's changed lines and the argument, one per entry.
EQUIVALENTS = Path(__file__).parent / "mutation_equivalents.toml"


def diff_key(diff: str) -> str:
    """A mutant's changed lines without the ``@@`` positions (stable as code moves)."""
    return "\n".join(d.rstrip() for d in diff.splitlines() if not d.startswith("@@"))


def load_equivalents(rel: str) -> dict:
    """``diff_key`` -> the argument, for ``rel``'s mutants listed as equivalent."""
    import tomllib

    if not EQUIVALENTS.exists():
        return {}
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    return {diff_key(e["diff"]): e["why"] for e in entries if e["module"] == rel}


def mark_equivalents(rel: str, results: list) -> None:
    """Survivors whose diff is listed in ``EQUIVALENTS`` become ``equivalent`` (a listed mutant
    that some test kills stays killed); listed entries that match no mutant are reported."""
    argued = load_equivalents(rel)
    seen = set()
    for m in results:
        key = diff_key(m.get("diff", ""))
        if key in argued:
            seen.add(key)
            if m["outcome"] in ("survived", "no tests", "equivalent"):
                m["outcome"], m["why"] = "equivalent", argued[key]
        elif m["outcome"] == "equivalent":  # listed before, no longer: a survivor again
            m["outcome"] = "survived"
    for key in set(argued) - seen:
        print(f"{rel}: listed as equivalent but no such mutant:\n{key}", flush=True)


def _entry(m: dict) -> list:
    head = f"- line {m['lines'][0]}, {m['operator'].split('/')[-1]} ({m['outcome']}; "
    head += f"{m['num_tests']} tests)" + (f": {m['why']}" if m.get("why") else "")
    return [head, "  ```diff", *("  " + d for d in m["diff"].rstrip("\n").splitlines()), "  ```"]


def report(rel: str, results: list, seconds: float) -> dict:
    for m in results:  # the report keeps how many tests ran, not their names
        m["num_tests"] = len(m.pop("tests", ())) if "tests" in m else m.get("num_tests", 0)
    mark_equivalents(rel, results)
    counts: dict = {}
    for m in results:
        key = m["outcome"].split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    killed = counts.get("killed", 0)  # (timeouts and collection errors included)
    scored = killed + counts.get("survived", 0) + counts.get("no", 0)
    score = killed / scored if scored else float("nan")
    raw = killed / len(results) if results else float("nan")
    summary = {"module": rel, "mutants": len(results), "counts": counts,
               "score": round(score, 4), "raw_score": round(raw, 4),
               "seconds": round(seconds, 1)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Mutation testing: `{rel}`",
        "",
        f"{len(results)} mutants, score {score:.1%} (killed / (killed + survived + no tests); "
        f"{raw:.1%} of all mutants, those argued equivalent counted as survivors); "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}; {seconds:.0f} s.",
        "",
        "## Surviving mutants",
        "",
    ]
    ordered = sorted(results, key=lambda m: tuple(m["lines"]))
    for m in ordered:
        if m["outcome"] in ("survived", "no tests"):
            lines += _entry(m)
    lines += ["", f"## Equivalent mutants (argued in `{EQUIVALENTS.name}`)", ""]
    for m in ordered:
        if m["outcome"] == "equivalent":
            lines += _entry(m)
    name = rel.replace("/", ".").removesuffix(".py")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({**summary, "mutants": results}))
    print(f"{rel}: score {score:.1%} {counts} in {seconds:.0f} s", flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module files (default: --all)")
    parser.add_argument("--all", action="store_true", help="every module in TARGETS")
    parser.add_argument("--workers", type=int, default=2, help="mutants run at once")
    parser.add_argument("--budget", type=float, default=20.0, help="test seconds per mutant")
    parser.add_argument(
        "--final-budget", type=float, default=120.0, help="test seconds for a survivor's rerun"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="kill a mutant's tests after")
    parser.add_argument("--limit", type=int, default=0, help="first N mutants per module")
    parser.add_argument("--map-only", action="store_true", help="only build the coverage map")
    parser.add_argument("--rescore", action="store_true", help="rewrite the reports from JSON")
    parser.add_argument("--lines", default="", help="probe: mutants on lines A-B only, no report")
    parser.add_argument(
        "--tests", nargs="*", default=[], help="probe: run these tests for every mutant, no report"
    )
    parser.add_argument(
        "--survivors", action="store_true", help="rerun only the last report's survivors"
    )
    parser.add_argument(
        "--map-tests", nargs="*", default=[], help="map from these tests only (quick runs)"
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the children run pytest from the repository root
    modules = TARGETS if args.all or not args.modules else args.modules
    if args.rescore:
        done = [r for r in modules if (RESULTS / f"{r.replace('/', '.')[:-3]}.json").exists()]
        summaries = [rescore(rel) for rel in done]
        return write_summary(summaries)
    cov = {"files": {}, "durations": {}} if args.tests else build_map(args.workers, args.map_tests)
    if args.map_only:
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in PRELOAD:  # imported once here, shared by every forked mutant
        __import__(name)
    import torch

    torch.set_num_threads(1)
    summaries = [run_module(rel, cov, args) for rel in modules]
    write_summary([s for s in summaries if s is not None])


def write_summary(summaries: list) -> None:
    path = RESULTS / "summary.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for s in summaries:  # the first recorded score stays, for before/after comparisons
        first = old.get(s["module"], {})
        s["first_score"] = first.get("first_score", first.get("score", s["score"]))
    old.update({s["module"]: s for s in summaries})
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
