"""Resource limits, rate limiting and audit events (since 0.2): the limits
refuse with E_LIMIT, a peer that keeps failing is blocked, and the event
queue reports what happened with the right fields."""
import pytest

import m2mpsk
from conftest import IDB, KEY, KPSA_ID, now_ms, pump, raises

TAG = "192.0.2.7:40000"
I, R = m2mpsk.ROLE_INITIATOR, m2mpsk.ROLE_RESPONDER
TLS = m2mpsk.TRANSPORT_TLS


def test_constants_are_the_header_values():
    assert m2mpsk.E_LIMIT == -33
    assert (m2mpsk.REASON_RATE_LIMITED, m2mpsk.REASON_LIMIT) == (11, 12)
    assert (m2mpsk.PEER_TAG_MAX, m2mpsk.MAX_INPUT_MIN) == (128, 65536)
    assert (m2mpsk.RATE_PEER, m2mpsk.RATE_KPSA_ID) == (0, 1)
    assert [m2mpsk.EVENT_NONE, m2mpsk.EVENT_ESTABLISHED, m2mpsk.EVENT_FAILED,
            m2mpsk.EVENT_REVOKED, m2mpsk.EVENT_RATE_LIMITED,
            m2mpsk.EVENT_CLOSED] == list(range(6))
    assert m2mpsk.event_type_name(m2mpsk.EVENT_ESTABLISHED) == "established"
    assert m2mpsk.event_type_name(m2mpsk.EVENT_RATE_LIMITED) == "rate-limited"
    assert m2mpsk.event_type_name(99) == "unknown"
    assert m2mpsk.reason_name(m2mpsk.REASON_RATE_LIMITED) == "rate-limited"
    assert m2mpsk.strerror(m2mpsk.E_LIMIT) != "unknown status"


def test_setters_validate_and_freeze(keystore):
    with m2mpsk.Config() as cfg:
        raises(m2mpsk.E_INVALID, cfg.set_max_handshakes, -1)
        raises(m2mpsk.E_INVALID, cfg.set_max_handshakes, 1 << 32)
        raises(m2mpsk.E_INVALID, cfg.set_max_input, m2mpsk.MAX_INPUT_MIN - 1)
        raises(m2mpsk.E_INVALID, cfg.set_max_input, (1 << 30) + 1)
        raises(m2mpsk.E_INVALID, cfg.set_rate_limit, 2, 1, 1, 1, 1)  # no such key
        raises(m2mpsk.E_INVALID, cfg.set_rate_limit, m2mpsk.RATE_PEER, 1, 0, 1, 1)
        raises(m2mpsk.E_INVALID, cfg.set_rate_limit, m2mpsk.RATE_PEER, 1, 1, 5, 4)
        raises(m2mpsk.E_INVALID, cfg.set_rate_limit, m2mpsk.RATE_PEER, -1, 1, 1, 1)
        raises(m2mpsk.E_INVALID, cfg.set_event_queue, 1048577)
        raises(m2mpsk.E_INVALID, cfg.peer_blocked, None, 0)
        raises(m2mpsk.E_INVALID, cfg.peer_blocked, TAG, -1)
        cfg.set_max_handshakes(0)
        cfg.set_max_input(m2mpsk.MAX_INPUT_MIN)
        cfg.set_rate_limit(m2mpsk.RATE_KPSA_ID, 0, 0, 0, 0)  # off: the rest unchecked
        cfg.set_event_queue(4)
        assert cfg.next_event() is None  # empty is not an error
        assert cfg.peer_blocked(TAG, now_ms()) is None
        with m2mpsk.Association(I, TLS, cfg, keystore, KPSA_ID):
            raises(m2mpsk.E_STATE, cfg.set_max_handshakes, 1)
            raises(m2mpsk.E_STATE, cfg.set_max_input, m2mpsk.MAX_INPUT_MIN)
            raises(m2mpsk.E_STATE, cfg.set_rate_limit, m2mpsk.RATE_PEER, 1, 1, 1, 1)
            raises(m2mpsk.E_STATE, cfg.set_event_queue, 8)
    raises(m2mpsk.E_INVALID, cfg.next_event)  # closed


