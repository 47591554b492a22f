#!/usr/bin/env python3
"""bench/report.py RAW.jsonl [--json FILE] [--plot PNG]: medians, ratios, targets, the crypto
bound; one table of goals and one matrix of every tunnel path.

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
    out_plot = sys.argv[sys.argv.index("--plot") + 1] if "--plot" in sys.argv else None
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

    # Tunnel paths carry the SSH algorithm set ("ours@modern"); the OpenSSH baselines do not.
    algs = sorted({d["alg"] for d in rows if "alg" in d}, key=lambda a: (a != "modern", a))
    main_alg = algs[0] if algs else None   # modern when measured: the baselines use aes128-gcm too

    def runs_of(metric, system, key=None, alg="main"):
        if alg == "main":
            alg = main_alg if system not in ("stacked", "bare", "sshd", "openssl") else None
        out = []
        for d in rows:
            if d["metric"] == metric and d["system"] == system and d.get("alg") == alg:
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
    systems = {d["system"] for d in rows}
    has_go = "go" in systems
    GO = "Go replica of Infisical's path (infpath)"
    # Goals (issue 14): against the Go replica with the same algorithms, and the stacked peer.
    if "P1-throughput-up" in have:
        for d in ("up", "down"):
            o = runs_of(f"P1-throughput-{d}", "ours")
            add(f"P1-throughput-{d}", "Gbit/s", o, runs_of(f"P1-throughput-{d}", "stacked"), STACKED, ("ratio", 1.0), "higher",
                {"alg": main_alg})
            add(f"P1-throughput-{d}-vs-bare-ssh", "Gbit/s", o, runs_of(f"P1-throughput-{d}", "bare"), BARE, None, "higher",
                {"alg": main_alg})
            for a in algs if has_go else []:
                add(f"P1-throughput-{d}-vs-go@{a}", "Gbit/s", runs_of(f"P1-throughput-{d}", "ours", alg=a),
                    runs_of(f"P1-throughput-{d}", "go", alg=a), f"{GO}, {a}", ("ratio", 1.5), "higher", {"alg": a})
    if "P2-rtt" in have:
        for q in ("p50", "p99"):
            o = runs_of("P2-rtt", "ours", f"{q}_us")
            add(f"P2-rtt-{q}", "µs", o, runs_of("P2-rtt", "stacked", f"{q}_us"), STACKED, None, "lower", {"alg": main_alg})
            add(f"P2-rtt-{q}-vs-bare-ssh", "µs", o, runs_of("P2-rtt", "bare", f"{q}_us"), BARE, None, "lower", {"alg": main_alg})
            for a in algs if has_go else []:
                add(f"P2-rtt-{q}-vs-go@{a}", "µs", runs_of("P2-rtt", "ours", f"{q}_us", alg=a), runs_of("P2-rtt", "go", f"{q}_us", alg=a),
                    f"{GO}, {a}", ("ratio", 0.7 if q == "p50" else 0.8), "lower", {"alg": a})
    if "P3-new-connections" in have:
        errs = {d["system"] + ("@" + d["alg"] if "alg" in d else "") + " run " + str(d["run"]): d.get("errors", "")
                for d in rows if d["metric"] == "P3-new-connections"}
        add("P3-new-connections", "conn/s", runs_of("P3-new-connections", "ours"), runs_of("P3-new-connections", "stacked"),
            "wrk https → " + STACKED, None, "higher", {"errors": {k: v for k, v in errs.items() if v}, "alg": main_alg})
        for a in algs if has_go else []:
            add(f"P3-new-connections-vs-go@{a}", "conn/s", runs_of("P3-new-connections", "ours", alg=a),
                runs_of("P3-new-connections", "go", alg=a), f"{GO}, {a}", ("ratio", 1.5), "higher", {"alg": a})
    if "P4-memory" in have:
        sshd = [d for d in rows if d["metric"] == "P4-memory" and d["system"] == "sshd"]
        def per_tunnel(ds, kind):  # growth ÷ tunnels, per run ("pss" or "rss")
            return [(d["run"], (d[f"{kind}_after_kB"] - d[f"{kind}_before_kB"]) / max(1, d["tunnels"])) for d in ds]

        sshd_runs, sshd_rss = per_tunnel(sshd, "pss"), per_tunnel(sshd, "rss")
        # /proc reports kB meaning KiB: growth ÷ tunnels is KiB per tunnel
        ours = [d for d in rows if d["metric"] == "P4-memory" and d["system"] == "ours"]
        for n in sorted({d["tunnels"] for d in ours}):
            ds = [d for d in ours if d["tunnels"] == n]
            pss, rss = per_tunnel(ds, "pss"), per_tunnel(ds, "rss")
            add(f"P4-memory-per-tunnel-{n}", "KiB (PSS)", pss, sshd_runs, SSHD, ("value", 12), "lower",
                {"rss_ours_KiB": median([v for _, v in rss]), "rss_baseline_KiB": median([v for _, v in sshd_rss]),
                 "sshd_clients": sshd[0]["tunnels"] if sshd else None, "bringup_s": median([d.get("bringup_s") for d in ds])})
            gos = [d for d in rows if d["metric"] == "P4-memory" and d["system"] == "go" and d["tunnels"] == n]
            if gos:
                add(f"P4-memory-per-tunnel-{n}-vs-go", "KiB (PSS)", pss, per_tunnel(gos, "pss"),
                    "Go replica relay (x/crypto/ssh server)", None, "lower",
                    {"held_go": median([d["held"] for d in gos]), "bringup_go_s": median([d.get("bringup_s") for d in gos])})
            add(f"P4-tunnels-held-{n}", "tunnels", [(d["run"], d["held"]) for d in ds], None, None, ("value", n), "higher")
    for raw_name, name in (("P5-storm", "P5-reconnect-all-back"), ("P5-storm-closing", "P5-reconnect-all-back-close-at-limit")):
        if raw_name not in have:
            continue
        st = [(d["run"], d["value"]) for d in rows if d["metric"] == raw_name and d["system"] == "ours"]
        go = [(d["run"], d["value"].get("all_back_s")) for d in rows if d["metric"] == raw_name and d["system"] == "go"]
        allback = [(r, v.get("all_back_s")) for r, v in st]
        med = median([v for _, v in allback])
        rep = next((v for r, v in st if v.get("all_back_s") == med), st[0][1] if st else {})
        per_gw = [(r, v["attempts"] / v["gateways"]) for r, v in st if v.get("attempts") is not None and v.get("gateways")]
        add(name, "s", allback, go or None, "Go replica relay" if go else None, ("value", 15), "lower",
            {"gateways": rep.get("gateways"), "attempts": rep.get("attempts"), "failed_attempts": rep.get("failed_attempts"),
             "max_attempts_per_gateway": rep.get("max_attempts_per_gateway"), "histogram_1s": rep.get("histogram_1s"),
             "storms": [v for _, v in st]})
        if per_gw:
            add(name + "-attempts-per-gateway", "attempts", per_gw, None, None, ("value", 1.2), "lower")

    # ------------------------------------------------------------------ every path, side by side
    # Columns: each tunnel system with each algorithm set, then the OpenSSH baselines.
    order = ["ours", "go", "ours-relay+go-gateway", "go-relay+ours-gateway"]
    paths = [(sy, a) for sy in order for a in algs if any(d["system"] == sy and d.get("alg") == a for d in rows)]
    paths += [(b, None) for b in ("stacked", "bare") if b in systems]

    def label(sy, a):
        return sy + (f"@{a}" if a else "")

    # The crypto bound: bytes × encryption passes ÷ OpenSSL's speed over all cores (bench/run
    # measures it). Per byte, each layer encrypts once and decrypts once: the tunnel paths have
    # three layers (outer TLS and inner TLS: AES-128-GCM; SSH: AES-128-GCM, or AES-128-CTR plus
    # HMAC-SHA-256 with Infisical's set); stacked has two (TLS, SSH aes128-gcm), bare one.
    speed = {d["evp"]: d["value"] for d in rows if d["metric"] == "crypto-speed"}

    def bound_gbps(sy, a):
        g, c, h = speed.get("aes-128-gcm"), speed.get("aes-128-ctr"), speed.get("sha256")
        if not g:
            return None
        if sy == "bare":
            t = 2 / g
        elif sy == "stacked":
            t = 4 / g
        elif a == "infisical":
            if not (c and h):
                return None
            t = 4 / g + 2 / c + 2 / h
        else:
            t = 6 / g
        return 8 / t / 1e9

    matrix_rows = [("P1 up", "Gbit/s", "P1-throughput-up", None), ("P1 down", "Gbit/s", "P1-throughput-down", None),
                   ("P2 p50", "µs", "P2-rtt", "p50_us"), ("P2 p99", "µs", "P2-rtt", "p99_us"),
                   ("P3", "conn/s", "P3-new-connections", None)]
    matrix = {}
    for title, unit, metric, key in matrix_rows:
        if metric not in have:
            continue
        matrix[title] = {"unit": unit, "values": {label(sy, a): median([v for _, v in runs_of(metric, sy, key, alg=a)]) for sy, a in paths}}
    bound = {label(sy, a): bound_gbps(sy, a) for sy, a in paths if sy != "openssl"}
    for title in ("P1 up", "P1 down"):
        if title in matrix:
            matrix[title + " % of crypto bound"] = {"unit": "%", "values": {
                k: (100 * v / bound[k] if v is not None and bound.get(k) else None) for k, v in matrix[title]["values"].items()}}
    if any(bound.values()):
        matrix["crypto bound"] = {"unit": "Gbit/s", "values": bound}

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
        if m["name"].startswith("P4-memory") and not m["name"].endswith("-vs-go"):
            print(f"|   (RSS) | KiB | {fmt(m.get('rss_ours_KiB'))} | {fmt(m.get('rss_baseline_KiB'))} ({m.get('sshd_clients')} sshd clients) | | | | bring-up {fmt(m.get('bringup_s'))} s |")
        if m["name"].startswith("P5-reconnect-all-back") and not m["name"].endswith("-attempts-per-gateway"):
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
    if matrix:
        cols = [label(sy, a) for sy, a in paths]
        print("Every path in this run (medians; @infisical: DH group14-sha256, aes128-ctr, hmac-sha2-256 on the SSH hop; "
              "@modern: curve25519, aes128-gcm; stacked and bare: OpenSSH aes128-gcm):")
        print()
        print("| | unit | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for title, m in matrix.items():
            print(f"| {title} | {m['unit']} | " + " | ".join(fmt(m["values"].get(c)) for c in cols) + " |")
        if speed:
            print()
            print("crypto speed (openssl speed -evp, 16 KiB blocks, all cores): " +
                  ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in sorted(speed.items())))
        print()
    print("Negotiated on each hop:")
    for k in sorted(n for n in notes if n.startswith("suites_")):
        print(f"  {k}: {notes[k]}")
    for k in ("key_type", "gateway_algorithms", "relay_binary"):
        if k in notes:
            print(f"  {k}: {notes[k]}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"metrics": metrics, "matrix": matrix, "notes": notes}, f, indent=2, ensure_ascii=False)
        print(f"JSON: {out_json}")
    if out_plot:
        plot(out_plot, matrix, [label(sy, a) for sy, a in paths], notes)


def plot(path, matrix, cols, notes):
    """Throughput (P1 up and down, with the crypto bound) and latency (P2 p50 and p99) per path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is missing (bench/setup installs it); no plot written")
        return
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    x = range(len(cols))

    def bars(ax, titles, ylabel, title):
        w = 0.8 / max(1, len(titles))
        for i, t in enumerate(titles):
            vals = [matrix.get(t, {}).get("values", {}).get(c) for c in cols]
            ax.bar([j + (i - (len(titles) - 1) / 2) * w for j in x], [v or 0 for v in vals], w, label=t)
        ax.set_xticks(list(x))
        ax.set_xticklabels(cols, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0], [t for t in ("P1 up", "P1 down") if t in matrix], "Gbit/s", "P1 bulk throughput (iperf3)")
    if "crypto bound" in matrix:
        b = [matrix["crypto bound"]["values"].get(c) for c in cols]
        axes[0].plot(list(x), [v or 0 for v in b], "k_", markersize=22, markeredgewidth=2, label="crypto bound")
    axes[0].legend(fontsize=8)
    bars(axes[1], [t for t in ("P2 p50", "P2 p99") if t in matrix], "µs (log scale)", "P2 64-byte round trip")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"relay bench ({notes.get('mode', '?')}, {notes.get('runs', '?')} runs, medians; {notes.get('machine', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
