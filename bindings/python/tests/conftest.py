"""Shared helpers for the binding's tests: the record both entities hold, a
monotonic clock, an in-memory link that moves bytes between two
associations, and the check that a call raises the right error."""
import os
import time

import pytest

import m2mpsk

KPSA_ID = "test@onem2m.com"
KEY = bytes(range(32))
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
# The TLS backend this build is expected to have: ctest passes the build's
# M2MPSK_TLS, so a module loading another backend fails the tests.
BACKEND = os.environ.get("M2MPSK_TLS", "boringssl")
# What backend_name() answers: the build's engines joined by "+"
# ("boringssl+openssl" for the default build).
BACKEND_NAME = os.environ.get("M2MPSK_BACKEND_NAME", BACKEND)
ENGINES = BACKEND_NAME.split("+")


def now_ms():
    return int(time.monotonic() * 1000)


def raises(code, fn, *args, cls=m2mpsk.Error, reason=m2mpsk.REASON_NONE):
    """Calls fn(*args), which must raise `cls` with this code and reason, a
    detail, and the status description in its message."""
    with pytest.raises(cls) as e:
        fn(*args)
    assert e.value.code == code, str(e.value)
    assert e.value.reason == reason, str(e.value)
    assert e.value.detail
    assert m2mpsk.strerror(code) in str(e.value)
    return e.value


def pump(a, b, rounds=50):
    """Moves every drained byte (or datagram) from each side to the other
    until neither has anything to send. Returns the last exception a feed
    raised, if any: a failing handshake raises on the side that fails."""
    failure = None
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            while True:
                out = src.drain()
                if not out:
                    break
                moved = True
                if dst.state() in (m2mpsk.STATE_FAILED, m2mpsk.STATE_CLOSED):
                    continue
                try:
                    dst.feed(out, now_ms())
                except m2mpsk.Failed as e:
                    failure = e
        if not moved:
            break
    return failure


@pytest.fixture
def keystore():
    with m2mpsk.Keystore() as ks:
        ks.add(KPSA_ID, KEY, None, IDB)
        yield ks


@pytest.fixture
def pair(keystore):
    """A factory of (initiator, responder) over a transport."""
    made = []

    def make(transport, ks_a=None, ks_b=None, kpsa_id=KPSA_ID):
        ca = m2mpsk.Config()
        cb = m2mpsk.Config()
        cb.add_local_id(IDB)
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca,
                               ks_a or keystore, kpsa_id)
        b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb,
                               ks_b or keystore)
        made.extend((a, b))
        return a, b

    yield make
    for x in made:
        x.close()
