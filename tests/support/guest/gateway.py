#!/usr/bin/python3
"""The gateway container's stand-in: JSON health on :18789, as recent OpenClaw images serve."""

import http.server
import json


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/healthz", "/health", "/readyz"):
            body = json.dumps({"ok": True, "status": "live"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 18789), Health).serve_forever()
