#!/usr/bin/env python3
"""Entity A registers an AE with its Registrar CSE over an m2mpsk security
association: a TLS 1.2 PSK handshake on a TCP socket this script opens,
then a oneM2M HTTP binding request (TS-0009) creating an AE (ty=2), and
the response printed as it arrives.

    register_ae.py HOST PORT --keys FILE --kpsa-id ID
    register_ae.py HOST PORT --key-hex HEX --kpsa-id ID --idb IDB

The session is bound to IdB, the CSE's identity from the key record; the
request goes to that CSE. --retrieve sends a RETRIEVE of the CSEBase (GET)
instead of the CREATE: `openssl s_server -www`, a stand-in CSE, answers
only GET requests, and closes on anything else.

Exit status: 0 when a response came back, 1 when the association failed,
2 on usage or I/O errors, 3 when the CSE closed without answering.
"""
import argparse
import json
import select
import socket
import sys
import time
import uuid

import m2mpsk


def now_ms():
    return int(time.monotonic() * 1000)


def flush(assoc, sock):
    while True:
        out = assoc.drain()
        if not out:
            return
        sock.sendall(out)


def handshake(assoc, sock, deadline):
    assoc.start(now_ms(), int(time.time()))
    while True:
        flush(assoc, sock)
        if assoc.state() != m2mpsk.STATE_HANDSHAKING:
            return
        t = assoc.next_timeout()
        wait = max(0.0, min(deadline - time.monotonic(),
                            (t - now_ms()) / 1000 if t is not None else 1.0))
        if time.monotonic() >= deadline:
            raise SystemExit("handshake: no answer in time")
        r, _, _ = select.select([sock], [], [], wait)
        if not r:
            assoc.handle_timeout(now_ms())
            continue
        data = sock.recv(16384)
        if not data:
            raise SystemExit("handshake: the peer closed the connection")
        assoc.feed(data, now_ms())


def http_request(cse_path, origin, ae_name, host, retrieve=False):
    """A oneM2M request in the HTTP binding (TS-0009): CREATE of an AE
    (POST, ty=2) or, with retrieve, RETRIEVE of the CSEBase (GET)."""
    head = ("%s %s HTTP/1.1\r\n"
            "Host: %s\r\n"
            "X-M2M-Origin: %s\r\n"
            "X-M2M-RI: %s\r\n"
            "X-M2M-RVI: 3\r\n"
            "Accept: application/json\r\n"
            "Connection: close\r\n"
            % ("GET" if retrieve else "POST", cse_path, host, origin,
               "req-" + uuid.uuid4().hex))
    if retrieve:
        return (head + "\r\n").encode()
    body = json.dumps({"m2m:ae": {"rn": ae_name, "api": "N" + ae_name,
                                  "rr": True, "srv": ["3"]}}).encode()
    head += ("Content-Type: application/json;ty=2\r\n"
             "Content-Length: %d\r\n\r\n" % len(body))
    return head.encode() + body


def read_response(assoc, sock, deadline):
    """Collects the response until the CSE closes (close_notify or TCP FIN)
    or the deadline passes."""
    got = []
    while time.monotonic() < deadline:
        flush(assoc, sock)
        r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        data = sock.recv(16384)
        if not data:
            break
        assoc.feed(data, now_ms())
        try:
            while True:
                chunk = assoc.read()
                if not chunk:
                    break
                got.append(chunk)
        except m2mpsk.Closed:
            break
    return b"".join(got)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--kpsa-id", required=True)
    p.add_argument("--keys", help="an m2mpsk key file holding the record")
    p.add_argument("--key-hex", help="Kpsa in hex, instead of --keys")
    p.add_argument("--idb", help="IdB, the CSE-ID (with --key-hex)")
    p.add_argument("--origin", default="Cregister-ae-example",
                   help="X-M2M-Origin: the AE-ID requested (default %(default)s)")
    p.add_argument("--name", default="register-ae-example", help="the AE's resource name")
    p.add_argument("--retrieve", action="store_true",
                   help="RETRIEVE the CSEBase (GET) instead of creating the AE")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")
    args = p.parse_args()
    if bool(args.keys) == bool(args.key_hex) or (args.key_hex and not args.idb):
        p.error("give --keys FILE, or --key-hex HEX with --idb IDB")

    deadline = time.monotonic() + args.timeout
    with m2mpsk.Keystore() as ks, m2mpsk.Config() as cfg:
        if args.keys:
            ks.load_file(args.keys)
        else:
            ks.add(args.kpsa_id, bytes.fromhex(args.key_hex), None, args.idb)
        idb = ks.lookup(args.kpsa_id).idb
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock, \
                m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS,
                                   cfg, ks, args.kpsa_id) as a:
            try:
                handshake(a, sock, deadline)
            except m2mpsk.Failed as e:
                print("association failed: %s" % e, file=sys.stderr)
                flush(a, sock)  # the alert telling the CSE why
                return 1
            if a.state() != m2mpsk.STATE_ESTABLISHED:
                print("association failed: %s (%s)" % (m2mpsk.reason_name(a.failure()),
                                                       a.failure_detail()), file=sys.stderr)
                return 1
            print("association established: bound to %s over %s %s"
                  % (a.peer_id(), a.version(), a.suite()), file=sys.stderr)
            # The CSE's path and host come from the identity the session is
            # bound to: "//m2m.example.com/cse-in" gives host
            # m2m.example.com and path /cse-in.
            cse_path = "/" + idb.split("/")[-1]
            host = m2mpsk.idb_server_name(idb) or args.host
            request = http_request(cse_path, args.origin, args.name, host, args.retrieve)
            a.write(request)
            print("sent: %s" % request.split(b"\r\n", 1)[0].decode(), file=sys.stderr)
            response = read_response(a, sock, deadline)
            if a.state() == m2mpsk.STATE_ESTABLISHED:
                a.close_notify()
                flush(a, sock)
    if not response:
        print("no response: the CSE closed without answering", file=sys.stderr)
        return 3
    sys.stdout.write(response.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, m2mpsk.Error) as e:
        print("register_ae: %s" % e, file=sys.stderr)
        sys.exit(2)
