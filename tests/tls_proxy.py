"""An HTTPS front for a test: terminates TLS with the given certificate and
forwards every GET/POST to a plain-HTTP upstream (a `chroma run` server).

Usage: python tls_proxy.py UPSTREAM_URL PORT CERT_PEM KEY_PEM
Prints "ready" once listening.
"""
import http.server
import ssl
import sys
import urllib.error
import urllib.request

upstream, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
SKIP = {"host", "content-length", "connection", "accept-encoding"}


class Forward(http.server.BaseHTTPRequestHandler):
    def _forward(self, method):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in SKIP}
        req = urllib.request.Request(upstream + self.path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                status, data, ctype = r.status, r.read(), r.headers.get("content-type")
        except urllib.error.HTTPError as e:
            status, data, ctype = e.code, e.read(), e.headers.get("content-type")
        self.send_response(status)
        self.send_header("content-type", ctype or "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Forward)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
