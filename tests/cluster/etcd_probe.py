#!/usr/bin/env python3
"""How fast a 3-member etcd cluster (Debian's etcd 3.4, --unsafe-no-fsync,
loopback) takes bulk txns and serves range pages through its v3 JSON
gateway: the figures docs/SCALING.md starts from. A benchmark, not a test:

    python3 tests/cluster/etcd_probe.py [RECORDS] [BATCH] [PAGE]

RECORDS (default 100000) values of VALUE_BYTES (default 160, about what a
sealed record takes), put in txns of BATCH ops (default 1024, with
--max-txn-ops raised to match), then read back in pages of PAGE keys
(default 10000). Prints records/s each way, the backend's size and each
member's RSS."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    page = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    vbytes = int(os.environ.get("VALUE_BYTES", "160"))
    extra = ["--max-txn-ops", str(max(128, batch)),
             "--max-request-bytes", str(64 << 20),
             "--quota-backend-bytes", str(8 << 30)]
    with cluster.Cluster(nodes=0, deadline_s=580, etcd_extra=extra,
                         start_nodes=False) as c:
        gw = c.etcd.gateway(0)
        value = os.urandom(vbytes)
        t0 = time.monotonic()
        for i in range(0, n, batch):
            gw.txn_puts([("/m2mpsk/keys/" + cluster.device_id(j), value)
                         for j in range(i, min(n, i + batch))])
        put_s = time.monotonic() - t0
        rev = gw.revision()
        print("put: %d records in txns of %d: %.2f s, %.0f records/s "
              "(revision %d)" % (n, batch, put_s, n / put_s, rev))
        for label, serial in (("linearizable", False), ("serializable", True)):
            t0 = time.monotonic()
            key = "/m2mpsk/keys/"
            end = cluster.prefix_end(key)
            got = 0
            pages = 0
            nbytes = 0
            while True:
                r = gw.range(key, end, limit=page, revision=rev,
                             serializable=serial)
                kvs = r.get("kvs", [])
                got += len(kvs)
                pages += 1
                nbytes += sum(len(kv.get("value", "")) + len(kv["key"])
                              for kv in kvs)
                if not r.get("more"):
                    break
                key = cluster.unb64(kvs[-1]["key"]) + b"\0"
            get_s = time.monotonic() - t0
            print("range (%s): %d records in %d pages of %d: %.2f s, "
                  "%.0f records/s, %.1f MB of JSON base64 payload" %
                  (label, got, pages, page, get_s, got / get_s, nbytes / 1e6))
            assert got == n, (got, n)
        st = c.etcd.etcdctl("endpoint", "status", "-w", "json").stdout
        import json
        for e in json.loads(st):
            print("member %s: dbSize %.1f MB, dbSizeInUse %.1f MB" % (
                e["Endpoint"], e["Status"]["dbSize"] / 1e6,
                e["Status"].get("dbSizeInUse", 0) / 1e6))
        for m in c.etcd.members:
            print("%s RSS %.0f MB" % (m.name, m.rss_kib() / 1024))


if __name__ == "__main__":
    cluster.main(main)
