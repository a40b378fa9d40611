"""A server process for the CLI tests (`m2mpsk serve`): started in its own
session, waited for until it logs its listening line, its log then read as
it comes (a full pipe would stop a server that logs much: a refused client
per line), stopped with SIGTERM or killed."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

# What .ci/sanitize counts as a report.
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|"
                       r"runtime error:|WARNING: ThreadSanitizer")


class ServeProcess:
    def __init__(self, argv, env=None, start_timeout=10):
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.lines = []
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (\S+):(\d+)", line)
            if m:
                self.port = int(m.group(2))
                self.reader = threading.Thread(target=self._read,
                                               daemon=True)
                self.reader.start()
                return
        self.kill()
        raise AssertionError("serve did not start: %r" % self.lines)

    def _read(self):
        for line in iter(self.proc.stderr.readline, b""):
            self.lines.append(line.decode())

    def finish(self, timeout=10, expected=range(0, 4)):
        """Waits for exit and returns (exit code, log lines)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reader.join(timeout)
        self._report(expected)
        return self.proc.returncode, list(self.lines)

    def _report(self, expected):
        """Into the test's own output, where ctest's log (and the sanitize
        stage's count of reports) can see them: a sanitizer's report in the
        server's log, or the log's tail when it ended on a signal or with a
        code not `expected` (one of serve's, 0-3; 0 after SIGTERM)."""
        code = self.proc.returncode
        first = next((i for i, line in enumerate(self.lines)
                      if SANITIZER.search(line)), None)
        if first is None and code in expected:
            return
        shown = self.lines[first:first + 300] if first is not None \
            else self.lines[-40:]
        print("serve (pid %d) exited with %d; from its log:" %
              (self.proc.pid, code))
        sys.stdout.write("".join("  | " + line for line in shown))
        sys.stdout.flush()

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.finish(expected=(0,))

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)
