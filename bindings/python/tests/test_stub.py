"""The type hints in m2mpsk.pyi name exactly what the module has: every
public name and method, and their parameters, in both directions."""
import ast
import inspect
import os

import m2mpsk

STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "m2mpsk.pyi")
# The stub's own helpers, and SWIG's per-object ownership flag.
STUB_ONLY = {"Buffer"}
SWIG_MEMBERS = {"thisown"}


def stub_tree():
    with open(STUB) as f:
        return ast.parse(f.read())


def stub_names(body):
    """{name: node} of what a module or class body declares."""
    names = {}
    for node in body:
        if isinstance(node, ast.AnnAssign):
            names[node.target.id] = node
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names[t.id] = node
    return names


def public(names):
    return {n for n in names if not n.startswith("_")}


def test_module_names_match_the_stub():
    declared = public(stub_names(stub_tree().body)) - STUB_ONLY
    actual = public(vars(m2mpsk))
    assert sorted(actual - declared) == [], "missing from m2mpsk.pyi"
    assert sorted(declared - actual) == [], "in m2mpsk.pyi, not in the module"


def params(fn):
    """Parameter names of a stub function node, without self."""
    names = [a.arg for a in fn.args.args]
    return [n for n in names if n != "self"]


def test_classes_and_signatures_match_the_stub():
    for name, node in stub_names(stub_tree().body).items():
        obj = getattr(m2mpsk, name, None)
        if isinstance(node, ast.FunctionDef):
            assert params(node) == list(inspect.signature(obj).parameters), name
        if not isinstance(node, ast.ClassDef) or issubclass(obj, BaseException):
            continue
        members = stub_names(node.body)
        actual = public(n for n in dir(obj)) - SWIG_MEMBERS
        assert sorted(actual - public(members)) == [], "%s: missing from the stub" % name
        for m, fn in members.items():
            assert hasattr(obj, m), "%s.%s in the stub, not in the module" % (name, m)
            attr = getattr(obj, m)
            if isinstance(fn, ast.FunctionDef) and callable(attr) and \
                    not any(isinstance(d, ast.Name) and d.id == "property"
                            for d in fn.decorator_list) and \
                    not m.startswith("__"):
                sig = list(inspect.signature(attr).parameters)
                assert params(fn) == [p for p in sig if p != "self"], "%s.%s" % (name, m)
