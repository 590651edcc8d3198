"""The shape of the code, checked: imports run one way (no cycles between quantcli's modules) and no function in
the core (everything but the CLI's option declarations) is longer than about a screen."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "quantcli"
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Relative imports of each module, at any depth of the file (function-level imports close cycles too);
    ``from . import x`` is an import of the submodule x, not of the package."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            for c in subs or [target]:
                if c in mods and c != m and not m.startswith(c + "."):
                    graph[m].add(c)
    return graph


def test_no_import_cycles():
    graph = _imports(_modules())
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
    assert "quantcli.cli.common" in graph["quantcli.cli.convert"]  # the checker sees real edges


def test_core_functions_fit_on_a_screen():
    long = []
    for p in sorted(PKG.rglob("*.py")):
        if p.parent.name == "cli":  # Typer commands are mostly option declarations
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
