"""Every error path raises the right exception: class, code and reason."""
import os
import subprocess

import pytest

import m2mpsk
from conftest import IDA, IDB, KEY, KPSA_ID, now_ms, pump, raises


def test_validators():
    raises(m2mpsk.E_KPSA_ID, m2mpsk.kpsa_id_validate, "no-at-sign")
    raises(m2mpsk.E_KPSA_ID_LENGTH, m2mpsk.kpsa_id_validate,
           "a" * m2mpsk.KPSA_ID_MAX + "@onem2m.com")
    raises(m2mpsk.E_INVALID, m2mpsk.kpsa_id_validate, None)
    raises(m2mpsk.E_IDB, m2mpsk.idb_validate, "cse-in")
    raises(m2mpsk.E_ID_LENGTH, m2mpsk.idb_validate, "/" + "c" * m2mpsk.ID_MAX)
    raises(m2mpsk.E_IDA, m2mpsk.ida_validate, "Cae1")
    raises(m2mpsk.E_IDB, m2mpsk.idb_server_name, "no-slash")


def test_keystore_errors(keystore):
    raises(m2mpsk.E_INVALID, m2mpsk.Keystore, 99)
    raises(m2mpsk.E_KPSA_ID, keystore.add, "bad", KEY, None, IDB)
    raises(m2mpsk.E_KEY_LENGTH, keystore.add, "k2@onem2m.com", KEY[:15], None, IDB)
    raises(m2mpsk.E_KEY_LENGTH, keystore.add, "k2@onem2m.com", bytes(65), None, IDB)
    raises(m2mpsk.E_IDA, keystore.add, "k2@onem2m.com", KEY, "Cae1", IDB)
    raises(m2mpsk.E_IDB, keystore.add, "k2@onem2m.com", KEY, None, "cse")
    raises(m2mpsk.E_INVALID, keystore.add, "k2@onem2m.com", None, None, IDB)
    raises(m2mpsk.E_VALIDITY, keystore.add, "k2@onem2m.com", KEY, None, IDB, 20, 10)
    raises(m2mpsk.E_DUPLICATE, keystore.add, KPSA_ID, KEY, None, IDB)
    raises(m2mpsk.E_NOT_FOUND, keystore.remove, "none@onem2m.com")
    raises(m2mpsk.E_NOT_FOUND, keystore.revoke, "none@onem2m.com")
    raises(m2mpsk.E_NOT_FOUND, keystore.lookup, "none@onem2m.com")
    with pytest.raises(TypeError):
        keystore.add("k3@onem2m.com", "a str is not a key", None, IDB)
    assert len(keystore) == 1  # nothing was added by the failures


def write_keyfile(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def test_keyfile_errors(tmp_path):
    good = "kpsa-id=%s kpsa=hex:%s idb=%s\n" % (KPSA_ID, KEY.hex(), IDB)
    with m2mpsk.Keystore() as ks:
        raises(m2mpsk.E_IO, ks.load_file, str(tmp_path / "missing"))
        raises(m2mpsk.E_KEYFILE_PERMS, ks.load_file,
               write_keyfile(tmp_path / "open", good, 0o644))
        e = raises(m2mpsk.E_KEYFILE_SYNTAX, ks.load_file,
                   write_keyfile(tmp_path / "syntax", good + "kpsa-id\n"))
        assert "line 2" in e.detail
        raises(m2mpsk.E_KEYFILE_ENCODING, ks.load_file,
               write_keyfile(tmp_path / "enc", good.replace("hex:00", "hex:zz")))
        assert len(ks) == 0  # all or nothing
        ks.load_file(write_keyfile(tmp_path / "good", good))
        assert ks.lookup(KPSA_ID).idb == IDB


def test_keyfile_from_the_cli(tmp_path):
    """A key file made by m2mpsk keygen loads, and the key it prints is the
    one the file holds (the handshake with it succeeds)."""
    cli = os.environ.get("M2MPSK_CLI")
    if not cli:
        pytest.skip("M2MPSK_CLI not set")
    path = str(tmp_path / "keys")
    hexkey = subprocess.run([cli, "keygen", "--keys", path, "--kpsa-id", KPSA_ID,
                             "--idb", IDB, "--print", "hex"], check=True,
                            capture_output=True, text=True, timeout=30).stdout.strip()
    with m2mpsk.Keystore() as ks_a, m2mpsk.Keystore() as ks_b:
        ks_a.load_file(path)
        ks_b.add(KPSA_ID, bytes.fromhex(hexkey), None, IDB)
        ca, cb = m2mpsk.Config(), m2mpsk.Config()
        cb.add_local_id(IDB)
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, ca, ks_a, KPSA_ID) as a, \
                m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, cb, ks_b) as b:
            b.start(now_ms())
            a.start(now_ms())
            pump(a, b)
            assert a.state() == m2mpsk.STATE_ESTABLISHED


