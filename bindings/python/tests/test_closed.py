"""Closed handles and missing arguments, for every method of every handle
class, found by introspection so that a new method cannot escape the rules:

- after close() (or the end of a with block) every method, accessors
  included, raises Error with E_INVALID ("the handle is closed"), as does
  a with statement on it, and close() again does nothing;
- None where a method needs a value (a str or a bytes-like argument that is
  not Optional in m2mpsk.pyi) raises Error with E_INVALID, as the C
  function does for NULL: never an empty feed() or write() that succeeds.
"""
import inspect
import io
import socket
import ssl

import pytest

import m2mpsk
from conftest import IDA, IDB, KEY, KPSA_ID, raises

HANDLES = (m2mpsk.Keystore, m2mpsk.Config, m2mpsk.Association, m2mpsk.Event,
           m2mpsk.PSKSocket, m2mpsk.PSKObject, m2mpsk.KeyRequest)
# What close() leaves alone: close() itself, and the with-statement hooks
# (whose __exit__ is close()).
RELEASE = {"close", "__enter__", "__exit__"}
# Dunder methods that reach the library.
DUNDERS = {"__len__"}

# A valid value for each parameter name, so that the only fault of a call is
# the closed handle (or the one None). A method with a parameter not listed
# here fails test_every_parameter_has_a_sample until it is added.
SAMPLES = {
    "kpsa_id": "other@onem2m.com", "key": KEY, "ke": KEY, "ida": IDA, "idb": IDB,
    "enrolee_b_id": IDA, "not_before": 0, "not_after": 0, "path": "/dev/null",
    "iana_names": m2mpsk.suite_name(0), "ms": 1000, "on": True,
    "profile": m2mpsk.PROFILE_TS0003, "transport": m2mpsk.TRANSPORT_TLS, "n": 1,
    "engine": m2mpsk.ENGINE_AUTO,
    "bytes": m2mpsk.MAX_INPUT_MIN, "max_failures": 1, "window_ms": 1, "block_ms": 1,
    "block_max_ms": 1, "peer_tag": "192.0.2.7:40000", "now_ms": 1000, "capacity": 1,
    "datagram": bytes(64), "mtu": 1400, "tag": "192.0.2.7:40000", "unix_time": 0,
    "data": b"x", "ae_id": "/cse-in/Cae1", "max": 16384, "length": 16,
    "label": "EXPERIMENTAL m2mpsk", "context": None,
    "bufsize": 1, "buffer": bytearray(1), "how": socket.SHUT_RDWR, "from_": "/cse-in/Cae1",
    "file": io.BytesIO(b"x"), "flags_or_addr": ("127.0.0.1", 9), "buffers": [b"x"],
    "source": lambda kpsa_id, server_name: None, "max_pending": 1,
}
# Config.set_rate_limit's `key` is a rate key, not key bytes.
SAMPLES_BY_METHOD = {("set_rate_limit", "key"): m2mpsk.RATE_PEER}
# Parameters for which None is a value (typed Optional in m2mpsk.pyi).
NULLABLE = {"ida", "context", "from_", "source"}
# The loopback peers of the PSKSockets make() returns.
PEERS = []


@pytest.fixture(autouse=True)
def close_peers():
    yield
    while PEERS:
        PEERS.pop().close()


def methods(cls):
    """Every public method of a handle class but the release ones: its own
    and those it inherits from m2mpsk's classes (PSKSocket's and
    PSKObject's association accessors), not socket.socket's."""
    names = [n for k in cls.__mro__ if k.__module__ == "m2mpsk"
             for n, v in vars(k).items()
             if callable(v) and (not n.startswith("_") or n in DUNDERS)]
    return sorted(set(names) - RELEASE)


def params(cls, name):
    """(parameter name, sample) for each required parameter of a method."""
    sig = inspect.signature(getattr(cls, name))
    out = []
    for p in list(sig.parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty:
            continue
        out.append((p.name, SAMPLES_BY_METHOD.get((name, p.name), SAMPLES.get(p.name, KeyError))))
    return out


def make(cls, keystore):
    """An open handle of cls."""
    if cls is m2mpsk.Keystore:
        return m2mpsk.Keystore()
    if cls is m2mpsk.Config:
        return m2mpsk.Config()
    if cls is m2mpsk.Association:
        return m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS,
                                  m2mpsk.Config(), keystore, KPSA_ID)
    if cls is m2mpsk.PSKObject:
        return m2mpsk.Context(keystore=keystore, kpsa_id=KPSA_ID).wrap_bio(
            ssl.MemoryBIO(), ssl.MemoryBIO())
    if cls is m2mpsk.PSKSocket:
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            c = socket.create_connection(lsock.getsockname(), timeout=10)
            PEERS.append(lsock.accept()[0])
        return m2mpsk.Context(keystore=keystore, kpsa_id=KPSA_ID).wrap_socket(
            c, do_handshake_on_connect=False)
    if cls is m2mpsk.KeyRequest:
        # An initiator whose KpsaID only the key source may have.
        ks = m2mpsk.Keystore()
        ks.set_source_queue(1)
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS,
                               m2mpsk.Config(), ks, "absent@onem2m.com")
        a.start(1000)
        req = ks.next_request()
        a.close()
        ks.close()
        assert isinstance(req, m2mpsk.KeyRequest)
        return req
    # An event: a responder past the config's handshake limit queues one.
    with m2mpsk.Config() as cfg:
        cfg.add_local_id(IDB)
        cfg.set_event_queue(4)
        cfg.set_max_handshakes(1)
        with m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, cfg, keystore):
            raises(m2mpsk.E_LIMIT, m2mpsk.Association, m2mpsk.ROLE_RESPONDER,
                   m2mpsk.TRANSPORT_TLS, cfg, keystore)
        ev = cfg.next_event()
    assert isinstance(ev, m2mpsk.Event) and ev.type() == m2mpsk.EVENT_RATE_LIMITED
    return ev


