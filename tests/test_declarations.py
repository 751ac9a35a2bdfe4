"""Each method is declared once: its name by the registry, its options by its constructor;
and the package's import graph has no cycle (methods never import surgery)."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

import normlab
from normlab.methods import METHODS, Method, MethodRegistry, create_method

ROOT = pathlib.Path(normlab.__file__).parent


@pytest.mark.parametrize("name", METHODS.names())
def test_options_rebuild_an_equal_method(name):
    method = create_method(name)
    assert method.name == name == METHODS.get(name).name
    options = method.options()
    # every constructor argument is recorded, in signature order, and nothing else
    params = [p.name for p in inspect.signature(type(method)).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert list(options) == params
    rebuilt = create_method(name, **options)
    assert type(rebuilt) is type(method) and rebuilt.options() == options
    assert repr(rebuilt) == repr(method)


def test_options_follow_non_default_arguments():
    method = create_method("linf_batch_norm", k=3, correction="paper", scale=False)
    assert method.options() == {"scale": False, "momentum": 0.1, "eps": 1e-5, "k": 3,
                                "correction": "paper"}
    assert create_method("bounded_weight_norm", norm="linf").options() == {"norm": "linf"}
    assert repr(create_method("std_loss", weight=0.5)) == \
        "StandardizationLossMethod(weight=0.5, eps=1e-05, stats='replica', reduction='sum', " \
        "logits=False, bias=True)"


def test_a_constructor_argument_not_stored_under_its_name_fails_loudly():
    class Forgetful(Method):
        def __init__(self, width: int = 3, norm: str = "l2") -> None:
            self.width = width
            self.norm_kind = norm  # ``self.norm`` is the hook: not an option's value

    with pytest.raises(AttributeError, match="'norm' as self.norm"):
        Forgetful().options()

    class Mapped(Forgetful):
        option_attributes = {"norm": "norm_kind"}

    assert Mapped(width=5).options() == {"width": 5, "norm": "l2"}


def test_registration_names_the_class():
    registry = MethodRegistry("method")

    @registry.register("My-Norm")
    class Mine(Method):
        pass

    assert Mine.name == "my_norm" and registry.get("my norm") is Mine
    assert Method.name == ""  # the base class is not renamed


def _imports(path: pathlib.Path) -> set[str]:
    """Every ``normlab`` module ``path`` imports, at top level or inside a function."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "normlab" or m.startswith("normlab.")}


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        source = _subpackage(module.removesuffix(".__init__"))
        if source == "normlab":
            continue  # the root package re-exports its subpackages
        graph.setdefault(source, set()).update(
            _subpackage(t) for t in _imports(path) if _subpackage(t) not in ("normlab", source))
    assert "normlab.surgery" not in graph["normlab.methods"]

    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail(f"import cycle: {' -> '.join(trail + [node, nxt])}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
