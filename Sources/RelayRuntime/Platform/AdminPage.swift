/// The platform's `/admin` page: relays (and gateways) with their health and deploy commands.
/// Static HTML, no scripts (the response's CSP forbids them); every value is HTML-escaped.
enum AdminPage {
    static let style = """
        body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2330;background:#f6f7f9}
        h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
        table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
        th,td{text-align:left;padding:.5rem .75rem;border-bottom:1px solid #e3e6eb;vertical-align:top}
        th{background:#eef0f4;font-weight:600}
        code{font-size:.8rem;word-break:break-all;background:#f1f3f6;padding:.15rem .3rem;border-radius:3px}
        .status{font-weight:600;padding:.1rem .5rem;border-radius:1rem;white-space:nowrap}
        .Healthy{background:#d8f5df;color:#135c2a}.Unreachable{background:#fde2e1;color:#8a1c1c}
        .Never{background:#eceef2;color:#4a5160}.muted{color:#6b7280;font-size:.85rem}
        """

    static let login = """
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>Relay platform</title>
        <style>\(style)</style></head><body><h1>Relay platform</h1>
        <p>Sign in by opening <code>/admin?token=&lt;admin token&gt;</code> once (the token is then kept in an HttpOnly cookie),
        or send it as a Bearer token.</p></body></html>
        """

    static func render(relays: [ResourceRecord], gateways: [ResourceRecord], now: Int64, api: PlatformAPI) -> String {
        var html = """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><title>Relay platform</title>
            <style>\(style)</style></head><body>
            <h1>Relay platform</h1>
            <p class="muted">API: <code>\(escape(api.service.baseURL))/api</code> · generated \(escape(PlatformClock.iso(now)))</p>
            <h2>Relays (\(relays.count))</h2>
            """
        if relays.isEmpty {
            html += "<p class=\"muted\">No relays yet. Create one with <code>relay platform admin create-relay</code>.</p>"
        } else {
            html += "<table id=\"relays\"><thead><tr><th>Name</th><th>Host</th><th>Auth method</th><th>Status</th><th>Last heartbeat</th><th>Deploy command</th></tr></thead><tbody>"
            for r in relays {
                let status = PlatformHealth.statusLabel(r, now: now, staleAfter: api.window(.relay))
                let statusClass = status.split(separator: " ").first.map(String.init) ?? status
                var heartbeat = r.heartbeat.map { escape(PlatformClock.iso($0)) } ?? "—"
                if let reason = r.lastFailureReason, let at = r.lastFailureAt {
                    heartbeat += "<div class=\"muted\">last failure \(escape(PlatformClock.iso(at))): \(escape(reason))</div>"
                }
                html += """
                    <tr class="relay" data-name="\(escape(r.name))"><td>\(escape(r.name))<div class="muted">\(escape(r.id))</div></td>
                    <td>\(escape(r.host ?? ""))<div class="muted">ssh \(r.effectiveSSHPort) · tls \(r.effectiveTLSPort)</div></td>
                    <td>\(escape(r.authMethod.name))</td>
                    <td><span class="status \(escape(statusClass))">\(escape(status))</span></td>
                    <td>\(heartbeat)</td>
                    <td><code>\(escape(DeployCommand.text(for: r, token: nil, service: api.service)))</code></td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        if !gateways.isEmpty {
            html += "<h2>Gateways (\(gateways.count))</h2><table id=\"gateways\"><thead><tr><th>Name</th><th>Auth method</th><th>Status</th><th>Last heartbeat</th><th>Deploy command</th></tr></thead><tbody>"
            for g in gateways {
                let status = PlatformHealth.statusLabel(g, now: now, staleAfter: api.window(.gateway))
                let statusClass = status.split(separator: " ").first.map(String.init) ?? status
                html += """
                    <tr class="gateway" data-name="\(escape(g.name))"><td>\(escape(g.name))<div class="muted">\(escape(g.id))</div></td>
                    <td>\(escape(g.authMethod.name))</td>
                    <td><span class="status \(escape(statusClass))">\(escape(status))</span></td>
                    <td>\(g.heartbeat.map { escape(PlatformClock.iso($0)) } ?? "—")</td>
                    <td><code>\(escape(DeployCommand.text(for: g, token: nil, service: api.service)))</code></td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        html += "<p class=\"muted\">Mint an enrollment token with <code>relay platform admin mint-token --name NAME</code>: it is shown once, inside the deploy command.</p></body></html>"
        return html
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
