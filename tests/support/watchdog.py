#!/usr/bin/env python3
"""Runs one criterion test executable and makes a hang fail fast, named.

    watchdog.py [--limit S] [--spawn-stall S] [--retries N] -- EXE ARGS...

ctest alone, on a hang, waits for its TIMEOUT and then reports only the
executable, with whatever output the runner had flushed (none, in the
ASan run of issue 14). This wrapper:

- passes the output through and follows criterion's --verbose lines, so it
  knows which tests have started ([RUN ]) and which have ended;
- after --limit seconds, prints the tests still running, the process tree
  with each process's kernel wait channel and, where gdb exists, every
  thread's stack, kills the whole tree and exits 124;
- watches for a criterion worker stuck between fork and exec. BoxFort, the
  sandbox under criterion 2.4, forks each worker from the multi-threaded
  runner and calls malloc, fdopendir and readdir in the child before exec
  (its own comment calls them not fork-safe), while the runner waits for
  the child in waitpid(WUNTRACED) with no timeout: a child stuck there
  hangs the runner before any test starts, silently. Not seen here (a
  stress of fork-and-malloc against two allocating threads under GCC 12's
  ASan, 1,000 forks, never blocked; nor did 430 ASan runs of two test
  executables), but nothing else would report it. A child of the runner
  that still has the runner's command line (it has not exec'd) and is not
  stopped (BoxFort's child stops itself once ready) for --spawn-stall
  seconds is reported with its stack, and the run fails (124), or, with
  --retries N, runs again at most N times, saying so;
- kills whatever the tests left running (it is the tree's subreaper, so
  orphans of a killed worker come to it), and reports them.
"""
import argparse
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
RUN = re.compile(r"^\[RUN \] (\S+)")
END = re.compile(r"^\[(PASS|FAIL|SKIP|ERR )\] ([^:\s]+)")


def say(msg):
    sys.stdout.write("watchdog: %s\n" % msg)
    sys.stdout.flush()


def proc_stat(pid):
    """(state, ppid) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root):
    """Every live descendant of root, parents before children."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st:
            children.setdefault(st[1], []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        for c in sorted(children.get(p, [])):
            out.append(c)
            todo.append(c)
    return out


def describe(pid):
    st = proc_stat(pid)
    try:
        with open("/proc/%d/wchan" % pid) as f:
            wchan = f.read().strip() or "-"
    except OSError:
        wchan = "?"
    line = "  pid %d ppid %s state %s wchan %s: %s" % (
        pid, st[1] if st else "?", st[0] if st else "?", wchan, cmdline(pid))
    gdb = shutil.which("gdb")
    if gdb:
        try:
            bt = subprocess.run(
                [gdb, "-batch", "-nx", "-p", str(pid), "-ex",
                 "thread apply all bt 20"],
                capture_output=True, text=True, timeout=30).stdout
            frames = [l for l in bt.splitlines()
                      if l.startswith("#") or l.startswith("Thread")]
            line += "".join("\n      " + l for l in frames[:80])
        except (subprocess.TimeoutExpired, OSError):
            line += "\n      (gdb did not answer)"
    return line


def kill_tree(root, include_root=True):
    """SIGKILLs root's tree; returns the descendants found."""
    found = descendants(root)
    for p in ([root] if include_root else []) + found:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return found


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_once(cmd, args):
    """Returns ("done", rc), ("hung", None) or ("stuck-spawn", None)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    running = {}
    lock = threading.Lock()

    def pump():
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            m = RUN.match(line)
            if m:
                with lock:
                    running[m.group(1)] = time.monotonic()
                continue
            m = END.match(line)
            if m:
                with lock:
                    running.pop(m.group(2), None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    start = time.monotonic()
    unexeced = {}  # pid -> first seen not stopped, not exec'd
    outcome = None
    while outcome is None:
        try:
            rc = proc.wait(timeout=0.25)
            outcome = ("done", rc)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        # Read each time: right after exec the kernel shows an empty
        # command line for a moment (the new image's arguments are not set
        # up yet when the parent is let go).
        runner_cmd = cmdline(proc.pid)
        for pid in descendants(proc.pid):
            st = proc_stat(pid)
            if (st and st[1] == proc.pid and st[0] not in "TtZ"
                    and runner_cmd and cmdline(pid) == runner_cmd):
                first = unexeced.setdefault(pid, now)
                if now - first >= args.spawn_stall:
                    say("%s: a criterion worker (pid %d) has been stuck "
                        "between fork and exec for %.0f s (see watchdog.py); "
                        "none of our tests runs in it. Its stack:"
                        % (os.path.basename(cmd[0]), pid, now - first))
                    say(describe(pid))
                    outcome = ("stuck-spawn", None)
                    break
            else:
                unexeced.pop(pid, None)
        if outcome is None and now - start > args.limit:
            with lock:
                still = sorted(running.items(), key=lambda kv: kv[1])
            say("%s: HUNG: still running after %d s (limit)"
                % (os.path.basename(cmd[0]), args.limit))
            for name, t0 in still:
                say("  test %s, running for %.0f s" % (name, now - t0))
            if not still:
                say("  no test was running: the criterion runner itself is stuck")
            say("process tree:")
            for pid in descendants(os.getpid()):
                say(describe(pid))
            outcome = ("hung", None)
    # Orphans of the tree are re-parented to this process (the subreaper),
    # so its own descendants are the whole of what the run left.
    if outcome[0] != "done":
        kill_tree(proc.pid)
    left = kill_tree(os.getpid(), include_root=False)
    if left and outcome[0] == "done":
        say("killed %d process(es) the tests left running: %s" % (
            len(left), "; ".join("%d %s" % (p, cmdline(p)) for p in left)))
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    reader.join(timeout=5)
    reap_all()
    return outcome


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=float, default=300)
    ap.add_argument("--spawn-stall", type=float, default=5)
    ap.add_argument("--retries", type=int, default=0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for attempt in range(args.retries + 1):
        kind, rc = run_once(cmd, args)
        if kind == "done":
            if attempt:
                say("%s: completed on run %d after %d stuck worker spawn(s)"
                    % (os.path.basename(cmd[0]), attempt + 1, attempt))
            return rc if rc >= 0 else 128 - rc
        if kind == "hung":
            return 124
        if attempt < args.retries:
            say("%s: running it again (%d of %d)"
                % (os.path.basename(cmd[0]), attempt + 1, args.retries))
    say("%s: FAILED: a criterion worker never started (stuck between fork "
        "and exec)" % os.path.basename(cmd[0]))
    return 125


if __name__ == "__main__":
    sys.exit(main())
