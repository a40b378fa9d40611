"""oneM2M request checks and key derivation (since 0.2): the originator
check returns the verdict and raises on errors, and add_derived() stores
the TS-0003 10.3.3 key, proven by handshakes against a keystore that holds
the independently computed key."""
import hashlib
import hmac
import time

import pytest

import m2mpsk
from conftest import IDA, IDB, KPSA_ID, now_ms, pump, raises

LOCAL_ABS = "//m2m.example.com/cse-in"
LOCAL_REL = "/cse-in"
CRED = "12-" + KPSA_ID
ACCEPT = m2mpsk.ORIGINATOR_ACCEPT
E4106 = m2mpsk.ORIGINATOR_NOT_AUTHENTICATED
E4107 = m2mpsk.ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED
CREATE = m2mpsk.ORIGINATOR_AE_CREATE
UNSECURED = m2mpsk.ORIGINATOR_ALLOW_UNSECURED_AE

KE = bytes(range(32))
ENROLEE_B = "//m2m.example.com/cse-in"
VECTOR = bytes.fromhex("0a940138d9f28b1363bda9fe9250740c955ce433aa87ef28b1b080ad02bd40d9")
LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"


def test_constants_are_the_header_values():
    assert (m2mpsk.PEER_NONE, m2mpsk.PEER_AE, m2mpsk.PEER_CSE,
            m2mpsk.PEER_CREDENTIAL) == (0, 1, 2, 3)
    assert (CREATE, UNSECURED) == (1, 2)
    assert (ACCEPT, E4106, E4107) == (0, 4106, 4107)


VERDICTS = [
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0, ACCEPT),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "//M2M.Example.COM/cse-in/Cae1", 0, ACCEPT),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae2", 0, E4106),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/CSE-IN/Cae1", 0, E4106),
    (m2mpsk.PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-mn/Cae7", 0, ACCEPT),
    (m2mpsk.PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-asn", 0, E4106),
    (m2mpsk.PEER_NONE, None, LOCAL_ABS, "/cse-mn", 0, E4107),
    (m2mpsk.PEER_NONE, None, LOCAL_ABS, "/cse-in/Cae1", 0, E4107),
    (m2mpsk.PEER_NONE, None, LOCAL_ABS, "/cse-in/Cae1", UNSECURED, ACCEPT),
    (m2mpsk.PEER_NONE, None, LOCAL_ABS, None, CREATE | UNSECURED, ACCEPT),
    (m2mpsk.PEER_NONE, None, LOCAL_ABS, None, 0, E4106),
    (m2mpsk.PEER_CREDENTIAL, CRED, LOCAL_ABS, None, CREATE, ACCEPT),
    (m2mpsk.PEER_CREDENTIAL, CRED, LOCAL_ABS, "", CREATE, ACCEPT),
    (m2mpsk.PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-mn/Cae1", CREATE, E4106),
    (m2mpsk.PEER_CREDENTIAL, CRED, LOCAL_ABS, "Cae1", 0, E4106),
    (m2mpsk.PEER_CREDENTIAL, CRED, LOCAL_REL, "//m2m.example.com/cse-in/Cae1", CREATE, E4106),
]


@pytest.mark.parametrize("kind,bound,local,from_,flags,verdict", VERDICTS)
def test_originator_verdicts(kind, bound, local, from_, flags, verdict):
    assert m2mpsk.originator_check(kind, bound, local, from_, flags) == verdict


def test_originator_flags_default_to_none():
    assert m2mpsk.originator_check(m2mpsk.PEER_NONE, None, LOCAL_ABS, "Cae1") == E4107
    assert m2mpsk.originator_check(m2mpsk.PEER_NONE, None, LOCAL_ABS, from_="Cae1",
                                   flags=UNSECURED) == ACCEPT


ERRORS = [
    (m2mpsk.PEER_AE, "/cse-in/Cae1", None, "Cae1", 0, m2mpsk.E_INVALID),  # no local_id
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 4, m2mpsk.E_INVALID),  # flag
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", -1, m2mpsk.E_INVALID),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 1 << 32 | CREATE, m2mpsk.E_INVALID),
    (4, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0, m2mpsk.E_INVALID),  # kind
    (m2mpsk.PEER_NONE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0, m2mpsk.E_INVALID),
    (m2mpsk.PEER_AE, None, LOCAL_ABS, "Cae1", 0, m2mpsk.E_INVALID),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", "/cse-in/Cae1", "Cae1", 0, m2mpsk.E_IDB),
    (m2mpsk.PEER_AE, "/cse-in", LOCAL_ABS, "Cae1", 0, m2mpsk.E_IDA),
    (m2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "ae1", 0, m2mpsk.E_IDA),  # From
    (m2mpsk.PEER_CREDENTIAL, "12-test", LOCAL_ABS, None, CREATE, m2mpsk.E_KPSA_ID),
]


@pytest.mark.parametrize("kind,bound,local,from_,flags,code", ERRORS)
def test_originator_errors_raise(kind, bound, local, from_, flags, code):
    raises(code, m2mpsk.originator_check, kind, bound, local, from_, flags)


def handshake(ks_a, ks_b, transport=m2mpsk.TRANSPORT_TLS, kpsa_id=KPSA_ID):
    """A handshake between an initiator of ks_a and a responder of ks_b;
    returns both, for the caller to check and close."""
    ca, cb = m2mpsk.Config(), m2mpsk.Config()
    cb.add_local_id(IDB)
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca, ks_a, kpsa_id)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb, ks_b)
    b.start(now_ms(), int(time.time()))
    a.start(now_ms(), int(time.time()))
    pump(a, b)
    return a, b


