/// The platform's `/admin` page: what an operator uses instead of Infisical's Networking >
/// Relays. Relays and gateways with their health, forms to create them, change their host,
/// ports and auth method, show a deploy command (minting a token) and revoke access.
///
/// Server-rendered HTML. The only script is the copy button and the auto-refresh, allowed by a
/// per-response nonce in the CSP (no `unsafe-inline`); the stylesheet carries the same nonce.
/// Every value that is not a literal of this file goes through `escape`. Every form carries
/// the session's CSRF token.
enum AdminPage {
    /// Seconds between automatic reloads of the signed-in page (skipped while a form is in use).
    static let refreshSeconds = 30

    static let style = """
        body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
        header{display:flex;align-items:center;justify-content:space-between;background:#1d2330;color:#fff;padding:.75rem 2rem}
        header h1{font-size:1.2rem;margin:0}header form{margin:0}
        main{padding:1rem 2rem 3rem}
        h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
        table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
        th,td{text-align:left;padding:.5rem .75rem;border-bottom:1px solid #e3e6eb;vertical-align:top}
        th{background:#eef0f4;font-weight:600;font-size:.85rem}
        code,pre{font-size:.8rem;word-break:break-all;background:#f1f3f6;padding:.15rem .3rem;border-radius:3px}
        pre{white-space:pre-wrap;padding:.75rem;border:1px solid #d5d9e0}
        .status{font-weight:600;padding:.1rem .5rem;border-radius:1rem;white-space:nowrap}
        .Healthy{background:#d8f5df;color:#135c2a}.Unreachable{background:#fde2e1;color:#8a1c1c}
        .Never{background:#eceef2;color:#4a5160}.muted{color:#6b7280;font-size:.8rem}
        form.inline{display:inline;margin:0}
        button{font:inherit;font-size:.85rem;padding:.3rem .7rem;border-radius:4px;border:1px solid #9aa3b2;background:#fff;cursor:pointer}
        button.primary{background:#2456d3;border-color:#2456d3;color:#fff}button.danger{border-color:#c23b3b;color:#a12b2b}
        header button{background:transparent;color:#fff;border-color:#fff8}
        input,textarea{font:inherit;font-size:.85rem;padding:.3rem .4rem;border:1px solid #b9c0cc;border-radius:4px}
        input.port{width:5.5rem}textarea{width:100%;min-height:2.5rem}
        .create{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;background:#fff;padding:.75rem;box-shadow:0 1px 2px #0002;margin-bottom:.75rem}
        .create label,.settings label{display:flex;flex-direction:column;font-size:.75rem;color:#4a5160;gap:.15rem}
        .settings{display:grid;gap:.5rem;margin-top:.5rem;min-width:22rem}
        .settings .row{display:flex;gap:.5rem;flex-wrap:wrap}
        .radio{flex-direction:row!important;align-items:center;font-size:.85rem!important;color:#1d2330!important}
        .actions{display:flex;gap:.4rem;flex-wrap:wrap;align-items:start}
        details summary{cursor:pointer;font-size:.85rem;color:#2456d3}
        .notice{background:#e6efff;border:1px solid #b8cdfa;padding:.5rem .75rem;border-radius:4px}
        .error{background:#fde2e1;border:1px solid #f3b5b3;padding:.5rem .75rem;border-radius:4px}
        dialog{position:static;display:block;border:1px solid #b9c0cc;border-radius:6px;box-shadow:0 4px 24px #0003;max-width:60rem;margin:1rem 0;padding:1rem 1.25rem;background:#fff}
        dialog h2{margin-top:0}
        .signin{max-width:26rem;margin:4rem auto;background:#fff;padding:1.5rem;box-shadow:0 1px 3px #0003;border-radius:6px}
        .signin input{width:100%;box-sizing:border-box;margin:.5rem 0 1rem}
        """

    /// The pieces a page needs from its request: the nonce for this response, the session's
    /// CSRF token, and any notice or error to show.
    struct Context {
        var nonce: String
        var csrf: String
        var notice: String?
        var error: String?
    }