def test_peer_tag_is_validated_and_set_only_before_start(pair):
    _, b = pair(TLS)
    assert b.peer_tag() is None
    raises(m2mpsk.E_INVALID, b.set_peer_tag, "")
    raises(m2mpsk.E_INVALID, b.set_peer_tag, "x" * (m2mpsk.PEER_TAG_MAX + 1))
    raises(m2mpsk.E_INVALID, b.set_peer_tag, "10.0.0.1\n:1")
    raises(m2mpsk.E_INVALID, b.set_peer_tag, None)
    assert b.peer_tag() is None
    b.set_peer_tag("x" * m2mpsk.PEER_TAG_MAX)
    b.set_peer_tag("[::1]:5684")  # replaces
    assert b.peer_tag() == "[::1]:5684"
    b.start(now_ms())
    raises(m2mpsk.E_STATE, b.set_peer_tag, "other")
    assert b.peer_tag() == "[::1]:5684"


def drain_events(cfg):
    evs = []
    while True:
        ev = cfg.next_event()
        if ev is None:
            return evs
        evs.append(ev)


def test_max_handshakes_refuses_with_e_limit(keystore):
    with m2mpsk.Config() as cb:
        cb.add_local_id(IDB)
        cb.set_max_handshakes(2)
        cb.set_event_queue(8)
        b1 = m2mpsk.Association(R, TLS, cb, keystore)
        b2 = m2mpsk.Association(R, TLS, cb, keystore)
        assert cb.handshakes_in_progress() == 2
        raises(m2mpsk.E_LIMIT, m2mpsk.Association, R, TLS, cb, keystore)
        assert cb.handshakes_in_progress() == 2
        evs = drain_events(cb)
        assert [(e.type(), e.reason(), e.role()) for e in evs] == \
            [(m2mpsk.EVENT_RATE_LIMITED, m2mpsk.REASON_LIMIT, R)]
        b1.close()  # frees its place
        assert cb.handshakes_in_progress() == 1
        with m2mpsk.Association(R, TLS, cb, keystore):
            assert cb.handshakes_in_progress() == 2
        assert cb.handshakes_in_progress() == 1
        b2.close()
        assert cb.handshakes_in_progress() == 0


def test_established_input_past_max_input_is_refused_whole_then_accepted(keystore):
    with m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        cb.add_local_id(IDB)
        cb.set_max_input(m2mpsk.MAX_INPUT_MIN)
        with m2mpsk.Association(I, TLS, ca, keystore, KPSA_ID) as a, \
                m2mpsk.Association(R, TLS, cb, keystore) as b:
            b.start(now_ms())
            a.start(now_ms())
            assert pump(a, b) is None
            data = bytes(i % 251 for i in range(80000))
            for i in range(0, len(data), 20000):
                a.write(data[i:i + 20000])
            wire = b""
            while out := a.drain():
                wire += out
            assert len(wire) > m2mpsk.MAX_INPUT_MIN
            raises(m2mpsk.E_LIMIT, b.feed, wire, now_ms())
            assert b.state() == m2mpsk.STATE_ESTABLISHED
            assert b.read() == b""  # nothing was consumed
            got = b""
            half = len(wire) // 2
            for part in (wire[:half], wire[half:]):  # feed again, reading between
                b.feed(part, now_ms())
                while chunk := b.read():
                    got += chunk
            assert got == data


def attempt(cb, ks_b, ks_a, tag):
    """One TLS handshake between a fresh initiator and a fresh responder of
    cb tagged `tag`; returns the responder's failure reason (REASON_NONE when
    established) and what the responder had to send after start()."""
    with m2mpsk.Config() as ca, \
            m2mpsk.Association(I, TLS, ca, ks_a, KPSA_ID) as a, \
            m2mpsk.Association(R, TLS, cb, ks_b) as b:
        b.set_peer_tag(tag)
        try:
            b.start(now_ms())
        except m2mpsk.Failed as e:
            assert e.reason == b.failure()
            return b.failure(), b.drain()
        a.start(now_ms())
        pump(a, b)
        if b.state() == m2mpsk.STATE_ESTABLISHED:
            assert a.state() == m2mpsk.STATE_ESTABLISHED
        return b.failure(), None


