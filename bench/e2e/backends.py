#!/usr/bin/env python3
"""Backends for the e2e benchmark that nginx and iperf3 cannot play.

Started by run.py as its own process (standard library only). It binds three
loopback listeners on free ports and prints them as one JSON line on stdout:

* sink: accepts connections and holds them open until the peer closes,
  answering the first bytes of each with one byte ("y") and discarding the
  rest: an answered request, as a watch has, then silence. Used for the
  idle-connection memory figure.
* sha: integrity check for both directions. The client sends one header line
  "SEED <seed> <n_down> <n_up>\\n", then n_up payload bytes (n_up = -1: any
  number of bytes, ended by the client's half-close). The server replies
  "<sha256 hex of payload> <payload bytes>\\n", then n_down bytes of
  pseudo-random data from random.Random(seed), then half-closes and waits for
  the client to close.
* ctl: every connection gets one line "open=<n> accepted=<m>\\n" describing
  the sink, then is closed. run.py polls it instead of sleeping.

It exits when stdin reaches EOF (its parent died) or on SIGTERM.
"""

import hashlib
import json
import random
import selectors
import signal
import socket
import socketserver
import sys
import threading

_gen_lock = threading.Lock()
_gen_cache: dict[tuple[int, int], bytes] = {}


def pseudo_random(seed: int, n: int) -> bytes:
    """Deterministic bytes; run.py generates the same ones to compare."""
    with _gen_lock:
        key = (seed, n)
        if key not in _gen_cache:
            _gen_cache.clear()
            _gen_cache[key] = random.Random(seed).randbytes(n)
        return _gen_cache[key]


def listener(backlog: int = 4096) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


class Sink:
    def __init__(self) -> None:
        self.sock = listener(4096)
        self.sock.setblocking(False)
        self.lock = threading.Lock()
        self.open = 0
        self.accepted = 0

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    while True:
                        try:
                            conn, _ = self.sock.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:  # EMFILE and friends: retry on next event
                            break
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ, "c")
                        with self.lock:
                            self.open += 1
                            self.accepted += 1
                else:
                    conn = key.fileobj
                    try:
                        data = conn.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(conn)
                        conn.close()
                        with self.lock:
                            self.open -= 1
                    elif key.data == "c":
                        try:
                            conn.send(b"y")
                        except OSError:
                            pass
                        sel.modify(conn, selectors.EVENT_READ, "answered")


class ShaHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s: socket.socket = self.request
        s.settimeout(120)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return
            buf += chunk
            if len(buf) > 4096:
                return
        header, rest = buf.split(b"\n", 1)
        _, seed, n, n_up = header.decode().split()
        n_up = int(n_up)
        h = hashlib.sha256(rest)
        count = len(rest)
        while n_up < 0 or count < n_up:
            chunk = s.recv(1 << 20 if n_up < 0 else min(1 << 20, n_up - count))
            if not chunk:
                break
            h.update(chunk)
            count += len(chunk)
        s.sendall(f"{h.hexdigest()} {count}\n".encode())
        s.sendall(pseudo_random(int(seed), int(n)))
        s.shutdown(socket.SHUT_WR)
        # wait for the client to close, so nothing is reset under its feet
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass


class ShaServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sink = Sink()
    sha = ShaServer(("127.0.0.1", 0), ShaHandler)
    ctl = listener(128)

    def ctl_loop() -> None:
        while True:
            conn, _ = ctl.accept()
            with sink.lock:
                line = f"open={sink.open} accepted={sink.accepted}\n"
            try:
                conn.sendall(line.encode())
            finally:
                conn.close()

    for target in (sink.serve, sha.serve_forever, ctl_loop):
        threading.Thread(target=target, daemon=True).start()
    print(json.dumps({
        "sink": sink.sock.getsockname()[1],
        "sha": sha.server_address[1],
        "ctl": ctl.getsockname()[1],
    }), flush=True)
    # Live as long as the parent holds our stdin open.
    sys.stdin.buffer.read()


if __name__ == "__main__":
    main()
