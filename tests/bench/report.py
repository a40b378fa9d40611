#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md and its plot from one run of tests/bench/run.sh.

Inputs, all from that one run: the driver's JSON lines (--results), the
callgrind outputs (--callgrind DIR, files cg.<case>.<who>.out and cg.n),
and the machine's description (--machine). Every figure in the document
comes from these files; nothing is typed in by hand."""
import argparse
import json
import os
import re
import subprocess
import sys

CASES = ["TLS PSK", "TLS ECDHE-PSK", "DTLS PSK", "DTLS ECDHE-PSK"]
EVENTS = ["Ir", "I1mr", "D1mr", "D1mw", "Bcm", "Bim"]
# Markers of the gateway benchmark's section, which this script keeps.
GATEWAY_BEGIN = "<!-- gateway benchmark: begin"
GATEWAY_END = "<!-- gateway benchmark: end -->"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def one(rows, **kw):
    r = pick(rows, **kw)
    return r[0] if r else None


def verdict(ok):
    return "**met**" if ok else "**not met**"


# ---- callgrind ----------------------------------------------------------------

def cg_parse(path):
    """Totals and per-function events of one callgrind output."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--show=" + ",".join(EVENTS), path],
        capture_output=True, text=True, check=True).stdout
    num = r"([\d,]+|\.)(?: \([\d. ]+%\))?\s+"
    rx = re.compile(r"^\s*" + num * len(EVENTS) + r"(.*)$")
    fns, tot = {}, None
    for line in out.splitlines():
        m = rx.match(line)
        if not m:
            continue
        vals = [0 if g == "." else int(g.replace(",", "")) for g in m.groups()[:-1]]
        name = m.group(len(EVENTS) + 1).strip()
        if name == "PROGRAM TOTALS":
            tot = vals
            continue
        # "file:function [object]" -> "function [object basename]"
        mm = re.match(r"^(?:.*?:)?([^:\[]+?)\s*\[(.*)\]$", name)
        if mm:
            name = "%s (%s)" % (mm.group(1), os.path.basename(mm.group(2)))
        prev = fns.get(name, [0] * len(EVENTS))
        fns[name] = [a + b for a, b in zip(prev, vals)]
    return tot, fns


def cycles(v):
    """A rough cycle estimate: one per instruction, 12 per L1 miss (an L2
    hit on this machine type), 15 per mispredicted branch."""
    return v[0] + 12 * (v[1] + v[2] + v[3]) + 15 * (v[4] + v[5])


def callgrind_section(cgdir):
    if not cgdir or not os.path.exists(os.path.join(cgdir, "cg.n")):
        return None, [], []
    counts = {}
    with open(os.path.join(cgdir, "cg.n")) as f:
        for line in f:
            ci, n = line.split()
            counts[int(ci)] = int(n)
    table, parsed = [], {}
    for ci, n in sorted(counts.items()):
        m = cg_parse(os.path.join(cgdir, "cg.%d.m2mpsk.out" % ci))
        r = cg_parse(os.path.join(cgdir, "cg.%d.boringssl.out" % ci))
        parsed[ci] = (m, r, n)
        table.append((CASES[ci], n, [x / n for x in m[0]], [x / n for x in r[0]]))
    diff = []
    if 0 in parsed:
        (tm, fm), (tr, fr), n = parsed[0]
        for k in set(fm) | set(fr):
            a = fm.get(k, [0] * len(EVENTS))
            b = fr.get(k, [0] * len(EVENTS))
            d = [(x - y) / n for x, y in zip(a, b)]
            diff.append((cycles(d), d, k))
        diff.sort(key=lambda r: -abs(r[0]))
    return counts, table, diff


# ---- key sources ------------------------------------------------------------------

def ratio_of(r):
    return {"median": r["ratio_median"], "min": r["ratio_min"], "max": r["ratio_max"]}


def cpu_ceiling(krows, r):
    """Memory's CPU per handshake over the source's, at the same C."""
    m = one(krows, kind="ksrc", case=r["case"], engine=r["engine"], conc=r["conc"],
            who="memory")
    return m["cpu_us"] / r["cpu_us"]


def keysource_targets(krows):
    """Per case, engine and source mode: the row with the smallest C whose
    median ratio reaches 0.9 (None if none does), and the row at the
    largest C. A wall-clock ratio counts only if the CPU-bound ceiling at
    that C reaches 0.9 too: with the machine's share of a core equal for
    both, the source cannot beat memory's CPU per handshake, so a ratio
    above its ceiling says that the memory run lost more of the core to
    other work."""
    out = []
    seen = []
    for r in pick(krows, kind="ksrc"):
        key = (r["case"], r["engine"], r["who"])
        if r["who"] == "memory" or key in seen:
            continue
        seen.append(key)
        sweep = sorted(pick(krows, kind="ksrc", case=r["case"], engine=r["engine"],
                            who=r["who"]), key=lambda x: x["conc"])
        best = next((x for x in sweep if x["ratio_median"] >= 0.9 and
                     cpu_ceiling(krows, x) >= 0.9), None)
        out.append((r["case"], r["engine"], r["who"], best, sweep[-1]))
    return out


