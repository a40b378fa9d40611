#!/usr/bin/env python3
"""Mobius (IoTKETI's oneM2M IN-CSE) as a real, unmodified peer for tests.

The Mobius source stays outside the project (../shared/peers/mobius, see
its ORIGIN.md). This module copies it into a scratch directory and adjusts
only the copy:
  - ORIGIN.md's three adjustments: package.json's stand-ins for Node's
    built-in modules deleted; the MySQL 8 dump's collation replaced for
    MariaDB and `CREATE DATABASE mobiusdb` added; root's password set;
  - everything bound to 127.0.0.1 on free ports: the CSE's HTTP and CoAP
    (one port number, TCP and UDP), the WebSocket and MQTT proxies (7577 and
    7578 upstream), the database (3306 upstream, `localhost` upstream: Node
    20 may resolve that to ::1); the proxies' own requests to the CSE go to
    127.0.0.1 instead of `localhost`; the MQTT broker Mobius looks for is a
    free port nobody listens on (so it never starts its ts_agent on 7582);
  - one worker (cpuCount = 1) instead of one per CPU.
Every patch must apply exactly as many times as expected, or setup fails
naming it: a new Mobius is noticed, not half-patched.

`npm install --ignore-scripts` (no package's install script runs, as
root in CI; Mobius needs none: websocket's bufferutil and utf-8-validate
load their prebuilt binaries, or fall back to JavaScript) runs once per
package.json (after the deletions) and Node ABI; node_modules is kept in a
cache directory (M2MPSK_MOBIUS_CACHE, else
$XDG_CACHE_HOME/m2mpsk-mobius, else ~/.cache/m2mpsk-mobius) and the copy
links to it. The database is a private MariaDB in the scratch directory
(mariadb-install-db, its own socket, a free TCP port on 127.0.0.1),
started as a child, with the schema imported afresh.

Teardown: Mobius and MariaDB each run in their own process group and are
stopped by process group (SIGTERM, then SIGKILL), bounded in time. A
guardian process holds the other end of a pipe: if the test dies without
tearing down (even by SIGKILL), the guardian sees the pipe close and
kills the process groups it was told about.

    mobius_peer.py up [--keep]     start one, print its ports, stop on ^C
Python 3 standard library only.
"""

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import coap_msg  # noqa: E402

CSE_ID = "/Mobius2"
CSE_BASE = "Mobius"
ADMIN = "CAdmin"  # an originator for the readiness probes
NPM_TIMEOUT_S = 240
MARIADB_START_S = 30
MOBIUS_START_S = 40
STOP_S = 10
# A throwaway database: no fsync (the data dies with the test).
DB_SPEED_ARGS = ["--innodb-flush-method=nosync", "--innodb-log-file-size=8M",
                 "--innodb-doublewrite=0",
                 "--innodb-flush-log-at-trx-commit=0",
                 "--sync-frm=0"]
DB_INSTALL_ARGS = ["--auth-root-authentication-method=normal",
                   "--skip-test-db", "--skip-name-resolve"] + DB_SPEED_ARGS


class Skip(Exception):
    """The peer cannot run here; the message says why (exit 77)."""


class SetupError(Exception):
    """The peer should run here but did not; the message says why."""


class Fail(Exception):
    """A test driven against the peer found something wrong."""


class Deadline(Exception):
    """A test's deadline passed, or it was stopped by a signal."""


SKIP = 77  # ctest's SKIP_RETURN_CODE for the tests that use this peer


def bounded_main(body, deadline_s):
    """Runs a test's body under a deadline (SIGALRM) with SIGTERM ending it
    too, so that its teardown runs; returns its exit code: 0 (PASS, with
    what body() returns, if anything, and the time), SKIP, or 1."""
    def on_alarm(signum, frame):
        raise Deadline("the test's deadline (%d s) passed" % deadline_s)

    def on_term(signum, frame):
        raise Deadline("stopped by signal %d" % signum)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(deadline_s)
    t0 = time.monotonic()
    try:
        what = body()
    except Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return SKIP
    except (Fail, SetupError, Deadline) as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    print("PASS (%s%.1f s)" % (what + ", " if what else "",
                               time.monotonic() - t0), file=sys.stderr)
    return 0