# asyncio's shapes follow asyncio's rules, not these: after close(),
# is_closing() says so and write() raises Error with E_INVALID
# (test_asyncio.py).
ASYNCIO = {m2mpsk.DTLSServer, m2mpsk.DTLSTransport}


def test_every_handle_class_is_covered():
    classes = {v for v in vars(m2mpsk).values()
               if inspect.isclass(v) and hasattr(v, "close") and v.__module__ == "m2mpsk"}
    assert classes - ASYNCIO == set(HANDLES)


@pytest.mark.parametrize("cls", HANDLES, ids=lambda c: c.__name__)
def test_every_parameter_has_a_sample(cls):
    missing = [(n, p) for n in methods(cls) for p, v in params(cls, n) if v is KeyError]
    assert not missing, "add a valid sample to SAMPLES for: %r" % missing


@pytest.mark.parametrize("release", ["close", "with"])
@pytest.mark.parametrize("cls", HANDLES, ids=lambda c: c.__name__)
def test_every_method_of_a_closed_handle_raises(cls, release, keystore):
    h = make(cls, keystore)
    if release == "close":
        h.close()
    else:
        with h:
            pass
    h.close()  # again: nothing happens
    called = []
    for name in methods(cls):
        args = [v for _, v in params(cls, name)]
        e = raises(m2mpsk.E_INVALID, getattr(h, name), *args)
        assert "closed" in e.detail, (name, e.detail)
        called.append(name)
    assert called
    if cls is m2mpsk.Keystore:
        assert "__len__" in called
        raises(m2mpsk.E_INVALID, len, h)
    if cls is m2mpsk.Event:
        assert repr(h) == "Event(closed)"
    h.close()


@pytest.mark.parametrize("cls", HANDLES, ids=lambda c: c.__name__)
def test_with_on_a_closed_handle_raises(cls, keystore):
    h = make(cls, keystore)
    h.close()
    with pytest.raises(m2mpsk.Error) as e:
        with h:
            pass
    assert e.value.code == m2mpsk.E_INVALID
    h.close()


def test_the_documented_getters_raise_instead_of_defaults(keystore):
    # The two answers issue 14 found: STATE_FAILED and None for a closed
    # association, indistinguishable from a real failure or an unbound peer.
    a = make(m2mpsk.Association, keystore)
    a.close()
    raises(m2mpsk.E_INVALID, a.state)
    raises(m2mpsk.E_INVALID, a.peer_id)
    raises(m2mpsk.E_INVALID, a.next_timeout)
    raises(m2mpsk.E_INVALID, a.pending)


def test_a_handle_argument_that_is_closed_or_none_raises(keystore):
    cfg = m2mpsk.Config()
    closed = m2mpsk.Config()
    closed.close()
    I, TLS = m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, TLS, closed, keystore, KPSA_ID)
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, TLS, None, keystore, KPSA_ID)
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, TLS, cfg, None, KPSA_ID)
    cfg.close()


@pytest.mark.parametrize("cls", HANDLES, ids=lambda c: c.__name__)
def test_none_for_a_required_argument_raises(cls, keystore):
    checked = []
    for name in methods(cls):
        ps = params(cls, name)
        for i, (p, v) in enumerate(ps):
            if p in NULLABLE or not isinstance(v, (str, bytes)):
                continue
            args = [None if j == i else s for j, (_, s) in enumerate(ps)]
            with make(cls, keystore) as h:
                e = raises(m2mpsk.E_INVALID, getattr(h, name), *args)
                assert "closed" not in e.detail, (name, p)
            checked.append((name, p))
    if cls is m2mpsk.Association:
        assert ("feed", "data") in checked and ("write", "data") in checked


def test_none_data_is_not_an_empty_feed_or_write(pair):
    # Before: feed(None) and write(None) reached the library as (NULL, 0),
    # an empty feed that succeeds.
    a, _ = pair(m2mpsk.TRANSPORT_TLS)
    a.start(1000)
    e = raises(m2mpsk.E_INVALID, a.feed, None, 1000)
    assert e.detail == "data is None"
    a.feed(b"", 1000)  # an empty buffer is an empty feed
    raises(m2mpsk.E_INVALID, a.write, None)
    with pytest.raises(TypeError):
        a.feed("text", 1000)


def test_none_for_free_functions_raises():
    for fn in (m2mpsk.kpsa_id_validate, m2mpsk.idb_validate, m2mpsk.ida_validate,
               m2mpsk.idb_server_name):
        raises(m2mpsk.E_INVALID, fn, None)
    raises(m2mpsk.E_INVALID, m2mpsk.originator_check, m2mpsk.PEER_NONE, None, None, "/cse-mn")
