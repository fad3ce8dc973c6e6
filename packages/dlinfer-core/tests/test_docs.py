"""The op table in the README is generated from the spec and must not drift from it."""

from pathlib import Path

from dlinfer.docs import BEGIN, END, render


def test_readme_op_table_matches_spec() -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), "README op table is stale: regenerate it with `python -m dlinfer.docs`"


def test_ops_stub_matches_spec() -> None:
    from dlinfer.docs import STUB, render_stub

    assert STUB.read_text() == render_stub(), "ops.pyi is stale: regenerate it with `python -m dlinfer.docs --stub`"
    assert STUB.with_name("py.typed").exists(), "the package must declare py.typed for type checkers to read ops.pyi"


def test_ops_stub_declares_every_public_op_with_its_runtime_signature() -> None:
    import ast
    import inspect

    import torch

    import dlinfer.ops
    from dlinfer.docs import STUB

    def ann(node: ast.expr) -> object:  # the stub's annotation, evaluated like the runtime one
        return eval(ast.unparse(node), {"torch": torch})  # noqa: S307 - our own generated stub

    tree = ast.parse(STUB.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert sorted(defs) == sorted(dlinfer.ops.__all__)
    for name, node in defs.items():
        sig = inspect.signature(getattr(dlinfer.ops, name))
        a = node.args
        stub = [(x.arg, "POSITIONAL_OR_KEYWORD", ann(x.annotation)) for x in a.args]
        stub += [(x.arg, "KEYWORD_ONLY", ann(x.annotation)) for x in a.kwonlyargs]
        real = [(p.name, p.kind.name, p.annotation) for p in sig.parameters.values()]
        assert stub == real, name
        defaults = len(a.defaults) + sum(d is not None for d in a.kw_defaults)
        assert defaults == sum(p.default is not inspect.Parameter.empty for p in sig.parameters.values()), name
        assert ann(node.returns) == sig.return_annotation, name
        assert ast.get_docstring(node) == inspect.getdoc(getattr(dlinfer.ops, name)), name
