"""The layer rules of docs/architecture.md, checked on the source: every import, including those made inside
functions, points to the module's own layer or one above it, and no two modules import each other through any
chain (an import cycle that only works because one edge is imported late)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# docs/architecture.md, "Layer rules": a module may import its own layer and the ones before it in this list
LAYERS = [
    (
        "leaves",
        [
            "cdr.errors",
            "cdr._version",
            "cdr.log",
            "cdr.variants",
            "cdr.options",
            "cdr.plots",
            "cdr.gguf_tokenizer",
            "cdr.cpu",
        ],
    ),
    ("data", ["cdr.conversation", "cdr.data", "cdr.recipes", "cdr.rendering", "cdr.span"]),
    ("models", ["cdr.models", "cdr.backends", "cdr.cache", "cdr.generation", "cdr.doctor"]),
    ("reward", ["cdr.config", "cdr.reward", "cdr.rewardbench", "cdr.rewardbench2"]),
    ("pipelines", ["cdr.output", "cdr.length_report", "cdr.pipelines"]),
    ("front ends", ["cdr.cli", "cdr.serve", "cdr.trl", "cdr"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "cdr").rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The cdr modules a file imports, anywhere in it (``from cdr.x import y`` counts cdr.x.y when that is a
    module, else cdr.x)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports are for annotations, never run
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        out.update(n for n in names if n == "cdr" or n.startswith("cdr."))
    return out & known


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "cdr" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of docs/architecture.md"
    return best[0]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_point_to_the_same_layer_or_above():
    wrong = []
    for module, deps in graph().items():
        for dep in deps:
            # a package's __init__ may re-export its own submodules
            if layer_of(dep) > layer_of(module) and not dep.startswith(module + "."):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from cdr.reward import DensityRatio\n    import cdr.output\n")
    assert imports_of(sample, {"cdr.reward", "cdr.output"}) == {"cdr.reward", "cdr.output"}
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cdr.reward import X\n")
    assert imports_of(sample, {"cdr.reward"}) == set()
