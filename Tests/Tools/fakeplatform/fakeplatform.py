#!/usr/bin/env python3
"""A scriptable stand-in for the platform's relay API (infisical-protocol.md §2, §3, §5.1), for
fault-injection tests of `relay start`: token states, slow or failing answers, credential
sequences with short lifetimes, revocation, AWS logins verified by replaying the signed STS
request to moto's server. The real platform (`relay platform serve`) is used for the end-to-end
tests; this one exists to make every answer the relay can get reproducible.

Usage: fakeplatform.py CONFIG.json   (prints "LISTENING <port>" on stdout when ready)

CONFIG:
  {"cert": PEM path, "key": PEM path, "port": 0, "log": JSONL path,
   "tokens": {"<token>": "valid" | "expired" | "used" | "invalid"},
   "relayId": "…",
   "credentials": ["connect-1.json", "connect-2.json", …],   served in order, the last one repeats
   "connectStatus": [500, 200, …],   statuses to answer before serving credentials (default none)
   "loginDelay": seconds, "loginStatus": [429, 302, …] (3xx answers carry a Location elsewhere),
   "connectHuge": true (a 2 MiB connect answer),
   "loginBodies": ["{\"accessTok", …], "connectBodies": [...]   raw 200 bodies answered first, in order
     (a login answered this way does not consume the token),
   "aws": {"sts": "http://127.0.0.1:MOTO", "relayId": "…", "allowedAccounts": ["123456789012"]},
   "heartbeatProbe": {"host": "127.0.0.1", "port": 8443, "cert": …, "key": …, "ca": …} (optional)}

Control (on the same HTTPS port): POST /__control {"revoke": true} makes every access token
unauthorized from then on; {"tokens": {...}} adds tokens; {"connectStatus": [...]} and
{"loginStatus": [...]} queue forced answers.
Every request is appended to the log as one JSON line (method, path, outcome; tokens as SHA-256).
"""
import base64, hashlib, http.server, json, os, socket, ssl, sys, threading, time, urllib.request

CONFIG = json.load(open(sys.argv[1]))
LOCK = threading.Lock()
STATE = {"issued": set(), "revoked": False, "connects": 0, "connectStatus": list(CONFIG.get("connectStatus", [])),
         "loginStatus": list(CONFIG.get("loginStatus", [])), "tokens": dict(CONFIG.get("tokens", {})),
         "loginBodies": list(CONFIG.get("loginBodies", [])), "connectBodies": list(CONFIG.get("connectBodies", []))}