    static func head(_ title: String, nonce: String) -> String {
        """
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>\(escape(title))</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style nonce="\(escape(nonce))">\(style)</style></head><body>
        """
    }

    static func signIn(nonce: String, error: String?) -> String {
        head("Sign in · Relay platform", nonce: nonce) + """
            <header><h1>Relay platform</h1></header><main><form class="signin" method="post" action="/admin/login">
            <h2>Sign in</h2>
            \(error.map { "<p class=\"error\">\(escape($0))</p>" } ?? "")
            <label for="token">Admin token</label>
            <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
            <button id="sign-in" class="primary" type="submit">Sign in</button>
            <p class="muted">The admin token was printed once by the platform's first start (and written to its
            <code>--admin-token-file</code>). Rotate it on the platform's host if it is lost.</p>
            </form></main></body></html>
            """
    }

    /// A hidden CSRF field for the session.
    static func csrf(_ c: Context) -> String { "<input type=\"hidden\" name=\"csrf\" value=\"\(escape(c.csrf))\">" }

    static func button(_ c: Context, action: String, label: String, cls: String) -> String {
        "<form class=\"inline\" method=\"post\" action=\"\(escape(action))\">\(csrf(c))<button type=\"submit\" class=\"\(escape(cls))\">\(escape(label))</button></form>"
    }

    /// "just now", "42 s ago", "2 min ago", "3 h ago", "5 d ago".
    static func age(_ then: Int64, now: Int64) -> String {
        let d = max(0, now - then)
        if d < 10 { return "just now" }
        if d < 60 { return "\(d) s ago" }
        if d < 3600 { return "\(d / 60) min ago" }
        if d < 86_400 { return "\(d / 3600) h ago" }
        return "\(d / 86_400) d ago"
    }

    static func authSummary(_ a: AuthMethodConfig) -> String {
        switch a {
        case .token: return "<td>token</td>"
        case .aws(let c):
            var s = "<td>aws"
            if !c.allowedPrincipalArns.isEmpty { s += "<div class=\"muted\">ARNs: \(escape(c.allowedPrincipalArns))</div>" }
            if !c.allowedAccountIds.isEmpty { s += "<div class=\"muted\">accounts: \(escape(c.allowedAccountIds))</div>" }
            return s + "</td>"
        }
    }

    /// The auth-method part of a settings form: token or AWS with its allowlists.
    static func authFields(_ a: AuthMethodConfig?, idPrefix: String) -> String {
        var arns = "", accounts = "", sts = ""
        var isAWS = false
        if case .aws(let c)? = a { isAWS = true; arns = c.allowedPrincipalArns; accounts = c.allowedAccountIds; sts = c.stsEndpoint }
        return """
            <div class="row"><label class="radio"><input type="radio" name="method" value="token"\(isAWS ? "" : " checked")> Token</label>
            <label class="radio"><input type="radio" name="method" value="aws"\(isAWS ? " checked" : "")> AWS IAM</label></div>
            <label>Allowed principal ARNs (comma-separated; AWS)<textarea name="allowedPrincipalArns" id="\(idPrefix)-arns">\(escape(arns))</textarea></label>
            <label>Allowed account IDs (comma-separated; AWS)<input name="allowedAccountIds" id="\(idPrefix)-accounts" value="\(escape(accounts))"></label>
            <label>STS endpoint (AWS; empty: sts.amazonaws.com)<input name="stsEndpoint" id="\(idPrefix)-sts" value="\(escape(sts))"></label>
            """
    }

