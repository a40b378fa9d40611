"""A cluster on loopback for the issue-19 tests: a 3-member etcd cluster
(Debian's etcd-server) and N `m2mpsk serve --keys etcd://...` nodes, plus
the pieces the tests share: etcd's v3 JSON gateway, `m2mpsk keys`, and many
TLS-PSK initiators multiplexed in one Python process over the binding.

Everything a Cluster starts it also stops, on any exit:
  - each child runs in its own session (so SIGSTOP or SIGKILL reaches only
    it) with PR_SET_PDEATHSIG = SIGKILL, so that a driver killed outright
    (ctest's TIMEOUT) takes etcd and the nodes with it;
  - `with Cluster(...)` kills and reaps them all on the way out, and
    SIGTERM/SIGINT/SIGALRM become exceptions that pass through it;
  - a global deadline (SIGALRM) bounds the whole test below ctest's TIMEOUT,
    and every wait in here has its own bound too.

Children are started from the main thread only: PR_SET_PDEATHSIG fires
when the thread that forked dies, not the process.

Python 3 standard library, and the binding for the initiators."""
import base64
import ctypes
import json
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
# .ci/sanitize runs the suite slower and scales every wait.
SCALE = float(os.environ.get("M2MPSK_TEST_TIMEOUT_SCALE", "1"))
STEP_S = 15.0 * SCALE
IDB = "//m2m.example.com/cse-in"
PREFIX = "m2mpsk"


class Fail(Exception):
    """The test failed; the message says how."""


class Skip(Exception):
    """The test cannot run here; the message says why (exit 77)."""


class Deadline(Exception):
    """The global deadline passed."""


class Interrupted(Exception):
    """SIGTERM or SIGINT."""


def log(*a):
    print("cluster:", *a, flush=True)


def now_ms():
    return int(time.monotonic() * 1000)


def cli():
    path = os.environ.get("M2MPSK_CLI")
    if not path:
        raise Skip("M2MPSK_CLI (the m2mpsk executable) is not set")
    return path


