#!/usr/bin/env python3
"""Runs an AE registration example against `openssl s_server -psk -www` on
loopback. The CREATE (POST) must establish the association, be sent and
end cleanly: s_server -www answers only GET, so it closes without a
response (exit 3). The RETRIEVE (GET) must print s_server's HTTP answer.
Usage: run_example.py COMMAND... (the example's command line, to which
HOST PORT and the key options are appended)"""
import os
import re
import select
import subprocess
import sys
import time

KEY = bytes(range(32)).hex()
KPSA_ID = "test@onem2m.com"
IDB = "//m2m.example.com/cse-in"

server = subprocess.Popen(
    ["openssl", "s_server", "-nocert", "-accept", "127.0.0.1:0", "-tls1_2", "-www",
     "-psk", KEY, "-psk_identity", KPSA_ID, "-cipher", "PSK"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
try:
    seen, end, port = b"", time.monotonic() + 20, None
    while port is None and time.monotonic() < end:
        if select.select([server.stdout], [], [], 0.2)[0]:
            chunk = os.read(server.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            m = re.search(rb"ACCEPT.*:(\d+)\s", seen)
            port = int(m.group(1)) if m else None
    if port is None:
        sys.exit("s_server did not start: %r" % seen)
    def run(extra):
        r = subprocess.run(sys.argv[1:] + ["127.0.0.1", str(port), "--kpsa-id", KPSA_ID,
                                           "--key-hex", KEY, "--idb", IDB, "--timeout", "5"] + extra,
                           capture_output=True, text=True, timeout=60)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        if "bound to " + IDB not in r.stderr:
            sys.exit("the association was not established")
        return r
    create = run([])
    if create.returncode != 3 or "sent: POST /cse-in HTTP/1.1" not in create.stderr:
        sys.exit("CREATE: exit %d, expected 3 (sent, no answer from s_server -www)"
                 % create.returncode)
    retrieve = run(["--retrieve"])
    if retrieve.returncode != 0 or not retrieve.stdout.startswith("HTTP/1.0 200"):
        sys.exit("RETRIEVE: exit %d, expected s_server's HTTP answer" % retrieve.returncode)
    print("OK")
finally:
    if server.poll() is None:
        server.kill()
    server.wait(timeout=10)
