#!/usr/bin/env python3
"""System calls per proxied connection, by name, for nginx, HAProxy and cplb.

Run from the repo root (needs strace and h2load, as root or with ptrace rights):

    python3 bench/e2e/syscalls.py                  # 2,000 connections each
    python3 bench/e2e/syscalls.py -n 5000 --only cplb
    python3 bench/e2e/syscalls.py --keepalive      # requests on 4 kept connections

Each contender is started fresh from templates/ in front of the same nginx
HTTP backend (as run.py does); `strace -f -c` is attached to all its
processes and threads; `h2load --h1 -n N -c 4 -H 'Connection: close'` makes N
requests, each on a new client connection and so a new upstream connection;
then strace is detached and its counts are divided by N. Unlike timings,
these counts barely depend on machine load, so they can be compared across
runs and machines (the same kernel and program versions aside); the
exception is epoll_wait, whose count depends on how many events each call
returns.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the harness's process and backend helpers)

PROXIES = ["nginx", "haproxy", "cplb"]


def strace_counts(pids: list[int], out: Path) -> subprocess.Popen:
    argv = ["strace", "-f", "-c", "-o", str(out)]
    for p in pids:
        argv += ["-p", str(p)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # strace says "Process N attached" for every thread it attaches; wait
    # until it has attached to all the processes named.
    deadline = time.monotonic() + 10
    attached = 0
    while attached < len(pids) and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        if "attached" in line:
            attached += 1
    if attached < len(pids):
        p.kill()
        raise run.BenchError(f"strace attached to {attached}/{len(pids)} processes")
    return p


def parse_counts(text: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from strace -c output."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*(\w+)\s*$", line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def measure(env: run.Env, kind: str, backend: int, n: int, close: bool, tmp: Path) -> dict[str, tuple[int, int]]:
    proc, port = env.start_proxy(kind, backend)
    try:
        run.http_probe(port)
        pids = proc.pids()
        if kind == "nginx" and len(pids) > 1:
            pids = [p for p in pids if p != proc.pid]  # the workers; the master only waits
        out = tmp / f"{kind}.strace"
        st = strace_counts(pids, out)
        try:
            argv = ["h2load", "--h1", "-n", str(n), "-c", "4", f"http://127.0.0.1:{port}/"]
            if close:
                argv[-1:-1] = ["-H", "Connection: close"]
            r = run.run_cmd(argv, timeout=300)
            m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", r.stdout)
            if not m or int(m.group(2)) != n:
                raise run.BenchError(f"h2load did not complete {n} requests:\n{r.stdout}{r.stderr}")
            proc.check_alive()
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=30)
        return parse_counts(out.read_text())
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="requests (default 2000)")
    ap.add_argument("--keepalive", action="store_true", help="keep connections open: syscalls per request")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma-separated contenders")
    ap.add_argument("--cplb", type=Path, default=run.REPO / "target" / "release" / "cplb")
    ap.add_argument("--uring-proto", type=Path, metavar="BIN",
                    help=f"the io_uring prototype's binary, for contender {run.URING!r} in --only; one "
                         "io_uring_enter may carry many operations, so its count is of kernel entries")
    args = ap.parse_args()
    kinds = run.chosen(ap, args.only, args.uring_proto)
    for tool in ("strace", "h2load"):
        if shutil.which(tool) is None:
            print(f"missing: {tool}; on Debian: apt-get install strace nghttp2-client", file=sys.stderr)
            return 2
    counts = run.each_contender(
        kinds, args.cplb, args.uring_proto, "cplb-syscalls-",
        lambda env, kind, port, tmp: measure(env, kind, port, args.n, not args.keepalive, tmp),
        lambda c: f"{sum(n for n, _ in c.values()) / args.n:.2f} syscalls per request")
    what = "request (keep-alive)" if args.keepalive else "new connection"
    names = sorted({s for c in counts.values() for s in c}, key=lambda s: -max(c.get(s, (0, 0))[0] for c in counts.values()))
    print(f"System calls per {what}, {args.n:,} requests, `strace -f -c` over all the proxy's threads "
          "and processes (errors in brackets).\n")
    print("| syscall | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for s in names:
        cells = []
        for k in kinds:
            c, e = counts[k].get(s, (0, 0))
            if c * 100 < args.n:  # under 0.01 per request: timers and housekeeping
                cells.append("")
            else:
                cells.append(f"{c / args.n:.2f}" + (f" ({e / args.n:.2f})" if e else ""))
        if any(cells):
            print(f"| {s} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{sum(c for c, _ in counts[k].values()) / args.n:.2f}**" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
