#!/usr/bin/env python3
"""Proves tests/support/watchdog.py and timeout.c: each misbehaviour of
watchdog_probe fails (or is cleaned up) within seconds, by name.

    watchdog_test.py WATCHDOG_PY PROBE_EXE
"""
import os
import subprocess
import sys
import time

watchdog, probe = sys.argv[1], sys.argv[2]
failures = 0


def run(args, env_extra=None, limit=60):
    env = dict(os.environ)
    env.update(env_extra or {})
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, watchdog] + args, env=env,
                       capture_output=True, text=True, timeout=limit)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def check(name, cond, out):
    global failures
    if cond:
        print("PASS %s" % name)
    else:
        failures += 1
        print("FAIL %s\n---- output ----\n%s----" % (name, out))


# 1. A test with no limit of its own gets M2MPSK_TEST_TIMEOUT and fails,
#    named, in about that time.
rc, out, secs = run(["--limit", "60", "--", probe, "--verbose",
                     "--filter", "probe/hangs_without_a_limit_of_its_own"],
                    {"M2MPSK_TEST_TIMEOUT": "2"})
check("default limit: fails in %.1f s, named" % secs,
      rc != 0 and secs < 15 and
      "[FAIL] probe::hangs_without_a_limit_of_its_own: Timed out" in out, out)

# 2. The scale multiplies it.
rc, out, secs = run(["--limit", "60", "--", probe, "--verbose",
                     "--filter", "probe/hangs_without_a_limit_of_its_own"],
                    {"M2MPSK_TEST_TIMEOUT": "1", "M2MPSK_TEST_TIMEOUT_SCALE": "3"})
check("scaled limit: fails after 3 s, not 1 (%.1f s)" % secs,
      rc != 0 and 2.5 <= secs < 15 and "Timed out" in out, out)

# 3. An executable that outlives the watchdog's limit: exit 124, the test
#    still running named, the tree killed.
rc, out, secs = run(["--limit", "3", "--", probe, "--verbose",
                     "--filter", "probe/hangs_past_the_watchdog"])
check("watchdog limit: exit 124 in %.1f s, test named" % secs,
      rc == 124 and secs < 40 and
      "test probe::hangs_past_the_watchdog, running for" in out, out)

# 4. A process the tests left behind is killed and reported; the run
#    itself passed.
rc, out, secs = run(["--", probe, "--verbose",
                     "--filter", "probe/leaves_a_process_behind"])
check("left-over process killed and reported",
      rc == 0 and "the tests left running" in out, out)

# 5. A child of the runner stuck before exec (what a BoxFort worker would
#    look like if it blocked between fork and exec): detected after
#    --spawn-stall, reported, retried when asked, and a failure if it
#    persists.
stuck = ("import os, time\n"
         "if os.fork() == 0:\n"
         "    time.sleep(60)\n"
         "    os._exit(0)\n"
         "time.sleep(60)\n")
rc, out, secs = run(["--spawn-stall", "1", "--retries", "1", "--",
                     sys.executable, "-c", stuck])
check("stuck spawn: detected, retried once, exit 125 in %.1f s" % secs,
      rc == 125 and secs < 30 and out.count("has been stuck between fork and exec") == 2
      and "running it again (1 of 1)" in out, out)

# 6. By default, no second run: the first stuck spawn fails the test.
rc, out, secs = run(["--spawn-stall", "1", "--", sys.executable, "-c", stuck])
check("stuck spawn, default: fails at once, exit 125 in %.1f s" % secs,
      rc == 125 and secs < 20 and
      out.count("has been stuck between fork and exec") == 1 and
      "running it again" not in out, out)

print("%d passed, %d failed" % (6 - failures, failures))
sys.exit(1 if failures else 0)
