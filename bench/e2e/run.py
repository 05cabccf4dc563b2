#!/usr/bin/env python3
"""End-to-end benchmark: direct vs nginx stream vs HAProxy vs cplb.

Run from the repo root:

    python3 bench/e2e/run.py            # 3 interleaved rounds (~25 min), report on stdout
    python3 bench/e2e/run.py --quick    # short smoke run
    python3 bench/e2e/run.py --write    # also write BENCHMARKS.md

Every contender fronts the same backends on loopback: an nginx HTTP server
(for wrk), an iperf3 server (bulk), and backends.py (an idle-connection sink
and a SHA-256 integrity checker). Each measurement starts a fresh proxy
instance with one listener and one upstream, and stops it afterwards.

Standard library only. Installs nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATES = HERE / "templates"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
APT_LINE = "apt-get install nginx-light libnginx-mod-stream haproxy wrk iperf3 nghttp2-client"
CONTENDERS = ["direct", "nginx", "haproxy", "cplb"]
# Issue 13's io_uring experiment (bench/e2e/uring-proto): a contender only
# when --uring-proto names its binary.
URING = "uring-proto"
# Issue 21's kernel data plane: cplb with `dataplane.mode: kernel`, a
# contender when --kernel is given (root, a cplb built with its programs).
# The harness moves itself into a cgroup of its own, which its children
# (the load generators) inherit, and cplb attaches to that cgroup only.
KERNEL = "cplb-kernel"
PROXIES = ["nginx", "haproxy", "cplb"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + l for l in lines) or "    (empty log)"


class Proc:
    """A child in its own session (so its process group is its pid); stop()
    signals the whole group, which takes nginx workers along with the master."""

    live: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], logfile: Path, **kw) -> None:
        self.name = name
        self.argv = argv
        self.logfile = logfile
        self._log = open(logfile, "ab")
        kw.setdefault("stdout", self._log)
        kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            self.p = subprocess.Popen(argv, stderr=self._log, start_new_session=True, **kw)
        except OSError as e:
            self._log.close()
            raise BenchError(f"{name}: could not start {argv[0]}: {e}")
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.p.returncode}; "
                f"command: {shlex.join(self.argv)}\n  log {self.logfile}:\n{tail(self.logfile)}"
            )

    def pids(self) -> list[int]:
        """Every live process in this child's process group."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            # fields[0] is state (field 3); pgrp is field 5
            if int(fields[2]) == self.pid and fields[0] != "Z":
                out.append(int(d))
        return out

    def stop(self, timeout: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
                # the leader is gone; make sure no group member outlives it
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM for {timeout}s; killing")
        self._log.close()
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(reversed(cls.live)):
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                log(f"stopping {p.name}: {e}")


def run_cmd(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}")
    except OSError as e:
        raise BenchError(f"could not run {argv[0]}: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Is something LISTENing on 127.0.0.1:port? Read from /proc/net/tcp, so
    that checking readiness never opens a connection through a proxy."""
    want = f"0100007F:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and parts[1] in (want, any_addr):
                    return True
    except OSError:
        pass
    return False


def wait_listening(proc: Proc, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        if listening(port):
            return
        time.sleep(0.01)
    proc.check_alive()
    raise BenchError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout}s\n{tail(proc.logfile)}")


def wait_log(proc: Proc, needle: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        if needle in proc.logfile.read_text(errors="replace"):
            return
        time.sleep(0.01)
    raise BenchError(f"{proc.name} did not log {needle!r} within {timeout}s\n{tail(proc.logfile)}")


class KernelEnv:
    """A cgroup v2 directory holding this harness (and so every load
    generator it starts) and a private bpffs, for the cplb-kernel
    contender; `close` moves the harness back, unmounts and removes them."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise BenchError(f"{KERNEL} needs root (CAP_BPF, CAP_NET_ADMIN, a cgroup and a bpffs mount)")
        root = None
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            f = line.split(" ")
            dash = f.index("-")
            if f[dash + 1] == "cgroup2":
                root = Path(f[4])
                break
        if root is None:
            raise BenchError(f"{KERNEL} needs a cgroup v2 mount (none in /proc/self/mountinfo)")
        self.root = root
        self.home = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
        self.cgroup = root / f"cplb-bench-{os.getpid()}"
        self.cgroup.mkdir()
        (self.cgroup / "cgroup.procs").write_text("0")
        self.bpffs = Path(tempfile.mkdtemp(prefix="cplb-bench-bpffs-"))
        r = subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], capture_output=True, text=True)
        if r.returncode != 0:
            self.close()
            raise BenchError(f"mount -t bpf: {r.stderr.strip()}")

    def close(self) -> None:
        subprocess.run(["umount", str(self.bpffs)], capture_output=True)
        try:
            self.bpffs.rmdir()
        except OSError:
            pass
        try:
            (self.root / self.home.lstrip("/") / "cgroup.procs").write_text("0")
        except OSError:
            (self.root / "cgroup.procs").write_text("0")
        try:
            self.cgroup.rmdir()
        except OSError as e:
            log(f"warning: could not remove {self.cgroup}: {e}")


def render(template: str, dest: Path, **values) -> Path:
    text = (TEMPLATES / template).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError(f"{template}: unfilled placeholders {left}")
    dest.write_text(text)
    return dest


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in KiB over pids."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


# --------------------------------------------------------------------------
# backends and proxies


@dataclass
class Backends:
    http: int
    iperf: int
    sink: int
    sha: int
    ctl: int


