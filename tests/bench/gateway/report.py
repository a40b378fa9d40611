#!/usr/bin/env python3
"""Writes the gateway section of docs/BENCHMARKS.md, and its plot, from one
run of tests/bench/gateway/run.sh (the JSON lines gwbench.py wrote).

The section sits between two marker lines (BEGIN and END below) and is the
only part of the document this script touches; tests/bench/report.py keeps
it when it regenerates the rest. Every figure comes from the run's files;
nothing is typed in by hand."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

BEGIN = ("<!-- gateway benchmark: begin. Written by tests/bench/gateway/"
         "report.py; do not edit by hand -->")
END = "<!-- gateway benchmark: end -->"
WHOS = ["gateway", "stunnel", "direct"]
LABEL = {"gateway": "`m2mpsk gateway`", "stunnel": "stunnel",
         "direct": "backend direct (floor)"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def fmt(t, spec="%.0f"):
    if t is None:
        return "–"
    return (spec + " (" + spec + "–" + spec + ")") % t


MASSIF_CATEGORIES = ["the TLS library (BoringSSL)", "m2mpsk (association, engine module)",
                     "libevent (events; evhttp toward the CSE)", "the gateway (src/gateway)",
                     "other"]


def massif_category(fn):
    """Which part of the gateway an allocation site belongs to."""
    if re.search(r"\((libcrypto|libssl)\.so\.0\)$", fn):
        return MASSIF_CATEGORIES[0]
    # the site's object (a Release build) or source file (with debug info)
    if re.search(r"\((libm2mpsk\.so[.\d]*|tls-\w+\.so|(assoc|config|keystore|"
                 r"guard|common|tls_\w+)\.[ch])\)$", fn):
        return MASSIF_CATEGORIES[1]
    if "libevent" in fn:
        return MASSIF_CATEGORIES[2]
    # the gateway is linked into the m2mpsk tool
    if re.search(r"\((m2mpsk|(http|httpreq|gateway|gate|log|coap)\.c)\)$", fn):
        return MASSIF_CATEGORIES[3]
    return MASSIF_CATEGORIES[4]


def engine_memory(doc, suite):
    """The engine's own memory per responder association, from the memory
    tables tests/bench/report.py wrote: (bytes, what it is), or None."""
    try:
        with open(doc) as f:
            text = f.read()
    except OSError:
        return None
    if suite == "TLS_PSK_WITH_AES_128_CBC_SHA":
        # "| TLS PSK | responder | m2mpsk B | raw BoringSSL B | extra | raw OpenSSL 3 B |"
        m = re.search(r"^\| TLS PSK \| responder \| (\d+) \| (\d+) \| [^|]+\| (\d+) \|",
                      text, re.M)
        if m:
            return (int(m.group(1)), "m2mpsk's TLS PSK responder on BoringSSL",
                    int(m.group(3)), "raw OpenSSL 3's")
    else:
        # per-engine table: "| TLS PSK | openssl | openssl / openssl | i | raw | extra | r | raw | extra |"
        m = re.search(r"^\| TLS PSK \| openssl \| [^|]+\| \d+ \| \d+ \| [^|]+\| (\d+) \| (\d+) \|",
                      text, re.M)
        if m:
            return (int(m.group(1)), "m2mpsk's TLS PSK responder on OpenSSL 3",
                    int(m.group(2)), "raw OpenSSL 3's")
    return None


def section(rows, a):
    run = next(r for r in rows if r["kind"] == "gw_run")
    end = next((r for r in rows if r["kind"] == "gw_end"), {})
    final = next((r for r in rows if r["kind"] == "gw_contenders"), None)
    if final:  # a contender that failed to start is left out, with why
        run = dict(run, contenders=final["contenders"], skipped=final["skipped"])
    samples = [r for r in rows if r["kind"] == "gw_sample"]
    mems = [r for r in rows if r["kind"] == "gw_mem"]
    whos = [w for w in WHOS if w in run["contenders"]]
    reps = sorted({r["rep"] for r in samples})

    def s(who, phase, rep):
        return next((r for r in samples if r["who"] == who and r["phase"] == phase
                     and r["rep"] == rep), None)

    def per_rep(fn):
        out = []
        for rep in reps:
            v = fn(rep)
            if v is not None:
                out.append(v)
        return med(out)

    def ratio(phase, key, num="gateway", den="stunnel"):
        def fn(rep):
            x, y = s(num, phase, rep), s(den, phase, rep)
            if x and y and x.get(key) and y.get(key):
                return x[key] / y[key]
            return None
        return per_rep(fn)

    def added(phase, key, who):
        def fn(rep):
            x, y = s(who, phase, rep), s("direct", phase, rep)
            if x and y:
                return x[key] - y[key]
            return None
        return per_rep(fn)

    fig = {}
    for w in whos:
        f = fig[w] = {}
        for phase in ("assoc", "keepalive", "latency"):
            ss = [r for r in samples if r["who"] == w and r["phase"] == phase]
            f[phase + "_cpu"] = med([r["per_cpu_s"] for r in ss])
            f[phase + "_wall"] = med([r["per_s"] for r in ss])
            f[phase + "_p50"] = med([r["p50_us"] for r in ss])
            f[phase + "_p99"] = med([r["p99_us"] for r in ss])
            f[phase + "_fail"] = sum(r["failures"] for r in ss)
            f[phase + "_threads"] = max((r["server_threads"] for r in ss), default=0)
            f[phase + "_backend_cpu"] = med([r["cpu_backend"] / r["completed"] * 1e6
                                            for r in ss if r["completed"]])
            f[phase + "_server_us"] = med([r["cpu_server"] / r["completed"] * 1e6
                                          for r in ss if r["completed"]])
        mm = [r for r in mems if r["who"] == w and r.get("request", True)]
        mh = [r for r in mems if r["who"] == w and not r.get("request", True)]
        f["mem"] = med([r["per_assoc_b"] for r in mm])
        f["mem_backend"] = med([r["backend_per_assoc_b"] for r in mm])
        f["mem_hs"] = med([r["per_assoc_b"] for r in mh])
        f["mem_hs_backend"] = med([r["backend_per_assoc_b"] for r in mh])
        f["mem_threads"] = max((r["threads_idle"] for r in mm + mh), default=0)
        f["mem_dropped"] = sum(r["dropped_idle"] for r in mm + mh)
        if w != "direct" and "direct" in whos:
            f["lat_added_p99"] = added("latency", "p99_us", w)
            f["lat_added_p50"] = added("latency", "p50_us", w)
            f["ka_added_p99"] = added("keepalive", "p99_us", w)

    md = []
    w_ = md.append
    w_(BEGIN)
    w_("## The gateway, side by side with stunnel")
    w_("")
    w_("Generated by `%s` from one run%s. One plain HTTP/1.1 backend "
       "(`m2mpsk-gwbench-backend`: libevent's evhttp, one thread, a fixed "
       "%s) on 127.0.0.1, and in front of it, in turn: `m2mpsk gateway`, "
       "stunnel in server mode with its PSK secrets file, and nothing (the "
       "backend reached directly: the floor). One client "
       "(`m2mpsk-gwbench-load`, m2mpsk's initiator, one thread, nonblocking) "
       "drives each, the contenders' runs interleaved with their order "
       "rotating; %d repetitions of %.1f s windows after %.1f s of warm-up. "
       "*Per core* figures divide by the CPU time the server process "
       "(all its threads) spent in the window, from `/proc/PID/stat`; the "
       "wall-clock rates depend on what else the machine ran. "
       "`tests/bench/README.md` says what each figure measures." % (
           a.command, " (**%s**: short windows, a smoke run, not the reference)"
           % run["profile"] if run["profile"] != "full" else "",
           "oneM2M `<contentInstance>` in JSON",
           len(reps), run["seconds"], run["warmup"]))
    w_("")
    v = run.get("versions", {})
    w_("- suite: `%s` for every contender (stunnel: `ciphers = %s`), TLS 1.2; "
       "the client offers that suite alone, the gateway keeps its default "
       "suites and engine `auto`" % (run["suite"], run["stunnel_suite"]))
    w_("- %s%s; %s (%s); libevent %s" % (
        v.get("m2mpsk", "m2mpsk ?"), ", source " + a.revision if a.revision else "",
        v.get("stunnel", "stunnel ?"), v.get("stunnel_openssl", ""),
        v.get("libevent", "?")))
    for who, why in run.get("skipped", {}).items():
        w_("- **%s not measured**: %s" % (LABEL[who], why))
    w_("- the machine: %d CPUs shared with other jobs (load average %s at the "
       "start, %s at the end): client, server and backend compete for the same "
       "cores, so wall-clock rates and latencies are noisy; read the ratios "
       "and the per-core figures" % (
           run["nproc"], " ".join(run["loadavg_start"]),
           " ".join(end.get("loadavg_end", ["?"]))))
    w_("")

    # -- goals
    w_("### Goals")
    w_("")
    w_("| goal | measured | verdict |")
    w_("|---|---|---|")
    have = "gateway" in whos and "stunnel" in whos

    def verdict(t, ok):
        if t is None:
            return "**not measured**"
        return "**met**" if ok(t[0]) else "**not met**"
    r = ratio("assoc", "per_cpu_s") if have else None
    w_("| new TLS-PSK associations per second per core ≥ 3× stunnel's | %s | %s |" % (
        "%s× (gateway %s, stunnel %s per server CPU second)" % (
            fmt(r, "%.2f"), fmt(fig["gateway"]["assoc_cpu"]),
            fmt(fig["stunnel"]["assoc_cpu"])) if r else "–",
        verdict(r, lambda x: x >= 3)))
    r = ratio("keepalive", "per_cpu_s") if have else None
    rw = ratio("keepalive", "per_s") if have else None
    w_("| requests per second over established associations ≥ stunnel's | %s | %s |" % (
        "%s× per core (gateway %s, stunnel %s per server CPU second); wall "
        "clock %s×" % (fmt(r, "%.2f"), fmt(fig["gateway"]["keepalive_cpu"]),
                       fmt(fig["stunnel"]["keepalive_cpu"]), fmt(rw, "%.2f"))
        if r else "–", verdict(r, lambda x: x >= 1)))
    eng = engine_memory(a.doc, run["suite"])
    gm = fig.get("gateway", {}).get("mem")
    if gm and eng:
        extra = (gm[0] - eng[0], gm[1] - eng[0], gm[2] - eng[0])
        w_("| ≤ 2 KiB per idle association above the engine's own | %s B above "
           "(%s B per idle association against %d B, %s, from the memory "
           "table above) | %s |" % (fmt(extra, "%+.0f"), fmt(gm), eng[0], eng[1],
                                   verdict(extra, lambda x: x <= 2048)))
    else:
        w_("| ≤ 2 KiB per idle association above the engine's own | – | %s |" % (
            "**not measured**"))
    w_("")

    # -- figures
    w_("### Figures")
    w_("")
    w_("Medians over the repetitions, with min–max.")
    w_("")
    w_("| | %s |" % " | ".join(LABEL[w] for w in whos))
    w_("|---|%s" % ("---|" * len(whos)))

    def row(name, key, spec="%.0f"):
        w_("| %s | %s |" % (name, " | ".join(fmt(fig[w].get(key), spec) for w in whos)))
    row("new associations per second per core of the server (connect, "
        "handshake, one request, close; %d at a time)" % run["conc_assoc"], "assoc_cpu")
    row("server CPU µs per new association", "assoc_server_us", "%.1f")
    row("new associations per second, wall clock", "assoc_wall")
    row("requests per second per core of the server (keep-alive, %d "
        "associations)" % run["conc_ka"], "keepalive_cpu")
    row("server CPU µs per request", "keepalive_server_us", "%.1f")
    row("requests per second, wall clock", "keepalive_wall")
    row("latency p50 µs, one request at a time", "latency_p50")
    row("latency p99 µs, one request at a time", "latency_p99")
    row("p99 added over the direct backend µs, one at a time (per repetition)",
        "lat_added_p99")
    row("p50 added over the direct backend µs, one at a time", "lat_added_p50")
    row("p99 added over direct µs, %d keep-alive associations" % run["conc_ka"],
        "ka_added_p99")
    idle_n = mems[0]["n"] if mems else run["idle_n"]
    row("resident memory per idle association B (%d held, each after one "
        "request)" % idle_n, "mem")
    row("backend's resident memory per idle association B", "mem_backend")
    row("resident memory per idle association B, held right after the "
        "handshake (no request yet)", "mem_hs")
    row("backend's resident memory per association B, right after the "
        "handshake", "mem_hs_backend")
    w_("| server threads while %d associations are idle | %s |" % (
        idle_n, " | ".join(str(fig[w]["mem_threads"]) for w in whos)))
    fails = {w: sum(fig[w][p + "_fail"] for p in ("assoc", "keepalive", "latency"))
             + fig[w]["mem_dropped"] for w in whos}
    w_("| failed or dropped connections (all phases) | %s |" % " | ".join(
        str(fails[w]) for w in whos))
    w_("")
    if eng:
        w_("For scale: the engine's own memory per established association "
           "is %d B (%s), %s responder %d B (the memory table above; heap "
           "only, no socket buffers or event-loop state)." % (
               eng[0], eng[1], eng[3], eng[2]))
        w_("")
    ms = next((r for r in rows if r["kind"] == "gw_massif"), None)
    if ms and "fns" in ms:
        cats = {}
        for fn, b in ms["fns"].items():
            c = massif_category(fn)
            cats[c] = cats.get(c, 0) + b
        w_("**Where the gateway's heap per idle association goes**: valgrind's "
           "massif on the gateway (one thread), a detailed snapshot with %d "
           "associations held idle (each after one request) and another with "
           "%d; their difference per association, by allocation site. Heap in "
           "use: %.0f B, plus %.0f B of malloc's own overhead; the resident "
           "figure above also has page granularity and what the kernel "
           "charges to the process." % (ms["n"], 2 * ms["n"], ms["heap_b"],
                                          ms["extra_b"]))
        w_("")
        w_("| part | B per association | largest allocation sites (B) |")
        w_("|---|---|---|")
        for c in MASSIF_CATEGORIES:
            if c not in cats:
                continue
            top = sorted(((b, fn) for fn, b in ms["fns"].items()
                          if massif_category(fn) == c and abs(b) >= 8),
                         key=lambda t: -abs(t[0]))[:6]
            w_("| %s | %.0f | %s |" % (c, cats[c], ", ".join(
                "`%s` %.0f" % (fn, b) for b, fn in top) or "–"))
        w_("")
    elif ms:
        w_("(massif breakdown not measured: %s)" % ms.get("skipped", "?"))
        w_("")
    w_("![gateway benchmark](benchmarks-gateway.png)")
    w_("")
    w_(END)
    return "\n".join(md) + "\n", fig, whos


def splice(doc, text):
    """Replaces the section between the markers, or appends it."""
    try:
        with open(doc) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    i, j = old.find(BEGIN), old.find(END)
    if i >= 0 and j > i:
        new = old[:i] + text + old[j + len(END):].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    with open(doc, "w") as f:
        f.write(new)


def plot(fig, whos, dat, png):
    keys = [("assoc_cpu", 1), ("keepalive_cpu", 1), ("lat_added_p99", 1), ("mem", 1)]
    with open(dat, "w") as f:
        for w in whos:
            cells = []
            for k, _ in keys:
                t = fig[w].get(k) or (0, 0, 0)
                cells += ["%.1f" % x for x in t]
            f.write('"%s" %s\n' % (w if w != "direct" else "direct", " ".join(cells)))
    gp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway.gp")
    subprocess.run(["gnuplot", "-e", "datafile='%s'; outfile='%s'" % (dat, png), gp],
                   check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--doc", required=True, help="docs/BENCHMARKS.md (spliced)")
    ap.add_argument("--plot", required=True)
    ap.add_argument("--command", default="bash tests/bench/gateway/run.sh")
    ap.add_argument("--revision", default="")
    a = ap.parse_args()
    rows = load(a.results)
    text, fig, whos = section(rows, a)
    splice(a.doc, text)
    dat = os.path.join(os.path.dirname(os.path.abspath(a.results)), "gateway-plot.dat")
    plot(fig, whos, dat, a.plot)
    print("wrote the gateway section of %s and %s" % (a.doc, a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
