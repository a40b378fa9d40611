"""In-memory handshakes in both roles, over TLS and DTLS, and the
lifetime rules: with-statements, closing a keystore an association still
uses, and collection without double frees."""
import gc

import pytest

import m2mpsk
from conftest import BACKEND_NAME, IDA, IDB, KEY, KPSA_ID, now_ms, pump

TRANSPORTS = [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS]
VERSIONS = {m2mpsk.TRANSPORT_TLS: "TLSv1.2", m2mpsk.TRANSPORT_DTLS: "DTLSv1.2"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_handshake_binds_both_identities(pair, transport):
    a, b = pair(transport)
    b.start(now_ms())
    a.start(now_ms())
    assert a.state() == m2mpsk.STATE_HANDSHAKING
    assert pump(a, b) is None
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    assert a.peer_id() == IDB and not a.peer_id_is_credential()
    assert b.peer_id() == "12-" + KPSA_ID and b.peer_id_is_credential()
    assert b.local_id() == IDB and a.local_id() is None
    assert a.kpsa_id() == b.kpsa_id() == KPSA_ID
    assert a.suite() == b.suite() and a.suite() in m2mpsk.suites()
    assert a.version() == b.version() == VERSIONS[transport]
    assert a.next_timeout() is None
    assert a.export(32, "EXPERIMENTAL m2mpsk") == b.export(32, "EXPERIMENTAL m2mpsk")
    assert a.export(16, "EXPERIMENTAL m2mpsk", b"ctx") != a.export(16, "EXPERIMENTAL m2mpsk")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_data_both_ways_and_close_notify(pair, transport):
    a, b = pair(transport)
    b.start(now_ms())
    a.start(now_ms())
    pump(a, b)
    a.write(b"request from A")
    pump(a, b)
    assert b.read() == b"request from A"
    assert b.read() == b""  # nothing more yet: not an error
    b.write(memoryview(bytearray(b"answer from B")))
    pump(a, b)
    assert a.read() == b"answer from B"
    a.close_notify()
    assert a.state() == m2mpsk.STATE_CLOSED
    pump(a, b)
    with pytest.raises(m2mpsk.Closed) as e:
        b.read()
    assert e.value.code == m2mpsk.E_CLOSED


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_responder_binds_ida_when_configured(transport):
    with m2mpsk.Keystore() as ks, m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        ks.add(KPSA_ID, KEY, IDA, IDB)
        cb.add_local_id(IDB)
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID) as a, \
                m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb, ks) as b:
            b.start(now_ms())
            a.start(now_ms())
            pump(a, b)
            assert b.peer_id() == IDA and not b.peer_id_is_credential()
            assert a.local_id() == IDA


def test_dtls_mtu_bounds_every_datagram(pair):
    a, b = pair(m2mpsk.TRANSPORT_DTLS)
    a.set_mtu(m2mpsk.MTU_MIN)
    b.set_mtu(m2mpsk.MTU_MIN)
    b.start(now_ms())
    a.start(now_ms())
    sizes = []
    for _ in range(50):
        for src, dst in ((a, b), (b, a)):
            while True:
                d = src.drain()
                if not d:
                    break
                sizes.append(len(d))
                dst.feed(d, now_ms())
    assert a.state() == m2mpsk.STATE_ESTABLISHED
    assert max(sizes) <= m2mpsk.MTU_MIN


def test_dtls_retransmits_a_lost_flight(pair):
    a, b = pair(m2mpsk.TRANSPORT_DTLS)
    b.start(1000)
    a.start(1000)
    lost = a.drain()  # the ClientHello never arrives
    assert lost and a.drain() == b""
    deadline = a.next_timeout()
    assert deadline is not None and deadline > 1000
    a.handle_timeout(deadline)
    again = a.drain()
    assert again  # the flight is sent again
    b.feed(again, deadline)
    pump(a, b)
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED


def test_association_outlives_closed_keystore_and_config():
    ks = m2mpsk.Keystore()
    ks.add(KPSA_ID, KEY, None, IDB)
    ca, cb = m2mpsk.Config(), m2mpsk.Config()
    cb.add_local_id(IDB)
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, ca, ks, KPSA_ID)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, cb, ks)
    ks.close()
    ca.close()
    del ks, ca, cb
    gc.collect()
    b.start(now_ms())
    a.start(now_ms())
    pump(a, b)
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED


def test_collected_associations_never_double_free(keystore):
    cfg = m2mpsk.Config()
    for i in range(2000):
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg,
                               keystore, KPSA_ID)
        if i % 3 == 0:
            a.close()           # freed now; the collector frees the holder
        elif i % 3 == 1:
            a.close()
            a.close()           # harmless
        del a                   # the collector frees everything
        if i % 100 == 0:
            gc.collect()
    # A reference cycle: freed by the cyclic collector, once.
    x = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg,
                           keystore, KPSA_ID)
    holder = [x]
    holder.append(holder)
    del x, holder
    gc.collect()
    cfg.close()


def test_with_closes_deterministically(keystore):
    with m2mpsk.Config() as cfg:
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg,
                                keystore, KPSA_ID) as a:
            a.start(now_ms())
            assert a.pending() > 0
        with pytest.raises(m2mpsk.Error) as e:
            a.start(now_ms())
        assert e.value.code == m2mpsk.E_INVALID
    with pytest.raises(m2mpsk.Error):
        cfg.add_local_id(IDB)


def test_keystore_lookup_count_and_memory():
    with m2mpsk.Keystore() as ks:
        assert len(ks) == 0 and ks.is_locked() in (True, False)
        ks.add(KPSA_ID, bytearray(KEY), IDA, IDB, 1700000000, 1900000000)
        r = ks.lookup(KPSA_ID)
        assert (r.ida, r.idb, r.not_before, r.not_after, r.revoked) == \
            (IDA, IDB, 1700000000, 1900000000, 0)
        assert ks.count() == len(ks) == 1
        assert ks.key_memory() > 0
        ks.revoke(KPSA_ID)
        assert ks.lookup(KPSA_ID).revoked == 1
        ks.remove(KPSA_ID)
        assert len(ks) == 0


def test_free_functions():
    assert m2mpsk.version_string().count(".") == 2
    major, minor, patch = (int(x) for x in m2mpsk.version_string().split("."))
    assert m2mpsk.version_number() == major * 10000 + minor * 100 + patch
    assert m2mpsk.backend_name() == BACKEND_NAME and m2mpsk.backend_error() == ""
    assert m2mpsk.suite_count() == len(m2mpsk.suites()) > 0
    assert m2mpsk.suite_name(m2mpsk.suite_count()) is None
    assert m2mpsk.strerror(m2mpsk.E_KEY_LENGTH) != m2mpsk.strerror(0)
    assert m2mpsk.strerror(12345) == "unknown status"
    assert m2mpsk.reason_name(m2mpsk.REASON_BAD_KEY) == "bad-key"
    assert m2mpsk.idb_server_name("//M2M.Example.com/cse-in") == "m2m.example.com"
    assert m2mpsk.idb_server_name("/cse-in") is None
    m2mpsk.kpsa_id_validate(KPSA_ID)
    m2mpsk.idb_validate(IDB)
    m2mpsk.ida_validate(IDA)


def test_docstrings_come_from_the_header():
    assert "human-readable description" in m2mpsk.strerror.__doc__
    assert "Starts the handshake" in m2mpsk.Association.start.__doc__
