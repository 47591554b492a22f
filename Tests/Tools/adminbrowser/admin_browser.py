#!/usr/bin/env python3
"""Clicks through the platform's /admin page in headless Chromium, as an operator would.

Speaks the Chrome DevTools Protocol over --remote-debugging-pipe (fd 3: commands to Chromium,
fd 4: replies and events, each message JSON followed by NUL), so only the standard library is
needed. Clicks are real mouse events at the element's centre; typing is Input.insertText into
the focused field.

    admin_browser.py --chromium PATH --base URL --token ADMIN_TOKEN --out DIR

Prints one JSON object: the observations after each step (URL, visible text, cookies) for the
Swift test to assert on, and writes DIR/admin-relays.png and DIR/admin-deploy-command.png.
Exits 2 when a step cannot be performed (an element is missing, a page does not load).
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time


class StepFailed(Exception):
    pass


class Browser:
    def __init__(self, chromium, profile, width=1360, height=1000):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        self.width, self.height = width, height

        def child_fds():
            # Chromium reads commands on fd 3 and writes replies on fd 4.
            # (through high numbers first, in case either pipe end already is fd 3 or 4)
            a, b = os.dup2(to_chrome_r, 100), os.dup2(from_chrome_w, 101)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--no-first-run", "--no-default-browser-check", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read_message(self, deadline):
        import select
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise StepFailed("timed out waiting for Chromium")
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r.fileno(), 1 << 20)
            if not chunk:
                raise StepFailed("Chromium closed the pipe")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise StepFailed(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def open(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def eval(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise StepFailed(f"script error in {expression!r}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def wait_loaded(self, previous_document=None, timeout=20):
        """Waits until a new document (not `previous_document`) has finished loading."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                state = self.eval("[document.readyState, String(window.__docId || (window.__docId = Math.random()))]")
            except StepFailed:
                time.sleep(0.05)
                continue
            if state and state[0] == "complete" and state[1] != previous_document:
                return state[1]
            time.sleep(0.05)
        raise StepFailed("page did not load")

    def document_id(self):
        return self.eval("String(window.__docId || (window.__docId = Math.random()))")

    def navigate(self, url):
        before = self.document_id()
        self.send("Page.navigate", {"url": url})
        self.wait_loaded(before)

    def centre(self, selector):
        box = self.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, r.width, r.height]; }})()""")
        if not box or box[2] == 0 or box[3] == 0:
            raise StepFailed(f"no visible element {selector}")
        return box[0], box[1]

    def click(self, selector, navigates=False):
        x, y = self.centre(selector)
        before = self.document_id() if navigates else None
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            p = {"type": kind, "x": x, "y": y}
            if kind != "mouseMoved":
                p.update({"button": "left", "clickCount": 1})
            self.send("Input.dispatchMouseEvent", p)
        if navigates:
            self.wait_loaded(before)

    def type_into(self, selector, text):
        self.click(selector)
        self.eval(f"document.querySelector({json.dumps(selector)}).select && document.querySelector({json.dumps(selector)}).select()")
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path):
        # The whole page, not just the window.
        h = self.eval("Math.ceil(document.documentElement.scrollHeight)")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": max(self.height, h), "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def cookies(self):
        return self.send("Network.getAllCookies").get("cookies", [])

    def observe(self, name):
        return {
            "step": name,
            "url": self.eval("location.href"),
            "text": self.eval("document.body ? document.body.innerText : ''"),
            "html": self.eval("document.documentElement.outerHTML"),
            "cookies": [{k: c.get(k) for k in ("name", "value", "httpOnly", "secure", "sameSite", "expires", "session", "path")}
                        for c in self.cookies()],
        }

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scenario(b, base, token, out):
    steps = []
    # 1. An old-style link with the token in the URL: only a redirect to the sign-in form.
    b.navigate(f"{base}/admin?token={token}")
    steps.append(b.observe("token-in-url"))
    # 2. A wrong token.
    b.type_into("#token", "rpa_not-the-token")
    b.click("#sign-in", navigates=True)
    steps.append(b.observe("wrong-token"))
    # 3. Sign in.
    b.type_into("#token", token)
    b.click("#sign-in", navigates=True)
    steps.append(b.observe("signed-in"))
    # 4. Create a relay.
    b.type_into("#new-relay-name", "web-relay")
    b.type_into("#new-relay-host", "relay.example.com")
    b.type_into("#new-relay-ssh-port", "2200")
    b.type_into("#new-relay-tls-port", "8400")
    b.click("#create-relay", navigates=True)
    steps.append(b.observe("relay-created"))
    b.screenshot(os.path.join(out, "admin-relays.png"))
    # 5. Show its deploy command (mints a token) and copy it.
    b.click('tr[data-name="web-relay"] .show-deploy', navigates=True)
    b.click("#copy-deploy")
    time.sleep(0.3)
    steps.append(b.observe("deploy-command"))
    b.screenshot(os.path.join(out, "admin-deploy-command.png"))
    b.click("#close-dialog", navigates=True)
    # 6. Switch it to AWS auth with an allowed principal ARN and account id.
    b.click('tr[data-name="web-relay"] summary')
    b.click('tr[data-name="web-relay"] input[name="method"][value="aws"]')
    b.type_into('tr[data-name="web-relay"] textarea[name="allowedPrincipalArns"]', "arn:aws:iam::123456789012:role/relay")
    b.type_into('tr[data-name="web-relay"] input[name="allowedAccountIds"]', "123456789012")
    b.click('tr[data-name="web-relay"] .save-settings', navigates=True)
    steps.append(b.observe("auth-switched"))
    # 7. Revoke it.
    b.click('tr[data-name="web-relay"] .revoke', navigates=True)
    steps.append(b.observe("revoked"))
    # 8. Sign out; the page is closed again.
    b.click("#sign-out", navigates=True)
    steps.append(b.observe("signed-out"))
    b.navigate(f"{base}/admin")
    steps.append(b.observe("after-sign-out"))
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="admin-browser-")
    b = Browser(a.chromium, profile)
    steps = []
    try:
        b.open()
        origin = a.base
        try:
            b.send("Browser.grantPermissions", {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
                   session=False)
        except StepFailed:
            pass  # the copy button falls back to a selection and execCommand('copy')
        steps = scenario(b, a.base, a.token, a.out)
        print(json.dumps({"ok": True, "steps": steps}))
        return 0
    except StepFailed as e:
        try:
            steps.append(b.observe("failed"))
        except Exception:
            pass
        print(json.dumps({"ok": False, "error": str(e), "steps": steps}))
        return 2
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