def log(entry):
    entry["time"] = time.time()
    with LOCK, open(CONFIG["log"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def probe_relay():
    p = CONFIG.get("heartbeatProbe")
    if not p:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(p["ca"])
    ctx.load_cert_chain(p["cert"], p["key"])
    try:
        with socket.create_connection((p["host"], p["port"]), timeout=10) as s:
            with ctx.wrap_socket(s) as t:
                t.settimeout(5)
                try:
                    t.recv(1)
                except (ssl.SSLZeroReturnError, ConnectionResetError, socket.timeout, OSError):
                    pass
        return None
    except Exception as e:  # noqa
        return str(e)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def raw(self, status, text):
        """A 200 whose body is `text` verbatim (truncated JSON and the like, security-cases E-10)."""
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except Exception:
            return None

    def bearer(self):
        a = self.headers.get("Authorization", "")
        return a[7:] if a.startswith("Bearer ") else None

    def do_GET(self):
        if self.path == "/api/status":
            log({"path": self.path})
            return self.reply(200, {"status": "ok"})
        self.reply(404, {"message": "Not found"})

    def do_POST(self):
        path = self.path
        body = self.body()
        if path == "/__control":
            with LOCK:
                if body.get("revoke"):
                    STATE["revoked"] = True
                STATE["tokens"].update(body.get("tokens", {}))
                STATE["connectStatus"].extend(body.get("connectStatus", []))
                STATE["loginStatus"].extend(body.get("loginStatus", []))
            return self.reply(200, {"ok": True})
        if path == "/api/v2/relays/login":
            return self.login(body)
        if path == "/api/v2/relays/connect":
            return self.connect()
        if path == "/api/v2/relays/heartbeat":
            return self.heartbeat()
        self.reply(404, {"message": "Not found"})

    def login(self, body):
        time.sleep(CONFIG.get("loginDelay", 0))
        with LOCK:
            forced = STATE["loginStatus"].pop(0) if STATE["loginStatus"] else None
        if forced:
            log({"path": "login", "outcome": forced})
            if 300 <= forced < 400:
                self.send_response(forced)
                self.send_header("Location", "https://attacker.example/api/v2/relays/login")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self.reply(forced, {"message": "forced %d" % forced})
        with LOCK:
            raw = STATE["loginBodies"].pop(0) if STATE["loginBodies"] else None
        if raw is not None:
            # Answered before the token is looked at: the token stays unconsumed on this platform.
            log({"path": "login", "outcome": "raw"})
            return self.raw(200, raw)
        if body is None:
            return self.reply(400, {"message": "Malformed JSON"})
        if body.get("method") == "token":
            token = body.get("token", "")
            with LOCK:
                state = STATE["tokens"].get(token, "invalid")
                if state == "valid":
                    STATE["tokens"][token] = "used"
            outcome = {"valid": "ok", "expired": "expired", "used": "used"}.get(state, "invalid")
            log({"path": "login", "method": "token", "tokenHash": sha(token), "outcome": outcome})
            if state == "expired":
                return self.reply(400, {"message": "Enrollment token has expired"})
            if state == "used":
                return self.reply(400, {"message": "Enrollment token has already been used"})
            if state != "valid":
                return self.reply(400, {"message": "Invalid enrollment token"})
            return self.issue(CONFIG.get("relayId", "relay-id-1"))
        if body.get("method") == "aws":
            return self.login_aws(body)
        return self.reply(400, {"message": "Unsupported method"})

    def login_aws(self, body):
        aws = CONFIG.get("aws") or {}
        try:
            headers = json.loads(base64.b64decode(body["iamRequestHeaders"]))
            payload = base64.b64decode(body["iamRequestBody"])
        except Exception:
            log({"path": "login", "method": "aws", "outcome": "malformed"})
            return self.reply(401, {"message": "Malformed signed STS request"})
        if body.get("relayId") != aws.get("relayId"):
            log({"path": "login", "method": "aws", "outcome": "unknown relay"})
            return self.reply(404, {"message": "Relay not found"})
        req = urllib.request.Request(aws["sts"] + "/", data=payload, method=body.get("iamHttpRequestMethod", "POST"))
        for k, v in headers.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                xml = r.read().decode()
        except Exception as e:  # noqa
            log({"path": "login", "method": "aws", "outcome": "sts rejected", "detail": str(e)[:200],
                 "signedHeaders": sorted(headers.keys()), "amzDate": headers.get("X-Amz-Date")})
            return self.reply(401, {"message": "STS verification failed"})
        account = xml.split("<Account>")[1].split("</Account>")[0] if "<Account>" in xml else ""
        arn = xml.split("<Arn>")[1].split("</Arn>")[0] if "<Arn>" in xml else ""
        log({"path": "login", "method": "aws", "outcome": "ok" if account in aws.get("allowedAccounts", []) else "denied",
             "account": account, "arn": arn, "signedHeaders": sorted(headers.keys()), "amzDate": headers.get("X-Amz-Date"),
             "authorizationHash": sha(headers.get("Authorization", ""))})
        if account not in aws.get("allowedAccounts", []):
            return self.reply(401, {"message": "Access denied: AWS account ID not allowed."})
        return self.issue(aws["relayId"])

    def issue(self, relay_id):
        token = "eyJfake.%s.sig" % hashlib.sha256(os.urandom(16)).hexdigest()[:24]
        with LOCK:
            STATE["issued"].add(token)
        return self.reply(200, {"accessToken": token, "relayId": relay_id, "tokenType": "Bearer"})

    def authorized(self):
        t = self.bearer()
        with LOCK:
            return t is not None and t in STATE["issued"] and not STATE["revoked"]

    def connect(self):
        if not self.authorized():
            log({"path": "connect", "outcome": 401})
            return self.reply(401, {"message": "Unauthorized"})
        with LOCK:
            forced = STATE["connectStatus"].pop(0) if STATE["connectStatus"] else None
            i = STATE["connects"]
            STATE["connects"] += 1
        if forced:
            log({"path": "connect", "outcome": forced})
            return self.reply(forced, {"message": "forced %d" % forced})
        with LOCK:
            raw = STATE["connectBodies"].pop(0) if STATE["connectBodies"] else None
        if raw is not None:
            log({"path": "connect", "outcome": "raw"})
            return self.raw(200, raw)
        if CONFIG.get("connectHuge"):
            log({"path": "connect", "outcome": "huge"})
            return self.reply(200, {"relayId": "x", "padding": "A" * (2 << 20)})
        files = CONFIG["credentials"]
        creds = json.load(open(files[min(i, len(files) - 1)]))
        log({"path": "connect", "outcome": 200, "n": i})
        return self.reply(200, creds)

    def heartbeat(self):
        if not self.authorized():
            log({"path": "heartbeat", "outcome": 401})
            return self.reply(401, {"message": "Unauthorized"})
        err = probe_relay()
        log({"path": "heartbeat", "outcome": 200 if err is None else 400, "probe": err})
        if err is not None:
            return self.reply(400, {"message": "Relay is not reachable: %s" % err})
        return self.reply(200, {"message": "Successfully triggered heartbeat"})


server = http.server.ThreadingHTTPServer(("127.0.0.1", CONFIG.get("port", 0)), Handler)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CONFIG["cert"], CONFIG["key"])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("LISTENING %d" % server.server_address[1], flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
server.serve_forever()
