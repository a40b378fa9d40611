#!/usr/bin/env python3
"""The drop-in path: a oneM2M CSE written with Flask and served by werkzeug
over TLS-PSK, and an AE calling it with http.client, both in this process
on 127.0.0.1. m2mpsk.Context goes where ssl.SSLContext would; nothing else
in the application knows about PSK.

    flask_cse.py

Entity B, the CSE, checks each request's X-M2M-Origin against the identity
its association is bound to (originator_check) and answers 4106
(ORIGINATOR_NOT_AUTHENTICATED) when they differ. Entity A sends one honest
RETRIEVE and one with a forged originator.

Exit status: 0 when the honest request is answered 2000 and the forged one
4106, 1 otherwise, 2 when Flask is missing (Debian: python3-flask).
"""
import http.client
import os
import secrets
import sys
import tempfile
import threading

import m2mpsk

KPSA_ID = "flask-example@m2m.example.com"
IDB = "//m2m.example.com/cse-in"                     # the CSE: Entity B
IDA = "//m2m.example.com/cse-in/Cflask-ae"           # the AE: Entity A


def write_key_file(path):
    """One record with a fresh random Kpsa, in the key file format that
    `m2mpsk keygen` writes (mode 0600: the library refuses any other)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("kpsa-id=%s kpsa=hex:%s idb=%s ida=%s\n"
                % (KPSA_ID, secrets.token_hex(32), IDB, IDA))


def make_app():
    import flask
    app = flask.Flask("flask_cse")

    @app.route("/cse-in", methods=["GET", "POST"])
    def cse():
        # werkzeug hands the connection over in the environ: with the
        # m2mpsk context it is an m2mpsk.PSKSocket.
        conn = flask.request.environ["werkzeug.socket"]
        origin = flask.request.headers.get("X-M2M-Origin", "")
        rsc = conn.originator_check(origin)
        print("Entity B: request from %s, bound to %s over %s %s: originator_check() = %d"
              % (origin, conn.peer_id(), conn.version(), conn.suite(), rsc),
              file=sys.stderr)
        headers = {"X-M2M-RI": flask.request.headers.get("X-M2M-RI", "")}
        if rsc != m2mpsk.ORIGINATOR_ACCEPT:          # 4106, or 4107 for an AE-ID
            headers["X-M2M-RSC"] = str(rsc)          # not yet bound
            return "", 403, headers
        headers["X-M2M-RSC"] = "2000"
        return {"m2m:cb": {"csi": "/cse-in", "bound-to": conn.peer_id()}}, 200, headers

    return app


def retrieve(ctx, port, origin):
    """Entity A: a oneM2M RETRIEVE of the CSEBase. http.client takes the
    m2mpsk context as it takes an ssl.SSLContext."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.connect()                               # the TLS-PSK handshake
        print("Entity A: bound to %s over %s %s"
              % (conn.sock.peer_id(), conn.sock.version(), conn.sock.suite()),
              file=sys.stderr)
        conn.request("GET", "/cse-in", headers={"X-M2M-Origin": origin,
                                                "X-M2M-RI": "req-" + origin[-8:],
                                                "X-M2M-RVI": "3"})
        r = conn.getresponse()
        body = r.read()
        print("Entity A: X-M2M-Origin %s: HTTP %d, X-M2M-RSC %s %s"
              % (origin, r.status, r.getheader("X-M2M-RSC"), body.decode().strip()),
              file=sys.stderr)
        return r.getheader("X-M2M-RSC")
    finally:
        conn.close()


def main():
    try:
        app = make_app()
    except ImportError:
        print("flask_cse: Flask is not installed (apt-get install python3-flask)",
              file=sys.stderr)
        return 2
    from werkzeug.serving import make_server

    with tempfile.TemporaryDirectory() as tmp:
        keys = os.path.join(tmp, "keys")
        write_key_file(keys)

        # The m2mpsk lines of Entity B: a server-side context, its keys,
        # the identity it answers as.
        server_ctx = m2mpsk.Context(server_side=True)
        server_ctx.keystore.load_file(keys)
        server_ctx.config.add_local_id(IDB)
        # ... and of Entity A: the KpsaID it connects with.
        client_ctx = m2mpsk.Context(kpsa_id=KPSA_ID)
        client_ctx.keystore.load_file(keys)

        server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=server_ctx)
        port = server.socket.getsockname()[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.start()
        try:
            honest = retrieve(client_ctx, port, IDA)
            forged = retrieve(client_ctx, port, "//m2m.example.com/cse-in/Cforged")
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()

    ok = honest == "2000" and forged == str(m2mpsk.ORIGINATOR_NOT_AUTHENTICATED)
    print("flask_cse: %s (honest %s, forged %s)" % ("OK" if ok else "FAILED", honest, forged),
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, m2mpsk.Error) as e:
        print("flask_cse: %s" % e, file=sys.stderr)
        sys.exit(1)
