"""The package's folders are layers: every import of a posenet_ros module points down, and the import
graph has no cycle; only the rclpy node imports ROS 2 Python packages. Walks the source with `ast`
(module-level and function-local imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import posenet_ros

# Top to bottom; a module may import modules of its own layer or of a layer below.
LAYERS = ("cli", "training", "evaluation", "tools", "node", "data", "ros", "runtime", "inference", "models",
          "core")
# The modules that may import posenet_ros modules inside functions, and why (each deferral is on
# purpose and commented where it happens).
DEFERRED_IMPORTS_ALLOWED = {
    # each subcommand's own imports (training, evaluation, Cyclone DDS, matplotlib) wait until it
    # runs (torch itself still loads with the error classes cli.py catches)
    "posenet_ros.cli",
    # rosbags and Cyclone DDS (about a second) load only when a dataset is a bag
    "posenet_ros.data.bag_dataset",
}

# The ROS 2 Python packages: rclpy is not on PyPI, so only the rclpy node (node/rclpy_node.py, wiring
# only) may import them; everything else runs without ROS.
ROS_MODULES = ("rclpy", "rcl_interfaces", "tf2_ros", "launch", "launch_ros")

PACKAGE_DIR = Path(posenet_ros.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


class _Imports(ast.NodeVisitor):
    """The absolute imports of one module: (target names, inside a function) pairs."""

    def __init__(self) -> None:
        self.found: list[tuple[list[str], bool]] = []
        self._depth = 0

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append(([alias.name for alias in node.names], self._depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            self.found.append((names, self._depth > 0))


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, function-local imports): module -> the posenet_ros modules it imports."""
    modules = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    imports: dict[str, set[str]] = {name: set() for name in modules}
    local: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for targets, in_function in visitor.found:
            found = {target for target in targets if target in modules and target != name}
            imports[name] |= found
            if in_function:
                local[name] |= found
    return imports, local


def upward_imports(imports: dict[str, set[str]]) -> list[str]:
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    return sorted(f"{module} -> {target}" for module, targets in imports.items() for target in targets
                  if rank[_layer(target)] < rank[_layer(module)])


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(imports[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found


def levels(imports: dict[str, set[str]]) -> dict[str, int]:
    """Each module's level: 0 for a module that imports no posenet_ros module, else 1 + the highest
    level it imports (defined for an acyclic graph)."""
    level: dict[str, int] = {}

    def of(module: str) -> int:
        if module not in level:
            level[module] = 1 + max((of(target) for target in imports[module]), default=-1)
        return level[module]

    for module in imports:
        of(module)
    return level


def test_every_module_is_in_a_layer() -> None:
    imports, _ = import_graph()
    assert len(imports) > 40
    assert {_layer(module) for module in imports} <= set(LAYERS)


def test_imports_point_down() -> None:
    imports, _ = import_graph()
    assert upward_imports(imports) == []


def test_no_import_cycles() -> None:
    imports, _ = import_graph()
    assert cycles(imports) == []
    assert max(levels(imports).values()) >= 5  # the graph was read (a sanity bound, not a target)


def test_function_local_imports_only_where_deferred_on_purpose() -> None:
    _, local = import_graph()
    assert {module for module, targets in local.items() if targets} <= DEFERRED_IMPORTS_ALLOWED


def test_the_checks_catch_violations() -> None:
    graph = {"posenet_ros.core.a": {"posenet_ros.runtime.b"}, "posenet_ros.runtime.b": {"posenet_ros.core.a"}}
    assert upward_imports(graph) == ["posenet_ros.core.a -> posenet_ros.runtime.b"]
    assert cycles(graph) == [["posenet_ros.core.a", "posenet_ros.runtime.b"]]


def test_only_the_rclpy_node_imports_ros_python_packages() -> None:
    importers = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(module.split(".")[0] in ROS_MODULES for module in modules):
                importers.append(path.relative_to(PACKAGE_DIR.parent).as_posix())
    assert set(importers) == {"posenet_ros/node/rclpy_node.py"}
