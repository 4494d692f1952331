"""The shape of the engine: imports go one way, and the front end stays small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppl_vi"
ENGINE_FILES = ["engine.py", "policies.py", "fit.py", "probe.py", "checkpoint.py", "optim.py"]


def _imports(path: Path) -> set[str]:
    """ppl_vi modules imported anywhere in ``path``, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("ppl_vi"):
                found.add(node.module)
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    if (PACKAGE / (candidate.split(".", 1)[1].replace(".", "/") + ".py")).exists():
                        found.add(candidate)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = path.parent.relative_to(PACKAGE.parent).as_posix().replace("/", ".")
            found.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ppl_vi"))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        name = name.removesuffix(".__init__")
        graph[name] = _imports(path)
    return graph


def test_no_import_cycle_in_the_engine():
    graph = _graph()
    # the package __init__ re-exports everything; cycles through it are not real dependencies
    graph = {k: {d for d in v if d != "ppl_vi"} for k, v in graph.items() if k != "ppl_vi"}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize(
    "low",
    [
        "ppl_vi.result",
        "ppl_vi.diagnostics",
        "ppl_vi.compare",
        "ppl_vi.nuts",
        "ppl_vi.predictive",
        "ppl_vi.engine",
    ],
)
def test_results_and_diagnostics_never_import_fit(low):
    assert "ppl_vi.fit" not in _graph()[low]


def test_fit_front_end_is_small():
    assert len((PACKAGE / "fit.py").read_text().splitlines()) < 300


@pytest.mark.parametrize("filename", ENGINE_FILES)
def test_no_engine_function_over_60_lines(filename):
    tree = ast.parse((PACKAGE / filename).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring is documentation, not code
            if not body:
                continue
            length = body[-1].end_lineno - body[0].lineno + 1
            assert length <= 60, f"{filename}:{node.lineno} {node.name} has {length} lines"
