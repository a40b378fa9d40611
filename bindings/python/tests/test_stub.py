"""The type hints in m2mpsk.pyi name exactly what the module has: every
public name and method, and their parameters, in both directions."""
import ast
import asyncio
import inspect
import os
import socket
import ssl

import m2mpsk
from conftest import IDB, KEY, KPSA_ID

STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "m2mpsk.pyi")
# The stub's own helpers, and SWIG's per-object ownership flag.
STUB_ONLY = {"Buffer", "KeySourceFn"}
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
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names[t.id] = node
    return names


def stub_members(node, classes):
    """stub_names() of a stub class, with what it inherits from the stub's
    own classes (PSKObject's accessors are declared once, on _Bound)."""
    names = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            names.update(stub_members(classes[base.id], classes))
    names.update(stub_names(node.body))
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
    a = fn.args
    names = [x.arg for x in a.args + ([a.vararg] if a.vararg else []) + a.kwonlyargs +
             ([a.kwarg] if a.kwarg else [])]
    return [n for n in names if n != "self"]


def instance(name, made):
    """An instance of the drop-in classes, whose attributes (declared in the
    stub's class bodies) are set by __init__ or wrap_*()."""
    ctx = m2mpsk.Context(kpsa_id=KPSA_ID)
    ctx.keystore.add(KPSA_ID, KEY, None, IDB)
    if name == "Context":
        return ctx
    if name == "PSKObject":
        o = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    elif name == "DTLSObject":
        o = m2mpsk.DTLSObject(m2mpsk.Association(m2mpsk.ROLE_INITIATOR,
                                                 m2mpsk.TRANSPORT_DTLS, ctx.config,
                                                 ctx.keystore, KPSA_ID), False)
        made.append(o.association)
        return o
    elif name == "DTLSServer":
        loop = asyncio.new_event_loop()
        made.append(loop)
        return m2mpsk.DTLSServer(loop, ctx, object, 1, 1.0, 1.0)
    else:
        a, b = socket.socketpair()
        made.append(b)
        o = ctx.wrap_socket(a, do_handshake_on_connect=False)
    made.append(o)
    return o


def own_names(cls):
    """What m2mpsk's own classes in cls's MRO define: not what PSKSocket
    inherits from socket.socket, whose names the stub gets from its base."""
    names = set()
    for k in cls.__mro__:
        if k.__module__ == "m2mpsk":
            names |= set(vars(k))
    return names


def test_classes_and_signatures_match_the_stub():
    made = []
    declared = stub_names(stub_tree().body)
    classes = {n: c for n, c in declared.items() if isinstance(c, ast.ClassDef)}
    for name, node in declared.items():
        obj = getattr(m2mpsk, name, None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert params(node) == list(inspect.signature(obj).parameters), name
        if not isinstance(node, ast.ClassDef) or issubclass(obj, BaseException):
            continue
        members = stub_members(node, classes)
        actual = public(own_names(obj)) - SWIG_MEMBERS
        assert sorted(actual - public(members)) == [], "%s: missing from the stub" % name
        for m, fn in members.items():
            if isinstance(fn, ast.AnnAssign) and name in ("Context", "PSKObject", "PSKSocket",
                                                          "DTLSObject", "DTLSServer"):
                assert hasattr(instance(name, made), m), "%s.%s: no such attribute" % (name, m)
                continue
            assert hasattr(obj, m), "%s.%s in the stub, not in the module" % (name, m)
            attr = getattr(obj, m)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and callable(attr) and \
                    not any(isinstance(d, ast.Name) and d.id == "property"
                            for d in fn.decorator_list) and \
                    not m.startswith("__"):
                sig = list(inspect.signature(attr).parameters)
                assert params(fn) == [p for p in sig if p != "self"], "%s.%s" % (name, m)
    for x in made:
        x.close()
