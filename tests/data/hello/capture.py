#!/usr/bin/env python3
"""Captures a real client's first ClientHello on loopback, as it came off
the wire, into a file (tests/data/hello/README.md lists how each fixture
was made).

  capture.py tls  OUT -- CLIENT ARGS...   TCP: the ClientHello's records
  capture.py dtls OUT -- CLIENT ARGS...   UDP: the first datagram
  capture.py dtls-cookie OUT1 OUT2 SERVER_PORT -- CLIENT ARGS...
      UDP relay to a real DTLS server on SERVER_PORT that asks for a cookie
      (openssl s_server -listen): the first and the second datagram the
      client sent (the hello without and with the cookie)

In CLIENT ARGS, {port} is replaced by the listening port. The client is
killed once the capture is written; every wait is bounded (5 s).
"""
import select
import socket
import subprocess
import sys
import time

LIMIT = 5.0


def run_client(args, port):
    args = [a.replace("{port}", str(port)) for a in args]
    return subprocess.Popen(args, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(proc):
    proc.kill()
    proc.wait(timeout=LIMIT)


def tls(out, args):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    proc = run_client(args, srv.getsockname()[1])
    srv.settimeout(LIMIT)
    conn, _ = srv.accept()
    conn.settimeout(LIMIT)
    buf = b""
    # Whole records until the handshake bytes hold the ClientHello.
    hs = b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
            chunk = conn.recv(65536)
            if not chunk:
                raise SystemExit("client closed before a whole ClientHello")
            buf += chunk
        n = 5 + int.from_bytes(buf[3:5], "big")
        hs += buf[5:n]
        rec, buf = buf[:n], buf[n:]
        with open(out, "ab") as f:
            f.write(rec)
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            break
    conn.close()
    stop(proc)


def dtls(out, args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(LIMIT)
    proc = run_client(args, s.getsockname()[1])
    data, _ = s.recvfrom(65536)
    with open(out, "wb") as f:
        f.write(data)
    stop(proc)


def dtls_cookie(out1, out2, server_port, args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.connect(("127.0.0.1", server_port))
    proc = run_client(args, s.getsockname()[1])
    got, client = [], None
    deadline = time.monotonic() + LIMIT
    while len(got) < 2:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit("timed out: %d datagrams" % len(got))
        r, _, _ = select.select([s, up], [], [], left)
        if s in r:
            data, client = s.recvfrom(65536)
            got.append(data)
            up.send(data)
        if up in r:
            s.sendto(up.recv(65536), client)
    for out, data in zip((out1, out2), got):
        with open(out, "wb") as f:
            f.write(data)
    stop(proc)


def main():
    argv = sys.argv[1:]
    sep = argv.index("--")
    mode, rest, client = argv[0], argv[1:sep], argv[sep + 1:]
    if mode == "tls":
        open(rest[0], "wb").close()
        tls(rest[0], client)
    elif mode == "dtls":
        dtls(rest[0], client)
    elif mode == "dtls-cookie":
        dtls_cookie(rest[0], rest[1], int(rest[2]), client)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
