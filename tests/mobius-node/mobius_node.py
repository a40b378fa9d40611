#!/usr/bin/env python3
"""Mobius serving its oneM2M HTTP API through m2mpsk's Node.js binding.

tests/gateway/mobius/mobius_peer.py copies Mobius (IoTKETI's Node.js IN-CSE,
CSE-ID /Mobius2) to a scratch directory, applies mobius-m2mpsk.patch (the
API served by m2mpsk.https.createServer instead of http.createServer, and
each request's From checked against the association before Mobius's
handlers), and starts it with a private MariaDB on 127.0.0.1. Keys come
from `m2mpsk keygen --kpsa-id test@onem2m.com --idb /Mobius2` (no IdA:
Mobius's side binds the Credential-ID 12-test@onem2m.com).

mobius_ae.js, an AE written with Node.js's `http` client over
m2mpsk.connect, then registers, creates a container and a contentInstance,
reads it back, and is refused (403, RSC 4106) for a forged From; a wrong
Kpsa and an unknown KpsaID fail the handshake. This script then checks,
in Mobius's database and log, that the refused requests never reached
Mobius and that the Mobius side bound what it should have.

    mobius_node.py --m2mpsk CLI --node-package DIR --node-addon FILE [--keep]

--node-package is the binding's package directory (what require('m2mpsk')
loads), --node-addon its native addon (M2MPSK_NODE_ADDON). Exit 0 pass,
1 fail, 77 skip (no Mobius source, MariaDB, Node or npm registry, or the
Node binding not built: the reason is printed). Bounded: DEADLINE_S
overall, NODE_S for the AE script.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gateway", "mobius"))
import mobius_peer  # noqa: E402
from mobius_peer import Skip, SetupError, Fail, log  # noqa: E402

DEADLINE_S = 200  # a cold run (npm install, mariadb-install-db) included
NODE_S = 90
KPSA_ID = "test@onem2m.com"
UNKNOWN_KPSA_ID = "nobody@onem2m.com"
CREDENTIAL_ID = "12-" + KPSA_ID
CSE_ID = mobius_peer.CSE_ID
CSE_BASE = mobius_peer.CSE_BASE
PATCH = os.path.join(HERE, "mobius-m2mpsk.patch")


def check(cond, what):
    if not cond:
        raise Fail(what)
    log("ok: " + what)


def keygen(tool, keys, kpsa_id):
    r = subprocess.run([tool, "keygen", "--keys", keys, "--kpsa-id", kpsa_id,
                        "--idb", CSE_ID], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        raise Fail("m2mpsk keygen failed (%d): %s"
                   % (r.returncode, r.stderr.strip()))


def node_env(args, work):
    """NODE_PATH holding `m2mpsk` (a link to the package directory, whatever
    its own name) and the addon it loads; Skip when the binding is not
    built, Fail when it is built but does not load."""
    pkg, addon = args.node_package, args.node_addon
    if not pkg or not os.path.isdir(pkg):
        raise Skip("the Node.js binding's package directory %r does not "
                   "exist" % pkg)
    if not addon or not os.path.isfile(addon):
        raise Skip("the Node.js binding is not built (no addon %r): "
                   "configure found no node headers, or build the target "
                   "m2mpsk_node" % addon)
    # require('m2mpsk') of a directory reads its package.json's main, else
    # its index.js; a source tree without package.json has lib/index.js.
    if not any(os.path.isfile(os.path.join(pkg, f))
               for f in ("package.json", "index.js")):
        pkg = os.path.join(pkg, "lib")
    node_path = os.path.join(work, "node_path")
    os.makedirs(node_path)
    os.symlink(os.path.abspath(pkg), os.path.join(node_path, "m2mpsk"))
    env = {"NODE_PATH": node_path, "M2MPSK_NODE_ADDON": os.path.abspath(addon)}
    node = mobius_peer.find_tools()["node"]
    probe = ("const m = require('m2mpsk');"
             "for (const f of ['connect']) if (typeof m[f] !== 'function') "
             "throw new Error('no m2mpsk.' + f);"
             "if (!m.https || typeof m.https.createServer !== 'function') "
             "throw new Error('no m2mpsk.https.createServer');"
             "if (typeof m.ORIGINATOR_AE_CREATE !== 'number') "
             "throw new Error('no m2mpsk.ORIGINATOR_AE_CREATE');")
    r = subprocess.run([node, "-e", probe], env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Fail("the Node.js binding does not load as Mobius needs it:\n"
                   + r.stderr.strip()[-1500:])
    return env


def ready(peer):
    """The patched API answers only TLS-PSK, so Mobius is ready when its
    worker says it listens and its CSEBase is in the database."""
    if ("running at %d port" % peer.http_port) not in peer.log_text():
        return False
    rows = peer.query("SELECT ri FROM lookup WHERE ri = '/%s';" % CSE_BASE)
    return rows == [["/" + CSE_BASE]]


def run_ae(peer, env, keys):
    cfg = {"port": peer.http_port, "keys": keys["good"],
           "wrongKeys": keys["wrong"], "unknownKeys": keys["unknown"],
           "kpsaId": KPSA_ID, "unknownKpsaId": UNKNOWN_KPSA_ID,
           "cseId": CSE_ID, "cseBase": CSE_BASE}
    log("the AE: node mobius_ae.js against 127.0.0.1:%d" % peer.http_port)
    try:
        r = subprocess.run(
            [peer.tools["node"], os.path.join(HERE, "mobius_ae.js"),
             json.dumps(cfg)], env=dict(os.environ, **env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=NODE_S, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        err = e.stderr or ""
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        raise Fail("mobius_ae.js did not end in %d s:\n%s" % (NODE_S,
                                                              err[-3000:]))
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise Fail("mobius_ae.js failed (exit %d)" % r.returncode)
    res = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if len(res) != 1:
        raise Fail("mobius_ae.js printed no RESULT line:\n" + r.stdout[-2000:])
    return json.loads(res[0][len("RESULT "):])


def check_mobius(peer, res):
    """What Mobius kept and logged: the legitimate requests, and not a
    trace of the refused ones."""
    ae_path, aei = res["aePath"], res["aei"]
    rows = peer.query("SELECT ri FROM lookup WHERE ri LIKE '%s%%' ORDER BY "
                      "ri;" % ae_path)
    ris = [r[0] for r in rows]
    check(ae_path in ris and ae_path + "/cnt" in ris and
          sum(1 for r in ris if r.startswith(ae_path + "/cnt/")) == 1,
          "Mobius's database has the AE, its container and one "
          "contentInstance (%s)" % ", ".join(ris))
    rows = peer.query("SELECT aei FROM ae WHERE ri = '%s';" % ae_path)
    check(rows == [[aei]], "the AE's row records the AE-ID %s (%r)"
          % (aei, rows))
    for what, rn in (("early", res["earlyRn"]), ("forged", res["forgedRn"]),
                     ("second-association", res["secondRn"])):
        rows = peer.query("SELECT ri FROM lookup WHERE rn = '%s';" % rn)
        check(rows == [], "the %s container %s is not in Mobius's database"
              % (what, rn))

    mlog = peer.log_text().splitlines()
    refused = [l for l in mlog if l.startswith("m2mpsk: refused ")]
    for l in refused:
        log("Mobius: " + l)
    check(any(l == "m2mpsk: refused POST /%s From C on %s: 4106"
              % (CSE_BASE, CREDENTIAL_ID) for l in refused),
          "Mobius's side bound the Credential-ID %s before registration "
          "(it refused the early container)" % CREDENTIAL_ID)
    bound = "%s/%s" % (CSE_ID, aei) if aei[0] == "C" else aei
    check(("m2mpsk: %s registered: bound %s" % (KPSA_ID, bound)) in mlog,
          "Mobius's side bound the AE-ID %s after the AE CREATE" % bound)
    check(("m2mpsk: refused POST %s From %s on %s: 4106"
           % (ae_path, res["forgedFrom"], bound)) in mlog,
          "the forged From was refused on the association bound to %s"
          % bound)
    check(("m2mpsk: refused POST %s From %s on %s: 4106"
           % (ae_path, aei, CREDENTIAL_ID)) in mlog,
          "the second association was bound to %s again" % CREDENTIAL_ID)
    # Mobius logs "POST : PATH" for each request its handlers take: one to
    # the AE (the container) and one to the container (the
    # contentInstance); the refused ones never got there.
    posts = [l for l in mlog if l.startswith("POST : ")]
    check(sum(1 for l in posts if l == "POST : " + ae_path) == 1 and
          sum(1 for l in posts if l == "POST : /" + CSE_BASE) == 1,
          "Mobius's handlers took one POST to the CSEBase (the AE) and one "
          "to the AE (the container): %r" % posts)
    names = (res["earlyRn"], res["forgedRn"], res["forgedRqi"],
             res["secondRn"], res["wrongPath"], res["unknownPath"],
             res["plainPath"])
    traces = [l for l in mlog if any(n in l for n in names)]
    check(not traces, "no line of Mobius's log names a refused request's "
          "container, RQI or path (%r)" % traces[:3])


def run(args):
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="m2mpsk-mobius-node-") as work:
        env = node_env(args, work)
        keys = {k: os.path.join(work, k + ".keys")
                for k in ("good", "wrong", "unknown")}
        keygen(args.m2mpsk, keys["good"], KPSA_ID)
        # Same KpsaID, another random Kpsa: the CSE's Finished check fails.
        keygen(args.m2mpsk, keys["wrong"], KPSA_ID)
        keygen(args.m2mpsk, keys["unknown"], UNKNOWN_KPSA_ID)
        env["M2MPSK_KEY_FILE"] = keys["good"]
        with mobius_peer.Mobius(keep=args.keep, diffs=[PATCH], env=env,
                                ready=ready) as peer:
            t1 = time.monotonic()
            try:
                res = run_ae(peer, env, keys)
                check_mobius(peer, res)
            except BaseException:
                log("Mobius's log (tail):\n" + peer._tail(peer.log_path, 40))
                raise
            log("AE and checks %.1f s; setup %.1f s (npm %.1f, MariaDB "
                "%.1f, Mobius %.1f)" % (time.monotonic() - t1, t1 - t0,
                                        peer.timings["npm"],
                                        peer.timings["db"],
                                        peer.timings["mobius"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m2mpsk", required=True, help="the m2mpsk tool")
    ap.add_argument("--node-package", default="",
                    help="the Node.js binding's package directory")
    ap.add_argument("--node-addon", default="",
                    help="its native addon (empty: not built, skip)")
    ap.add_argument("--keep", action="store_true",
                    help="keep Mobius's scratch directory")
    args = ap.parse_args()

    return mobius_peer.bounded_main(lambda: run(args), DEADLINE_S)


if __name__ == "__main__":
    sys.exit(main())
