"""100,000 association create/start/free cycles, and 20,000 string results
of 10 kB each: resident memory stays bounded."""
import gc
import os

import m2mpsk
from conftest import KPSA_ID

CYCLES = 100_000
# Generous for allocator noise, far below a leak: 100,000 leaked
# associations (each with its TLS object) would take hundreds of MB.
BOUND_KB = 8 * 1024


def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def cycle(cfg, ks, n):
    for i in range(n):
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID)
        a.start(i)  # builds the TLS session and queues a ClientHello
        if i & 1:
            a.close()  # half closed explicitly, half left to the collector
        del a


def test_rss_bounded_over_100k_cycles(keystore):
    cfg = m2mpsk.Config()
    cycle(cfg, keystore, 2000)  # warm up allocator arenas and caches
    gc.collect()
    before = rss_kb()
    cycle(cfg, keystore, CYCLES)
    gc.collect()
    after = rss_kb()
    cfg.close()
    print("\nRSS over %d association create/free cycles: %d kB -> %d kB (growth %d kB)"
          % (CYCLES, before, after, after - before))
    assert after - before < BOUND_KB


def test_string_results_are_freed():
    """Config.suites() and profile_suites() return strings the glue
    allocates; 20,000 leaked 10 kB lists would take 200 MB."""
    one = ":".join(m2mpsk.suites())
    names = ":".join([one] * (10240 // len(one) + 1))
    with m2mpsk.Config() as cfg:
        cfg.set_suites(names)
        for _ in range(200):
            assert cfg.suites(m2mpsk.TRANSPORT_TLS) == names
        before = rss_kb()
        for _ in range(20_000):
            cfg.suites(m2mpsk.TRANSPORT_TLS)
            m2mpsk.profile_suites(m2mpsk.PROFILE_TS0003, m2mpsk.TRANSPORT_DTLS)
            m2mpsk.profile_missing(m2mpsk.PROFILE_TS0003)
        after = rss_kb()
    assert len(names) > 10240
    assert after - before < BOUND_KB