def test_config_errors(keystore):
    cfg = m2mpsk.Config()
    raises(m2mpsk.E_SUITE, cfg.set_suites, "TLS_RSA_WITH_NULL_MD5")
    raises(m2mpsk.E_INVALID, cfg.set_suites, "")
    raises(m2mpsk.E_IDB, cfg.add_local_id, "cse-in")
    raises(m2mpsk.E_INVALID, cfg.set_handshake_timeout, 0)
    cfg.add_local_id(IDB)
    raises(m2mpsk.E_DUPLICATE, cfg.add_local_id, IDB)
    cfg.set_suites(m2mpsk.suites()[0])
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg, keystore, KPSA_ID)
    raises(m2mpsk.E_STATE, cfg.set_handshake_timeout, 1000)  # frozen
    raises(m2mpsk.E_STATE, cfg.set_reveal_unknown_identity, True)
    a.close()
    cfg.close()


def test_association_new_errors(keystore):
    cfg = m2mpsk.Config()
    I, R, TLS = m2mpsk.ROLE_INITIATOR, m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, TLS, cfg, keystore)  # no KpsaID
    raises(m2mpsk.E_INVALID, m2mpsk.Association, 7, TLS, cfg, keystore, KPSA_ID)
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, 7, cfg, keystore, KPSA_ID)
    raises(m2mpsk.E_KPSA_ID, m2mpsk.Association, I, TLS, cfg, keystore, "bad")
    raises(m2mpsk.E_NOT_FOUND, m2mpsk.Association, I, TLS, cfg, keystore, "x@onem2m.com")
    raises(m2mpsk.E_NO_LOCAL_ID, m2mpsk.Association, R, TLS, cfg, keystore)
    raises(m2mpsk.E_INVALID, m2mpsk.Association, R, TLS, cfg, keystore, KPSA_ID)
    closed = m2mpsk.Keystore()
    closed.close()
    raises(m2mpsk.E_INVALID, m2mpsk.Association, I, TLS, cfg, closed, KPSA_ID)
    with pytest.raises(TypeError):
        m2mpsk.Association(I, TLS, keystore, cfg, KPSA_ID)  # swapped
    cfg.close()


def test_call_order_errors(pair):
    a, b = pair(m2mpsk.TRANSPORT_TLS)
    raises(m2mpsk.E_INVALID, a.set_mtu, 1400)  # TLS has no MTU
    raises(m2mpsk.E_STATE, a.feed, b"x", now_ms())  # not started
    raises(m2mpsk.E_STATE, a.drain)
    raises(m2mpsk.E_STATE, a.handle_timeout, now_ms())
    raises(m2mpsk.E_INVALID, a.start, -1)
    a.start(now_ms())
    raises(m2mpsk.E_STATE, a.start, now_ms())
    raises(m2mpsk.E_STATE, a.write, b"early")
    raises(m2mpsk.E_STATE, a.read)
    raises(m2mpsk.E_STATE, a.export, 16, "EXPERIMENTAL x")
    raises(m2mpsk.E_STATE, a.close_notify)
    raises(m2mpsk.E_INVALID, a.read, 0)
    d, _ = pair(m2mpsk.TRANSPORT_DTLS)
    raises(m2mpsk.E_INVALID, d.set_mtu, m2mpsk.MTU_MIN - 1)
    d.start(now_ms())
    raises(m2mpsk.E_STATE, d.set_mtu, 1400)
    raises(m2mpsk.E_INVALID, d.feed, b"", now_ms())  # an empty datagram


