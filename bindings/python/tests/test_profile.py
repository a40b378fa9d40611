"""The TS-0003 suite profile (10.2.2) and the suite queries (since 0.2),
with the backend this build is expected to have (M2MPSK_TLS): BoringSSL
lacks both mandated suites, OpenSSL 3 has them."""
import pytest

import m2mpsk
from conftest import BACKEND, ENGINES, IDB, KPSA_ID, now_ms, pump, raises

CBC256 = "TLS_PSK_WITH_AES_128_CBC_SHA256"
CCM8 = "TLS_PSK_WITH_AES_128_CCM_8"
TLS, DTLS = m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS
TS0003 = m2mpsk.PROFILE_TS0003


def test_constants_are_the_header_values():
    assert TS0003 == 1
    assert m2mpsk.E_UNSUPPORTED == -34
    assert m2mpsk.strerror(m2mpsk.E_UNSUPPORTED) != m2mpsk.strerror(12345)


def test_profile_missing_names_what_the_backend_lacks():
    if BACKEND == "boringssl":
        assert m2mpsk.profile_missing(TS0003) == CBC256 + ":" + CCM8
    else:
        assert m2mpsk.profile_missing(TS0003) == ""
    raises(m2mpsk.E_INVALID, m2mpsk.profile_missing, 0)
    raises(m2mpsk.E_INVALID, m2mpsk.profile_missing, 2)


def test_profile_suites_put_the_mandated_suite_first():
    tls = m2mpsk.profile_suites(TS0003, TLS).split(":")
    dtls = m2mpsk.profile_suites(TS0003, DTLS).split(":")
    for name in tls + dtls:
        assert name.startswith("TLS_PSK_WITH_"), name  # RFC 4279 key exchange only
        assert name in m2mpsk.suites(), name
    if BACKEND == "boringssl":
        assert tls == dtls == ["TLS_PSK_WITH_AES_128_CBC_SHA", "TLS_PSK_WITH_AES_256_CBC_SHA"]
    else:
        assert tls[0] == CBC256
        # CCM_8 (8-byte tags) comes last for TLS.
        assert all(n.endswith("_CCM_8") for n in tls[tls.index(CCM8):]), tls
        assert dtls[0] == CCM8 and CBC256 in dtls
    raises(m2mpsk.E_INVALID, m2mpsk.profile_suites, TS0003, 2)
    raises(m2mpsk.E_INVALID, m2mpsk.profile_suites, 9, TLS)


def test_set_profile_and_config_suites():
    with m2mpsk.Config() as cfg:
        before = {t: cfg.suites(t) for t in (TLS, DTLS)}
        if BACKEND == "boringssl":
            e = raises(m2mpsk.E_SUITE, cfg.set_profile, TS0003)
            assert e.reason == m2mpsk.REASON_NONE
            assert {t: cfg.suites(t) for t in (TLS, DTLS)} == before, "nothing changed"
        else:
            # Where the backend honours the profile, it is also the default.
            assert before == {t: m2mpsk.profile_suites(TS0003, t) for t in (TLS, DTLS)}
            cfg.set_profile(TS0003)
            assert cfg.suites(TLS).startswith(CBC256 + ":")
            assert cfg.suites(DTLS).startswith(CCM8 + ":")
        # An explicit list replaces the profile, and the other way round.
        cfg.set_suites("TLS_PSK_WITH_AES_256_CBC_SHA")
        assert cfg.suites(TLS) == cfg.suites(DTLS) == "TLS_PSK_WITH_AES_256_CBC_SHA"
        if BACKEND != "boringssl":
            cfg.set_profile(TS0003)
            assert cfg.suites(DTLS) == m2mpsk.profile_suites(TS0003, DTLS)
        raises(m2mpsk.E_INVALID, cfg.set_profile, 0)
        raises(m2mpsk.E_INVALID, cfg.suites, 5)
    raises(m2mpsk.E_INVALID, cfg.suites, TLS)  # closed
    raises(m2mpsk.E_INVALID, cfg.set_profile, TS0003)


def test_config_suites_returns_a_list_longer_than_1024_bytes():
    """A set_suites() list has no fixed bound: the binding grows its buffer."""
    names = ":".join(m2mpsk.suites() * 40)
    assert len(names) > 4096
    with m2mpsk.Config() as cfg:
        cfg.set_suites(names)
        assert cfg.suites(TLS) == names


def test_set_profile_on_a_frozen_config(keystore):
    with m2mpsk.Config() as cfg, \
            m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, cfg, keystore, KPSA_ID):
        # The backend's verdict comes first: nothing makes BoringSSL honour it.
        raises(m2mpsk.E_SUITE if BACKEND == "boringssl" else m2mpsk.E_STATE,
               cfg.set_profile, TS0003)
        assert cfg.suites(TLS)  # still readable when frozen


@pytest.mark.parametrize("transport", [TLS, DTLS])
def test_default_handshake_uses_the_mandated_suite(pair, transport):
    a, b = pair(transport)
    b.start(now_ms())
    a.start(now_ms())
    assert pump(a, b) is None
    # With both engines, the TLS responder reads the ClientHello and runs on
    # the fastest engine sharing a suite: BoringSSL, whose best of the
    # profile is TLS_PSK_WITH_AES_128_CBC_SHA (README, "Engines").
    both = len(ENGINES) > 1
    want = ("TLS_PSK_WITH_AES_128_CBC_SHA"
            if BACKEND == "boringssl" or (both and transport == TLS)
            else CBC256 if transport == TLS else CCM8)
    assert a.suite() == b.suite() == want
    assert b.peer_id() == "12-" + KPSA_ID and a.peer_id() == IDB