def test_originator_check_takes_the_association_binding():
    with m2mpsk.Keystore() as ks_cred, m2mpsk.Keystore() as ks_ae:
        ks_cred.add(KPSA_ID, KE, None, IDB)
        ks_ae.add(KPSA_ID, KE, IDA, IDB)
        a, b = handshake(ks_cred, ks_cred)
        with a, b:
            assert b.peer_id_is_credential()
            assert m2mpsk.originator_check(m2mpsk.PEER_CREDENTIAL, b.peer_id(),
                                           b.local_id(), "C", CREATE) == ACCEPT
            assert m2mpsk.originator_check(m2mpsk.PEER_CREDENTIAL, b.peer_id(),
                                           b.local_id(), "Cae1") == E4106
        a, b = handshake(ks_ae, ks_ae)
        with a, b:
            assert b.peer_id() == IDA and not b.peer_id_is_credential()
            assert m2mpsk.originator_check(m2mpsk.PEER_AE, b.peer_id(), b.local_id(),
                                           "Cae1") == ACCEPT
            assert m2mpsk.originator_check(m2mpsk.PEER_AE, b.peer_id(), b.local_id(),
                                           "Cforged") == E4106


def test_the_vector_is_the_ts_0003_derivation():
    """The vector is computed here with hashlib, independently of the library."""
    assert hmac.new(KE, LABEL + ENROLEE_B.encode(), hashlib.sha256).digest() == VECTOR


@pytest.mark.parametrize("transport", [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS])
def test_add_derived_stores_the_vector(transport):
    with m2mpsk.Keystore() as derived, m2mpsk.Keystore() as plain, \
            m2mpsk.Keystore() as other:
        derived.add_derived(KPSA_ID, KE, ENROLEE_B, None, IDB, 0, 1900000000)
        r = derived.lookup(KPSA_ID)
        assert (r.ida, r.idb, r.not_before, r.not_after) == ("", IDB, 0, 1900000000)
        plain.add(KPSA_ID, VECTOR, None, IDB)
        a, b = handshake(derived, plain, transport)
        with a, b:
            assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
        a, b = handshake(plain, derived, transport)
        with a, b:
            assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
        # A key one bit off does not: the handshake above proves the vector.
        other.add(KPSA_ID, VECTOR[:-1] + bytes([VECTOR[-1] ^ 1]), None, IDB)
        a, b = handshake(derived, other, transport)
        with a, b:
            assert b.failure() == m2mpsk.REASON_BAD_KEY


