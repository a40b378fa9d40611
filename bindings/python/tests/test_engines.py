"""TLS engines (since 0.3): the queries, Config.set_engine() and
Association.engine(), against the engines this build has (ENGINES, from
the build's M2MPSK_BACKEND_NAME)."""
import pytest

import m2mpsk
from conftest import ENGINES, IDB, KPSA_ID, now_ms, pump, raises

TLS, DTLS = m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS
ID = {"boringssl": m2mpsk.ENGINE_BORINGSSL, "openssl": m2mpsk.ENGINE_OPENSSL}


def test_constants_and_names():
    assert (m2mpsk.ENGINE_AUTO, m2mpsk.ENGINE_BORINGSSL,
            m2mpsk.ENGINE_OPENSSL) == (0, 1, 2)
    assert m2mpsk.engine_name(m2mpsk.ENGINE_AUTO) == "auto"
    assert m2mpsk.engine_name(m2mpsk.ENGINE_BORINGSSL) == "boringssl"
    assert m2mpsk.engine_name(m2mpsk.ENGINE_OPENSSL) == "openssl"
    assert m2mpsk.engine_name(7) is None


def test_each_engine_lists_its_suites():
    assert m2mpsk.engine_available(m2mpsk.ENGINE_AUTO) == 1
    assert m2mpsk.engine_available(7) == 0
    union = set()
    for name, e in ID.items():
        if name not in ENGINES:
            assert m2mpsk.engine_available(e) == 0
            assert m2mpsk.engine_suite_count(e) == 0
            continue
        assert m2mpsk.engine_available(e) == 1
        n = m2mpsk.engine_suite_count(e)
        names = [m2mpsk.engine_suite_name(e, i) for i in range(n)]
        assert all(names) and m2mpsk.engine_suite_name(e, n) is None
        assert "TLS_PSK_WITH_AES_128_CBC_SHA" in names
        assert ("TLS_PSK_WITH_AES_128_CCM_8" in names) == (name == "openssl")
        union.update(names)
    # AUTO and the old functions answer the union, each name once.
    assert m2mpsk.engine_suite_count(m2mpsk.ENGINE_AUTO) == len(union)
    assert set(m2mpsk.suites()) == union and len(m2mpsk.suites()) == len(union)


def test_set_engine_checks_and_freezes(keystore):
    cfg = m2mpsk.Config()
    raises(m2mpsk.E_INVALID, cfg.set_engine, 7)
    for name, e in ID.items():
        if name in ENGINES:
            cfg.set_engine(e)
        else:
            raises(m2mpsk.E_UNSUPPORTED, cfg.set_engine, e)
    cfg.set_engine(m2mpsk.ENGINE_AUTO)
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, cfg, keystore, KPSA_ID)
    raises(m2mpsk.E_STATE, cfg.set_engine, m2mpsk.ENGINE_AUTO)
    a.close()
    cfg.close()


@pytest.mark.parametrize("transport", [TLS, DTLS])
def test_auto_with_the_default_config(pair, transport):
    """The initiator runs on OpenSSL (the only engine with the whole
    profile); the TLS responder picks its engine from the ClientHello (the
    fastest that shares a suite: BoringSSL), the DTLS one OpenSSL."""
    a, b = pair(transport)
    want = ID["openssl" if "openssl" in ENGINES else "boringssl"]
    assert a.engine() == want  # an initiator's is chosen at creation
    b.start(now_ms())
    a.start(now_ms())
    assert pump(a, b) is None
    assert a.engine() == want
    assert b.engine() == (ID["boringssl"] if transport == TLS and
                          len(ENGINES) > 1 else want)


@pytest.mark.parametrize("transport", [TLS, DTLS])
@pytest.mark.parametrize("client", sorted(ID))
@pytest.mark.parametrize("server", sorted(ID))
def test_every_pair_of_engines_interoperates(keystore, transport, client,
                                             server):
    if client not in ENGINES or server not in ENGINES:
        pytest.skip("this build has no %s engine" %
                    (client if client not in ENGINES else server))
    ca, cb = m2mpsk.Config(), m2mpsk.Config()
    ca.set_engine(ID[client])
    cb.set_engine(ID[server])
    cb.add_local_id(IDB)
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca, keystore,
                           KPSA_ID)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb, keystore)
    b.start(now_ms())
    a.start(now_ms())
    assert pump(a, b) is None
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    assert (a.engine(), b.engine()) == (ID[client], ID[server])
    for x in (a, b, ca, cb):
        x.close()