def import_binding():
    """The binding from the build tree (M2MPSK_PYTHONPATH), as the gateway
    tests import it."""
    path = os.environ.get("M2MPSK_PYTHONPATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        import m2mpsk
    except ImportError as e:
        raise Skip("the m2mpsk Python binding is not built (%s)" % e)
    return m2mpsk


def require_etcd():
    for tool in ("etcd", "etcdctl"):
        if shutil.which(tool) is None:
            raise Skip("%s not found: apt-get install etcd-server etcd-client"
                       % tool)


def etcd_supports_etcd_keys():
    """1 when this m2mpsk was built with the etcd component: `m2mpsk keys`
    exits 2 with "built without etcd support" otherwise."""
    r = subprocess.run([cli(), "keys", "--help"], capture_output=True,
                       text=True, timeout=STEP_S)
    text = r.stdout + r.stderr
    return "without etcd" not in text and "keys" in text and \
        "unknown command" not in text.lower()


# ---- children -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup():
    # In the child between fork and exec: its own session (signals reach
    # it alone), and death with the driver.
    os.setsid()
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    """A child whose stderr (and stdout) lines a thread collects: lines(),
    wait_line(regex) bounded; SIGSTOP/SIGCONT/SIGKILL to it alone."""

    def __init__(self, name, argv, log_path=None, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self._lines = []
        self._times = []  # when each line was read (time.monotonic())
        self._cv = threading.Condition()
        self._log = open(log_path, "ab") if log_path else None
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=_child_setup, env=env,
                                     cwd=cwd)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="read-" + name)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            if self._log:
                self._log.write(raw)
                self._log.flush()
            t = time.monotonic()
            with self._cv:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._times.append(t)
                # A node with -v logs a line per change: keep the last
                # 200,000 lines, enough for any one wait.
                if len(self._lines) > 200000:
                    del self._lines[:100000]
                    del self._times[:100000]
                    self._dropped = getattr(self, "_dropped", 0) + 100000
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def lines(self):
        with self._cv:
            return list(self._lines)

    def mark(self):
        """A position for wait_line(start=...): lines after this call."""
        with self._cv:
            return len(self._lines) + getattr(self, "_dropped", 0)

    def alive(self):
        return self.proc.poll() is None

    def wait_line(self, pattern, timeout=STEP_S, start=0):
        rx = re.compile(pattern)
        return self.wait_for(rx.search, timeout, start, "a line matching %r"
                             % pattern)

    def wait_for(self, pred, timeout=STEP_S, start=0, what="a line"):
        """The first true pred(line) among the lines from `start` (a
        mark()), waiting at most `timeout` seconds for it."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                first = max(0, start - getattr(self, "_dropped", 0))
                for line in self._lines[first:]:
                    m = pred(line)
                    if m:
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise Fail("%s: no %s within %.0f s; last lines:\n  %s" %
                               (self.name, what, timeout,
                                "\n  ".join(self._lines[-30:])))
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise Fail("%s exited (%s) before %s; last lines:\n  %s" %
                               (self.name, self.proc.returncode, what,
                                "\n  ".join(self._lines[-30:])))
                self._cv.wait(min(left, 0.25))

    def time_of(self, pred, start=0):
        """When the first line from `start` for which pred(line) is true
        was read (time.monotonic()), or None."""
        with self._cv:
            first = max(0, start - getattr(self, "_dropped", 0))
            for line, t in zip(self._lines[first:], self._times[first:]):
                if pred(line):
                    return t
        return None

    def count(self, pattern, start=0):
        rx = re.compile(pattern)
        with self._cv:
            first = max(0, start - getattr(self, "_dropped", 0))
            return sum(1 for line in self._lines[first:] if rx.search(line))

    def signal(self, sig):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        """SIGKILL (after SIGCONT, in case it was stopped) and reap."""
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=STEP_S)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=STEP_S)
        if self._log:
            self._log.close()
            self._log = None

    def terminate(self, timeout=STEP_S):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
        finally:
            self._reader.join(timeout=STEP_S)

    def rss_kib(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1, held open together while
    chosen so that they differ. Another process may take one before etcd
    binds it: EtcdCluster.start() retries with new ones."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---- etcd -----------------------------------------------------------------------

def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def unb64(s):
    return base64.b64decode(s) if s else b""


def prefix_end(key):
    """etcd's range_end for "every key starting with key"."""
    k = bytearray(key.encode() if isinstance(key, str) else key)
    while k:
        if k[-1] < 0xFF:
            k[-1] += 1
            return bytes(k)
        k.pop()
    return b"\0"