class Env:
    def __init__(self, root: Path, cplb_bin: Path, nofile: int, uring_bin: Path | None = None,
                 kernel: "KernelEnv | None" = None) -> None:
        self.root = root
        self.kernel = kernel
        self.cplb_bin = cplb_bin
        self.uring_bin = uring_bin
        self.nofile = nofile
        self.seq = 0
        self.iperf_proc: Proc | None = None
        self.iperf_port = 0

    def newdir(self, name: str) -> Path:
        self.seq += 1
        d = self.root / f"{self.seq:03d}-{name}"
        d.mkdir()
        return d

    def detach(self, proc: Proc) -> None:
        """Detaches a stopped cplb-kernel's programs: they would go on
        rewriting connects to its port, which a later contender may get."""
        r = run_cmd([str(self.cplb_bin), "dataplane", "detach", "--config", str(proc.config)], timeout=30)
        if r.returncode != 0:
            raise BenchError(f"cplb dataplane detach: {r.stderr.strip()}")

    # backends -----------------------------------------------------------
    def start_http_backend(self) -> int:
        """The nginx HTTP backend answering 200 "ok"; returns its port."""
        d = self.newdir("http-backend")
        port = free_port()
        render("nginx-http-backend.conf", d / "nginx.conf", DIR=d, LISTEN=f"127.0.0.1:{port}", NOFILE=self.nofile)
        wait_listening(self.nginx(d, "http-backend"), port)
        return port

    def start_backends(self) -> Backends:
        http_port = self.start_http_backend()

        self.start_iperf()

        d = self.newdir("py-backends")
        p = Proc("backends.py", [sys.executable, str(HERE / "backends.py")], d / "stderr.log",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(p.p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=10):
            p.check_alive()
            raise BenchError("backends.py did not report its ports within 10s")
        line = p.p.stdout.readline()
        try:
            ports = json.loads(line)
        except ValueError:
            p.check_alive()
            raise BenchError(f"backends.py printed {line!r}")
        self.py_backends = p
        return Backends(http=http_port, iperf=self.iperf_port, sink=ports["sink"], sha=ports["sha"], ctl=ports["ctl"])

    def start_iperf(self) -> None:
        if self.iperf_proc is not None:
            self.iperf_proc.stop()
        d = self.newdir("iperf3-server")
        port = self.iperf_port or free_port()
        p = Proc("iperf3 server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], d / "iperf3.log")
        wait_listening(p, port)
        self.iperf_proc, self.iperf_port = p, port

    def sink_count(self, ctl: int) -> int:
        with socket.create_connection(("127.0.0.1", ctl), timeout=5) as s:
            s.settimeout(5)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
        m = re.match(rb"open=(\d+)", data)
        if not m:
            raise BenchError(f"sink control port answered {data!r}")
        return int(m.group(1))

    # proxies ------------------------------------------------------------
    def nginx(self, d: Path, name: str) -> Proc:
        argv = ["nginx", "-e", str(d / "error.log"), "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-g", "daemon off;"]
        return Proc(name, argv, d / "stdout.log")

    def start_proxy(self, kind: str, backend_port: int) -> tuple[Proc, int]:
        """Start contender `kind` proxying one fresh listener to 127.0.0.1:backend_port."""
        d = self.newdir(kind)
        port = free_port()
        listen = f"127.0.0.1:{port}"
        backend = f"127.0.0.1:{backend_port}"
        if kind == "nginx":
            # Each proxied connection is two nginx connections, in either worker.
            render("nginx-stream.conf", d / "nginx.conf", DIR=d, LISTEN=listen, BACKEND=backend,
                   NOFILE=self.nofile, STREAM_MODULE=STREAM_MODULE, WORKER_CONNECTIONS=self.nofile + 240)
            p = self.nginx(d, "nginx")
        elif kind == "haproxy":
            cfg = render("haproxy.cfg", d / "haproxy.cfg", DIR=d, LISTEN=listen, BACKEND=backend,
                         MAXCONN=max(1000, (self.nofile - 2000) // 2))
            p = Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], d / "haproxy.log")
        elif kind == "cplb":
            cfg = render("cplb.yaml", d / "cplb.yaml", LISTEN=listen, BACKEND=backend,
                         ADMIN=f'"127.0.0.1:{free_port()}"', MAX_CONNECTIONS=max(20000, self.nofile))
            p = Proc("cplb", [str(self.cplb_bin), "--config", str(cfg)], d / "cplb.log")
        elif kind == KERNEL and self.kernel:
            cfg = render("cplb.yaml", d / "cplb.yaml", LISTEN=listen, BACKEND=backend,
                         ADMIN=f'"127.0.0.1:{free_port()}"', MAX_CONNECTIONS=max(20000, self.nofile))
            with open(cfg, "a") as f:
                f.write(f"dataplane:\n  mode: kernel\n  cgroup: {self.kernel.cgroup}\n"
                        f"  bpffs: {self.kernel.bpffs}\n")
            p = Proc(KERNEL, [str(self.cplb_bin), "--config", str(cfg)], d / "cplb.log")
            p.config = cfg
            wait_listening(p, port)
            # Until the first publish, connects reach the proxy.
            wait_log(p, "kernel data plane tables published")
            return p, port
        elif kind == URING and self.uring_bin:
            p = Proc(URING, [str(self.uring_bin), listen, backend], d / "uring-proto.log")
        else:
            raise ValueError(kind)
        wait_listening(p, port)
        return p, port


# --------------------------------------------------------------------------
# measurements

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"could not parse wrk output:\n{out}")
    res = {"rps": float(m.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if not m:
            raise BenchError(f"no {pct}% latency in wrk output:\n{out}")
        res[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def wrk(port: int, seconds: int, close: bool) -> dict:
    argv = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    r = run_cmd(argv, timeout=seconds + 30)
    if r.returncode != 0:
        raise BenchError(f"wrk exited {r.returncode}: {r.stderr.strip()}")
    res = parse_wrk(r.stdout)
    if res["requests"] and res["errors"] > res["requests"] * 0.01:
        raise BenchError(f"wrk saw {res['errors']} errors in {res['requests']} requests:\n{r.stdout}")
    return res


def http_probe(port: int) -> None:
    """One GET through the proxy, so a broken proxy fails loudly, not as a low number."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"ok"):
        raise BenchError(f"HTTP probe through port {port} got {data[:200]!r}")


H2LOAD_CLIENTS = 20  # keep-alive connections for the fixed-rate figure
H2LOAD_MAX_CLOSE = 100_000  # h2load keeps one object per connection it makes


def h2load_at_rate(port: int, rate: int, seconds: float, close: bool) -> dict:
    """Offers `rate` requests/s for about `seconds`. Keep-alive: 20
    connections, each paced with --rps. Connection: close: --rps does not
    pace reconnects, so new connections are paced with -r/--rate-period
    (one request each, rate/100 every 10 ms). Returns requests done and the
    rate achieved."""
    url = f"http://127.0.0.1:{port}/"
    if close:
        n = max(100, min(int(rate * seconds), H2LOAD_MAX_CLOSE))
        argv = ["h2load", "--h1", "-r", str(max(1, rate // 100)), "--rate-period", "10ms",
                "-c", str(n), "-n", str(n), "-H", "Connection: close", url]
    else:
        n = max(H2LOAD_CLIENTS, int(rate * seconds))
        argv = ["h2load", "--h1", "-c", str(H2LOAD_CLIENTS), "-n", str(n),
                "--rps", str(max(1, rate // H2LOAD_CLIENTS)), url]
    r = run_cmd(argv, timeout=n / rate * 3 + 60)
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", r.stdout)
    t = re.search(r"finished in ([\d.]+)(ms|s),", r.stdout)
    if r.returncode != 0 or not m or not t:
        raise BenchError(f"h2load exited {r.returncode}: {shlex.join(argv)}\n{r.stdout[-1500:]}{r.stderr[-500:]}")
    total, done, ok, failed = (int(x) for x in m.groups())
    # Beyond what the machine can serve, connections pile up until a
    # descriptor limit refuses some; a few failures are reported, more
    # make the point meaningless.
    if ok < total * 0.95:
        raise BenchError(f"h2load: {ok} of {total} requests succeeded ({failed} failed): {shlex.join(argv)}")
    secs = float(t.group(1)) / (1000 if t.group(2) == "ms" else 1)
    return {"requests": ok, "rps": ok / secs if secs > 0 else 0.0, "failed_pct": 100 * (total - ok) / total}


def cpu_at_rates(proc: Proc, port: int, st: "Settings") -> dict:
    """CPU seconds (utime+stime of every process of the proxy) per 100,000
    successful requests at each fixed offered rate, keep-alive and
    Connection: close."""
    pids = proc.pids()
    res = {}
    for close in (False, True):
        mode = "close" if close else "ka"
        for rate in st.rates:
            t0 = cpu_ticks(pids)
            r = h2load_at_rate(port, rate, st.rate_seconds, close)
            proc.check_alive()
            cpu_s = (cpu_ticks(pids) - t0) / CLK_TCK
            res[f"cpu_{mode}_{rate}"] = cpu_s / r["requests"] * 1e5
            res[f"rps_{mode}_{rate}"] = r["rps"]
            if r["failed_pct"]:
                res[f"failed_pct_{mode}_{rate}"] = r["failed_pct"]
    return res


def iperf(env: Env, port: int, seconds: int, reverse: bool) -> dict:
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    if reverse:
        argv.append("-R")
    try:
        r = run_cmd(argv, timeout=seconds + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"iperf3 exited {r.returncode} without JSON: {r.stderr.strip()[:500]}")
        if "error" in data:
            raise BenchError(f"iperf3: {data['error']}")
        recv = data["end"]["sum_received"]
        return {"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"]}
    except BenchError:
        env.start_iperf()  # a failed test can leave the server wedged
        raise


@dataclass
class Payload:
    up: bytes
    up_sha: str
    seed_down: int
    n_down: int
    down_sha: str


def make_payload(size: int, seed_up: int, seed_down: int) -> Payload:
    up = random.Random(seed_up).randbytes(size)
    down = random.Random(seed_down).randbytes(size)
    return Payload(up, hashlib.sha256(up).hexdigest(), seed_down, size, hashlib.sha256(down).hexdigest())


def transfer(port: int, pl: Payload, half_close: bool) -> None:
    """Send pl.up through the proxy to backends.py and check both the digest
    it reports and the pseudo-random bytes it streams back. With half_close
    the upload is ended by shutdown(SHUT_WR) instead of a length, so the
    reply only arrives if the proxy keeps the other direction open."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(60)
        n_up = -1 if half_close else len(pl.up)
        s.sendall(f"SEED {pl.seed_down} {pl.n_down} {n_up}\n".encode())
        view = memoryview(pl.up)
        for off in range(0, len(view), 1 << 20):
            s.sendall(view[off:off + (1 << 20)])
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError(f"connection closed before the digest line arrived (got {buf[:100]!r})")
            buf += chunk
        line, rest = buf.split(b"\n", 1)
        h = hashlib.sha256(rest)
        n = len(rest)
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    digest, count = line.decode().split()
    problems = []
    if int(count) != len(pl.up):
        problems.append(f"backend received {count} bytes, sent {len(pl.up)}")
    elif digest != pl.up_sha:
        problems.append("client->server bytes corrupted (SHA-256 mismatch)")
    if n != pl.n_down:
        problems.append(f"client received {n} bytes back, expected {pl.n_down}")
    elif h.hexdigest() != pl.down_sha:
        problems.append("server->client bytes corrupted (SHA-256 mismatch)")
    if problems:
        raise BenchError("; ".join(problems))


def integrity(port: int, pl: Payload, probe: Payload) -> dict:
    try:
        transfer(port, pl, half_close=False)
    except BenchError as e:
        raise BenchError(f"integrity check failed: {e}")
    # Half-close is reported, not required: nginx's stream proxy closes both
    # directions on the first FIN unless `proxy_half_close on` (not in the
    # reference config).
    try:
        transfer(port, probe, half_close=True)
        half = 1.0
    except (BenchError, OSError) as e:
        log(f"    half-close probe: {e}")
        half = 0.0
    return {"ok": 1.0, "half_close": half}


def wait_sink(env: Env, ctl: int, want: int, timeout: float, proc: Proc | None = None) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = env.sink_count(ctl)
        if n == want:
            return n
        if proc is not None:
            proc.check_alive()
        time.sleep(0.05)
    raise BenchError(f"sink has {n} open connections after {timeout:.0f}s, waiting for {want}")


def open_idle(port: int, n: int, socks: list[socket.socket]) -> None:
    """Opens idle connections to port until socks holds n. Each sends one
    byte and reads the sink's one-byte answer first: an idle watch has had
    its request answered (and a proxy that waits for the first answer, as
    cplb's hedging does, is past it)."""
    while len(socks) < n:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"x")
            if s.recv(1) != b"y":
                raise OSError("no answer from the sink")
            socks.append(s)
        except OSError as e:
            raise BenchError(f"opening idle connection {len(socks) + 1}/{n}: {e}")


def settled_rss(proc: Proc, timeout: float = 10.0) -> tuple[int, int]:
    """rss_kib once two readings 250 ms apart agree within 0.5% (a proxy
    may still be starting threads or giving memory back), or at timeout."""
    deadline = time.monotonic() + timeout
    prev = rss_kib(proc.pids())
    while time.monotonic() < deadline:
        time.sleep(0.25)
        cur = rss_kib(proc.pids())
        if abs(cur[0] - prev[0]) <= max(64, prev[0] * 0.005):
            return cur
        prev = cur
    return prev


WARMUP_CONNS = 100
# What idle watches cost a node in CPU: the CPU spent holding the most idle
# connections, read over IDLE_CPU_SECONDS once IDLE_CPU_SETTLE has passed
# since the last one opened (so one-time work on a new connection, such as
# cplb's keepalive set 5-10 s into its first idle spell, does not count).
IDLE_CPU_SETTLE = 12
IDLE_CPU_SECONDS = 15


def memory(env: Env, proc: Proc, port: int, be: Backends, levels: list[int]) -> dict:
    """RSS and PSS at idle, then with each number of idle proxied
    connections in `levels` (opened in turn, held until the end), then after
    they are closed. Per-connection cost at level n = (RSS at n - idle) / n,
    and between two levels = the RSS difference / the connection difference;
    equal costs across levels mean linear growth. The idle reading is taken
    after 100 connections were opened and closed, so that what a proxy
    allocates once, on its first connections (pools, arenas), or frees
    after start-up, does not count per connection."""
    wait_sink(env, be.ctl, 0, 30, proc)
    warm: list[socket.socket] = []
    try:
        open_idle(port, WARMUP_CONNS, warm)
        wait_sink(env, be.ctl, WARMUP_CONNS, 60, proc)
    finally:
        for s in warm:
            s.close()
    wait_sink(env, be.ctl, 0, 60, proc)
    idle_rss, idle_pss = settled_rss(proc)
    res = {"idle_rss_mb": idle_rss / 1024, "idle_pss_mb": idle_pss / 1024}
    socks: list[socket.socket] = []
    prev_n, prev_rss = 0, idle_rss
    try:
        for n in levels:
            open_idle(port, n, socks)
            wait_sink(env, be.ctl, n, 60 + n / 500, proc)
            rss, pss = settled_rss(proc)
            res[f"rss_mb_{n}"] = rss / 1024
            res[f"per_conn_bytes_{n}"] = (rss - idle_rss) * 1024 / n
            res[f"per_conn_pss_bytes_{n}"] = (pss - idle_pss) * 1024 / n
            if prev_n:
                res[f"marginal_bytes_{n}"] = (rss - prev_rss) * 1024 / (n - prev_n)
            prev_n, prev_rss = n, rss
        if socks:
            time.sleep(IDLE_CPU_SETTLE)
            t0 = cpu_ticks(proc.pids())
            time.sleep(IDLE_CPU_SECONDS)
            res["idle_cpu_ms_per_s"] = (cpu_ticks(proc.pids()) - t0) * 1000 / CLK_TCK / IDLE_CPU_SECONDS
    finally:
        for s in socks:
            s.close()
    wait_sink(env, be.ctl, 0, 60 + (levels[-1] if levels else 0) / 500, proc)
    after_rss, _ = rss_kib(proc.pids())
    res["after_rss_mb"] = after_rss / 1024
    return res


def idle_levels(wanted: list[int], nofile: int) -> tuple[list[int], str]:
    """The levels of `wanted` this machine allows, and why any were capped.
    A proxied connection takes two descriptors in the proxy and one each in
    the harness and the sink; and every connection to one address and port
    needs its own local port, from net.ipv4.ip_local_port_range."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        ports = hi - lo + 1
    except (OSError, ValueError):
        ports = 28232
    # (nofile - 2000) // 2: the same cap as HAProxy's maxconn (templates/
    # haproxy.cfg), so every contender can hold every level.
    cap = min((nofile - 2000) // 2, ports - 1000)
    levels = sorted({min(n, cap) for n in wanted if n > 0})
    note = ""
    if any(n > cap for n in wanted):
        why = []
        if (nofile - 2000) // 2 < max(wanted):
            why.append(f"RLIMIT_NOFILE is {nofile:,} and the proxy needs two descriptors per connection")
        if ports - 1000 < max(wanted):
            why.append(f"net.ipv4.ip_local_port_range has {ports:,} ports")
        note = (f"{', '.join(f'{n:,}' for n in wanted if n > cap)} idle connections not measured on this machine "
                f"(capped at {cap:,}): {'; '.join(why)}.")
    return levels, note


# --------------------------------------------------------------------------
# the run


@dataclass
class Settings:
    rounds: int
    wrk_seconds: int
    iperf_seconds: int
    payload_mib: int
    # Idle-connection levels for the memory figure, as asked for; `levels`
    # is what this machine allows (see idle_levels).
    idle_wanted: list[int]
    rate_seconds: float
    rates: list[int] = field(default_factory=lambda: [2000, 10000, 30000])
    levels: list[int] = field(default_factory=list)
    levels_note: str = ""


PHASES = ["http-keepalive", "http-close", "bulk", "integrity", "memory", "cpu-rate"]


def run_phase(env: Env, phase: str, kind: str, be: Backends, st: Settings, pl: Payload, probe: Payload) -> dict:
    target = {"http-keepalive": be.http, "http-close": be.http, "bulk": be.iperf,
              "integrity": be.sha, "memory": be.sink, "cpu-rate": be.http}[phase]
    if kind == "direct":
        if phase in ("memory", "cpu-rate"):
            return {}
        proc, port = None, target
    else:
        proc, port = env.start_proxy(kind, target)
    try:
        if phase in ("http-keepalive", "http-close"):
            http_probe(port)
            r = wrk(port, st.wrk_seconds, close=(phase == "http-close"))
            if proc:
                proc.check_alive()
            return r
        if phase == "bulk":
            pids = proc.pids() if proc else []
            t0 = cpu_ticks(pids)
            fwd = iperf(env, port, st.iperf_seconds, reverse=False)
            rev = iperf(env, port, st.iperf_seconds, reverse=True)
            res = {"up_gbps": fwd["gbps"], "down_gbps": rev["gbps"]}
            if proc:
                proc.check_alive()
                cpu_s = (cpu_ticks(pids) - t0) / CLK_TCK
                res["cpu_s_per_gb"] = cpu_s / ((fwd["bytes"] + rev["bytes"]) / 1e9)
            return res
        if phase == "integrity":
            r = integrity(port, pl, probe)
            if proc:
                proc.check_alive()
            return r
        if phase == "memory":
            return memory(env, proc, port, be, st.levels)
        if phase == "cpu-rate":
            http_probe(port)
            return cpu_at_rates(proc, port, st)
        raise ValueError(phase)
    finally:
        if proc:
            proc.stop()
            if kind == KERNEL:
                env.detach(proc)


def chosen(ap: argparse.ArgumentParser, only: str, uring_bin: Path | None) -> list[str]:
    """The contenders named by a tool's comma-separated --only (syscalls.py,
    profile.py); the io_uring prototype needs its binary."""
    kinds = [k for k in only.split(",") if k]
    if URING in kinds and not uring_bin:
        ap.error(f"--only {URING} needs --uring-proto BIN")
    return kinds


def each_contender(kinds: list[str], cplb_bin: Path, uring_bin: Path | None, prefix: str, measure, describe) -> dict:
    """For the tools (syscalls.py, profile.py): `measure(env, kind, http_port, tmp)` for each
    contender in turn, in front of one nginx HTTP backend, logging `describe(result)`;
    returns {kind: result} once every process is stopped and the temp dir removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    out = {}
    try:
        env = Env(tmp, cplb_bin, 20000, uring_bin)
        port = env.start_http_backend()
        for kind in kinds:
            out[kind] = measure(env, kind, port, tmp)
            log(f"{kind}: {describe(out[kind])}")
    finally:
        Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def rotated(r: int, contenders: list[str]) -> list[str]:
    k = r % len(contenders)
    return contenders[k:] + contenders[:k]


def check_prereqs(cplb_bin: Path) -> None:
    missing = [p for p in ("nginx", "haproxy", "wrk", "iperf3", "h2load") if shutil.which(p) is None]
    if not os.path.exists(STREAM_MODULE):
        missing.append(f"nginx stream module ({STREAM_MODULE})")
    if missing:
        print(f"missing: {', '.join(missing)}\ninstall them with:\n  {APT_LINE}", file=sys.stderr)
        sys.exit(2)
    if not os.access(cplb_bin, os.X_OK):
        print(f"missing: cplb binary {cplb_bin}\nbuild it with:\n  cargo build --release", file=sys.stderr)
        sys.exit(2)


def first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    out = (r.stdout + r.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


def machine_info(cplb_bin: Path) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    src = ["src", "Cargo.toml", "Cargo.lock"]
    src_commit = first_line(["git", "-C", str(REPO), "log", "-1", "--format=%h", "--"] + src)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--"] + src,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    newest_src = max((p.stat().st_mtime for p in (REPO / "src").rglob("*.rs")), default=0)
    stale = cplb_bin.stat().st_mtime < newest_src
    if stale:
        log(f"warning: {cplb_bin} is older than the newest file in src/; run cargo build --release")
    cplb_desc = (f"{first_line([str(cplb_bin), '--version'])}, checkout {commit}, last change to src/ {src_commit}"
                 + (", uncommitted changes in src/" if dirty else "")
                 + (", BINARY OLDER THAN src/" if stale else ""))
    return {
        "nproc": str(os.cpu_count()),
        "kernel": os.uname().release,
        "cpu": cpu,
        "memory": mem,
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "--version"]).split(" Copyright")[0],
        "h2load": first_line(["h2load", "--version"]),
        "iperf3": first_line(["iperf3", "--version"]),
        "cplb": cplb_desc,
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------
# report


def med(results: dict, kind: str, phase: str, key: str) -> float | None:
    vals = [r[key] for r in results[kind][phase] if key in r]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def table(results: dict, rows: list[tuple]) -> list[str]:
    """rows: (label, phase, key, format spec[, "high" or "low": which is
    better, for the cplb / best peer column])."""
    extra = [k for k in (KERNEL, URING) if k in CONTENDERS]
    out = ["| | direct | nginx | HAProxy | cplb | cplb/nginx | cplb/HAProxy | cplb/direct | cplb / best peer |"
           + "".join(f" {k} | {k} / best peer | {k} / direct |" for k in extra),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * len(extra)]
    for label, phase, key, spec, *better in rows:
        v = {k: med(results, k, phase, key) for k in CONTENDERS}
        peers = [v[k] for k in ("nginx", "haproxy") if v[k] is not None]
        best = None
        if better and peers:
            best = max(peers) if better[0] == "high" else min(peers)
        base = ["direct", "nginx", "haproxy", "cplb"]
        out.append(f"| {label} | " + " | ".join(fmt(v[k], spec) for k in base) + " | "
                   + " | ".join(ratio(v["cplb"], v[k]) for k in ("nginx", "haproxy", "direct"))
                   + f" | {ratio(v['cplb'], best)} |"
                   + "".join(f" {fmt(v[k], spec)} | {ratio(v[k], best)} | {ratio(v[k], v['direct'])} |"
                             for k in extra))
    return out


def report(results: dict, errors: list[str], info: dict, st: Settings, command: str,
           started: str, load_start: str, load_end: str, elapsed: float) -> str:
    L: list[str] = []
    L += ["# cplb benchmarks", "",
          "End-to-end comparison on loopback of a client talking straight to the backend (**direct**), "
          "through the **nginx** stream proxy (the reference node-local config: `hash $remote_addr consistent`, "
          "`proxy_connect_timeout 3s`, `proxy_timeout 3000s`, `reuseport`, `worker_processes auto`), through "
          "**HAProxy** (`mode tcp`, `balance source`, `hash-type consistent`, default threads) and through "
          "**cplb** (`workers: 0`, `hash: {key: node}`, release build). Each proxy has one listener and one "
          "upstream and is started fresh for each measurement. Configs: `bench/e2e/templates/`.", "",
          "**Absolute figures drift** from run to run (the machine is shared: the load generator, the backends "
          "and the proxy all run on the same cores, and other jobs may be running). Compare the ratios measured "
          "within one run, not absolute numbers across runs.", "",
          "## Machine and run", "",
          f"- command: `{command}`",
          f"- started {started}, took {elapsed / 60:.1f} min; {st.rounds} interleaved round(s), "
          "contender order rotated each round; every figure is the median over rounds",
          f"- load average at start: {load_start}; at end: {load_end}"]
    for k in ("nproc", "kernel", "cpu", "memory", "nginx", "haproxy", "wrk", "h2load", "iperf3", "cplb", "python"):
        L.append(f"- {k}: {info[k]}")
    L.append("")

    L += [f"## 1. HTTP keep-alive requests through the proxy", "",
          f"`wrk -t1 -c64 -d{st.wrk_seconds}s --latency` against an nginx `return 200 \"ok\"` backend. "
          "Higher requests/s is better, lower latency is better.", ""]
    L += table(results, [("requests/s", "http-keepalive", "rps", ",.0f", "high"),
                         ("p50 latency (ms)", "http-keepalive", "p50", ".3f", "low"),
                         ("p99 latency (ms)", "http-keepalive", "p99", ".3f", "low")])
    L += ["", "## 2. New connections per second", "",
          f"`wrk -t1 -c64 -d{st.wrk_seconds}s --latency -H 'Connection: close'`: one request per TCP "
          "connection, so each request is a new client connection and a new upstream connection.", ""]
    L += table(results, [("connections/s", "http-close", "rps", ",.0f", "high"),
                         ("p50 latency (ms)", "http-close", "p50", ".3f", "low"),
                         ("p99 latency (ms)", "http-close", "p99", ".3f", "low")])
    L += ["", "## 3. Bulk throughput, one stream", "",
          f"`iperf3 -c … -t {st.iperf_seconds} -J` (client to server) and the same with `-R` (server to "
          f"client); received bits/s. iperf3 does not check content, so a separate check sends "
          f"{st.payload_mib} MiB of pseudo-random bytes through each contender to a backend that hashes them "
          f"and then streams {st.payload_mib} MiB of pseudo-random bytes back; the harness compares the "
          "SHA-256 digests of what arrived in both directions with what was sent. A second, 1 MiB transfer "
          "ends the upload with a half-close (`shutdown(SHUT_WR)`) and checks that the reply still arrives.", ""]
    L += table(results, [("client → server (Gbit/s)", "bulk", "up_gbps", ".2f", "high"),
                         ("server → client (Gbit/s)", "bulk", "down_gbps", ".2f", "high")])
    integ, half = [], []
    for k in CONTENDERS:
        rs = results[k]["integrity"]
        n_ok = sum(1 for r in rs if r.get("ok"))
        n_all = n_ok + sum(1 for e in errors if e.startswith(f"{k} integrity"))
        integ.append(f"{n_ok}/{n_all} ok" if n_all else "not run")
        n_half = sum(1 for r in rs if r.get("half_close"))
        half.append(f"{n_half}/{len(rs)} kept" if rs else "not run")
    # The base contenders' columns, the four ratio columns, then the
    # prototype's value and ratio columns when it ran.
    tail = lambda xs: " | | | | |" + "".join(f" {x} | | |" for x in xs[4:])
    L += [f"| integrity, {st.payload_mib} MiB each way, SHA-256 | " + " | ".join(integ[:4]) + tail(integ),
          "| half-close: reply after client FIN | " + " | ".join(half[:4]) + tail(half)]

    L += ["", "## 4. Memory", "",
          "Resident memory summed over all processes of the proxy (nginx master + workers, haproxy, cplb), "
          "from `VmRSS` in `/proc/PID/status`, right after start, then with "
          + ", ".join(f"{n:,}" for n in st.levels) + " idle client connections open through the proxy to a sink "
          "that answers each one's first byte with one byte and then holds them, silent (opened in turn on the same proxy; the harness waits until the sink holds all of "
          "them), then after they are closed. The idle reading is taken after 100 connections were opened and "
          "closed, so one-time allocations on the first connections do not count per connection. "
          "Per-connection cost at n connections = (RSS with n − RSS idle) / n, and between two levels = "
          "the RSS difference / the difference in connections; the same cost at every n means memory grows "
          "linearly. PSS (`/proc/PID/smaps_rollup`) counts "
          "pages shared between nginx's master and workers once. Lower is better.", ""]
    if st.levels_note:
        L += [st.levels_note, ""]
    rows = [("RSS at idle (MB)", "memory", "idle_rss_mb", ".1f", "low"),
            ("PSS at idle (MB)", "memory", "idle_pss_mb", ".1f", "low")]
    rows += [(f"RSS with {n:,} idle connections (MB)", "memory", f"rss_mb_{n}", ".1f", "low") for n in st.levels]
    rows += [("RSS after they are closed (MB)", "memory", "after_rss_mb", ".1f", "low")]
    rows += [(f"bytes per idle connection at {n:,} (RSS)", "memory", f"per_conn_bytes_{n}", ",.0f", "low")
             for n in st.levels]
    rows += [(f"bytes per connection from {a:,} to {b:,} (RSS)", "memory", f"marginal_bytes_{b}", ",.0f", "low")
             for a, b in zip(st.levels, st.levels[1:])]
    if st.levels:
        n = st.levels[-1]
        rows += [(f"bytes per idle connection at {n:,} (PSS)", "memory", f"per_conn_pss_bytes_{n}", ",.0f", "low")]
        rows += [(f"CPU while holding {n:,} idle connections (ms per s, over {IDLE_CPU_SECONDS} s from "
                  f"{IDLE_CPU_SETTLE} s after the last opened)", "memory",
                  "idle_cpu_ms_per_s", ".2f", "low")]
    L += table(results, rows)

    L += ["", "## 5. CPU cost", "",
          "What the proxy takes away from the node's workloads: utime + stime of all its processes "
          "(`/proc/PID/stat`, every thread, nginx workers included) for a given amount of work. Lower is better; "
          "the last column is cplb over the better of nginx and HAProxy.", "",
          f"**At a fixed offered load**: `h2load --h1` against the nginx `return 200` backend at fixed request "
          f"rates for about {st.rate_seconds:g} s each (on one fresh proxy per round), CPU seconds per 100,000 "
          f"requests. Keep-alive: {H2LOAD_CLIENTS} connections paced with `--rps`. `Connection: close` (one new "
          "client and upstream connection per request): new connections paced with `-r <rate/100> --rate-period "
          f"10ms` (h2load's `--rps` does not pace reconnects), at most {H2LOAD_MAX_CLOSE:,} per point. If the "
          "machine cannot offer a rate, the achieved rate (below) is lower; the CPU per request is still "
          "comparable when the achieved rates are.", ""]
    rows = []
    for mode, name in (("ka", "keep-alive"), ("close", "`Connection: close`")):
        rows += [(f"{name}, {rate:,} req/s: CPU s per 100k requests", "cpu-rate", f"cpu_{mode}_{rate}", ".3f", "low")
                 for rate in st.rates]
    rows += [("bulk (iperf3, figure 3): CPU s per GB", "bulk", "cpu_s_per_gb", ".3f", "low")]
    L += table(results, rows)
    L += ["", "Achieved request rates of the fixed-load runs (successful requests/s), and the share of "
          "requests that failed where any did (an offered rate beyond what the machine serves piles up "
          "connections until a descriptor limit refuses some; up to 5% is accepted):", ""]
    L += table(results, [(f"{name}, offered {rate:,}", "cpu-rate", f"rps_{mode}_{rate}", ",.0f")
                         for mode, name in (("ka", "keep-alive"), ("close", "close")) for rate in st.rates]
               + [(f"{name}, offered {rate:,}: failed %", "cpu-rate", f"failed_pct_{mode}_{rate}", ".2f")
                  for mode, name in (("ka", "keep-alive"), ("close", "close")) for rate in st.rates
                  if any(f"failed_pct_{mode}_{rate}" in r for k in CONTENDERS for r in results[k]["cpu-rate"])])
    L += ["", "Bulk: utime + stime across both iperf3 runs of figure 3, divided by the bytes iperf3 received "
          "(10⁹ bytes = 1 GB).", ""]

    if errors:
        L += ["", "## Errors", "", "Measurements that failed (left out of the medians):", ""]
        L += [f"- {e}" for e in errors]

    L += ["", "<details><summary>Per-round values</summary>", "", "```"]
    for phase in PHASES:
        for k in CONTENDERS:
            rs = results[k][phase]
            if not rs or not any(rs):
                continue
            keys = sorted({key for r in rs for key in r} - {"requests", "ok"})
            for key in keys:
                vals = ", ".join(f"{r[key]:.4g}" for r in rs if key in r)
                L.append(f"{phase:15s} {k:8s} {key:26s} {vals}")
    L += ["```", "", "</details>", ""]
    # With --only, leave out the figures that were not measured.
    needs = {"1.": ["http-keepalive"], "2.": ["http-close"], "3.": ["bulk", "integrity"],
             "4.": ["memory"], "5.": ["bulk", "cpu-rate"]}
    ran = {p for p in PHASES if any(results[k][p] for k in CONTENDERS)}
    parts = "\n".join(L).split("\n## ")
    keep = [parts[0]] + [x for x in parts[1:] if not any(ran.isdisjoint(needs[n]) for n in needs if x.startswith(n))]
    return "\n## ".join(keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short smoke run: 1 round, 2 s per test, 8 MiB, 250/500 idle conns, 1 s per fixed rate")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, or 1 with --quick)")
    ap.add_argument("--write", action="store_true", help="also write BENCHMARKS.md at the repo root")
    ap.add_argument("--cplb", type=Path, default=REPO / "target" / "release" / "cplb", help="cplb binary")
    ap.add_argument("--only", metavar="PHASE[,PHASE]",
                    help=f"run only these measurements: {','.join(PHASES)}")
    ap.add_argument("--contenders", metavar="NAME[,NAME]",
                    help=f"run only these contenders: {','.join(CONTENDERS)} (default all)")
    ap.add_argument("--idle", metavar="N[,N]",
                    help="idle-connection levels for the memory figure (default 5000,10000,25000,50000)")
    ap.add_argument("--uring-proto", type=Path, metavar="BIN",
                    help=f"also measure issue 13's io_uring prototype (bench/e2e/uring-proto, built with "
                         f"cargo build --release there) as contender {URING!r}")
    ap.add_argument("--kernel", action="store_true",
                    help=f"also measure cplb's kernel data plane as contender {KERNEL!r} (root; a cplb "
                         "built with its kernel programs)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args()

    if args.quick:
        st = Settings(rounds=1, wrk_seconds=2, iperf_seconds=2, payload_mib=8, idle_wanted=[250, 500],
                      rate_seconds=1)
    else:
        st = Settings(rounds=3, wrk_seconds=10, iperf_seconds=5, payload_mib=64,
                      idle_wanted=[5000, 10000, 25000, 50000], rate_seconds=10)
    if args.idle:
        try:
            st.idle_wanted = sorted({int(x) for x in args.idle.split(",") if x.strip()})
        except ValueError:
            ap.error("--idle: comma-separated numbers of connections")
        if not st.idle_wanted or st.idle_wanted[0] < 1:
            ap.error("--idle: at least one level, each at least 1")
    if args.rounds is not None:
        if args.rounds < 1:
            ap.error("--rounds must be at least 1")
        st.rounds = args.rounds
    def pick(value: str | None, flag: str, known: list[str]) -> list[str]:
        """A comma-separated subset of `known`, or all of it when not given."""
        if not value:
            return known
        chosen = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in chosen if v not in known]
        if bad or not chosen:
            ap.error(f"{flag}: unknown {bad}; choose from {','.join(known)}")
        return chosen

    if args.uring_proto:
        if not os.access(args.uring_proto, os.X_OK):
            ap.error(f"--uring-proto: {args.uring_proto} is not an executable")
        CONTENDERS.append(URING)
    if args.kernel:
        CONTENDERS.insert(CONTENDERS.index("cplb") + 1, KERNEL)
    phases = pick(args.only, "--only", PHASES)
    contenders = pick(args.contenders, "--contenders", CONTENDERS)
    command = shlex.join(["python3", "bench/e2e/run.py"] + sys.argv[1:])

    check_prereqs(args.cplb)

    # Children (proxies, sink) inherit the limit. Raising the hard limit
    # needs CAP_SYS_RESOURCE; without it, the soft limit goes up to the hard.
    want = 2 * max(st.idle_wanted) + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = hard if hard != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    st.levels, st.levels_note = idle_levels(st.idle_wanted, nofile)
    if st.levels_note and "memory" in phases:
        log(f"warning: {st.levels_note}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    info = machine_info(args.cplb)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="cplb-bench-"))
    results = {k: {p: [] for p in PHASES} for k in CONTENDERS}
    errors: list[str] = []
    interrupted = fatal = False
    kernel_env = None
    try:
        if KERNEL in contenders:
            kernel_env = KernelEnv()
        env = Env(root, args.cplb, nofile, args.uring_proto, kernel_env)
        log(f"temp dir {root}; generating {st.payload_mib} MiB payloads")
        pl = make_payload(st.payload_mib << 20, 1, 2)
        probe = make_payload(1 << 20, 3, 4)
        be = env.start_backends()
        log(f"backends: {be}")
        for r in range(st.rounds):
            order = rotated(r, contenders)
            log(f"round {r + 1}/{st.rounds}: {', '.join(order)}")
            for phase in phases:
                for kind in order:
                    if kind == "direct" and phase in ("memory", "cpu-rate"):
                        continue
                    # The prototype's buffers are its own business: not a
                    # contender for memory.
                    if kind == URING and phase == "memory":
                        continue
                    t0 = time.monotonic()
                    try:
                        res = run_phase(env, phase, kind, be, st, pl, probe)
                        results[kind][phase].append(res)
                        shown = ", ".join(f"{k}={v:.4g}" for k, v in res.items())
                        log(f"  {phase:15s} {kind:8s} {shown}  ({time.monotonic() - t0:.1f}s)")
                    except BenchError as e:
                        msg = f"{kind} {phase} round {r + 1}: {e}"
                        errors.append(msg)
                        log(f"  ERROR {msg}")
                    # the shared backends must survive every contender
                    env.py_backends.check_alive()
                    env.iperf_proc.check_alive()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    except BenchError as e:
        log(f"fatal: {e}")
        errors.append(f"fatal: {e}")
        interrupted = fatal = True
    finally:
        Proc.stop_all()
        if kernel_env is not None:
            kernel_env.close()
        if args.keep_tmp or fatal:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    if interrupted:
        return 130 if not errors else 1
    load_end = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    md = report(results, errors, info, st, command, started, " ".join(load_start), " ".join(load_end),
                time.monotonic() - t_start)
    print(md)
    if args.write:
        (REPO / "BENCHMARKS.md").write_text(md)
        log(f"wrote {REPO / 'BENCHMARKS.md'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
