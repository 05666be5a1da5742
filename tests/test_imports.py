"""The package's shape: imports flow one way (no cycles, counting imports inside functions), and
`study --help` loads neither torch, ray, pandas nor matplotlib, nor `study train` pandas."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, write_idx_set

ROOT = PROJECT_ROOT
PACKAGES = ("lenet_core", "study")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports: at the top, inside a function, and type-only ones
    under ``if TYPE_CHECKING:`` too (a circle through a type hint is still a circle)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, known) for p in paths}
    # a package's __init__ is imported with any of its modules; it does not make a cycle by itself
    return {m: {d for d in deps if d != m and not m.startswith(d + ".")} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = import_graph()
    assert "study.stages.tune.run" in graph and "study.common.files" in graph["study.stages.tune.run"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lenet_core_never_imports_study():
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("lenet_core"):
            assert not {d for d in deps if d.startswith("study")}, module


def test_help_loads_no_heavy_library():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from study.cli import app\n"
        "for args in (['--help'], ['tune', '--help'], ['ensemble', '--help'], ['run', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_warm_study_train_loads_neither_pandas_ray_nor_matplotlib(tmp_path):
    # pyarrow imports pandas when it converts Python objects, so the history is written without
    # that; scikit-learn imports it too, which a warm split cache skips (the first run warms it).
    write_idx_set(tmp_path / "data", n_train=200, gz=True)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from study.cli import app\n"
        "args = ['train', '--dataset', 'mnist', '--epochs', '1', '--threads', '1', '--overwrite',\n"
        f"        '--data-dir', {str(tmp_path / 'data')!r}, '--out', {str(tmp_path)!r}, '--name', 'x']\n"
        "result = CliRunner().invoke(app, args)\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('ray', 'pandas', 'matplotlib') if m in sys.modules))\n"
    )
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "x" / "train" / "history.parquet").is_file()
