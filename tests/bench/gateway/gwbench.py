#!/usr/bin/env python3
"""The gateway benchmark's driver (tests/bench/README.md, "The gateway").

One backend (m2mpsk-gwbench-backend), and in front of it, side by side in
one run: `m2mpsk gateway`, stunnel in server mode with its PSK secrets
file, and nothing (the backend reached directly, the floor). The same
client (m2mpsk-gwbench-load) drives each contender in turn, their order
rotating with the repetition. For every run of the client, the CPU time of
the server process (utime + stime from /proc/PID/stat, all its threads) is
read when the client's timed window opens and when it closes.

Writes one JSON object per line to --json; report.py turns them into the
gateway section of docs/BENCHMARKS.md and its plot. Exits 0 whatever the
figures, non-zero when a contender cannot be set up or a run fails.
"""
import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

KPSA_ID = "test@onem2m.com"
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cbench"
ORIGIN = "Cbench"  # the AE-ID-Stem of IDA: what the device sends as From
# The suite every contender negotiates: RFC 4279's plain-PSK AES-128-CBC
# suite, which m2mpsk's default gateway config accepts (engine auto runs it
# on BoringSSL) and stunnel's OpenSSL offers as PSK-AES128-CBC-SHA.
SUITES = {
    "TLS_PSK_WITH_AES_128_CBC_SHA": "PSK-AES128-CBC-SHA",
    "TLS_PSK_WITH_AES_128_CBC_SHA256": "PSK-AES128-CBC-SHA256",
}

PROFILES = {
    #            reps, warm-up s, window s, conc assoc, conc keep-alive,
    #            idle N, memory reps, memory right after the handshake too,
    #            associations held under massif (0: none)
    "full": dict(reps=5, warmup=1.0, seconds=4.0, conc_assoc=16,
                 conc_ka=32, idle_n=2000, mem_reps=3, mem_handshake=True,
                 massif_n=500),
    "quick": dict(reps=2, warmup=0.25, seconds=1.0, conc_assoc=16,
                  conc_ka=32, idle_n=1000, mem_reps=1, mem_handshake=False,
                  massif_n=0),
    "smoke": dict(reps=1, warmup=0.2, seconds=0.5, conc_assoc=4,
                  conc_ka=4, idle_n=50, mem_reps=1, mem_handshake=True,
                  massif_n=0),
}

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, flush=True)


