# A small app run inside a capsule by the capsule proxy tests: HTTP routes on the port
# given first, a raw `Upgrade` echo on the second, bound to the address given third.
import hashlib
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, echo_port, bind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/headers"):
            seen = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items())
            self.reply(200, f"path={self.path}\n{seen}".encode())
        elif self.path == "/redirect":
            self.reply(302, b"", [("Location", "/target")])
        elif self.path == "/stream":
            # The first chunk, then the rest once /tmp/go exists: a buffering proxy
            # would hold the first one back and the client would never create it.
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"chunk-{i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                for _ in range(600):
                    if i > 0 or os.path.exists("/tmp/go"):
                        break
                    time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/hang":
            time.sleep(3600)
        else:
            self.reply(200, b"hello from the capsule\n")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h, left = hashlib.sha256(), n
        while left:
            b = self.rfile.read(min(left, 1 << 16))
            if not b:
                break
            h.update(b)
            left -= len(b)
        self.reply(200, f"{n - left} {h.hexdigest()}".encode())

    def log_message(self, *args):
        pass


def echo(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        b = conn.recv(1)
        if not b:
            return
        head += b
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
    while True:
        b = conn.recv(4096)
        if not b:
            break
        conn.sendall(b)
    conn.close()


def echo_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, echo_port))
    s.listen()
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


threading.Thread(target=echo_server, daemon=True).start()
ThreadingHTTPServer((bind, port), App).serve_forever()