class Gateway:
    """etcd's v3 JSON gateway on one member, over one kept-alive HTTP/1.1
    connection (a new one per request would measure connect(), not etcd)."""

    def __init__(self, port, timeout=STEP_S):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def post(self, path, body):
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request("POST", path, data,
                                  {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                out = r.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            if r.status != 200:
                raise Fail("etcd %s: HTTP %d %s" % (path, r.status,
                                                    out[:300].decode(errors="replace")))
            return json.loads(out)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # Thin wrappers; keys and values are bytes or str.
    def put(self, key, value):
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def range(self, key, end=None, limit=0, revision=0, keys_only=False,
              count_only=False, serializable=False):
        body = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if limit:
            body["limit"] = str(limit)
        if revision:
            body["revision"] = str(revision)
        if keys_only:
            body["keys_only"] = True
        if count_only:
            body["count_only"] = True
        if serializable:
            body["serializable"] = True
        return self.post("/v3/kv/range", body)

    def txn_puts(self, pairs):
        """One txn putting every (key, value): success ops only."""
        ops = [{"request_put": {"key": b64(k), "value": b64(v)}}
               for k, v in pairs]
        return self.post("/v3/kv/txn", {"success": ops})

    def delete(self, key, end=None):
        body = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        return self.post("/v3/kv/deleterange", body)

    def compact(self, revision, physical=True):
        return self.post("/v3/kv/compaction",
                         {"revision": str(revision), "physical": physical})

    def revision(self):
        h = self.range("\0", count_only=True)["header"]
        return int(h["revision"])


class EtcdCluster:
    """n etcd members on loopback, each with a private data directory under
    `workdir`, flags as the issue's tests need (--unsafe-no-fsync: the data
    dies with the test)."""

    def __init__(self, workdir, n=3, extra=(), start_timeout=30 * SCALE):
        self.workdir = workdir
        self.n = n
        self.extra = list(extra)
        self.start_timeout = start_timeout
        self.members = [None] * n
        self.names = ["m%d" % (i + 1) for i in range(n)]
        self.client_ports = []
        self.peer_ports = []

    def _argv(self, i, state):
        name = self.names[i]
        peers = ",".join("%s=http://127.0.0.1:%d" % (self.names[j],
                                                      self.peer_ports[j])
                         for j in range(self.n))
        cu = "http://127.0.0.1:%d" % self.client_ports[i]
        pu = "http://127.0.0.1:%d" % self.peer_ports[i]
        return ["etcd", "--name", name,
                "--data-dir", os.path.join(self.workdir, name),
                "--initial-cluster", peers,
                "--initial-cluster-state", state,
                "--initial-cluster-token", "m2mpsk-%d" % os.getpid(),
                "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
                "--listen-client-urls", cu, "--advertise-client-urls", cu,
                "--unsafe-no-fsync", "--log-level", "warn",
                "--logger", "zap", "--log-outputs", "stderr"] + self.extra

    def start(self):
        last = None
        for attempt in range(3):
            ports = free_ports(2 * self.n)
            self.client_ports = ports[:self.n]
            self.peer_ports = ports[self.n:]
            for i in range(self.n):
                shutil.rmtree(os.path.join(self.workdir, self.names[i]),
                              ignore_errors=True)
                self._spawn(i, "new")
            try:
                self.wait_healthy()
                return self
            except Fail as e:
                last = e
                text = "\n".join(l for m in self.members if m
                                 for l in m.lines())
                self.stop()
                if "address already in use" not in text:
                    raise
                log("etcd: a port was taken (attempt %d), retrying" % (attempt + 1))
        raise last

    def _spawn(self, i, state):
        self.members[i] = Proc("etcd-" + self.names[i], self._argv(i, state),
                               log_path=os.path.join(self.workdir,
                                                     self.names[i] + ".log"))

    def kill(self, i):
        """SIGKILL member i (no goodbye to its peers)."""
        self.members[i].kill()

    def restart(self, i):
        """Starts member i again on its data directory (which then decides
        the membership, not the flags) and waits until it answers."""
        if self.members[i] and self.members[i].alive():
            self.members[i].kill()
        self._spawn(i, "existing")
        self.wait_healthy([i])

    def alive(self, i):
        return self.members[i] is not None and self.members[i].alive()

    def health(self, i):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.client_ports[i],
                                           timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            body = r.read()
            c.close()
            return r.status == 200 and json.loads(body).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def wait_healthy(self, which=None, timeout=None):
        which = range(self.n) if which is None else which
        end = time.monotonic() + (timeout or self.start_timeout)
        for i in which:
            while not self.health(i):
                m = self.members[i]
                if m is None or not m.alive():
                    raise Fail("etcd %s exited: %s" % (
                        self.names[i], "\n  ".join(m.lines()[-15:]) if m else "-"))
                if time.monotonic() > end:
                    raise Fail("etcd %s not healthy within %.0f s; last lines:"
                               "\n  %s" % (self.names[i], timeout or self.start_timeout,
                                           "\n  ".join(m.lines()[-15:])))
                time.sleep(0.1)

    def endpoints(self, which=None):
        which = range(self.n) if which is None else which
        return ["127.0.0.1:%d" % self.client_ports[i] for i in which]

    def url(self, prefix=PREFIX, which=None):
        return "etcd://%s/%s" % (",".join(self.endpoints(which)), prefix)

    def gateway(self, i=None):
        """A Gateway on member i, or on the first live one."""
        if i is None:
            i = next(j for j in range(self.n) if self.alive(j))
        return Gateway(self.client_ports[i])

    def etcdctl(self, *args, timeout=STEP_S, check=True, which=None):
        env = dict(os.environ, ETCDCTL_API="3")
        argv = ["etcdctl", "--endpoints=" + ",".join(
            "http://" + e for e in self.endpoints(which))] + list(args)
        r = subprocess.run(argv, capture_output=True, text=True, env=env,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise Fail("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                            (r.stderr or r.stdout)[-500:]))
        return r

    def stop(self):
        for m in self.members:
            if m is not None:
                m.kill()


# ---- m2mpsk keys --------------------------------------------------------------

def write_kek(path):
    """A KEK file as `m2mpsk keys kek --out` writes it: 0600, one line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("hex:%s\n" % os.urandom(32).hex())
    return path


def write_key_file(path, records):
    """The key-file format (one record a line): records are (kpsa_id, key
    bytes, ida or None)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for kid, key, ida in records:
            f.write("kpsa-id=%s kpsa=hex:%s idb=%s%s\n" %
                    (kid, key.hex(), IDB, " ida=" + ida if ida else ""))
    return path


def device_key(i):
    """A deterministic 32-byte Kpsa for device i, so that the initiators
    know each key without a file per device."""
    return (i.to_bytes(8, "big") * 4)


def device_id(i):
    return "dev%07d@m2m.example.com" % i


class Keys:
    """`m2mpsk keys ...` against a cluster's etcd."""

    def __init__(self, etcd, kek, workdir, prefix=PREFIX):
        self.etcd = etcd
        self.kek = kek
        self.workdir = workdir
        self.prefix = prefix
        self.election_retries = 0

    # What etcd answers while its members elect a leader: the tool exits
    # 1 and says so; the tests retry (and count) those, nothing else.
    ELECTION = re.compile(r"leader changed|no leader|timed out|"
                          r"unhealthy cluster|connection refused")

    def run(self, *args, which=None, timeout=STEP_S, check=True,
            election_retry_s=10 * SCALE):
        argv = [cli(), "keys"] + [args[0]] + [
            "--etcd", self.etcd.url(self.prefix, which), "--kek", self.kek] + \
            list(args[1:])
        end = time.monotonic() + election_retry_s
        while True:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=timeout)
            if (r.returncode == 0 or time.monotonic() > end or
                    not self.ELECTION.search(r.stderr + r.stdout)):
                break
            self.election_retries += 1
            time.sleep(0.1)
        if check and r.returncode != 0:
            raise Fail("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                            (r.stderr + r.stdout)[-800:]))
        return r

    def put(self, i, which=None, ida=None, key=None):
        """Device i's record (device_id(i), `key` or device_key(i))."""
        path = os.path.join(self.workdir, "k-%d-%d" % (i, threading.get_ident()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("hex:%s\n" % (key or device_key(i)).hex())
        try:
            args = ["put", "--kpsa-id", device_id(i), "--idb", IDB,
                    "--key-file", path]
            if ida:
                args += ["--ida", ida]
            return self.run(*args, which=which)
        finally:
            os.unlink(path)

    def revoke(self, i, which=None):
        return self.run("revoke", "--kpsa-id", device_id(i), which=which)

    def delete(self, i, which=None):
        return self.run("delete", "--kpsa-id", device_id(i), which=which)

    def import_file(self, path, batch=128, timeout=120 * SCALE, which=None):
        return self.run("import", "--keys-file", path, "--batch", str(batch),
                        timeout=timeout, which=which)

    def import_devices(self, ids, batch=128, timeout=120 * SCALE, which=None):
        """Puts devices `ids` through a key file and `keys import`: one
        process, batched txns (not a process per record)."""
        path = os.path.join(self.workdir, "import-%d.keys" % os.getpid())
        write_key_file(path, [(device_id(i), device_key(i), None) for i in ids])
        try:
            return self.import_file(path, batch=batch, timeout=timeout,
                                    which=which)
        finally:
            os.unlink(path)

    def list(self):
        r = self.run("list")
        return r.stdout.splitlines()


# ---- m2mpsk serve nodes -------------------------------------------------------

# Device numbers of the sync_point() records, away from any test's.
SENTINEL_BASE = 9000000
SNAPSHOT_RX = (r"m2mpsk: keys: (\d+) records from etcd at revision (\d+) in "
               r"(\d+) ms")


class Node:
    """`m2mpsk serve --keys etcd://... --kek ...`: its port from the
    "listening on" line, its snapshot figures from the keys line."""

    def __init__(self, name, etcd_url, kek, workdir, udp=False, port=0,
                 verbose=True, extra=(), max_conn=4000):
        self.name = name
        self.etcd_url = etcd_url
        self.kek = kek
        self.workdir = workdir
        self.udp = udp
        self.port = port
        self.verbose = verbose
        self.extra = list(extra)
        self.max_conn = max_conn
        self.proc = None
        self.snapshot = None  # (records, revision, ms)

    def argv(self):
        a = [cli(), "serve", "--keys", self.etcd_url, "--kek", self.kek,
             "--id", IDB, "--port", str(self.port),
             "--max-conn", str(self.max_conn),
             # Every initiator is 127.0.0.1: the per-address rate limit
             # would count the revoked ones against the rest.
             "--rate-limit", "0", "--idle", "600000", "--timeout", "30000",
             "--udp" if self.udp else "--tcp"]
        if self.verbose:
            a.append("-v")
        return a + self.extra

    def start(self, timeout=STEP_S):
        self.proc = Proc(self.name, self.argv(),
                         log_path=os.path.join(self.workdir, self.name + ".log"))
        m = self.proc.wait_line(r"listening on 127\.0\.0\.1:(\d+)", timeout)
        self.port = int(m.group(1))
        m = self.proc.wait_line(SNAPSHOT_RX, timeout)
        self.snapshot = tuple(int(x) for x in m.groups())
        return self

    def wait_line(self, pattern, timeout=STEP_S, start=0):
        return self.proc.wait_line(pattern, timeout, start)

    def mark(self):
        return self.proc.mark()

    def wait_for(self, pred, timeout=STEP_S, start=0, what="a line"):
        return self.proc.wait_for(pred, timeout, start, what)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate(timeout=5)

    def kill(self):
        if self.proc is not None:
            self.proc.kill()

    def restart(self, timeout=STEP_S):
        """Kills it and starts it again on the same port."""
        self.kill()
        return self.start(timeout)

    def wait_revision(self, rev, kpsa_id=None, start=0, timeout=STEP_S):
        """Waits until the node shows it applied etcd revision `rev`: its
        -v line for `kpsa_id` (the change at rev), a summary line of a
        batch, a resync or a snapshot at rev or later."""
        put = "m2mpsk: keys: put %s" % kpsa_id if kpsa_id else None
        gone = "m2mpsk: keys: removed %s " % kpsa_id if kpsa_id else None
        rx = re.compile(r"keys: (?:\d+ changes at revision (\d+)|resync at "
                        r"revision (\d+)|\d+ records from etcd at revision "
                        r"(\d+))")

        def pred(line):
            if put and (line == put or line.startswith(gone)):
                return True
            m = rx.search(line)
            return bool(m) and int(next(g for g in m.groups() if g)) >= rev
        return self.proc.wait_for(pred, timeout, start,
                                  "sign of revision %d" % rev)

    def count(self, pattern, start=0):
        return self.proc.count(pattern, start)

    def watched_endpoint(self):
        """The etcd endpoint ("127.0.0.1:PORT") this node's watch is on,
        from its -v log: the first of its URL, or the last it failed over
        to. Exact only while the node is stopped (SIGSTOP)."""
        ep = self.etcd_url.split("//", 1)[1].split("/", 1)[0].split(",")[0]
        for line in self.proc.lines():
            m = re.search(r"keys: failing over to http://(\S+?)/?$", line)
            if m:
                ep = m.group(1)
        return ep


# ---- the whole -----------------------------------------------------------------

class Cluster:
    """`with Cluster(nodes=3, deadline_s=...) as c:` a scratch directory,
    a KEK, the etcd cluster and the nodes; everything torn down on exit.
    The deadline raises Deadline in the main thread (SIGALRM)."""

    def __init__(self, nodes=3, deadline_s=150, etcd_extra=(), udp=False,
                 node_extra=(), start_nodes=True, verbose=True):
        self.n_nodes = nodes
        # Scaled for slow builds (.ci/sanitize), but kept under ctest's
        # TIMEOUT (tests/cluster/CMakeLists.txt), so that a test out of
        # time says where it was and tears down, rather than being killed.
        self.deadline_s = min(deadline_s * SCALE, float(
            os.environ.get("M2MPSK_CLUSTER_DEADLINE_MAX", "225")))
        self.etcd_extra = etcd_extra
        self.udp = udp
        self.node_extra = node_extra
        self.start_nodes = start_nodes
        self.verbose = verbose
        self.nodes = []
        self.etcd = None
        self.dir = None
        self._old = {}

    def __enter__(self):
        require_etcd()
        for sig, exc in ((signal.SIGTERM, Interrupted), (signal.SIGINT, Interrupted),
                         (signal.SIGALRM, Deadline)):
            def handler(signum, frame, exc=exc):
                raise exc("signal %d" % signum)
            self._old[sig] = signal.signal(sig, handler)
        signal.setitimer(signal.ITIMER_REAL, self.deadline_s)
        self.started = time.monotonic()
        base = os.environ.get("M2MPSK_CLUSTER_TMP")  # e.g. /dev/shm
        self.dir = tempfile.mkdtemp(prefix="m2mpsk-cluster-", dir=base)
        try:
            self.kek = write_kek(os.path.join(self.dir, "kek"))
            self.etcd = EtcdCluster(self.dir, 3, self.etcd_extra).start()
            self.keys = Keys(self.etcd, self.kek, self.dir)
            if self.start_nodes:
                for i in range(self.n_nodes):
                    self.add_node()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def add_node(self, which=None, timeout=STEP_S, **kw):
        """Starts one more node; `which` picks the etcd members its URL
        lists (default all, in an order rotated per node so that the nodes'
        first endpoints differ)."""
        i = len(self.nodes)
        if which is None:
            n = self.etcd.n
            which = [(i + k) % n for k in range(n)]
        node = Node("node%d" % (i + 1), self.etcd.url(which=which), self.kek,
                    self.dir, udp=kw.pop("udp", self.udp),
                    verbose=kw.pop("verbose", self.verbose),
                    extra=kw.pop("extra", self.node_extra), **kw)
        self.nodes.append(node)
        node.start(timeout)
        return node

    def sync_point(self, nodes=None, timeout=STEP_S):
        """Puts a sentinel record and waits until every node in `nodes`
        (default: all) applied it, hence everything before it (a watch
        delivers revisions in order). Returns its revision."""
        nodes = self.nodes if nodes is None else nodes
        self._sentinel = getattr(self, "_sentinel", 0) + 1
        dev = SENTINEL_BASE + self._sentinel
        marks = [n.mark() for n in nodes]
        self.keys.put(dev)
        rev = self.mod_revision(dev)
        for n, m in zip(nodes, marks):
            n.wait_revision(rev, device_id(dev), m, timeout)
        return rev

    def mod_revision(self, dev):
        gw = self.etcd.gateway()
        try:
            kvs = gw.range("/%s/keys/%s" % (PREFIX, device_id(dev))).get("kvs")
        finally:
            gw.close()
        if not kvs:
            raise Fail("%s is not in etcd" % device_id(dev))
        return int(kvs[0]["mod_revision"])

    def elapsed(self):
        return time.monotonic() - self.started

    def __exit__(self, t, v, tb):
        signal.setitimer(signal.ITIMER_REAL, 0)
        for n in self.nodes:
            try:
                n.kill()
            except Exception as e:  # keep tearing down
                log("teardown %s: %s" % (n.name, e))
        if self.etcd is not None:
            self.etcd.stop()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if t is not None and self.dir and os.environ.get("M2MPSK_CLUSTER_KEEP"):
            log("kept %s" % self.dir)
        elif self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def main(body):
    """Runs body() and maps its outcome to an exit status: 0 PASS, 1 FAIL,
    77 SKIP. The figures it prints stay in ctest's output."""
    start = time.monotonic()
    try:
        body()
    except Skip as e:
        print("SKIP:", e, flush=True)
        sys.exit(SKIP)
    except (Fail, Deadline, Interrupted, AssertionError) as e:
        print("FAIL (%.1f s): %s: %s" % (time.monotonic() - start,
                                         type(e).__name__, e), flush=True)
        sys.exit(1)
    print("PASS (%.1f s)" % (time.monotonic() - start), flush=True)
    sys.exit(0)


# ---- initiators -------------------------------------------------------------------

class Conn:
    """One initiator's association over TCP, driven by Initiators."""
    __slots__ = ("sock", "a", "dev", "node", "state", "t_open", "t_up",
                 "t_end", "how", "out", "plain", "fd", "udp")

    def __repr__(self):
        return "<%s %s on %s: %s %s>" % (device_id(self.dev), self.fd,
                                          self.node, self.state, self.how or "")


class Initiators:
    """Many TLS-PSK (over TCP) or DTLS-PSK (over UDP) initiators in this
    one process (the binding's raw Association API over non-blocking
    sockets and one poll()), each association's establishment and end
    timed on time.monotonic(): `t_end` is when the first sign of the end
    arrived (an alert, a close_notify or EOF)."""

    def __init__(self, devices=()):
        self.m = import_binding()
        self.ks = self.m.Keystore()
        self.cfg = self.m.Config()
        self.cfg.set_handshake_timeout(int(STEP_S * 1000))
        self.keys = set()
        self.poll = select.poll()
        self.live = {}  # fd -> Conn
        for i in devices:
            self.add_key(i)

    def add_key(self, i):
        if i not in self.keys:
            self.ks.add(device_id(i), device_key(i), None, IDB, 0, 0)
            self.keys.add(i)

    def set_key(self, i, key):
        """Device i's key on this side becomes `key` (a rekeyed device)."""
        if i in self.keys:
            self.ks.remove(device_id(i))
        self.ks.add(device_id(i), key, None, IDB, 0, 0)
        self.keys.add(i)

    def open(self, port, dev, node=None, udp=False):
        """Connects (blocking, bounded; a UDP socket is connected to the
        node, so send/recv carry its datagrams only) and starts the
        handshake; the rest happens in pump()."""
        self.add_key(dev)
        c = Conn()
        c.dev, c.node, c.how, c.out, c.plain = dev, node, None, b"", b""
        c.t_up = c.t_end = None
        c.udp = udp
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp
                               else socket.SOCK_STREAM)
        c.sock.settimeout(STEP_S)
        c.t_open = time.monotonic()
        c.sock.connect(("127.0.0.1", port))
        c.sock.setblocking(False)
        c.fd = c.sock.fileno()
        c.a = self.m.Association(self.m.ROLE_INITIATOR,
                                 self.m.TRANSPORT_DTLS if udp else
                                 self.m.TRANSPORT_TLS,
                                 self.cfg, self.ks, device_id(dev))
        c.state = "handshake"
        c.a.start(now_ms(), int(time.time()))
        self.live[c.fd] = c
        self.poll.register(c.fd, select.POLLIN)
        self._flush(c)
        return c

    def _flush(self, c):
        if c.udp:
            # One drain() is one datagram. A full socket buffer drops it:
            # DTLS retransmits (handle_timeout in pump()).
            while True:
                d = c.a.drain()
                if not d:
                    return
                try:
                    c.sock.send(d)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._end(c, "send-error")
                    return
        while True:
            d = c.a.drain()
            if not d:
                break
            c.out += d
        if c.out:
            try:
                n = c.sock.send(c.out)
                c.out = c.out[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._end(c, "send-error")
                return
        if c.fd in self.live:
            self.poll.modify(c.fd, select.POLLIN | (select.POLLOUT if c.out
                                                    else 0))

    def _end(self, c, how):
        if c.t_end is None:
            c.t_end = time.monotonic()
            c.how = how
        if c.state == "handshake":
            c.state = "failed"
        else:
            c.state = "ended"
        if c.fd in self.live:
            del self.live[c.fd]
            self.poll.unregister(c.fd)
        c.sock.close()
        c.a.close()

    def _input(self, c):
        if c.udp:
            for _ in range(64):  # what has queued, datagram by datagram
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # ICMP unreachable: the node is gone
                    self._end(c, "refused")
                    return
                self._feed(c, data)
                if c.fd not in self.live:
                    return
            return
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end(c, "eof")
            return
        self._feed(c, data)

    def _feed(self, c, data):
        try:
            c.a.feed(data, now_ms())
        except self.m.Error as e:
            self._flush(c)  # its alert, if any
            self._end(c, "alert:" + self.m.reason_name(e.reason))
            return
        st = c.a.state()
        if st == self.m.STATE_ESTABLISHED and c.state == "handshake":
            c.state = "up"
            c.t_up = time.monotonic()
        while st == self.m.STATE_ESTABLISHED:
            try:
                chunk = c.a.read(65536)
            except self.m.Closed:
                self._end(c, "close_notify")
                return
            except self.m.Error as e:
                self._end(c, "alert:" + self.m.reason_name(e.reason))
                return
            if not chunk:
                break
            c.plain += chunk
        if st in (self.m.STATE_FAILED, self.m.STATE_CLOSED):
            self._end(c, "state:%d" % st)
            return
        self._flush(c)

    def pump(self, timeout_s):
        """One poll() of at most timeout_s; returns how many fds were ready."""
        ready = self.poll.poll(max(0, int(timeout_s * 1000)))
        # DTLS handshakes retransmit on their timers.
        now = None
        for c in list(self.live.values()):
            if c.udp and c.state == "handshake":
                now = now or now_ms()
                t = c.a.next_timeout()
                if t is not None and t <= now:
                    try:
                        c.a.handle_timeout(now)
                    except self.m.Error as e:
                        self._end(c, "alert:" + self.m.reason_name(e.reason))
                        continue
                    self._flush(c)
        for fd, ev in ready:
            c = self.live.get(fd)
            if c is None:
                continue
            if ev & select.POLLOUT:
                self._flush(c)
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._input(c)
        return len(ready)

    def run(self, until, timeout_s, what="condition"):
        end = time.monotonic() + timeout_s
        while not until():
            left = end - time.monotonic()
            if left <= 0:
                raise Fail("initiators: %s not reached within %.0f s" %
                           (what, timeout_s))
            self.pump(min(left, 0.05))

    def establish(self, targets, wave=100, timeout_s=None):
        """targets: [(port, dev, node)]. Opens them `wave` at a time (a
        listen backlog of 128 would otherwise drop SYNs and stall for a
        second) and waits until each is up or failed. Returns the Conns."""
        timeout_s = timeout_s or STEP_S * 4
        conns = []
        for k in range(0, len(targets), wave):
            batch = [self.open(*t) for t in targets[k:k + wave]]
            conns += batch
            self.run(lambda: all(c.state != "handshake" for c in batch),
                     timeout_s, "%d handshakes" % len(batch))
        return conns

    def ping(self, conns, timeout_s=None, wave=50):
        """Each live Conn sends 4 bytes and waits for the node's echo, a
        wave at a time (a node serves every DTLS peer on one socket, whose
        receive buffer holds a few hundred small datagrams; DTLS does not
        resend application data, so a DTLS ping unanswered within a second
        is sent again, up to 3 times). Returns the Conns without an echo."""
        end = time.monotonic() + (timeout_s or STEP_S)
        live = [c for c in conns if c.state == "up"]
        for c in live:
            c.plain = b""
        for k in range(0, len(live), wave):
            batch = live[k:k + wave]
            for attempt in range(4 if any(c.udp for c in batch) else 1):
                todo = [c for c in batch if c.state == "up" and
                        len(c.plain) < 4 and (attempt == 0 or c.udp)]
                if not todo:
                    break
                for c in todo:
                    c.a.write(b"ping")
                    self._flush(c)
                until = min(end, time.monotonic() + (1.0 if attempt < 3
                                                     else STEP_S))
                while time.monotonic() < until and any(
                        c.state == "up" and len(c.plain) < 4 for c in todo):
                    self.pump(0.02)
        return [c for c in live if c.plain[:4] != b"ping"]

    def handshake_once(self, port, dev, node=None, timeout_s=None, udp=False):
        """A fresh association: handshake, echo, close. Returns the Conn
        (state "up" then closed by us: how = "closed-by-us") or the failed
        one."""
        c = self.open(port, dev, node, udp)
        # Past the association's own handshake timeout (the Config's), so
        # that a peer that never answers (DTLS drops what it cannot
        # authenticate) makes a failed handshake, not a failed wait.
        self.run(lambda: c.state != "handshake", (timeout_s or STEP_S) + 5,
                 "a handshake with %s" % device_id(dev))
        if c.state == "up":
            bad = self.ping([c], timeout_s)
            if bad:
                self._end(c, c.how or "no-echo")
                c.state = "failed"
                return c
            try:
                c.a.close_notify()
                self._flush(c)
            except self.m.Error:
                pass
            self._end(c, "closed-by-us")
            c.state = "up"  # it was established: the outcome the caller wants
        return c

    def close(self):
        for c in list(self.live.values()):
            self._end(c, "closed-by-us")
        self.cfg.close()
        self.ks.close()


def percentile(values, p):
    """The p-th percentile (nearest rank) of values."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]