def cpu_s(pid):
    """utime + stime of a whole process (its threads, live and ended)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, so
    that checking makes no connection the server would have to handle)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[1] == want and p[3] == "0A":
                return True
    return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A server in the background, its stderr kept in a log file and
    scanned line by line for what it prints when ready."""

    def __init__(self, name, argv, logpath, ready=None, stdout_ready=None,
                 timeout=15):
        self.name = name
        self.logpath = logpath
        self.log = open(logpath, "w")
        self.match = None
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_ready else subprocess.DEVNULL,
            stderr=subprocess.PIPE if ready else self.log,
            start_new_session=True, text=True)
        self.pid = self.proc.pid
        self.event = threading.Event()
        self.found = {}
        if ready:
            self._watch(self.proc.stderr, ready)
        if stdout_ready:
            self._watch(self.proc.stdout, stdout_ready)
        if ready or stdout_ready:
            if not self.event.wait(timeout):
                self.stop()
                raise RuntimeError("%s not ready in %d s; its log: %s" % (
                    name, timeout, self.tail()))

    def _watch(self, stream, patterns):
        """patterns: list of regexes; the event fires once all matched."""
        def run():
            left = list(patterns)
            for line in stream:
                self.log.write(line)
                self.log.flush()
                for rx in list(left):
                    m = re.search(rx, line)
                    if m:
                        self.found[rx] = m
                        left.remove(rx)
                if not left:
                    self.event.set()
            self.event.set()  # the stream ended: let the waiter look
        threading.Thread(target=run, daemon=True).start()

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=15):
        try:
            with open(self.logpath) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Bench:
    def __init__(self, a):
        self.a = a
        self.p = dict(PROFILES[a.profile])
        self.work = a.workdir
        os.makedirs(self.work, exist_ok=True)
        self.rows = []
        self.key = secrets.token_hex(32)
        # m2mpsk's key file and stunnel's PSK secrets: the same 32-byte key
        self.keys = os.path.join(self.work, "gw.keys")
        self.psk = os.path.join(self.work, "stunnel.psk")
        for path, text in (
                (self.keys, "kpsa-id=%s kpsa=hex:%s idb=%s ida=%s\n" % (
                    KPSA_ID, self.key, IDB, IDA)),
                (self.psk, "%s:%s\n" % (KPSA_ID, self.key))):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(path, 0o600)

    # -- the processes ----------------------------------------------------

    def start_backend(self, tag):
        b = Proc("backend", [self.a.backend], os.path.join(
            self.work, "backend.%s.log" % tag), stdout_ready=[r"listening (\d+)"])
        m = b.found.get(r"listening (\d+)")
        if not m:
            raise RuntimeError("backend did not start: " + b.tail())
        b.port = int(m.group(1))
        return b

    def start(self, who, backend, tag):
        """Starts a contender in front of `backend`; returns (proc, port).
        The direct contender is the backend itself."""
        if who == "direct":
            return backend, backend.port
        logpath = os.path.join(self.work, "%s.%s.log" % (who, tag))
        if who == "stunnel":
            port = free_port()
            conf = os.path.join(self.work, "stunnel.%s.conf" % tag)
            with open(conf, "w") as f:
                f.write("\n".join([
                    "foreground = yes",
                    "pid =",
                    # warnings and errors only: no line per connection
                    "debug = 4",
                    "[gwbench]",
                    # no /etc/hosts.allow lookup per connection
                    "libwrap = no",
                    "accept = 127.0.0.1:%d" % port,
                    "connect = 127.0.0.1:%d" % backend.port,
                    "ciphers = %s" % SUITES[self.a.suite],
                    "sslVersionMin = TLSv1.2",
                    "sslVersionMax = TLSv1.2",
                    "PSKsecrets = %s" % self.psk,
                    "socket = l:TCP_NODELAY=1",
                    "socket = r:TCP_NODELAY=1",
                    ""]))
            proc = Proc("stunnel", [self.a.stunnel, conf], logpath)
            deadline = time.monotonic() + 15
            while not listening(port):
                if not proc.alive() or time.monotonic() > deadline:
                    proc.stop()
                    raise RuntimeError("stunnel did not listen: " + proc.tail())
                time.sleep(0.01)  # polling the listen table, bounded above
            return proc, port
        if who == "gateway":
            argv = [self.a.m2mpsk, "gateway", "--keys", self.keys, "--id", IDB,
                    "--http-listen", "127.0.0.1:0",
                    "--http-backend", "127.0.0.1:%d" % backend.port,
                    # what a benchmark from one address needs: room for
                    # every association it holds, and no idle timeout
                    # during the idle-memory hold
                    "--max-conn", str(self.p["idle_n"] * 2 + 1000),
                    "--max-per-addr", str(self.p["idle_n"] * 2 + 1000),
                    "--idle-timeout", "600000"]
            argv += self.a.gateway_arg
            proc = Proc("gateway", argv, logpath, ready=[
                r"gateway listening http 127\.0\.0\.1:(\d+)", r"gateway ready"])
            m = proc.found.get(r"gateway listening http 127\.0\.0\.1:(\d+)")
            if not m or r"gateway ready" not in proc.found:
                proc.stop()
                raise RuntimeError("gateway did not start: " + proc.tail())
            return proc, int(m.group(1))
        raise ValueError(who)

    # -- the client -------------------------------------------------------

    def load(self, who, port, mode, pids, conc, seconds, warmup, n=None,
             on_idle=None, no_request=False):
        argv = [self.a.load, "--port", str(port), "--mode", mode,
                "--conc", str(conc), "--seconds", str(seconds),
                "--warmup", str(warmup), "--origin", ORIGIN]
        if who != "direct":
            argv += ["--tls", "--keys", self.keys, "--kpsa-id", KPSA_ID,
                     "--suites", self.a.suite]
        if n is not None:
            argv += ["--n", str(n), "--hold", "60"]
        if no_request:
            argv += ["--no-request"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        # the client bounds itself (alarm); this bounds the wait for it
        killer = threading.Timer(warmup + seconds + 120, p.kill)
        killer.start()
        cpu0 = cpu1 = None
        res, extra = None, {}
        try:
            for line in p.stdout:
                line = line.strip()
                if line == "go":
                    cpu0 = {k: cpu_s(v) for k, v in pids.items()}
                    t0 = time.monotonic()
                elif line == "stop":
                    cpu1 = {k: cpu_s(v) for k, v in pids.items()}
                    extra["driver_wall_s"] = time.monotonic() - t0
                elif line.startswith("idle "):
                    if on_idle:
                        extra.update(on_idle())
                    p.stdin.write("release\n")
                    p.stdin.flush()
                elif line.startswith("{"):
                    res = json.loads(line)
            p.wait(30)
        finally:
            killer.cancel()
        err = p.stderr.read()
        if res is None or p.returncode != 0:
            raise RuntimeError("load %s %s failed (exit %s): %s %s" % (
                who, mode, p.returncode, err.strip(), res))
        if cpu0 is not None and cpu1 is not None:
            for k in pids:
                res["cpu_" + k] = cpu1[k] - cpu0[k]
        res.update(extra)
        return res

    # -- the phases -------------------------------------------------------

    def timed(self, who, phase, rep, procs):
        proc, port = procs[who]
        pids = {"server": proc.pid, "backend": self.backend.pid}
        p = self.p
        if phase == "assoc":
            r = self.load(who, port, "assoc", pids, p["conc_assoc"],
                          p["seconds"], p["warmup"])
        elif phase == "keepalive":
            r = self.load(who, port, "keepalive", pids, p["conc_ka"],
                          p["seconds"], p["warmup"])
        else:  # latency: one request at a time on one association
            r = self.load(who, port, "keepalive", pids, 1, p["seconds"],
                          p["warmup"])
        r.update(kind="gw_sample", who=who, phase=phase, rep=rep,
                 server_threads=threads(proc.pid))
        rate = r["completed"] / r["wall_s"]
        cpu = r.get("cpu_server", 0)
        r["per_s"] = rate
        r["per_cpu_s"] = r["completed"] / cpu if cpu > 0 else None
        fails = (r["hs_fail"] + r["conn_fail"] + r["http_fail"] +
                 r["closed_by_peer"] + r["timeouts"])
        r["failures"] = fails
        log("  %-8s %-9s rep %d: %8.0f /s wall, %9s /server CPU s "
            "(server %.2f s CPU, backend %.2f s, client %.2f s), p50 %.0f µs, "
            "p99 %.0f µs%s" % (
                who, phase, rep, rate,
                "%.0f" % r["per_cpu_s"] if r["per_cpu_s"] else "-",
                cpu, r.get("cpu_backend", 0), r["client_cpu_s"], r["p50_us"],
                r["p99_us"], ", %d failures (%s)" % (fails, r["last_error"])
                if fails else ""))
        if r["completed"] == 0:
            raise RuntimeError("%s %s: nothing completed (%s)" % (
                who, phase, r["last_error"]))
        return r

    def memory(self, who, rep, request):
        """A fresh backend and server: warm-up associations, then the
        resident set before and while N associations are held idle, each
        after one request answered (request) or right after its handshake."""
        tag = "mem%d%s" % (rep, "r" if request else "h")
        backend = self.start_backend("%s.%s" % (who, tag))
        procs = []
        try:
            proc, port = self.start(who, backend, "%s" % tag)
            if proc is not backend:
                procs.append(proc)
            pids = {"server": proc.pid, "backend": backend.pid}
            # warm-up: what the first associations build once (libraries'
            # lazy state, thread pools, malloc arenas) is not per association
            self.load(who, port, "assoc", pids, 8, 0.3, 0.1)
            base = {"server": rss_kib(proc.pid), "backend": rss_kib(backend.pid)}
            base_threads = threads(proc.pid)
            n = self.p["idle_n"]

            def measure():
                return {"rss_server_kib": rss_kib(proc.pid),
                        "rss_backend_kib": rss_kib(backend.pid),
                        "threads_idle": threads(proc.pid)}
            r = self.load(who, port, "idle", pids, 32, 1, 0, n=n,
                          on_idle=measure, no_request=not request)
            if r["idle"] != n or "rss_server_kib" not in r:
                raise RuntimeError("%s: %s of %d associations idle (%s)" % (
                    who, r["idle"], n, r["last_error"]))
            out = dict(kind="gw_mem", who=who, rep=rep, n=n, request=request,
                       rss_base_kib=base["server"], rss_idle_kib=r["rss_server_kib"],
                       backend_base_kib=base["backend"],
                       backend_idle_kib=r["rss_backend_kib"],
                       threads_base=base_threads, threads_idle=r["threads_idle"],
                       dropped_idle=r["dropped_idle"],
                       per_assoc_b=(r["rss_server_kib"] - base["server"]) * 1024 / n,
                       backend_per_assoc_b=(r["rss_backend_kib"] - base["backend"]) * 1024 / n)
            log("  %-8s memory %s rep %d: %.0f B per idle association "
                "(server %d -> %d KiB, %d -> %d threads; backend %+.0f B each)" % (
                    who, "(request)  " if request else "(handshake)", rep,
                    out["per_assoc_b"], base["server"],
                    r["rss_server_kib"], base_threads, r["threads_idle"],
                    out["backend_per_assoc_b"]))
            return out
        finally:
            for pr in procs:
                pr.stop()
            backend.stop()

    def massif(self):
        """Where the gateway's heap per idle association goes: the gateway
        (one thread) under valgrind's massif, a detailed snapshot (vgdb)
        while N associations are held idle, and another while 2N are. Heap in use only: what malloc itself adds (its headers,
        rounding) and page granularity are in the resident figure."""
        vg, vgdb = shutil.which("valgrind"), shutil.which("vgdb")
        if not vg or not vgdb:
            return dict(kind="gw_massif", skipped="valgrind not installed")
        n = self.p["massif_n"]
        backend = self.start_backend("massif")
        out = os.path.join(self.work, "massif.out")
        snaps = [os.path.join(self.work, "massif.%d.txt" % i) for i in (0, 1)]
        for f in snaps:
            if os.path.exists(f):
                os.remove(f)
        proc = None
        try:
            argv = [vg, "--tool=massif", "--vgdb=yes", "--threshold=0.01",
                    "--massif-out-file=" + out, self.a.m2mpsk, "gateway",
                    "--keys", self.keys, "--id", IDB,
                    "--http-listen", "127.0.0.1:0",
                    "--http-backend", "127.0.0.1:%d" % backend.port,
                    "--max-conn", str(n * 2 + 1000),
                    "--max-per-addr", str(n * 2 + 1000),
                    "--idle-timeout", "600000", "--handshake-timeout", "60000",
                    "--threads", "1"] + self.a.gateway_arg
            proc = Proc("gateway (massif)", argv, os.path.join(
                self.work, "gateway.massif.log"), ready=[
                r"gateway listening http 127\.0\.0\.1:(\d+)", r"gateway ready"],
                timeout=120)
            m = proc.found.get(r"gateway listening http 127\.0\.0\.1:(\d+)")
            if not m:
                raise RuntimeError("gateway under massif did not start: " + proc.tail())
            port = int(m.group(1))
            pids = {"server": proc.pid, "backend": backend.pid}

            def snap(path):
                subprocess.run([vgdb, "--pid=%d" % proc.pid,
                                "detailed_snapshot", path],
                               capture_output=True, timeout=120, check=True)
                if not os.path.exists(path):
                    raise RuntimeError("vgdb wrote no snapshot %s" % path)
                return {}
            # A warm-up round; then N associations held idle, a snapshot,
            # N more held idle next to them (a second client), another
            # snapshot. Both snapshots are taken with everything idle, so
            # nothing transient (a connection being torn down, a deferred
            # callback) is in their difference.
            self.load("gateway", port, "idle", pids, 16, 1, 0, n=50,
                      on_idle=lambda: {})

            def second():
                snap(snaps[0])
                r2 = self.load("gateway", port, "idle", pids, 16, 1, 0, n=n,
                               on_idle=lambda: snap(snaps[1]))
                return {"second_idle": r2["idle"]}
            r = self.load("gateway", port, "idle", pids, 16, 1, 0, n=n,
                          on_idle=second)
            if r["idle"] != n or r.get("second_idle") != n:
                raise RuntimeError("massif: %s and %s of %d idle" % (
                    r["idle"], r.get("second_idle"), n))
        finally:
            if proc is not None:
                proc.stop()
            backend.stop()
        a, b = massif_parse(snaps[0]), massif_parse(snaps[1])
        by_fn = {}
        for k in set(a["fns"]) | set(b["fns"]):
            d = (b["fns"].get(k, 0) - a["fns"].get(k, 0)) / n
            if abs(d) >= 1:
                by_fn[k] = d
        row = dict(kind="gw_massif", n=n,
                   heap_b=(b["heap"] - a["heap"]) / n,
                   extra_b=(b["extra"] - a["extra"]) / n, fns=by_fn)
        log("  gateway  massif: %.0f B of heap per idle association (+%.0f B "
            "malloc overhead)" % (row["heap_b"], row["extra_b"]))
        return row

    # -- the run ----------------------------------------------------------

    def emit(self, row):
        self.rows.append(row)
        with open(self.a.json, "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self):
        a, p = self.a, self.p
        open(a.json, "w").close()
        whos = ["gateway", "stunnel", "direct"]
        skipped = {}
        if not a.m2mpsk or subprocess.run(
                [a.m2mpsk, "gateway", "--help"], capture_output=True,
                timeout=10).returncode != 0:
            skipped["gateway"] = "`m2mpsk gateway` is not in this build"
        if not a.stunnel:
            skipped["stunnel"] = "stunnel not found"
        whos = [w for w in whos if w not in skipped]
        self.emit(dict(kind="gw_run", profile=a.profile, suite=a.suite,
                       stunnel_suite=SUITES[a.suite], contenders=whos,
                       skipped=skipped, versions=versions(a), nproc=os.cpu_count(),
                       loadavg_start=open("/proc/loadavg").read().split()[:3],
                       **p))
        for w, why in skipped.items():
            log("skipping %s: %s" % (w, why))
        self.backend = self.start_backend("timed")
        procs = {}
        try:
            for w in list(whos):
                try:
                    procs[w] = self.start(w, self.backend, "timed")
                except RuntimeError as e:
                    # the others are still worth measuring; the report
                    # says why this one is not
                    log("skipping %s: %s" % (w, e))
                    skipped[w] = "did not start: %s" % str(e).strip().splitlines()[-1][:300]
                    whos.remove(w)
                    continue
                log("%s listening on %d (pid %d)" % (w, procs[w][1], procs[w][0].pid))
            self.emit(dict(kind="gw_contenders", contenders=whos, skipped=skipped))
            for rep in range(p["reps"]):
                order = whos[rep % len(whos):] + whos[:rep % len(whos)]
                for phase in ("assoc", "keepalive", "latency"):
                    for w in order:
                        if not procs[w][0].alive():
                            raise RuntimeError("%s died: %s" % (w, procs[w][0].tail()))
                        self.emit(self.timed(w, phase, rep, procs))
        finally:
            for w, (proc, _) in procs.items():
                if proc is not self.backend:
                    proc.stop()
            self.backend.stop()
        for rep in range(p["mem_reps"]):
            order = whos[rep % len(whos):] + whos[:rep % len(whos)]
            for request in (True, False) if p["mem_handshake"] else (True,):
                for w in order:
                    self.emit(self.memory(w, rep, request))
        if "gateway" in whos and p["massif_n"]:
            self.emit(self.massif())
        self.emit(dict(kind="gw_end",
                       loadavg_end=open("/proc/loadavg").read().split()[:3]))
        summarize(self.rows)
        return 0


def massif_parse(path):
    """Heap totals and the top-level allocation sites of one massif
    detailed snapshot (as vgdb's detailed_snapshot writes it)."""
    heap = extra = 0
    fns = {}
    rx = re.compile(r"^ n\d+: (\d+) (?:0x[0-9A-F]+: )?(.*)$")
    with open(path) as f:
        for line in f:
            if line.startswith("mem_heap_B="):
                heap = int(line.split("=")[1])
            elif line.startswith("mem_heap_extra_B="):
                extra = int(line.split("=")[1])
            else:
                m = rx.match(line)
                if m:
                    name = re.sub(r" \((?:in )?(.*?)\)$", lambda mm: " (%s)" % (
                        os.path.basename(mm.group(1)).split(":")[0]), m.group(2))
                    if name.startswith("in ") and "places" in name:
                        name = "(below massif's threshold)"
                    fns[name] = fns.get(name, 0) + int(m.group(1))
    return dict(heap=heap, extra=extra, fns=fns)


def versions(a):
    v = {}
    try:
        out = subprocess.run([a.stunnel, "-version"], capture_output=True,
                             text=True, timeout=10)
        lines = (out.stdout + out.stderr).splitlines()
        v["stunnel"] = next((l.strip() for l in lines if l.startswith("stunnel ")), "")
        v["stunnel_openssl"] = next((" ".join(l.split()[1:]) for l in lines
                                     if l.startswith("Running")), "")
    except (OSError, subprocess.SubprocessError, TypeError):
        pass
    try:
        out = subprocess.run([a.m2mpsk, "version"], capture_output=True,
                             text=True, timeout=10)
        v["m2mpsk"] = out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError, TypeError):
        pass
    try:
        out = subprocess.run(["pkg-config", "--modversion", "libevent"],
                             capture_output=True, text=True, timeout=10)
        v["libevent"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def summarize(rows):
    """Prints per contender and phase the medians with min-max."""
    samples = [r for r in rows if r["kind"] == "gw_sample"]
    for phase in ("assoc", "keepalive", "latency"):
        for who in ("gateway", "stunnel", "direct"):
            s = [r for r in samples if r["phase"] == phase and r["who"] == who]
            if not s:
                continue
            pc = [r["per_cpu_s"] for r in s if r["per_cpu_s"]]
            log("%-9s %-8s wall %8.0f /s, per server CPU s %8.0f, p99 %7.0f µs"
                % (phase, who, statistics.median(r["per_s"] for r in s),
                   statistics.median(pc) if pc else 0,
                   statistics.median(r["p99_us"] for r in s)))
    for who in ("gateway", "stunnel", "direct"):
        for request in (True, False):
            m = [r for r in rows if r["kind"] == "gw_mem" and r["who"] == who
                 and r["request"] == request]
            if m:
                log("memory    %-8s %.0f B per idle association, %s" % (
                    who, statistics.median(r["per_assoc_b"] for r in m),
                    "after one request" if request else "handshake only"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, help="m2mpsk-gwbench-backend")
    ap.add_argument("--load", required=True, help="m2mpsk-gwbench-load")
    ap.add_argument("--m2mpsk", help="the m2mpsk tool (with `gateway`)")
    ap.add_argument("--stunnel", default=shutil.which("stunnel4") or shutil.which("stunnel"))
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    ap.add_argument("--suite", choices=sorted(SUITES), default="TLS_PSK_WITH_AES_128_CBC_SHA")
    ap.add_argument("--gateway-arg", action="append", default=[],
                    help="one more argument for `m2mpsk gateway` (repeatable)")
    ap.add_argument("--require", action="append", default=[],
                    help="fail unless this contender ran (repeatable)")
    ap.add_argument("--check", action="store_true",
                    help="fail when any connection failed or was dropped "
                         "(the smoke test)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    b = Bench(a)
    rc = b.run()
    final = next(r for r in b.rows if r["kind"] == "gw_contenders")
    if a.check:
        for r in b.rows:
            bad = r.get("failures", 0) if r["kind"] == "gw_sample" else \
                r.get("dropped_idle", 0) if r["kind"] == "gw_mem" else 0
            if bad:
                log("check: %s %s rep %d: %d failed or dropped (%s)" % (
                    r["who"], r.get("phase", "memory"), r["rep"], bad,
                    r.get("last_error", "")))
                rc = 1
    for w in a.require:
        if w not in final["contenders"]:
            log("required contender %s did not run: %s" % (
                w, final["skipped"].get(w, "?")))
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