def test_add_derived_uses_the_enrolee_id_as_given():
    """The SP-relative form of the same CSE-ID derives another key."""
    with m2mpsk.Keystore() as rel, m2mpsk.Keystore() as plain:
        rel.add_derived(KPSA_ID, bytearray(KE), "/cse-in", None, IDB)
        plain.add(KPSA_ID, hmac.new(KE, LABEL + b"/cse-in", hashlib.sha256).digest(),
                  None, IDB)
        a, b = handshake(rel, plain)
        with a, b:
            assert b.state() == m2mpsk.STATE_ESTABLISHED
        plain.remove(KPSA_ID)
        plain.add(KPSA_ID, VECTOR, None, IDB)
        a, b = handshake(rel, plain)
        with a, b:
            assert b.failure() == m2mpsk.REASON_BAD_KEY


def test_add_derived_errors_leave_the_keystore_unchanged():
    with m2mpsk.Keystore() as ks:
        raises(m2mpsk.E_KEY_LENGTH, ks.add_derived, KPSA_ID, KE[:15], ENROLEE_B, None, IDB)
        raises(m2mpsk.E_KEY_LENGTH, ks.add_derived, KPSA_ID, bytes(65), ENROLEE_B, None, IDB)
        raises(m2mpsk.E_INVALID, ks.add_derived, KPSA_ID, None, ENROLEE_B, None, IDB)
        raises(m2mpsk.E_INVALID, ks.add_derived, KPSA_ID, KE, None, None, IDB)
        raises(m2mpsk.E_IDA, ks.add_derived, KPSA_ID, KE, "cse-in", None, IDB)
        raises(m2mpsk.E_IDA, ks.add_derived, KPSA_ID, KE, ENROLEE_B, "Cae1", IDB)
        raises(m2mpsk.E_KPSA_ID, ks.add_derived, "bad", KE, ENROLEE_B, None, IDB)
        raises(m2mpsk.E_VALIDITY, ks.add_derived, KPSA_ID, KE, ENROLEE_B, None, IDB, 20, 10)
        with pytest.raises(TypeError):
            ks.add_derived(KPSA_ID, "a str is not a key", ENROLEE_B, None, IDB)
        assert len(ks) == 0
        ks.add_derived(KPSA_ID, KE, ENROLEE_B, None, IDB)
        raises(m2mpsk.E_DUPLICATE, ks.add_derived, KPSA_ID, KE, ENROLEE_B, None, IDB)
        assert len(ks) == 1
    raises(m2mpsk.E_INVALID, ks.add_derived, KPSA_ID, KE, ENROLEE_B, None, IDB)  # closed


# ---- binding the AE-ID after registration, and SA2 -------------------------

AE_ID = "/cse-in/Cae1"


@pytest.mark.parametrize("transport", [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS])
def test_bind_ae_id_after_a_credential_binding(transport):
    with m2mpsk.Keystore() as ks:
        ks.add(KPSA_ID, KE, None, IDB)
        ca, cb = m2mpsk.Config(), m2mpsk.Config()
        cb.add_local_id(IDB)
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID) as a, \
                m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb, ks) as b:
            raises(m2mpsk.E_STATE, b.bind_ae_id, AE_ID)  # idle: nothing bound yet
            b.start(now_ms())
            a.start(now_ms())
            pump(a, b)
            assert b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
            assert b.peer_id() == CRED and b.peer_id_is_credential()
            # The AE's registration request: From is empty, the CSE assigns
            # the AE-ID and binds it.
            assert m2mpsk.originator_check(m2mpsk.PEER_CREDENTIAL, b.peer_id(), b.local_id(),
                                           None, CREATE) == ACCEPT
            # The same from the association, which supplies kind and ids.
            assert b.originator_check(None, CREATE) == ACCEPT
            assert b.originator_check("Cae1") == E4106
            raises(m2mpsk.E_INVALID, b.originator_check, "Cae1", 0x100)
            raises(m2mpsk.E_IDA, b.originator_check, "ae1")
            raises(m2mpsk.E_ID_LENGTH, b.originator_check, "/cse-in/C" + "a" * m2mpsk.ID_MAX)
            raises(m2mpsk.E_IDB, a.originator_check, IDB)  # no IdA: no CSE-ID
            raises(m2mpsk.E_STATE, a.bind_ae_id, AE_ID)  # Entity A binds IdB
            raises(m2mpsk.E_IDA, b.bind_ae_id, "Cae1")  # not an AE-ID
            raises(m2mpsk.E_IDA, b.bind_ae_id, "/cse-mn")  # a CSE-ID
            raises(m2mpsk.E_INVALID, b.bind_ae_id, None)
            raises(m2mpsk.E_ID_LENGTH, b.bind_ae_id, "/cse-in/C" + "a" * m2mpsk.ID_MAX)
            assert b.peer_id() == CRED, "a refused binding changes nothing"
            b.bind_ae_id(AE_ID)
            assert b.peer_id() == AE_ID and not b.peer_id_is_credential()
            assert b.local_id() == IDB
            # Later requests are checked against the AE-ID.
            assert m2mpsk.originator_check(m2mpsk.PEER_AE, b.peer_id(), b.local_id(),
                                           "Cae1") == ACCEPT
            assert m2mpsk.originator_check(m2mpsk.PEER_AE, b.peer_id(), b.local_id(),
                                           "Cae2") == E4106
            assert b.originator_check("Cae1") == ACCEPT
            assert b.originator_check("Cae2") == E4106
            raises(m2mpsk.E_STATE, b.bind_ae_id, "/cse-in/Cother")  # once only
            assert b.peer_id() == AE_ID
        raises(m2mpsk.E_INVALID, b.bind_ae_id, AE_ID)  # closed