def log(msg):
    print("mobius: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- finding

def find_source():
    """Mobius's source: M2MPSK_MOBIUS_SRC, else ../shared/peers/mobius
    beside the repository's common git directory (the main worktree), else
    beside this checkout. Raises Skip when none exists."""
    cands = []
    env = os.environ.get("M2MPSK_MOBIUS_SRC")
    if env:
        cands.append(env)
    repo = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
    if not env:
        cands += _default_sources(repo)
    for c in cands:
        if os.path.isfile(os.path.join(c, "app.js")) and os.path.isfile(
                os.path.join(c, "mobius", "mobiusdb.sql")):
            return os.path.realpath(c)
    if env:
        raise Skip("M2MPSK_MOBIUS_SRC=%s holds no Mobius (app.js, "
                   "mobius/mobiusdb.sql)" % env)
    raise Skip("no Mobius source: set M2MPSK_MOBIUS_SRC, or put it in "
               "../shared/peers/mobius (tried %s)" % ", ".join(
                   dict.fromkeys(os.path.normpath(c) for c in cands)))


def _default_sources(repo):
    cands = []
    try:
        common = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--path-format=absolute",
             "--git-common-dir"], capture_output=True, text=True, timeout=10,
            check=True).stdout.strip()
        cands.append(os.path.join(os.path.dirname(common), "..", "shared",
                                  "peers", "mobius"))
    except (OSError, subprocess.SubprocessError):
        pass
    cands.append(os.path.join(repo, "..", "shared", "peers", "mobius"))
    return cands


def find_tools():
    tools = {}
    for name, cands in (("node", ["node", "nodejs"]), ("npm", ["npm"]),
                        ("mariadbd", ["mariadbd", "/usr/sbin/mariadbd"]),
                        ("install_db", ["mariadb-install-db"]),
                        ("mariadb", ["mariadb", "mysql"])):
        for c in cands:
            p = shutil.which(c)
            if p:
                tools[name] = p
                break
        else:
            raise Skip("%s not found (Debian: nodejs npm mariadb-server)"
                       % cands[0])
    return tools


def cache_root():
    """M2MPSK_MOBIUS_CACHE, else $XDG_CACHE_HOME/m2mpsk-mobius, else
    ~/.cache/m2mpsk-mobius; one in the temporary directory when that cannot
    be made (a HOME that does not exist)."""
    d = os.environ.get("M2MPSK_MOBIUS_CACHE")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "m2mpsk-mobius")
    try:
        os.makedirs(d, exist_ok=True)
        if os.access(d, os.W_OK | os.X_OK):
            return d
    except OSError:
        pass
    alt = os.path.join(tempfile.gettempdir(),
                       "m2mpsk-mobius-cache-%d" % os.geteuid())
    os.makedirs(alt, mode=0o700, exist_ok=True)
    log("cache %s not writable: using %s" % (d, alt))
    return alt


def free_port():
    """A port free on 127.0.0.1 for both TCP and UDP (Mobius serves HTTP
    and CoAP on one number). Bounded: 50 tries."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise SetupError("no free port on 127.0.0.1")


# ---------------------------------------------------------------- guardian

GUARDIAN = r"""
import os, shutil, signal, sys, time
groups = set()
dirs = []
for line in sys.stdin:
    line = line.strip()
    if line.startswith("rm "):
        dirs.append(line[3:])
    elif line.startswith("+"):
        groups.add(int(line[1:]))
    elif line.startswith("-"):
        groups.discard(int(line[1:]))
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = False
    for g in groups:
        try:
            os.killpg(g, sig)
            alive = True
        except OSError:
            pass
    if not alive:
        break
    end = time.monotonic() + 5
    while time.monotonic() < end and any(
            os.path.exists("/proc/%d" % g) for g in groups):
        time.sleep(0.1)
for d in dirs:
    for root, ds, fs in os.walk(d):
        for n in ds:
            try:
                os.chmod(os.path.join(root, n), 0o700)
            except OSError:
                pass
    shutil.rmtree(d, ignore_errors=True)