def test_wrong_key_fails_with_bad_key():
    with m2mpsk.Keystore() as ka, m2mpsk.Keystore() as kb:
        ka.add(KPSA_ID, KEY, None, IDB)
        kb.add(KPSA_ID, bytes(reversed(KEY)), None, IDB)
        ca, cb = m2mpsk.Config(), m2mpsk.Config()
        cb.add_local_id(IDB)
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, ca, ka, KPSA_ID)
        b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, cb, kb)
        b.start(now_ms())
        a.start(now_ms())
        failure = pump(a, b)
        assert isinstance(failure, m2mpsk.Failed)
        assert failure.code == m2mpsk.E_FAILED
        assert failure.reason == m2mpsk.REASON_BAD_KEY
        assert b.failure() == m2mpsk.REASON_BAD_KEY and b.failure_detail()
        assert a.state() == m2mpsk.STATE_FAILED
        raises(m2mpsk.E_FAILED, a.write, b"x", cls=m2mpsk.Failed, reason=a.failure())


def test_unknown_identity_fails_on_responder():
    with m2mpsk.Keystore() as ka, m2mpsk.Keystore() as kb:
        ka.add(KPSA_ID, KEY, None, IDB)
        kb.add("other@onem2m.com", KEY, None, IDB)
        ca, cb = m2mpsk.Config(), m2mpsk.Config()
        cb.add_local_id(IDB)
        cb.set_reveal_unknown_identity(True)
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_DTLS, ca, ka, KPSA_ID)
        b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_DTLS, cb, kb)
        b.start(now_ms())
        a.start(now_ms())
        pump(a, b)
        assert b.failure() == m2mpsk.REASON_UNKNOWN_IDENTITY
        assert a.failure() == m2mpsk.REASON_UNKNOWN_IDENTITY


def test_revoked_expired_and_misuse_fail_at_start(keystore):
    cfg = m2mpsk.Config()
    keystore.add("exp@onem2m.com", KEY, None, IDB, 1000, 2000)
    keystore.add("rev@onem2m.com", KEY, None, IDB)
    keystore.revoke("rev@onem2m.com")
    I, TLS = m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS
    cases = [("rev@onem2m.com", 1800000000, m2mpsk.REASON_REVOKED),
             ("exp@onem2m.com", 1800000000, m2mpsk.REASON_EXPIRED),
             ("exp@onem2m.com", 0, m2mpsk.REASON_MISUSE)]
    for kid, unix_time, reason in cases:
        with m2mpsk.Association(I, TLS, cfg, keystore, kid) as a:
            e = raises(m2mpsk.E_FAILED, a.start, now_ms(), unix_time,
                       cls=m2mpsk.Failed, reason=reason)
            assert e.reason_name == m2mpsk.reason_name(reason)
    cfg.close()


def test_handshake_timeout_fails_with_timeout(keystore):
    with m2mpsk.Config() as cfg:
        cfg.set_handshake_timeout(50)
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg,
                                keystore, KPSA_ID) as a:
            a.start(1000)
            assert a.next_timeout() == 1050
            a.handle_timeout(1049)  # early: nothing happens
            raises(m2mpsk.E_FAILED, a.handle_timeout, 1050, cls=m2mpsk.Failed,
                   reason=m2mpsk.REASON_TIMEOUT)
            assert a.state() == m2mpsk.STATE_FAILED


def test_use_after_close(keystore):
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, m2mpsk.Config(),
                           keystore, KPSA_ID)
    a.close()
    e = raises(m2mpsk.E_INVALID, a.start, now_ms())
    assert "closed" in e.detail
    raises(m2mpsk.E_INVALID, a.drain)
    keystore.close()
    raises(m2mpsk.E_INVALID, keystore.add, "k@onem2m.com", KEY, None, IDB)