def test_bind_ae_id_refused_when_the_record_has_an_ida():
    with m2mpsk.Keystore() as ks:
        ks.add(KPSA_ID, KE, IDA, IDB)
        a, b = handshake(ks, ks)
        with a, b:
            assert b.peer_id() == IDA
            raises(m2mpsk.E_STATE, b.bind_ae_id, AE_ID)
            assert b.peer_id() == IDA


def sa2(transport, ks):
    """Entity B dials Entity A with both configs reversed; returns (a, b),
    a the responder (Entity A), b the initiator (Entity B)."""
    cfg_a, cfg_b = m2mpsk.Config(), m2mpsk.Config()
    cfg_a.set_roles_reversed(True)  # no add_local_id(): Entity A serves no IdB
    cfg_b.set_roles_reversed(True)
    b = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, cfg_b, ks, KPSA_ID)
    a = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cfg_a, ks)
    a.start(now_ms())
    b.start(now_ms())
    assert pump(b, a) is None
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED, a.failure_detail()
    return a, b


@pytest.mark.parametrize("transport", [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS])
def test_sa2_entity_a_binds_idb_and_entity_b_binds_ida(transport):
    with m2mpsk.Keystore() as ks:
        ks.add(KPSA_ID, KE, IDA, IDB)
        a, b = sa2(transport, ks)
        with a, b:
            assert a.peer_id() == IDB and not a.peer_id_is_credential()
            assert a.local_id() == IDA
            assert b.peer_id() == IDA and not b.peer_id_is_credential()
            assert b.local_id() == IDB
            a.write(b"from Entity A")
            pump(a, b)
            assert b.read() == b"from Entity A"


@pytest.mark.parametrize("transport", [m2mpsk.TRANSPORT_TLS, m2mpsk.TRANSPORT_DTLS])
def test_sa2_without_ida_binds_the_credential_on_entity_b(transport):
    with m2mpsk.Keystore() as ks:
        ks.add(KPSA_ID, KE, None, IDB)
        a, b = sa2(transport, ks)
        with a, b:
            assert a.peer_id() == IDB and a.local_id() is None
            assert b.peer_id() == CRED and b.peer_id_is_credential()
            # Entity B, the client here, may bind the AE-ID; Entity A may not.
            raises(m2mpsk.E_STATE, a.bind_ae_id, AE_ID)
            b.bind_ae_id(AE_ID)
            assert b.peer_id() == AE_ID and not b.peer_id_is_credential()


def test_roles_reversed_is_needed_and_frozen():
    with m2mpsk.Keystore() as ks, m2mpsk.Config() as cfg:
        ks.add(KPSA_ID, KE, IDA, IDB)
        raises(m2mpsk.E_NO_LOCAL_ID, m2mpsk.Association, m2mpsk.ROLE_RESPONDER,
               m2mpsk.TRANSPORT_TLS, cfg, ks)
        cfg.set_roles_reversed(True)
        with m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, cfg, ks):
            raises(m2mpsk.E_STATE, cfg.set_roles_reversed, False)
    raises(m2mpsk.E_INVALID, cfg.set_roles_reversed, True)  # closed