"""


class Guardian:
    """Kills the registered process groups when the test's end of the
    pipe closes, however the test ends."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GUARDIAN], stdin=subprocess.PIPE,
            start_new_session=True, text=True)

    def _say(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def watch(self, pgid):
        self._say("+%d" % pgid)

    def remove_dir(self, path):
        """Removed after the process groups are gone."""
        self._say("rm " + path)

    def forget(self, pgid):
        self._say("-%d" % pgid)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _pdeathsig():
    """Runs in the child before exec: SIGKILL when the parent dies."""
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG,
                                                signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def stop_group(proc, name, guardian=None, sig=signal.SIGTERM):
    """SIGTERM to the process group, SIGKILL after STOP_S; reaps."""
    if proc is None:
        return
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except OSError:
            pass
        try:
            proc.wait(timeout=STOP_S)
            break
        except subprocess.TimeoutExpired:
            log("%s did not stop on signal %d" % (name, s))
    # The leader is gone; a straggler in its group gets SIGKILL.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if guardian:
        guardian.forget(proc.pid)


# ---------------------------------------------------------------- patching

def patch(path, old, new, count=1):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    n = text.count(old)
    if n != count:
        raise SetupError("patching %s: expected %d of %r, found %d (a "
                         "different Mobius?)" % (os.path.basename(path),
                                                 count, old, n))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


BUILTIN_STANDINS = ["fs", "http", "https", "crypto", "events", "url", "util"]


def patch_package_json(path):
    """ORIGIN.md 1: npm install fails on `fs@0.0.2`; the stand-ins for
    Node's built-in modules go (what `npm pkg delete` does)."""
    with open(path, encoding="utf-8") as f:
        pkg = json.load(f)
    for name in BUILTIN_STANDINS:
        pkg.get("dependencies", {}).pop(name, None)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(pkg, f, indent=2)
        f.write("\n")


def patch_sources(d, ports):
    h = "'127.0.0.1'"
    mob = os.path.join(d, "mobius.js")
    patch(mob, "global.usedbhost            = 'localhost';",
          "global.usedbhost            = %s;" % h)
    patch(mob, "global.usepxywsport         = '7577';",
          "global.usepxywsport         = '%d';" % ports["ws"])
    patch(mob, "global.usepxymqttport       = '7578';",
          "global.usepxymqttport       = '%d';" % ports["mqtt"])
    patch(mob, "global.use_mqtt_broker      = 'localhost';",
          "global.use_mqtt_broker      = %s;" % h)
    patch(mob, "global.use_mqtt_port        = '1883';",
          "global.use_mqtt_port        = '%d';" % ports["broker"])
    app = os.path.join(d, "app.js")
    patch(app, "var cpuCount = os.cpus().length;", "var cpuCount = 1;")
    patch(app, "db.connect(usedbhost, 3306,",
          "db.connect(usedbhost, %d," % ports["db"], count=3)
    patch(app, ".listen({port: usecsebaseport, agent: false}",
          ".listen({port: usecsebaseport, host: %s, agent: false}" % h,
          count=4)
    ws = os.path.join(d, "pxy_ws.js")
    patch(ws, "var usewscbhost = 'localhost';", "var usewscbhost = %s;" % h)
    patch(ws, ".listen({port: usepxywsport, agent: false}",
          ".listen({port: usepxywsport, host: %s, agent: false}" % h, count=2)
    mq = os.path.join(d, "pxy_mqtt.js")
    patch(mq, "var usemqttcbhost = 'localhost';",
          "var usemqttcbhost = %s;" % h)
    patch(mq, ".listen({port: usepxymqttport, agent: false}",
          ".listen({port: usepxymqttport, host: %s, agent: false}" % h,
          count=2)
    co = os.path.join(d, "pxy_coap.js")
    patch(co, "var usecoapcbhost = 'localhost';",
          "var usecoapcbhost = %s;" % h)
    patch(co, "pxycoap_server.listen(usecsebaseport, function() {",
          "pxycoap_server.listen(usecsebaseport, %s, function() {" % h)


def apply_diff(d, diff):
    """Applies the unified diff `diff` (paths a/..., b/...) to the copy in
    `d` with `git apply` (no repository needed; GIT_CEILING_DIRECTORIES
    keeps git from taking an enclosing one for it). A diff that does not
    apply exactly is a SetupError: a different Mobius is noticed."""
    git = shutil.which("git")
    if git is None:
        raise Skip("git not found (it applies %s to the copy)" % diff)
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=os.path.dirname(d))
    r = subprocess.run([git, "apply", "-p1", "--whitespace=nowarn",
                        os.path.abspath(diff)], cwd=d, env=env,
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise SetupError("%s does not apply to this Mobius:\n%s"
                         % (diff, r.stderr.strip()[-2000:]))


def schema_sql(src_sql, password):
    """ORIGIN.md 2 and 3: MariaDB has no utf8mb4_0900_ai_ci; the dump makes
    no database; Mobius logs in as root over TCP (127.0.0.1, names not
    resolved: root@127.0.0.1) with conf.json's password."""
    with open(src_sql, encoding="utf-8") as f:
        dump = f.read()
    if "utf8mb4_0900_ai_ci" not in dump:
        raise SetupError("mobiusdb.sql has no utf8mb4_0900_ai_ci any more "
                         "(a different Mobius?)")
    dump = dump.replace("utf8mb4_0900_ai_ci", "utf8mb4_general_ci")
    pw = password.replace("'", "")
    return ("CREATE DATABASE mobiusdb;\nUSE mobiusdb;\n" + dump +
            "\nCREATE OR REPLACE USER 'root'@'127.0.0.1' IDENTIFIED BY '%s';"
            "\nGRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT "
            "OPTION;\nALTER USER 'root'@'localhost' IDENTIFIED VIA "
            "unix_socket OR mysql_native_password USING PASSWORD('%s');\n"
            "FLUSH PRIVILEGES;\n" % (pw, pw))


# ---------------------------------------------------------------- probes

def http_get(port, path, origin=ADMIN, rqi="probe", timeout=2.0):
    req = urllib.request.Request(
        "http://127.0.0.1:%d%s" % (port, path),
        headers={"X-M2M-Origin": origin, "X-M2M-RI": rqi,
                 "X-M2M-RVI": "3", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("X-M2M-RSC"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-M2M-RSC"), e.read()


def coap_get(port, path, origin=ADMIN, rqi="probe", timeout=1.0):
    """One confirmable GET; returns the decoded response or None."""
    mid = secrets.randbelow(65536)
    token = secrets.token_bytes(4)
    msg = coap_msg.request(coap_msg.GET, path, origin, rqi, mid, token)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(msg)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionRefusedError):
                return None
            try:
                rsp = coap_msg.decode(data)
            except ValueError:
                continue
            if rsp["token"] == token:
                return rsp
    return None


# ---------------------------------------------------------------- the peer

class Mobius:
    """One Mobius and its MariaDB. Use as a context manager; `start()`
    raises Skip or SetupError; `stop()` is idempotent and bounded.

    For a Mobius that is not the unmodified one: `diffs`, unified diffs
    applied to the copy first (before the adjustments above, so they are
    written against the source as shipped); `env`, variables added to
    Mobius's environment; `ready`, a function of this object that says
    when Mobius serves, instead of the plain HTTP and CoAP probes (which a
    patched HTTP API may not answer)."""

    def __init__(self, scratch=None, keep=False, diffs=(), env=None,
                 ready=None):
        self.src = find_source()
        self.tools = find_tools()
        self.keep = keep
        self.scratch = scratch or tempfile.mkdtemp(prefix="m2mpsk-mobius-")
        self.copy = os.path.join(self.scratch, "mobius")
        self.dbdir = os.path.join(self.scratch, "db")
        self.log_path = os.path.join(self.scratch, "mobius.log")
        self.db_log = os.path.join(self.dbdir, "error.log")
        self.guardian = None
        self.db = None
        self.node = None
        self.ports = {}
        self.timings = {}
        self.diffs = list(diffs)
        self.env = dict(env or {})
        self.ready = ready

    # -- context manager
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def http_port(self):
        return self.ports["http"]

    @property
    def coap_port(self):
        return self.ports["http"]  # the same number, over UDP

    def start(self):
        t0 = time.monotonic()
        self.guardian = Guardian()
        if not self.keep:
            self.guardian.remove_dir(self.scratch)
        self.ports = {k: free_port() for k in
                      ("http", "ws", "mqtt", "broker", "db")}
        self._copy()
        t = time.monotonic()
        self._node_modules()
        self.timings["npm"] = time.monotonic() - t
        t = time.monotonic()
        self._start_db()
        self.timings["db"] = time.monotonic() - t
        t = time.monotonic()
        self._start_mobius()
        self.timings["mobius"] = time.monotonic() - t
        self.timings["total"] = time.monotonic() - t0
        log("ready: HTTP 127.0.0.1:%d, CoAP udp 127.0.0.1:%d (npm %.1f s, "
            "MariaDB %.1f s, Mobius %.1f s)" % (
                self.http_port, self.coap_port, self.timings["npm"],
                self.timings["db"], self.timings["mobius"]))

    def _copy(self):
        shutil.copytree(self.src, self.copy, symlinks=True, ignore=(
            shutil.ignore_patterns("node_modules", ".git", "conf.json",
                                   "package-lock.json")))
        # The copy is ours to patch, whatever the source's modes.
        os.chmod(self.copy, os.stat(self.copy).st_mode | 0o200)
        for d, ds, fs in os.walk(self.copy):
            for n in ds + fs:
                p = os.path.join(d, n)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o200)
        for diff in self.diffs:
            apply_diff(self.copy, diff)
        patch_package_json(os.path.join(self.copy, "package.json"))
        patch_sources(self.copy, self.ports)
        self.password = secrets.token_hex(12)
        with open(os.path.join(self.copy, "conf.json"), "w") as f:
            json.dump({"csebaseport": str(self.ports["http"]),
                       "dbpass": self.password}, f, indent=4)

    def _node_modules(self):
        with open(os.path.join(self.copy, "package.json"), "rb") as f:
            pkg = f.read()
        abi = subprocess.run(
            [self.tools["node"], "-p",
             "process.versions.modules + '-' + process.arch"],
            capture_output=True, text=True, timeout=30).stdout.strip()
        key = hashlib.sha256(pkg + b"\0" + abi.encode()).hexdigest()[:16]
        root = cache_root()
        cached = os.path.join(root, key, "node_modules")
        if not os.path.isdir(cached):
            log("npm install (first run for this package.json; cached in %s)"
                % os.path.join(root, key))
            npm_log = os.path.join(self.scratch, "npm.log")
            env = dict(os.environ, npm_config_update_notifier="false",
                       npm_config_fund="false", npm_config_audit="false")
            # npm's own download cache beside ours (~/.npm may not exist).
            env.setdefault("npm_config_cache", os.path.join(root, "npm"))
            with open(npm_log, "w") as out:
                try:
                    rc = subprocess.run(
                        [self.tools["npm"], "install", "--omit=dev",
                         "--ignore-scripts", "--no-audit", "--no-fund"],
                        cwd=self.copy,
                        stdout=out, stderr=subprocess.STDOUT, env=env,
                        timeout=NPM_TIMEOUT_S, start_new_session=True
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout after %d s" % NPM_TIMEOUT_S
            if rc != 0:
                with open(npm_log, errors="replace") as f:
                    tail = "".join(f.readlines()[-15:])
                raise Skip("npm install failed (%s); is the npm registry "
                           "reachable?\n%s" % (rc, tail))
            os.makedirs(os.path.join(root, key), exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="nm-", dir=os.path.join(root, key))
            shutil.move(os.path.join(self.copy, "node_modules"),
                        os.path.join(tmp, "node_modules"))
            try:
                os.rename(os.path.join(tmp, "node_modules"), cached)
            except OSError:
                pass  # another run cached it first
            shutil.rmtree(tmp, ignore_errors=True)
        os.symlink(cached, os.path.join(self.copy, "node_modules"))

    def _db_user(self):
        """Root runs mariadbd as `mysql` (mariadbd refuses root without
        --user); others as themselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("mysql")
        except KeyError:
            raise Skip("running as root and there is no `mysql` user to run "
                       "mariadbd as (Debian's mariadb-server creates it)")

    def _db_template(self, user, uarg):
        """An empty, initialised data directory (mariadb-install-db takes
        several seconds, mostly fsync), made once per MariaDB version and
        kept in the cache; each run copies it."""
        ver = subprocess.run([self.tools["mariadbd"], "--version"],
                             capture_output=True, text=True,
                             timeout=30).stdout.strip()
        key = hashlib.sha256(("\0".join([ver] + DB_INSTALL_ARGS + uarg))
                             .encode()).hexdigest()[:16]
        root = cache_root()
        tpl = os.path.join(root, "mariadb-" + key)
        if os.path.isdir(tpl):
            return tpl
        # Made in the scratch directory (the `mysql` user may not reach
        # the cache: /root is 0700), then copied into the cache.
        data = os.path.join(self.dbdir, "template")
        os.makedirs(data)
        if user:
            os.chmod(self.scratch, 0o755)
            os.chown(self.dbdir, user.pw_uid, user.pw_gid)
            os.chown(data, user.pw_uid, user.pw_gid)
        install_log = os.path.join(self.dbdir, "install.log")
        with open(install_log, "w") as out:
            try:
                rc = subprocess.run(
                    [self.tools["install_db"], "--no-defaults",
                     "--datadir=" + data] + DB_INSTALL_ARGS + uarg,
                    stdout=out, stderr=subprocess.STDOUT,
                    timeout=120, start_new_session=True).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            with open(install_log, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            raise SetupError("mariadb-install-db failed (%s):\n%s"
                             % (rc, tail))
        os.makedirs(root, exist_ok=True)
        work = tempfile.mkdtemp(prefix="mariadb-", dir=root)
        shutil.copytree(data, os.path.join(work, "data"), symlinks=True)
        shutil.rmtree(data, ignore_errors=True)
        try:
            os.rename(os.path.join(work, "data"), tpl)
        except OSError:
            pass  # another run made it first
        shutil.rmtree(work, ignore_errors=True)
        return tpl

    def _start_db(self):
        user = self._db_user()
        uarg = ["--user=" + user.pw_name] if user else []
        data = os.path.join(self.dbdir, "data")
        tmp = os.path.join(self.dbdir, "tmp")
        os.makedirs(tmp)
        self.sock = os.path.join(self.dbdir, "mysqld.sock")
        tpl = self._db_template(user, uarg)
        shutil.copytree(tpl, data, symlinks=True)
        if user:
            os.chmod(self.scratch, 0o755)
            for p in [self.dbdir, tmp] + [
                    os.path.join(d, n) for d, ds, fs in os.walk(data)
                    for n in ds + fs] + [data]:
                os.lchown(p, user.pw_uid, user.pw_gid)
        args = [self.tools["mariadbd"], "--no-defaults", "--datadir=" + data,
                "--socket=" + self.sock, "--port=%d" % self.ports["db"],
                "--bind-address=127.0.0.1", "--skip-name-resolve",
                "--pid-file=" + os.path.join(self.dbdir, "mariadbd.pid"),
                "--log-error=" + self.db_log, "--tmpdir=" + tmp,
                "--innodb-buffer-pool-size=32M", "--max-connections=300",
                "--skip-log-bin", "--performance-schema=OFF"
                ] + DB_SPEED_ARGS + uarg
        self.db = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        self.guardian.watch(self.db.pid)
        end = time.monotonic() + MARIADB_START_S
        while not self._db_greets():
            if self.db.poll() is not None:
                raise SetupError("mariadbd exited with %s:\n%s" % (
                    self.db.returncode, self._tail(self.db_log)))
            if time.monotonic() > end:
                raise SetupError("mariadbd not accepting on 127.0.0.1:%d "
                                 "after %d s:\n%s" % (
                                     self.ports["db"], MARIADB_START_S,
                                     self._tail(self.db_log)))
            time.sleep(0.05)
        sql = schema_sql(os.path.join(self.copy, "mobius", "mobiusdb.sql"),
                         self.password)
        r = subprocess.run(
            [self.tools["mariadb"], "--no-defaults", "--protocol=socket",
             "--socket=" + self.sock, "--user=root", "--batch"],
            input=sql, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SetupError("importing mobiusdb failed: %s"
                             % r.stderr[-2000:])

    def _db_greets(self):
        """True once the server sends its handshake packet on TCP."""
        try:
            with socket.create_connection(("127.0.0.1", self.ports["db"]),
                                          timeout=1) as s:
                return len(s.recv(64)) > 4
        except OSError:
            return False

    def _start_mobius(self):
        out = open(self.log_path, "wb")
        try:
            self.node = subprocess.Popen(
                [self.tools["node"], "mobius.js"], cwd=self.copy,
                env=dict(os.environ, **self.env), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_pdeathsig)
        finally:
            out.close()
        self.guardian.watch(self.node.pid)
        end = time.monotonic() + MOBIUS_START_S
        what = "HTTP"
        while True:
            if self.node.poll() is not None:
                raise SetupError("Mobius exited with %s:\n%s" % (
                    self.node.returncode, self._tail(self.log_path)))
            if time.monotonic() > end:
                raise SetupError("Mobius's %s not answering on 127.0.0.1:%d "
                                 "after %d s:\n%s" % (
                                     "readiness" if self.ready else what,
                                     self.http_port, MOBIUS_START_S,
                                     self._tail(self.log_path)))
            if self.ready is not None:
                if self.ready(self):
                    return
                time.sleep(0.1)
            elif what == "HTTP":
                try:
                    st, rsc, _ = http_get(self.http_port, "/" + CSE_BASE)
                    if st == 200 and rsc == "2000":
                        what = "CoAP"
                        continue
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
            else:
                # coap_get waits up to 0.5 s for the answer itself.
                rsp = coap_get(self.coap_port, "/" + CSE_BASE, timeout=0.5)
                if rsp and rsp["code"] == coap_msg.code(2, 5):
                    return

    @staticmethod
    def _tail(path, n=25):
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no %s)" % path

    def query(self, sql):
        """Runs `sql` in mobiusdb as root over the private socket; returns
        the rows, each a list of column strings."""
        r = subprocess.run(
            [self.tools["mariadb"], "--no-defaults", "--protocol=socket",
             "--socket=" + self.sock, "--user=root", "--batch",
             "--skip-column-names", "mobiusdb"],
            input=sql, capture_output=True, text=True, timeout=30,
            # root@localhost takes its OS user or this password (schema_sql).
            env=dict(os.environ, MYSQL_PWD=self.password))
        if r.returncode != 0:
            raise SetupError("query failed: %s" % r.stderr[-2000:])
        return [l.split("\t") for l in r.stdout.splitlines()]

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        stop_group(self.node, "Mobius", self.guardian)
        self.node = None
        stop_group(self.db, "mariadbd", self.guardian)
        self.db = None
        if self.guardian:
            self.guardian.close()
            self.guardian = None
        if self.keep:
            log("kept %s" % self.scratch)
        elif os.path.isdir(self.scratch):
            # A copied directory may still be read-only (the source is).
            for d, ds, _ in os.walk(self.scratch):
                for n in ds:
                    p = os.path.join(d, n)
                    if not os.path.islink(p):
                        try:
                            os.chmod(p, 0o700)
                        except OSError:
                            pass
            shutil.rmtree(self.scratch, ignore_errors=True)


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["up"])
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch directory")
    args = ap.parse_args(argv)
    try:
        with Mobius(keep=args.keep) as m:
            print("http 127.0.0.1:%d coap 127.0.0.1:%d scratch %s" % (
                m.http_port, m.coap_port, m.scratch), flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    except Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return 77
    except SetupError as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main(sys.argv[1:]))
