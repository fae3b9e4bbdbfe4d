"""`dynrec`'s public names: `__all__` comes from `_LAZY` plus the eager names, and the
type-checking imports (which keep ``from dynrec import X`` typed) name exactly the lazy ones."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import dynrec


def _type_checking_names() -> set[str]:
    tree = ast.parse(Path(dynrec.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    names: set[str] = set()
    for stmt in block.body:
        if isinstance(stmt, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in stmt.names)
        elif isinstance(stmt, ast.Assign):
            names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return names


def test_all_is_the_lazy_table_plus_the_eager_names() -> None:
    assert dynrec.__all__ == sorted([*dynrec._EAGER, *dynrec._LAZY])
    assert len(set(dynrec.__all__)) == len(dynrec.__all__)


def test_type_checking_imports_name_every_lazy_name() -> None:
    # `load_model` is only the source of the `load = load_model` assignment
    assert _type_checking_names() - {"load_model"} == set(dynrec._LAZY)


def test_every_public_name_resolves() -> None:
    for name in dynrec.__all__:
        module, attr = dynrec._LAZY.get(name, ("dynrec", name))
        expected = (
            importlib.import_module(module)
            if attr is None
            else getattr(importlib.import_module(module), attr)
        )
        assert getattr(dynrec, name) is expected, name