# The key-source bench's contenders besides "memory", in its order.
KEY_SOURCE_MODES = ("queue", "callback", "once")


def keysource_section(w, krows):
    run = one(krows, kind="ksrc_run")
    if run is None or not pick(krows, kind="ksrc"):
        return
    w("## Key sources")
    w("")
    w("`m2mpsk-keysource-bench` (`tests/bench/keysource.c`), %s profile: one "
      "thread, one event loop, C initiator/responder pairs in flight at once "
      "in memory, `%s`, each handshake with a KpsaID its responder has not "
      "seen (%d made up front). *memory*: the responder's keystore holds "
      "every record. *queue*: its keystore starts empty and its key source "
      "(`m2mpsk_keystore_set_source` without a callback, requests taken with "
      "`m2mpsk_keystore_next_request`) answers each request %.0f ms later%s "
      "from a timer heap in the same loop, with the record of a backing "
      "table, then the loop resumes the waiting responder. *callback*: the "
      "same with the source in callback mode. *once*: queue mode answering "
      "with `m2mpsk_key_request_supply_once` (since 0.6): the record serves "
      "the handshake that waited and the keystore does not keep it. Their runs alternate, in an "
      "order that rotates with the repetition (%d repetitions); each runs a "
      "warm-up (at least %.2f s, and until C handshakes completed) and a "
      "window of %.2f s. *hs/s*: handshakes completed per wall-clock second "
      "in the window; *ratio*: source / memory in the same repetition, "
      "median (min–max). *CPU µs*: process CPU per handshake, both sides, "
      "the loop and the source; *util*: CPU / wall in the window (below 1 "
      "for *memory*, which never sleeps, the machine's other work took the "
      "core); *idle*: the share of the window the loop slept, every pair "
      "waiting for its key; *peak*: most responders waiting for a key at once. Every "
      "handshake of every run was established, and the source was asked "
      "exactly once per KpsaID (the driver fails otherwise)." % (
          run["profile"], run["suite"], run["records"], run["delay_ms"],
          " (plus 0 to %.0f ms, uniformly: with a constant delay, this closed "
          "loop's waits fall into step and it idles between the bursts of "
          "answers)" % run["jitter_ms"] if run.get("jitter_ms") else "",
          run["reps"], run["warmup_s"], run["window_s"]))
    w("")
    w("*CPU-bound ceiling*: memory's CPU per handshake over the source's, "
      "the ratio the source tends to once C keeps the loop busy; unlike the "
      "wall-clock rates it does not depend on how much of a core the "
      "machine's other work left the run.")
    w("")
    srcs = [x for x in KEY_SOURCE_MODES
            if pick(krows, kind="ksrc", who=x)]
    w("| case | engine | C | memory hs/s | " +
      " | ".join("%s hs/s | %s / memory" % (x, x) for x in srcs) +
      " | peak waiting | CPU µs memory / " + " / ".join(srcs) +
      " | CPU-bound ceiling " + " / ".join(srcs) +
      " | util memory / queue | idle queue |")
    w("|---|---|---|---|" + "---|---|" * len(srcs) + "---|---|---|---|---|")
    for m in pick(krows, kind="ksrc", who="memory"):
        rs = [one(krows, kind="ksrc", case=m["case"], engine=m["engine"],
                  conc=m["conc"], who=x) for x in srcs]
        q = one(krows, kind="ksrc", case=m["case"], engine=m["engine"],
                conc=m["conc"], who="queue")

        def hs(r):
            return "%.0f (%.0f–%.0f)" % (r["hs_median"], r["hs_min"], r["hs_max"]) if r else "–"

        def ra(r):
            if not r:
                return "–"
            t = fmt_ratio(ratio_of(r))
            return "**%s**" % t if r["ratio_median"] >= 0.9 else t
        peak = max((r["peak_waiting_max"] for r in rs if r), default=None)
        w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            m["case"], m["engine"], m["conc"], hs(m),
            " | ".join("%s | %s" % (hs(r), ra(r)) for r in rs),
            "%.0f" % peak if peak is not None else "–",
            " / ".join("%.1f" % r["cpu_us"] if r else "–" for r in [m] + rs),
            " / ".join("%.3f" % (m["cpu_us"] / r["cpu_us"]) if r else "–" for r in rs),
            "%.2f / %s" % (m["util"], "%.2f" % q["util"] if q else "–"),
            "%.2f" % q["idle"] if q and "idle" in q else "–"))
    w("")
    resp = pick(krows, kind="ksrc_resp")
    if resp:
        w("The responder side alone, in runs of their own at the largest C "
          "(the timed sections slow the loop): thread CPU summed over the "
          "responder's calls (create and start, each feed, its drains, free) "
          "and the source's calls into m2mpsk (`next_request`, `supply`, "
          "`m2mpsk_key_request_free`, `resume`), less the cost of an empty "
          "section, per handshake. The backing table's lookup and the timer "
          "heap (the database client's work) are outside it. *By call*: the "
          "same over the whole run, per handshake started, for each call "
          "(`supply` includes `m2mpsk_key_request_free`; `new` includes "
          "`start`; a responder's work on the client's last flight is in "
          "`feed` for *memory*, in `resume` for a source).")
        w("")
        w("*memory / source*: the rate a responder alone (its own process, "
          "CPU-bound) would reach with the source, as a fraction of its rate "
          "with the keys in memory; the loop above runs both sides, whose "
          "initiator half costs the same for every contender.")
        w("")
        rsrcs = [x for x in KEY_SOURCE_MODES if pick(resp, who=x)]
        w("| case | engine | C | memory µs | " +
          " | ".join("%s µs" % x for x in rsrcs) +
          " | queue − memory µs | " +
          " | ".join("memory / %s" % x for x in rsrcs) + " |")
        w("|---|---|---|---|" + "---|" * (2 * len(rsrcs) + 1))
        for m in pick(resp, who="memory"):
            rs = [one(resp, case=m["case"], engine=m["engine"], who=x) for x in rsrcs]
            q = one(resp, case=m["case"], engine=m["engine"], who="queue")

            def us(r):
                return "%.2f (%.2f–%.2f)" % (r["us_median"], r["us_min"], r["us_max"]) if r else "–"
            def frac(r):
                return "%.3f" % (m["us_median"] / r["us_median"]) if r else "–"
            w("| %s | %s | %d | %s | %s | %s | %s |" % (
                m["case"], m["engine"], m["conc"], us(m),
                " | ".join(us(r) for r in rs),
                "%+.2f" % (q["us_median"] - m["us_median"]) if q else "–",
                " | ".join(frac(r) for r in rs)))
        w("")
        calls = ["new+start", "feed", "drain", "free", "next", "supply", "resume"]
        w("| case | engine | source | " + " | ".join("%s µs" % c for c in calls) + " |")
        w("|---|---|---|" + "---|" * len(calls))
        for r in resp:
            by = r.get("by_call", {})
            w("| %s | %s | %s | %s |" % (r["case"], r["engine"], r["who"], " | ".join(
                "%.2f" % by[c] if c in by else "–" for c in calls)))
        w("")