    static func statusCell(_ r: ResourceRecord, now: Int64, window: Int64) -> String {
        let status = PlatformHealth.statusLabel(r, now: now, staleAfter: window)
        let statusClass = status.split(separator: " ").first.map(String.init) ?? status
        var cell = "<td><span class=\"status \(escape(statusClass))\">\(escape(status))</span>"
        if let h = r.heartbeat { cell += "<div class=\"muted\" title=\"\(escape(PlatformClock.iso(h)))\">last heartbeat \(escape(age(h, now: now)))</div>" }
        if let reason = r.lastFailureReason, let at = r.lastFailureAt {
            cell += "<div class=\"muted\">last failure \(escape(age(at, now: now))): \(escape(reason))</div>"
        }
        return cell + "</td>"
    }

    /// The signed-in page. `dialog` is the deploy-command dialog shown after "Show deploy
    /// command" (that page does not reload itself: the token would be gone).
    static func render(relays: [ResourceRecord], gateways: [ResourceRecord], now: Int64, api: PlatformAPI, context c: Context,
                       dialog: (title: String, command: String, note: String)? = nil, form: [String: String] = [:]) -> String {
        var html = head("Relays · Relay platform", nonce: c.nonce)
        html += """
            <header><h1>Relay platform</h1><form class="inline" method="post" action="/admin/logout">\(csrf(c))<button id="sign-out" type="submit">Sign out</button></form></header>
            <main>
            <p class="muted">API: <code>\(escape(api.service.baseURL))/api</code> · CA file: <code>\(escape(api.service.caFilePath))</code> · generated \(escape(PlatformClock.iso(now)))\(dialog == nil ? " · refreshes every \(refreshSeconds) s" : "")</p>
            """
        if let n = c.notice { html += "<p class=\"notice\" id=\"notice\">\(escape(n))</p>" }
        if let e = c.error { html += "<p class=\"error\" id=\"error\">\(escape(e))</p>" }
        if let d = dialog {
            html += """
                <dialog open id="deploy-dialog"><h2>\(escape(d.title))</h2>
                <p class="muted">\(escape(d.note))</p>
                <pre id="deploy-command">\(escape(d.command))</pre>
                <div class="actions"><button id="copy-deploy" class="primary" type="button">Copy</button> <a id="close-dialog" href="/admin">Close</a></div>
                </dialog>
                """
        }
        func v(_ k: String) -> String { escape(form[k] ?? "") }
        html += """
            <h2>Relays (\(relays.count))</h2>
            <form class="create" method="post" action="/admin/relays">\(csrf(c))
            <label>Name<input id="new-relay-name" name="name" required pattern="[a-z0-9]+(-[a-z0-9]+)*" maxlength="32" value="\(v("name"))"></label>
            <label>Host (gateways and the platform dial it)<input id="new-relay-host" name="host" required value="\(v("host"))"></label>
            <label>SSH port<input id="new-relay-ssh-port" class="port" name="sshPort" inputmode="numeric" placeholder="2222" value="\(v("sshPort"))"></label>
            <label>TLS port<input id="new-relay-tls-port" class="port" name="tlsPort" inputmode="numeric" placeholder="8443" value="\(v("tlsPort"))"></label>
            <input type="hidden" name="method" value="token">
            <button id="create-relay" class="primary" type="submit">Create relay</button>
            <span class="muted">token auth; switch to AWS in its settings</span></form>
            """
        if relays.isEmpty {
            html += "<p class=\"muted\">No relays yet.</p>"
        } else {
            html += "<table id=\"relays\"><thead><tr><th>Name</th><th>Host and ports</th><th>Auth method</th><th>Status</th><th>Actions</th></tr></thead><tbody>"
            for r in relays {
                let base = "/admin/relays/\(r.id)"
                html += """
                    <tr class="relay" data-name="\(escape(r.name))"><td>\(escape(r.name))<div class="muted">\(escape(r.id))</div></td>
                    <td>\(escape(r.host ?? ""))<div class="muted">ssh \(r.effectiveSSHPort) · tls \(r.effectiveTLSPort)</div></td>
                    \(authSummary(r.authMethod))
                    \(statusCell(r, now: now, window: api.window(.relay)))
                    <td><div class="actions">\(button(c, action: base + "/deploy", label: "Show deploy command", cls: "show-deploy"))
                    \(button(c, action: base + "/revoke", label: "Revoke", cls: "revoke danger"))</div>
                    <details><summary>Settings</summary><form class="settings" method="post" action="\(escape(base))/settings">\(csrf(c))
                    <div class="row"><label>Host<input name="host" value="\(escape(r.host ?? ""))"></label>
                    <label>SSH port<input class="port" name="sshPort" value="\(r.effectiveSSHPort)"></label>
                    <label>TLS port<input class="port" name="tlsPort" value="\(r.effectiveTLSPort)"></label></div>
                    \(authFields(r.authMethod, idPrefix: "relay-\(escape(r.name))"))
                    <div><button type="submit" class="save-settings primary">Save</button></div></form></details></td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        let relayNames = Dictionary(relays.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        html += """
            <h2>Gateways (\(gateways.count))</h2>
            <form class="create" method="post" action="/admin/gateways">\(csrf(c))
            <label>Name<input id="new-gateway-name" name="name" required pattern="[a-z0-9]+(-[a-z0-9]+)*" maxlength="32" value="\(v("gatewayName"))"></label>
            <input type="hidden" name="method" value="token">
            <button id="create-gateway" class="primary" type="submit">Create gateway</button></form>
            """
        if gateways.isEmpty {
            html += "<p class=\"muted\">No gateways yet.</p>"
        } else {
            html += "<table id=\"gateways\"><thead><tr><th>Name</th><th>Relay</th><th>Auth method</th><th>Status</th><th>Actions</th></tr></thead><tbody>"
            for g in gateways {
                let base = "/admin/gateways/\(g.id)"
                let relay = g.relayId.map { relayNames[$0] ?? $0 }
                html += """
                    <tr class="gateway" data-name="\(escape(g.name))"><td>\(escape(g.name))<div class="muted">\(escape(g.id))</div></td>
                    <td>\(relay.map { escape($0) } ?? "<span class=\"muted\">not connected yet</span>")</td>
                    \(authSummary(g.authMethod))
                    \(statusCell(g, now: now, window: api.window(.gateway)))
                    <td><div class="actions">\(button(c, action: base + "/deploy", label: "Show deploy command", cls: "show-deploy"))
                    \(button(c, action: base + "/revoke", label: "Revoke", cls: "revoke danger"))</div>
                    <details><summary>Settings</summary><form class="settings" method="post" action="\(escape(base))/settings">\(csrf(c))
                    \(authFields(g.authMethod, idPrefix: "gateway-\(escape(g.name))"))
                    <div><button type="submit" class="save-settings primary">Save</button></div></form></details></td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        html += "</main>" + script(nonce: c.nonce, refresh: dialog == nil) + "</body></html>"
        return html
    }

    /// The copy button (Clipboard API, falling back to a selection and execCommand) and the
    /// auto-refresh, which waits while a settings panel is open or a field has focus.
    static func script(nonce: String, refresh: Bool) -> String {
        """
        <script nonce="\(escape(nonce))">
        (function () {
          var b = document.getElementById('copy-deploy');
          if (b) b.addEventListener('click', function () {
            var pre = document.getElementById('deploy-command');
            var text = pre.textContent;
            function fallback() {
              var r = document.createRange(); r.selectNodeContents(pre);
              var s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
              b.textContent = document.execCommand('copy') ? 'Copied' : 'Press Ctrl+C to copy';
            }
            if (navigator.clipboard) navigator.clipboard.writeText(text).then(function () { b.textContent = 'Copied'; }, fallback);
            else fallback();
          });
          if (\(refresh ? "true" : "false")) {
            var tick = function () {
              var busy = document.querySelector('details[open]') ||
                (document.activeElement && /^(INPUT|TEXTAREA)$/.test(document.activeElement.tagName));
              if (busy) setTimeout(tick, \(refreshSeconds * 1000)); else location.replace('/admin');
            };
            setTimeout(tick, \(refreshSeconds * 1000));
          }
        })();
        </script>
        """
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