def test_peer_blocked_after_wrong_key_handshakes(keystore):
    with m2mpsk.Keystore() as wrong, m2mpsk.Config() as cb:
        wrong.add(KPSA_ID, bytes(reversed(KEY)), None, IDB)
        cb.add_local_id(IDB)
        cb.set_rate_limit(m2mpsk.RATE_PEER, 3, 60000, 5000, 20000)
        cb.set_rate_limit(m2mpsk.RATE_KPSA_ID, 0, 0, 0, 0)
        cb.set_event_queue(16)
        for i in range(3):
            assert cb.peer_blocked(TAG, now_ms()) is None, "blocked after %d" % i
            assert attempt(cb, keystore, wrong, TAG)[0] == m2mpsk.REASON_BAD_KEY
        t = now_ms()
        until = cb.peer_blocked(TAG, t)
        assert until is not None and t < until <= t + 5000
        # Blocked: refused at start with nothing sent, even with the right key.
        reason, sent = attempt(cb, keystore, keystore, TAG)
        assert reason == m2mpsk.REASON_RATE_LIMITED and sent == b""
        # The block does not reach another peer.
        assert cb.peer_blocked("192.0.2.8:40000", now_ms()) is None
        assert attempt(cb, keystore, keystore, "192.0.2.8:40000")[0] == m2mpsk.REASON_NONE
        # The block ends when peer_blocked said.
        assert cb.peer_blocked(TAG, until) is None
        assert cb.peer_blocked(TAG, until - 1) == until

        evs = drain_events(cb)
        kinds = [(e.type(), e.reason(), e.peer_tag()) for e in evs]
        assert kinds[:5] == [(m2mpsk.EVENT_FAILED, m2mpsk.REASON_BAD_KEY, TAG)] * 3 + [
            (m2mpsk.EVENT_RATE_LIMITED, m2mpsk.REASON_RATE_LIMITED, TAG),
            (m2mpsk.EVENT_ESTABLISHED, m2mpsk.REASON_NONE, "192.0.2.8:40000")]
        assert all(e.role() == R and e.kpsa_id() in (KPSA_ID, None) for e in evs)
        assert evs[0].kpsa_id() == KPSA_ID and evs[0].peer_id() is None
        assert TAG in evs[3].detail()


@pytest.mark.parametrize("transport", [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS])
def test_events_established_then_closed(keystore, transport):
    tag = "198.51.100.1:5684"
    version = "TLSv1.2" if transport == TLS else "DTLSv1.2"
    with m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        cb.add_local_id(IDB)
        ca.set_event_queue(8)
        cb.set_event_queue(8)
        t0 = now_ms()
        with m2mpsk.Association(I, transport, ca, keystore, KPSA_ID) as a, \
                m2mpsk.Association(R, transport, cb, keystore) as b:
            b.set_peer_tag(tag)
            b.start(t0)
            a.start(t0)
            assert pump(a, b) is None
            a.close_notify()
            pump(a, b)
            with pytest.raises(m2mpsk.Closed):
                b.read()
            b.close_notify()
        t1 = now_ms()

        evs = drain_events(cb)
        assert [e.type() for e in evs] == [m2mpsk.EVENT_ESTABLISHED, m2mpsk.EVENT_CLOSED]
        est, closed = evs
        assert est.reason() == m2mpsk.REASON_NONE
        assert est.role() == R and est.transport() == transport
        assert t0 <= est.time_ms() <= closed.time_ms() <= t1
        assert est.kpsa_id() == KPSA_ID
        assert est.peer_id() == "12-" + KPSA_ID and est.peer_id_is_credential()
        assert est.peer_tag() == tag
        assert version in est.detail()
        assert "established" in repr(est)
        assert closed.detail() == "close_notify received"
        assert closed.peer_id() == "12-" + KPSA_ID and closed.peer_tag() == tag
        assert cb.next_event() is None and cb.events_dropped() == 0

        evs = drain_events(ca)
        assert [(e.type(), e.role()) for e in evs] == \
            [(m2mpsk.EVENT_ESTABLISHED, I), (m2mpsk.EVENT_CLOSED, I)]
        assert evs[0].peer_id() == IDB and not evs[0].peer_id_is_credential()
        assert evs[0].peer_tag() is None
        assert evs[1].detail() == "close_notify sent"

        # An event is the caller's: closing it frees it, once.
        est.close()
        est.close()
        raises(m2mpsk.E_INVALID, est.type)     # closed: no event left
        raises(m2mpsk.E_INVALID, est.peer_id)
        assert repr(est) == "Event(closed)"
        with closed:
            pass
        raises(m2mpsk.E_INVALID, closed.type)


def test_event_queue_is_bounded_and_counts_drops(keystore):
    with m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        cb.add_local_id(IDB)
        cb.set_event_queue(1)
        a = m2mpsk.Association(I, TLS, ca, keystore, KPSA_ID)
        b = m2mpsk.Association(R, TLS, cb, keystore)
        b.start(now_ms())
        a.start(now_ms())
        pump(a, b)
        b.close_notify()  # a second event, for which there is no room
        a.close()
        b.close()
        assert cb.events_dropped() == 1
        evs = drain_events(cb)
        assert [e.type() for e in evs] == [m2mpsk.EVENT_ESTABLISHED]


def test_event_is_made_only_by_the_queue():
    with pytest.raises(AttributeError):
        m2mpsk.Event()