# ---- the document ---------------------------------------------------------------

def fmt_ratio(r):
    return "%.3f (%.3f–%.3f)" % (r["median"], r["min"], r["max"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--callgrind")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--command", default="bash tests/bench/run.sh")
    ap.add_argument("--revision", default="")
    ap.add_argument("--bench-output")
    ap.add_argument("--keysource-results",
                    help="the key-source benchmark's JSON lines "
                         "(m2mpsk-keysource-bench --json)")
    ap.add_argument("--openssl-results",
                    help="handshake results of the same harness in an "
                         "-DM2MPSK_TLS=openssl build (m2mpsk on OpenSSL 3)")
    a = ap.parse_args()

    rows = load(a.results)
    krows = load(a.keysource_results) if a.keysource_results and \
        os.path.exists(a.keysource_results) else []
    run = one(rows, kind="run")
    md = []
    w = md.append
    w("# m2mpsk benchmarks")
    w("")
    w("Generated by `%s` from one run%s: every figure below was measured in "
      "one process, next to its baseline, with the batches of the contenders "
      "interleaved. Do not edit by hand; `tests/bench/README.md` says what "
      "each figure measures." % (a.command, " (**--quick**: small batches, "
                                  "a smoke run, not the reference)" if run["quick"] else ""))
    w("")
    w("- m2mpsk %s, TLS backend `%s`%s" % (run["m2mpsk"], run["backend"],
                                         ", source " + a.revision if a.revision else ""))
    if run.get("engine"):
        w("- the sections that compare m2mpsk with raw BoringSSL (handshakes, "
          "memory, application data, threads) run on engine `%s`; the "
          "sections on engines say which engine each side ran on" % run["engine"])
    w("- raw baselines: %s and %s, each a module of its own loaded with "
      "`RTLD_LOCAL | RTLD_DEEPBIND`" % (run["boringssl"], run["openssl"]))
    w("- %d repetitions of each batch; ratios are medians of per-repetition "
      "ratios, with their min–max" % run["reps"])
    w("")

    # -- targets
    targets = []
    cg_counts, cg_table, cg_diff = callgrind_section(a.callgrind)
    cg_by_case = {c: (m, r) for c, n, m, r in cg_table}
    for case in CASES:
        for side in ("both", "responder"):
            r = one(rows, kind="hs_ratio", case=case, side=side, what="m2m/bssl")
            if r is None:
                continue
            extra = ""
            if side == "both" and case in cg_by_case:
                m, rr = cg_by_case[case]
                extra = "; callgrind instructions %.3f×" % (m[0] / rr[0])
            targets.append(("Handshake CPU ≤ 1.05× raw BoringSSL, %s, %s" % (
                case, "initiator + responder" if side == "both" else "responder alone"),
                "%s, %+.1f µs%s" % (fmt_ratio(r), r["diff_us"], extra),
                r["median"] <= 1.05))
    for case in ("TLS PSK", "DTLS PSK"):
        r = one(rows, kind="hs_ratio", case=case, side="both", what="ossl/m2m")
        if r:
            targets.append(("%s: m2mpsk ≥ 3× faster than raw OpenSSL 3%s" % (
                case, "" if case == "TLS PSK" else " (not a target: for reference)"),
                "%s× faster" % fmt_ratio(r), r["median"] >= 3.0))
    for m in pick(rows, kind="mem"):
        if m["side"] == "pair":
            continue
        extra = m["m2mpsk"] - m["boringssl"]
        targets.append(("Memory ≤ raw BoringSSL + 1 KiB, %s %s" % (m["case"], m["side"]),
                        "%+.0f B (%.0f B against %.0f B)" % (extra, m["m2mpsk"], m["boringssl"]),
                        extra <= 1024))
    ks = one(rows, kind="ks_load")
    if ks:
        targets.append(("Keystore ≤ 128 B locked per record (32-byte keys)",
                        "%.1f B" % ks["locked_per_record"], ks["locked_per_record"] <= 128))
        scale = 1e6 / ks["records"]
        targets.append(("Keystore: 1,000,000 records load in ≤ 2 s",
                        "%.2f s for %d records%s" % (ks["wall_median"], ks["records"],
                                                     "" if scale == 1 else " (%.2f s scaled)" % (ks["wall_median"] * scale)),
                        ks["wall_median"] * scale <= 2.0))
    ka = one(rows, kind="ks_add")
    if ka:
        targets.append(("Keystore built one record at a time: < 70 B locked per record",
                        "%.1f B over %d records" % (ka["locked_per_record"], ka["records"]),
                        ka["locked_per_record"] < 70))
    kl = one(rows, kind="ks_lookup")
    if kl:
        if "cpu2_median" in kl:
            targets.append(("Keystore lookups < 1 µs, 2 threads (CPU time per lookup)",
                            "%.0f ns (1 thread: %.0f ns); wall clock %.0f ns (1 thread: %.0f ns)" % (
                                kl["cpu2_median"], kl["cpu1_median"], kl["ns2_median"], kl["ns1_median"]),
                            kl["cpu2_median"] < 1000))
        else:
            targets.append(("Keystore lookups < 1 µs, 2 threads",
                            "%.0f ns (1 thread: %.0f ns)" % (kl["ns2_median"], kl["ns1_median"]),
                            kl["ns2_median"] < 1000))
    for t in pick(rows, kind="tp"):
        targets.append(("Application data ≥ 0.95× raw, %s, %d B writes" % (t["case"], t["size"]),
                        "%.3f (%.3f–%.3f)" % (t["ratio_median"], t["ratio_min"], t["ratio_max"]),
                        t["ratio_median"] >= 0.95))
    for t in pick(rows, kind="thr", who="m2mpsk"):
        raw = one(rows, kind="thr", who="boringssl", case=t["case"])
        targets.append(("2 threads ≥ 1.8× one thread, %s" % t["case"],
                        "%.2f (%.2f–%.2f); raw BoringSSL on the same cores: %.2f" % (
                            t["scale_median"], t["scale_min"], t["scale_max"],
                            raw["scale_median"] if raw else float("nan")),
                        t["scale_median"] >= 1.8))
    hr = one(rows, kind="hello_ratio")
    if hr:
        targets.append(("ClientHello inspection and engine choice ≤ 1%% of a raw "
                        "BoringSSL TLS PSK handshake (slowest of %d hellos)" % hr["hellos"],
                        "%.2f%% (%.2f%%–%.2f%%): %.0f ns against %.2f µs; mean over "
                        "the hellos %.0f ns, %.2f%%" % (
                            100 * hr["median"], 100 * hr["min"], 100 * hr["max"],
                            hr["worst_ns"], hr["raw_us"], hr["mean_ns"],
                            100 * hr["mean_ratio"]),
                        hr["median"] <= 0.01))
    for r in pick(rows, kind="auto"):
        if r["target"] == "none":
            continue
        lib = "BoringSSL" if r["target"] == "m2m/bssl" else "OpenSSL 3"
        key = "bssl_ratio" if r["target"] == "m2m/bssl" else "ossl_ratio"
        targets.append(("Engine auto ≤ 1.05× raw %s (both sides on it), %s" % (lib, r["case"]),
                        "%.3f (%.3f–%.3f), %.1f µs against %.1f µs; the same "
                        "engines named: %.1f µs" % (
                            r[key], r[key + "_min"], r[key + "_max"], r["m2mpsk_us"],
                            r["boringssl_us"] if key == "bssl_ratio" else r["openssl_us"],
                            r["named_us"]),
                        r[key] <= 1.05))
    for m in pick(rows, kind="engine_mem"):
        for side in ("initiator", "responder"):
            extra = m[side] - m["raw_" + side]
            targets.append(("Memory on engine %s ≤ raw %s + 1 KiB, %s %s" % (
                m["engine"], m["engine_" + side], m["case"], side),
                "%+.0f B (%.0f B against %.0f B)" % (extra, m[side], m["raw_" + side]),
                extra <= 1024))
    for case, engine, who, best, top in keysource_targets(krows):
        meas = "%s at C=%d (CPU-bound ceiling %.3f)" % (
            fmt_ratio(ratio_of(top)), top["conc"], cpu_ceiling(krows, top))
        if best is not None and best is not top:
            meas = "%s at C=%d (ceiling %.3f), the smallest C measured that " \
                   "reaches 0.9; %s" % (fmt_ratio(ratio_of(best)), best["conc"],
                                        cpu_ceiling(krows, best), meas)
        targets.append(("Key source answering after %.0f ms (%s mode): responder "
                        "throughput ≥ 90%% of in-memory lookup, %s on %s" % (
                            one(krows, kind="ksrc_run")["delay_ms"], who, case, engine),
                        meas, best is not None))
    w("## Targets")
    w("")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    for name, meas, ok in targets:
        w("| %s | %s | %s |" % (name, meas, verdict(ok)))
    met = sum(1 for t in targets if t[2])
    w("")
    w("%d of %d met." % (met, len(targets)))
    w("")

    # -- handshakes
    plot = []
    if pick(rows, kind="hs"):
        w("## Handshakes")
        w("")
        w("CPU time per handshake (create both sides, full handshake in memory, "
          "free both). *both*: process CPU time of a batch, initiator and "
          "responder together; *responder*: thread CPU time summed over the "
          "responder's own calls only (four timed sections per handshake for "
          "every contender, their empty cost subtracted). hs/s is 1e6 / median "
          "µs: handshakes per second of one core.")
        w("")
        w("| case | side | N | m2mpsk µs | raw BoringSSL µs | raw OpenSSL 3 µs | m2mpsk hs/s | m2mpsk / BoringSSL | OpenSSL / m2mpsk |")
        w("|---|---|---|---|---|---|---|---|---|")
        for case in CASES:
            for side in ("both", "responder"):
                h = {x["who"]: x for x in pick(rows, kind="hs", case=case, side=side)}
                if not h:
                    continue
                rb = one(rows, kind="hs_ratio", case=case, side=side, what="m2m/bssl")
                ro = one(rows, kind="hs_ratio", case=case, side=side, what="ossl/m2m")
                cell = lambda x: "%.1f (%.1f–%.1f)" % (x["us_median"], x["us_min"], x["us_max"])
                w("| %s | %s | %d | %s | %s | %s | %.0f | %s | %s |" % (
                    case, side, h["m2mpsk"]["n"], cell(h["m2mpsk"]), cell(h["boringssl"]),
                    cell(h["openssl"]), h["m2mpsk"]["hs_per_s"], fmt_ratio(rb), fmt_ratio(ro)))
                plot.append((case, side, h["m2mpsk"]["hs_per_s"], h["boringssl"]["hs_per_s"],
                             h["openssl"]["hs_per_s"]))
        w("")
        w("![handshakes per second](benchmarks.png)")
        w("")

    if cg_table:
        w("### Instruction counts (callgrind)")
        w("")
        w("`valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes "
          "--toggle-collect=bench_m2m_batch` (or `bench_raw_batch`) over a "
          "fixed number of handshakes after five uncounted ones; per "
          "handshake, both sides. These counts repeat from run to run.")
        w("")
        w("| case | N | m2mpsk Ir | raw Ir | Ir ratio | I1 misses m2mpsk / raw | D1 misses m2mpsk / raw | mispredicts m2mpsk / raw |")
        w("|---|---|---|---|---|---|---|---|")
        for case, n, m, r in cg_table:
            w("| %s | %d | %.0f | %.0f | %.3f | %.0f / %.0f | %.0f / %.0f | %.0f / %.0f |" % (
                case, n, m[0], r[0], m[0] / r[0], m[1], r[1], m[2] + m[3], r[2] + r[3],
                m[4] + m[5], r[4] + r[5]))
        w("")
    if cg_diff:
        w("Where the plain-PSK TLS difference goes, per handshake, by function "
          "(m2mpsk minus raw; *cycles* is a rough estimate: instructions + 12 "
          "per L1 miss + 15 per mispredicted branch):")
        w("")
        w("| cycles | Ir | I1 miss | D1 miss | mispredicts | function (object) |")
        w("|---|---|---|---|---|---|")
        for c, d, k in cg_diff[:25]:
            w("| %+.0f | %+.0f | %+.0f | %+.0f | %+.0f | `%s` |" % (
                c, d[0], d[1], d[2] + d[3], d[4] + d[5], k))
        w("")

    # -- memory
    mems = pick(rows, kind="mem")
    if mems:
        w("## Memory per established association")
        w("")
        w("%d associations held at once; glibc heap growth (`mallinfo2`) per "
          "association. The raw columns exclude the harness's transport BIO "
          "(%.0f B per side, measured apart); m2mpsk has no transport outside "
          "the association: its heap buffers are released once empty after the handshake, and a record of up to 128 bytes travels in a small area inside the association (counted here)." % (
              mems[0]["k"], mems[0]["boringssl_transport"]))
        w("")
        w("| case | side | m2mpsk B | raw BoringSSL B | extra B | raw OpenSSL 3 B |")
        w("|---|---|---|---|---|---|")
        for m in mems:
            w("| %s | %s | %.0f | %.0f | %+.0f | %.0f |" % (
                m["case"], m["side"], m["m2mpsk"], m["boringssl"],
                m["m2mpsk"] - m["boringssl"], m["openssl"]))
        w("")

    # -- throughput
    tps = pick(rows, kind="tp")
    if tps:
        w("## Application data")
        w("")
        w("Initiator to responder through an established association, each "
          "write read by the peer before the next; MB per CPU second, both "
          "sides in one thread.")
        w("")
        w("| case | write | bytes | m2mpsk MB/s | raw BoringSSL MB/s | ratio |")
        w("|---|---|---|---|---|---|")
        for t in tps:
            w("| %s | %d B | %d | %.1f | %.1f | %.3f (%.3f–%.3f) |" % (
                t["case"], t["size"], t["bytes"], t["m2mpsk_mbs"], t["boringssl_mbs"],
                t["ratio_median"], t["ratio_min"], t["ratio_max"]))
        w("")

    # -- threads
    thr = pick(rows, kind="thr")
    if thr:
        w("## Two threads against one")
        w("")
        w("Handshakes per wall-clock second, one thread, then two threads "
          "sharing one keystore and config (m2mpsk) or one SSL_CTX pair (raw). "
          "The machine has 2 cores shared with other work, so the raw "
          "baseline's own scaling is the ceiling to read the target against.")
        w("")
        w("| case | who | N per thread | 1 thread hs/s | 2 threads hs/s | scale |")
        w("|---|---|---|---|---|---|")
        for t in thr:
            w("| %s | %s | %d | %.0f | %.0f | %.2f (%.2f–%.2f) |" % (
                t["case"], t["who"], t["n"], t["hs1"], t["hs2"], t["scale_median"],
                t["scale_min"], t["scale_max"]))
        w("")

    # -- keystore
    if ks:
        w("## Keystore")
        w("")
        w("| figure | value |")
        w("|---|---|")
        w("| records loaded from one key file | %d (32-byte keys, `m2mpsk_keystore_load_file`) |" % ks["records"])
        w("| load time, wall (median of %d; min–max) | %.3f s (%.3f–%.3f); CPU %.3f s |" % (
            ks["reps"], ks["wall_median"], ks["wall_min"], ks["wall_max"], ks["cpu_median"]))
        w("| locked key memory per record | %.1f B |" % ks["locked_per_record"])
        w("| heap per record (index, identities) | %.1f B |" % ks["heap_per_record"])
        w("| total per record | %.1f B (resident set growth: %.1f B) |" % (
            ks["locked_per_record"] + ks["heap_per_record"], ks["rss_per_record"]))
        w("| `is_locked` in this run (uid %d) | %d |" % (ks["uid"], ks["is_locked"]))
        if kl:
            if "cpu2_median" in kl:
                w("| lookup, `m2mpsk_keystore_lookup`, random KpsaID, 1 thread: CPU time | %.0f ns |" % kl["cpu1_median"])
                w("| lookup, 2 threads at once: CPU time | %.0f ns each (%.0f–%.0f) |" % (
                    kl["cpu2_median"], kl["cpu2_min"], kl["cpu2_max"]))
            w("| lookup latency (wall clock), 1 thread | %.0f ns |" % kl["ns1_median"])
            w("| lookup latency (wall clock), 2 threads at once | %.0f ns each (%.0f–%.0f) |" % (
                kl["ns2_median"], kl["ns2_min"], kl["ns2_max"]))
        if ka:
            w("| records added one at a time (`m2mpsk_keystore_add`) | %d: %.2f s wall, %.3f µs CPU per add |" % (
                ka["records"], ka["add_wall"], ka["add_cpu_us"]))
            w("| then: locked key memory, heap, resident set growth per record | %.1f B, %.1f B, %.1f B |" % (
                ka["locked_per_record"], ka["heap_per_record"], ka["rss_per_record"]))
            w("| then: lookup of a random KpsaID (1 thread, CPU; wall) | %.0f ns; %.0f ns |" % (
                ka["lookup_cpu_ns"], ka["lookup_ns"]))
            w("| then: `m2mpsk_keystore_free` | %.3f s |" % ka["free_s"])
        ml = one(rows, kind="ks_memlock")
        if ml:
            lim = lambda v: "unlimited" if v < 0 else "%d B (%.1f MiB)" % (v, v / 1048576)
            w("")
            w("**At the default `RLIMIT_MEMLOCK`** (soft %s, hard %s), in a child "
              "process that dropped `CAP_IPC_LOCK`%s, so that the limit applies as "
              "to an ordinary service account:" % (
                  lim(ml["soft"]), lim(ml["hard"]),
                  "" if ml["cap_dropped"] else " (dropping it failed: figures may not apply)"))
            w("")
            if ml["flip_count"] >= 0:
                flip = ("added one by one, it turns 0 at record %d (%d B of key "
                        "memory): the keys are still guarded and excluded from core "
                        "dumps, but may be swapped out" % (ml["flip_count"] + 1,
                                                           ml["flip_key_memory"]))
            else:
                flip = "added one by one, it stays 1 for all of them"
            w("- without `REQUIRE_LOCKED`: the %d-record file loads (`%s`, %.2f s, "
              "%d B of key memory) and `m2mpsk_keystore_is_locked` reports **%d**; "
              "%s." % (ml["records"], ml["load_rc"], ml["load_s"],
                       ml["load_key_memory"], ml["load_locked"], flip))
            if ml["req_count_at_refusal"] >= 0:
                req = ("record %d is refused with `%s` and the %d before it stay, "
                       "locked" % (ml["req_count_at_refusal"] + 1, ml["req_add_rc"],
                                   ml["req_count_at_refusal"]))
            else:
                req = "none is refused"
            w("- with `M2MPSK_KEYSTORE_REQUIRE_LOCKED`: loading the same file returns "
              "`%s` after %.2f s%s; added one by one, %s." % (
                  ml["req_load_rc"], ml["req_load_s"],
                  "" if ml["req_load_rc"] == "success" else
                  " and leaves the keystore unchanged", req))
        w("")

    # -- the engines
    hellos = pick(rows, kind="hello")
    if hellos and hr:
        w("## ClientHello inspection and engine choice")
        w("")
        w("What a TLS responder with engine `auto` does before any engine "
          "exists: `m2mpsk_hello_parse` then `m2mpsk_hello_choose` against the "
          "default config's suites per engine (src/hello.c, compiled into the "
          "driver), over real ClientHellos: the captures of `tests/data/hello/` "
          "and the first flight of m2mpsk's own initiators. CPU ns per hello, "
          "%d calls per hello and repetition; the raw BoringSSL TLS PSK "
          "handshake (both sides, %d per batch) is timed in the same "
          "repetitions: %.2f µs." % (hellos[0]["iters"], hr["n"], hr["raw_us"]))
        w("")
        w("| hello | transport | bytes | suites offered | engine chosen | ns | % of a raw handshake |")
        w("|---|---|---|---|---|---|---|")
        for h in hellos:
            w("| %s | %s | %d | %d | %s | %.1f (%.1f–%.1f) | %.2f%% |" % (
                h["name"], "DTLS" if h["dtls"] else "TLS", h["bytes"], h["suites"],
                h["engine"], h["ns_median"], h["ns_min"], h["ns_max"],
                h["ns_median"] / (10 * hr["raw_us"])))
        w("")
    autos = pick(rows, kind="auto")
    if autos:
        w("## Engine auto, for each suite a peer may force")
        w("")
        w("CPU time per handshake, both sides (create, handshake, free), "
          "through the shared library with engine `auto` on both sides. The "
          "side forcing the suite enables it alone; the other keeps the "
          "default config. Raw BoringSSL has neither CBC_SHA256 nor CCM_8. "
          "Where m2mpsk's DTLS responder runs on OpenSSL it runs the cookie "
          "exchange (one more round trip); raw OpenSSL's DTLS server then "
          "runs it too (marked *c*). The target compares with the raw "
          "library both sides ran on; a pair split over two engines has no "
          "single raw baseline.")
        w("")
        w("*named*: the same configs with each side's engine named (the one "
          "`auto` chose), in the same repetitions; *auto / named* is what "
          "`auto` itself costs (buffering and inspecting the ClientHello, "
          "choosing).")
        w("")
        w("| case | N | initiator ran on | responder ran on | m2mpsk auto µs | named µs | auto / named | raw BoringSSL µs | raw OpenSSL 3 µs | auto / BoringSSL | auto / OpenSSL |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in autos:
            w("| %s | %d | %s | %s | %.1f (%.1f–%.1f) | %.1f | %.3f (%.3f–%.3f) | %s | %.1f%s | %s | %.3f (%.3f–%.3f) |" % (
                r["case"], r["n"], r["engine_initiator"], r["engine_responder"],
                r["m2mpsk_us"], r["m2mpsk_min"], r["m2mpsk_max"], r["named_us"],
                r["auto_ratio"], r["auto_ratio_min"], r["auto_ratio_max"],
                "%.1f" % r["boringssl_us"] if r["has_bssl"] else "–",
                r["openssl_us"], " *c*" if r.get("raw_cookies") else "",
                "%.3f (%.3f–%.3f)" % (r["bssl_ratio"], r["bssl_ratio_min"], r["bssl_ratio_max"])
                if r["has_bssl"] else "–",
                r["ossl_ratio"], r["ossl_ratio_min"], r["ossl_ratio_max"]))
        w("")
    rss = pick(rows, kind="engine_rss")
    if rss:
        w("## Resident cost of the engine modules")
        w("")
        w("`/proc/self/status` before and after `m2mpsk_engine_available()` "
          "loads each module (with its TLS library), at the start of the "
          "driver, before anything else maps a TLS library.")
        w("")
        w("| module | loaded | VmRSS before → after KiB | VmRSS growth KiB | mapped (VmSize) growth KiB |")
        w("|---|---|---|---|---|")
        for r in rss:
            w("| %s | %s | %.0f → %.0f | %+.0f | %+.0f |" % (
                r["engine"], "yes" if r["loaded"] else "no", r["rss_before"] / 1024,
                r["rss_after"] / 1024, (r["rss_after"] - r["rss_before"]) / 1024,
                (r["size_after"] - r["size_before"]) / 1024))
        t = one(rows, kind="engine_rss_total")
        if t:
            w("| both | | %.0f → %.0f | %+.0f | %+.0f |" % (
                t["rss_before"] / 1024, t["rss_after"] / 1024,
                (t["rss_after"] - t["rss_before"]) / 1024,
                (t["size_after"] - t["size_before"]) / 1024))
        w("")
    em = pick(rows, kind="engine_mem")
    if em:
        w("## Memory per association, per engine")
        w("")
        w("As *Memory per established association* (%d held at once, glibc "
          "heap per side), with the config's engine named; *raw* is the raw "
          "library that side ran on, without the harness's transport." % em[0]["k"])
        w("")
        w("| case | engine | ran on (initiator / responder) | initiator B | raw B | extra B | responder B | raw B | extra B |")
        w("|---|---|---|---|---|---|---|---|---|")
        for m in em:
            w("| %s | %s | %s / %s | %.0f | %.0f | %+.0f | %.0f | %.0f | %+.0f |" % (
                m["case"], m["engine"], m["engine_initiator"], m["engine_responder"],
                m["initiator"], m["raw_initiator"], m["initiator"] - m["raw_initiator"],
                m["responder"], m["raw_responder"], m["responder"] - m["raw_responder"]))
        w("")

    keysource_section(w, krows)

    # -- m2mpsk on its OpenSSL 3 backend, against raw OpenSSL 3
    if a.openssl_results:
        orows = load(a.openssl_results)
        w("## With the OpenSSL 3 backend")
        w("")
        w("The same harness built with `-DM2MPSK_TLS=openssl`, in the same "
          "run of this script: m2mpsk on OpenSSL 3 against raw OpenSSL 3 "
          "through memory BIOs (handshake sections only). m2mpsk's OpenSSL "
          "DTLS responder always runs the cookie exchange "
          "(HelloVerifyRequest, one more round trip); the raw loop does not, "
          "so the DTLS rows include that protocol cost.")
        w("")
        w("| handshake | side | m2mpsk µs | raw OpenSSL µs | m2mpsk / raw OpenSSL |")
        w("|---|---|---|---|---|")
        for r in pick(orows, kind="hs_ratio", what="ossl/m2m"):
            m = one(orows, kind="hs", case=r["case"], side=r["side"], who="m2mpsk")
            o = one(orows, kind="hs", case=r["case"], side=r["side"], who="openssl")
            w("| %s | %s | %.1f | %.1f | %.3f (%.3f–%.3f) |" % (
                r["case"], r["side"], m["us_median"], o["us_median"],
                1 / r["median"], 1 / r["max"], 1 / r["min"]))
        w("")

    # -- machine
    w("## Machine")
    w("")
    w("```")
    with open(a.machine) as f:
        w(f.read().rstrip())
    w("```")
    w("")
    # The gateway benchmark's section (tests/bench/gateway/report.py) is
    # another run's: kept as it is, between its markers, at the end.
    kept = ""
    try:
        with open(a.out) as f:
            old = f.read()
        i = old.find(GATEWAY_BEGIN)
        j = old.find(GATEWAY_END)
        if i >= 0 and j > i:
            kept = old[i:j + len(GATEWAY_END)] + "\n"
    except FileNotFoundError:
        pass
    with open(a.out, "w") as f:
        f.write("\n".join(md))
        if kept:
            f.write("\n" + kept)

    # -- plot
    dat = os.path.splitext(a.plot)[0] + ".dat"
    dat = os.path.join(os.path.dirname(a.results), os.path.basename(dat))
    with open(dat, "w") as f:
        for case, side, m, b, o in plot:
            f.write('"%s\\n%s" %.1f %.1f %.1f\n' % (case, side, m, b, o))
    gp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks.gp")
    if not plot:  # a run without the hs section has nothing to draw
        print("wrote %s, no plot (%d of %d targets met)" % (a.out, met, len(targets)))
        return 0
    subprocess.run(["gnuplot", "-e", "datafile='%s'; outfile='%s'" % (dat, a.plot), gp],
                   check=True)
    print("wrote %s and %s (%d of %d targets met)" % (a.out, a.plot, met, len(targets)))


if __name__ == "__main__":
    sys.exit(main())
