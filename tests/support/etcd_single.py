"""A private single-member etcd for one test: loopback only, free ports,
a data directory under the test's own temporary directory, no fsync (the
data dies with the test), killed at the end. Standard library only.

    with EtcdSingle(tmpdir) as etcd:
        etcd.url("m2mpsk")            # etcd://127.0.0.1:PORT/m2mpsk
        etcd.ctl("get", "--prefix", "/m2mpsk/")

`EtcdSingle.missing()` names what is not installed (Debian etcd-server,
etcd-client), for a test to skip with.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdSingle:
    @staticmethod
    def missing():
        for tool, pkg in (("etcd", "etcd-server"), ("etcdctl", "etcd-client")):
            if shutil.which(tool) is None:
                return "%s not found (Debian package %s)" % (tool, pkg)
        return None

    def __init__(self, tmp, start_timeout=15.0, extra=()):
        self.proc = None
        self.extra = tuple(extra)
        self.log_path = os.path.join(tmp, "etcd.log")
        # A port taken between the probe and etcd's bind makes etcd exit:
        # then try again with others (and a data directory of their own).
        for attempt in range(3):
            self.data = os.path.join(tmp, "etcd-data-%d" % attempt)
            self.peer_port = _free_port()
            if self.start(_free_port(), start_timeout):
                return
        raise RuntimeError("etcd did not start; its log:\n" + self.tail())

    def start(self, client_port, timeout=15.0):
        """(Re)starts the member on `client_port`, with the same data and
        peer port. False, the member stopped, if it did not become
        healthy in time (a port taken meanwhile: try another)."""
        self.client_port = client_port
        client = "http://127.0.0.1:%d" % client_port
        peer = "http://127.0.0.1:%d" % self.peer_port
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "n0", "--data-dir", self.data,
             "--listen-client-urls", client,
             "--advertise-client-urls", client,
             "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer,
             "--initial-cluster", "n0=" + peer,
             "--unsafe-no-fsync", "--log-level", "warn", *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        if self._wait_healthy(timeout):
            return True
        self.stop()
        return False

    def _wait_healthy(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(
                        "http://127.0.0.1:%d/health" % self.client_port,
                        timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def endpoint(self):
        return "127.0.0.1:%d" % self.client_port

    def url(self, prefix="m2mpsk"):
        return "etcd://%s/%s" % (self.endpoint, prefix)

    def ctl(self, *args, timeout=10):
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(["etcdctl", "--endpoints", self.endpoint,
                               *args], capture_output=True, timeout=timeout,
                              env=env)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
