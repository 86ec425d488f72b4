"""The names scenario authors may import; changing them breaks their scenarios."""

import ast
import inspect
from pathlib import Path

import pytest

import ctxlab
from ctxlab import probe, scenario

API = [probe, scenario]
ROOT = Path(__file__).resolve().parent.parent


def test_package_holds_only_the_version():
    (statement,) = ast.parse(inspect.getsource(ctxlab)).body
    assert [target.id for target in statement.targets] == ["__version__"]


@pytest.mark.parametrize("module", API, ids=lambda m: m.__name__)
def test_all_is_what_the_module_exports(module):
    """Every name in `__all__` is a public name of the module, and a star
    import gives exactly those."""
    public = {name for name in vars(module) if not name.startswith("_")}
    assert set(module.__all__) <= public
    assert len(module.__all__) == len(set(module.__all__))
    namespace = {}
    exec(f"from {module.__name__} import *", namespace)  # noqa: S102 - what `import *` in a scenario gives
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(module.__all__)


def imported_from_api(path):
    """(module, name) for each name `path` imports from the scenario API."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in {m.__name__ for m in API}:
            yield from ((node.module, alias.name) for alias in node.names)


def test_scenarios_import_only_the_public_api():
    """Bundled scenarios and the user apps of the tests are written as an
    author writes them: they import nothing that `__all__` leaves out."""
    files = [*sorted((ROOT / "scenarios").glob("*.py")), *sorted((ROOT / "tests" / "fixtures").rglob("*.py"))]
    imported = {pair for path in files for pair in imported_from_api(path)}
    exported = {(m.__name__, name) for m in API for name in m.__all__}
    assert imported <= exported
