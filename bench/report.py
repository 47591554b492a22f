#!/usr/bin/env python3
"""bench/report.py RAW.jsonl [--json FILE]: medians, ratios ours/baseline, targets; one table.

RAW holds one JSON object per measurement written by bench/run (and {"note":…} lines). Every
number printed here is computed from those measurements; nothing is filled in."""
import json, statistics, sys

STACKED = "stunnel → sshd -R → ssh (aes128-gcm, TCP_NODELAY)"
BARE = "bare ssh -R (aes128-gcm, TCP_NODELAY)"
SSHD = "sshd per idle ssh -R client"


def median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def main():
    raw_path = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    rows, notes = [], {}
    for line in open(raw_path):
        line = line.strip()
        if not line:
            continue
        d = json.loads(line)
        if "note" in d:
            notes[d["note"]] = d["value"]
        else:
            rows.append(d)

    def runs_of(metric, system, key=None):
        out = []
        for d in rows:
            if d["metric"] == metric and d["system"] == system:
                v = d.get("value")
                if key is not None:
                    v = v.get(key) if isinstance(v, dict) else None
                out.append((d["run"], v))
        return sorted(out, key=lambda x: x[0])

    metrics = []

    def add(name, unit, ours_runs, base_runs, baseline_name, target, better, extra=None):
        ours = median([v for _, v in ours_runs])
        base = median([v for _, v in base_runs]) if base_runs is not None else None
        ratio = ours / base if ours is not None and base not in (None, 0) else None
        met = None
        if target is not None:
            kind, bound = target
            x = ratio if kind == "ratio" else ours
            if x is not None:
                met = x >= bound if better == "higher" else x <= bound
        runs = []
        by_run = {}
        for r, v in ours_runs:
            by_run.setdefault(r, {})["ours"] = v
        for r, v in (base_runs or []):
            by_run.setdefault(r, {})["baseline"] = v
        for r in sorted(by_run):
            runs.append(dict(run=r, **by_run[r]))
        m = {"name": name, "unit": unit, "ours": ours, "baseline": base, "baseline_name": baseline_name,
             "ratio": ratio, "runs": runs,
             "target": None if target is None else {"kind": target[0], "bound": target[1], "better": better},
             "met": met}
        if extra:
            m.update(extra)
        metrics.append(m)

    have = {d["metric"] for d in rows}
    if "P1-throughput-up" in have:
        for d in ("up", "down"):
            o = runs_of(f"P1-throughput-{d}", "ours")
            add(f"P1-throughput-{d}", "Gbit/s", o, runs_of(f"P1-throughput-{d}", "stacked"), STACKED, ("ratio", 2.0), "higher")
            add(f"P1-throughput-{d}-vs-bare-ssh", "Gbit/s", o, runs_of(f"P1-throughput-{d}", "bare"), BARE, ("ratio", 1.0), "higher")
    if "P2-rtt" in have:
        for q in ("p50", "p99"):
            o = runs_of("P2-rtt", "ours", f"{q}_us")
            tgt = ("ratio", 0.6) if q == "p50" else None
            add(f"P2-rtt-{q}", "µs", o, runs_of("P2-rtt", "stacked", f"{q}_us"), STACKED, tgt, "lower")
            add(f"P2-rtt-{q}-vs-bare-ssh", "µs", o, runs_of("P2-rtt", "bare", f"{q}_us"), BARE, None, "lower")
    if "P3-new-connections" in have:
        errs = {d["system"] + str(d["run"]): d.get("errors", "") for d in rows if d["metric"] == "P3-new-connections"}
        add("P3-new-connections", "conn/s", runs_of("P3-new-connections", "ours"), runs_of("P3-new-connections", "stacked"),
            "wrk https → " + STACKED, ("ratio", 1.5), "higher", {"errors": {k: v for k, v in errs.items() if v}})
    if "P4-memory" in have:
        sshd = [d for d in rows if d["metric"] == "P4-memory" and d["system"] == "sshd"]
        sshd_runs = [(d["run"], (d["pss_after_kB"] - d["pss_before_kB"]) / max(1, d["tunnels"])) for d in sshd]
        sshd_rss = [(d["run"], (d["rss_after_kB"] - d["rss_before_kB"]) / max(1, d["tunnels"])) for d in sshd]
        # /proc reports kB meaning KiB: growth ÷ tunnels is KiB per tunnel
        ours = [d for d in rows if d["metric"] == "P4-memory" and d["system"] == "ours"]
        for n in sorted({d["tunnels"] for d in ours}):
            ds = [d for d in ours if d["tunnels"] == n]
            pss = [(d["run"], (d["pss_after_kB"] - d["pss_before_kB"]) / n) for d in ds]
            rss = [(d["run"], (d["rss_after_kB"] - d["rss_before_kB"]) / n) for d in ds]
            add(f"P4-memory-per-tunnel-{n}", "KiB (PSS)", pss, sshd_runs, SSHD, ("value", 100), "lower",
                {"rss_ours_KiB": median([v for _, v in rss]), "rss_baseline_KiB": median([v for _, v in sshd_rss]),
                 "sshd_clients": sshd[0]["tunnels"] if sshd else None, "bringup_s": median([d.get("bringup_s") for d in ds])})
            add(f"P4-tunnels-held-{n}", "tunnels", [(d["run"], d["held"]) for d in ds], None, None, ("value", n), "higher")
    for raw_name, name in (("P5-storm", "P5-reconnect-all-back"), ("P5-storm-closing", "P5-reconnect-all-back-close-at-limit")):
        if raw_name not in have:
            continue
        st = [(d["run"], d["value"]) for d in rows if d["metric"] == raw_name]
        allback = [(r, v.get("all_back_s")) for r, v in st]
        med = median([v for _, v in allback])
        rep = next((v for r, v in st if v.get("all_back_s") == med), st[0][1] if st else {})
        add(name, "s", allback, None, None, ("value", 60), "lower",
            {"gateways": rep.get("gateways"), "attempts": rep.get("attempts"), "failed_attempts": rep.get("failed_attempts"),
             "max_attempts_per_gateway": rep.get("max_attempts_per_gateway"), "histogram_1s": rep.get("histogram_1s"),
             "storms": [v for _, v in st]})

    # ------------------------------------------------------------------ table
    def fmt(x, unit=""):
        if x is None:
            return "—"
        if isinstance(x, float):
            if abs(x) >= 100:
                return f"{x:,.0f}"
            return f"{x:.2f}"
        return f"{x:,}" if isinstance(x, int) else str(x)

    print()
    print(f"relay benchmarks ({notes.get('mode', '?')} mode, {notes.get('runs', '?')} run(s) per metric, medians; {notes.get('machine', '')})")
    print()
    print("| metric | unit | ours | baseline | ours/baseline | target | met | per-run ours / baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for m in metrics:
        t = m["target"]
        tgt = "—" if t is None else (("ratio " if t["kind"] == "ratio" else "") + ("≥ " if t["better"] == "higher" else "≤ ") + fmt(t["bound"]))
        met = "—" if m["met"] is None else ("yes" if m["met"] else "NO")
        per = "; ".join(" / ".join(fmt(r.get(k)) for k in ("ours", "baseline") if k in r) for r in m["runs"])
        base = fmt(m["baseline"]) + (f" ({m['baseline_name']})" if m["baseline_name"] and m["baseline"] is not None else "")
        print(f"| {m['name']} | {m['unit']} | {fmt(m['ours'])} | {base} | {fmt(m['ratio'])} | {tgt} | {met} | {per} |")
        if m["name"].startswith("P4-memory"):
            print(f"|   (RSS) | KiB | {fmt(m.get('rss_ours_KiB'))} | {fmt(m.get('rss_baseline_KiB'))} ({m.get('sshd_clients')} sshd clients) | | | | bring-up {fmt(m.get('bringup_s'))} s |")
        if m["name"].startswith("P5-reconnect-all-back"):
            print(f"|   attempts | | {fmt(m.get('attempts'))} ({fmt(m.get('failed_attempts'))} failed, at most {fmt(m.get('max_attempts_per_gateway'))} per gateway) | | | | | |")
    print()
    for m in metrics:
        if m["name"].startswith("P5-reconnect-all-back") and m.get("histogram_1s"):
            h = m["histogram_1s"]
            print(f"{m['name']}: attempt start times after the restart (1 s buckets, median run, {m.get('gateways')} gateways):")
            peak = max(h) or 1
            for i, c in enumerate(h):
                print(f"  {i:3d}s {c:6d} {'#' * int(50 * c / peak)}")
            print()
        if m["name"] == "P3-new-connections" and m.get("errors"):
            print("P3 wrk errors:", m["errors"])
    print("Negotiated on each hop:")
    for k in ("suites_ours_tls", "suites_ours_ssh", "suites_baseline_tls", "suites_baseline_ssh", "suites_herd_ssh"):
        if k in notes:
            print(f"  {k}: {notes[k]}")
    for k in ("key_type", "gateway_algorithms", "relay_binary"):
        if k in notes:
            print(f"  {k}: {notes[k]}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"metrics": metrics, "notes": notes}, f, indent=2, ensure_ascii=False)
        print(f"JSON: {out_json}")


if __name__ == "__main__":
    main()
