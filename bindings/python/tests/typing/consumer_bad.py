"""A consumer with one type error on each line that ends in an error mark; `mypy
--strict` must report exactly those lines (ctest python_typing_consumer).
It is only type-checked, never run."""

import socket

import m2mpsk

ctx = m2mpsk.Context(server_side="yes", keystore=None)  # error: server_side
tls = ctx.wrap_socket(socket.socket(), kpsa_id=7)  # error: kpsa_id
tls.sendall("text, not bytes")  # error: sendall
peer: int = tls.peer_id()  # error: peer_id
ks = m2mpsk.Keystore()
ks.add("test@onem2m.com", "not bytes", None, "//m2m.example.com/cse-in")  # error: add
code: str = m2mpsk.Error(1, 2, "x").code  # error: code
ctx.wrap_bio(b"in", b"out")  # error: wrap_bio
ks.set_key_source(lambda kpsa_id: None)  # error: set_key_source
