"""The DTLS cookie exchange, Config.dtls_listen() (since 0.2): with OpenSSL
the HelloVerifyRequest comes back as bytes and a cookie-bearing
ClientHello as None; BoringSSL has no HelloVerifyRequest and raises
E_UNSUPPORTED."""
import pytest

import m2mpsk
from conftest import BACKEND, IDB, KPSA_ID, now_ms, pump, raises

DTLS = m2mpsk.TRANSPORT_DTLS
TAG = "192.0.2.7:5684"
OTHER_TAG = "192.0.2.8:5684"

need_cookies = pytest.mark.skipif(BACKEND != "openssl",
                                  reason="the %s backend has no cookie exchange" % BACKEND)


@pytest.fixture
def configs():
    """(Entity A's config, Entity B's config)."""
    with m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        cb.add_local_id(IDB)
        yield ca, cb


def handshake_type(d):
    """The handshake message type of a datagram's first record, or None."""
    return d[13] if len(d) > 13 and d[0] == 22 else None


def first_client_hello(ca, keystore):
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, DTLS, ca, keystore, KPSA_ID)
    a.start(now_ms())
    ch = a.drain()
    assert handshake_type(ch) == 1
    return a, ch


@pytest.mark.skipif(BACKEND != "boringssl", reason="BoringSSL only")
def test_boringssl_raises_unsupported_and_dtls_works_without(configs, keystore):
    ca, cb = configs
    a, ch = first_client_hello(ca, keystore)
    with a:
        raises(m2mpsk.E_UNSUPPORTED, cb.dtls_listen, TAG, ch)
        cb.set_handshake_timeout(30000)  # the refused call froze nothing
        # Create the association at once instead.
        with m2mpsk.Association(m2mpsk.ROLE_RESPONDER, DTLS, cb, keystore) as b:
            b.set_peer_tag(TAG)
            b.start(now_ms())
            b.feed(ch, now_ms())
            assert pump(a, b) is None
            assert b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()


@need_cookies
def test_stateless_exchange_then_handshake(configs, keystore):
    ca, cb = configs
    cb.set_event_queue(8)
    a, ch1 = first_client_hello(ca, keystore)
    with a:
        hvr = cb.dtls_listen(TAG, ch1)
        assert isinstance(hvr, bytes) and handshake_type(hvr) == 3
        assert len(hvr) <= 64
        # Nothing was kept for the peer.
        assert cb.handshakes_in_progress() == 0 and cb.next_event() is None
        a.feed(hvr, now_ms())
        ch2 = a.drain()
        assert handshake_type(ch2) == 1 and ch2 != ch1
        assert cb.dtls_listen(TAG, ch2) is None  # the cookie is valid
        with m2mpsk.Association(m2mpsk.ROLE_RESPONDER, DTLS, cb, keystore) as b:
            b.set_peer_tag(TAG)
            b.start(now_ms())
            b.feed(ch2, now_ms())
            assert pump(a, b) is None
            assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
            assert b.peer_id() == "12-" + KPSA_ID and a.peer_id() == IDB
            assert b.peer_tag() == TAG
            a.write(b"after the cookie")
            pump(a, b)
            assert b.read() == b"after the cookie"


@need_cookies
def test_cookie_is_bound_to_the_peer_tag(configs, keystore):
    ca, cb = configs
    a, ch1 = first_client_hello(ca, keystore)
    with a:
        a.feed(cb.dtls_listen(TAG, ch1), now_ms())
        ch2 = a.drain()
        hvr = cb.dtls_listen(OTHER_TAG, bytearray(ch2))  # any bytes-like object
        assert handshake_type(hvr) == 3
        assert cb.dtls_listen(TAG, memoryview(ch2)) is None


def test_protocol_status_is_exposed():
    assert m2mpsk.E_PROTOCOL == -35
    assert m2mpsk.strerror(m2mpsk.E_PROTOCOL) == \
        "malformed or unexpected bytes from the peer"


@need_cookies
def test_dtls_listen_refuses_what_is_not_a_client_hello(configs, keystore):
    ca, cb = configs
    a, ch1 = first_client_hello(ca, keystore)
    with a:
        hvr = cb.dtls_listen(TAG, ch1)
        # The peer's garbage is E_PROTOCOL; the caller's mistake E_INVALID.
        raises(m2mpsk.E_PROTOCOL, cb.dtls_listen, TAG, hvr)  # not a ClientHello
        raises(m2mpsk.E_PROTOCOL, cb.dtls_listen, TAG, b"\x16" + bytes(20))
        raises(m2mpsk.E_PROTOCOL, cb.dtls_listen, TAG, ch1[:40])  # cut short
        raises(m2mpsk.E_INVALID, cb.dtls_listen, TAG, bytes(65536))  # oversized


def test_dtls_listen_checks_its_arguments(configs, keystore):
    ca, cb = configs
    a, ch1 = first_client_hello(ca, keystore)
    with a:
        raises(m2mpsk.E_INVALID, cb.dtls_listen, "", ch1)
        raises(m2mpsk.E_INVALID, cb.dtls_listen, "x" * (m2mpsk.PEER_TAG_MAX + 1), ch1)
        raises(m2mpsk.E_INVALID, cb.dtls_listen, "tab\there", ch1)
        raises(m2mpsk.E_INVALID, cb.dtls_listen, None, ch1)
        raises(m2mpsk.E_INVALID, cb.dtls_listen, TAG, b"")
        raises(m2mpsk.E_INVALID, cb.dtls_listen, TAG, None)
        with pytest.raises(TypeError):
            cb.dtls_listen(TAG, "a str is not a datagram")
        cb.close()
        raises(m2mpsk.E_INVALID, cb.dtls_listen, TAG, ch1)  # closed
