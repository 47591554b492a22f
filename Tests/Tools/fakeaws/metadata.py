#!/usr/bin/env python3
"""Stand-ins for the AWS credential endpoints the SDK chain reads, on 127.0.0.1 (plain HTTP):

  metadata.py container CREDS.json AUTH   ECS/EKS container credentials: GET /creds with
                                          "Authorization: AUTH" answers CREDS ({"AccessKeyId", …})
  metadata.py imds CREDS.json REGION      IMDSv2: PUT /latest/api/token, then role, credentials and
                                          placement/region, each requiring the session token

Prints "LISTENING <port>"; logs one line per request ("METHOD PATH STATUS") on stderr.
Exits when stdin closes.
"""
import http.server, json, os, sys, threading

MODE, CREDS = sys.argv[1], json.load(open(sys.argv[2]))
EXTRA = sys.argv[3]
SESSION = "imds-session-token-0123"


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        sys.stderr.write("%s %s %d\n" % (self.command, self.path, status))
        sys.stderr.flush()

    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if MODE == "imds" and self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.answer(200, SESSION)
        self.answer(403, "forbidden")

    def do_GET(self):
        if MODE == "container":
            if self.path == "/creds" and self.headers.get("Authorization") == EXTRA:
                return self.answer(200, json.dumps(CREDS), "application/json")
            return self.answer(401, "unauthorized")
        if self.headers.get("X-aws-ec2-metadata-token") != SESSION:
            return self.answer(401, "IMDSv2 session token required")
        if self.path == "/latest/meta-data/iam/security-credentials/":
            return self.answer(200, "relay-role")
        if self.path == "/latest/meta-data/iam/security-credentials/relay-role":
            return self.answer(200, json.dumps(dict(CREDS, Code="Success")), "application/json")
        if self.path == "/latest/meta-data/placement/region":
            return self.answer(200, EXTRA)
        self.answer(404, "not found")


s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
print("LISTENING %d" % s.server_address[1], flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
s.serve_forever()
