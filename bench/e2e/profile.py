#!/usr/bin/env python3
"""Where each proxy's CPU goes at a fixed offered load, by kind of work.

Run from the repo root (needs perf from Debian's linux-perf, and h2load; as root):

    python3 bench/e2e/profile.py                        # nginx, haproxy, cplb, keep-alive
    python3 bench/e2e/profile.py --close --rate 5000    # new connections
    python3 bench/e2e/profile.py --only cplb,uring-proto --uring-proto BIN

Each contender is started fresh from templates/ in front of the same nginx HTTP
backend (as run.py does); `h2load --h1` offers a fixed rate (keep-alive: 20
connections paced with --rps; close: new connections paced with -r/--rate-period)
while `perf record -e cpu-clock` samples every thread of the proxy. Samples are
then put into kinds by symbol name (the regular expressions below): the TCP/IP
stack (which, on loopback, includes the receiving side's work done inside the
sender's call), the cost of entering and leaving the kernel, epoll, io_uring,
sleeping and waking (the scheduler, and waking the peer that reads), memory
management, other kernel code, and user space
(the proxy's own code and its libraries). The kinds are a reading aid, not exact
accounting: a symbol that fits none of them counts as "other kernel".
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the harness's process and backend helpers)

KINDS = [
    ("syscall entry/exit", r"^(entry_SYSCALL|do_syscall_64|syscall_exit|syscall_return|__x64_sys_|x64_sys_call"
                           r"|exit_to_user_mode|arch_exit_to_user|restore_fpregs|switch_fpu|fpregs_|__x86_return_thunk"
                           r"|srso_|retbleed_|entry_untrain_ret|amd_clear_divider|clear_bhb|__fdget|fput|fget"
                           r"|__fget|__fput|__x86_indirect_thunk|irqentry_exit)"),
    ("epoll", r"^(ep_|__ep_|epoll|do_epoll|__do_sys_epoll|__x64_sys_epoll)"),
    ("io_uring", r"^(io_|__io_|tctx_task_work|task_work_run)"),
    # On loopback, `_raw_spin_unlock_irqrestore` is mostly `sock_def_readable`
    # waking the receiving peer inside the sender's call, and
    # `finish_task_switch` is the return from sleep in epoll_wait or
    # io_uring_enter (perf record -g, 2026-11-26): both are sleeping and waking.
    ("sleeping and waking", r"^(_raw_spin_unlock_irqrestore|schedule|__schedule|pick_next|enqueue_|dequeue_|try_to_wake_up|ttwu_|finish_task_switch"
                            r"|update_|psi_|__wake_up|autoremove_wake|default_wake|wake_up|select_task_rq|set_next_"
                            r"|put_prev|check_preempt|resched|__switch_to|switch_mm|native_sched|sched_"
                            r"|do_idle|cpuidle|default_idle|__cond_resched|prepare_to_wait|finish_wait"
                            r"|hrtimer|__hrtimer)"),
    ("memory management", r"^(kmalloc|__kmalloc|kfree|kmem_cache|__kmem_cache|slab|__slab|___slab|page_|__page|alloc_pages"
                          r"|__alloc|free_unref|mem_cgroup|__mod_memcg|refill_stock|obj_cgroup|__memcg|memcg_"
                          r"|get_page_from_freelist|rmqueue|__free_pages|free_pcp|kvfree|kmalloc_reserve)"),
    ("TCP/IP stack", r"^(tcp_|__tcp|ip_|__ip_|ipv4_|inet_|__inet|inet6?_|sk_|__sk_|skb|__skb|kfree_skb|__kfree_skb|consume_skb"
                     r"|napi|__napi|net_rx|__netif|netif_|process_backlog|loopback_|__dev_queue|dev_hard|dev_queue"
                     r"|validate_xmit|sock_|__sock|security_sock|release_sock|lock_sock|__release_sock|sockfd_lookup"
                     r"|copy_user|rep_movs|_copy_to_iter|_copy_from_iter|__copy_|copyin|copyout|simple_copy|csum"
                     r"|__local_bh|do_softirq|__do_softirq|handle_softirqs|irq_exit|nf_|ipt_|dst_|fib_|__fib|raw_v4"
                     r"|__x64_sys_(send|recv|sendto|recvfrom|accept|connect|shutdown)|__sys_|__do_sys_|sel_netif"
                     r"|selinux_|apparmor_|security_|bpf_|__cgroup_bpf|lookup_|__lookup|bictcp|cubictcp|minmax"
                     r"|__inet_lookup|udp_|neigh_|eth_|__neigh|arp_|sch_direct|qdisc|__qdisc|pfifo|__build_skb"
                     r"|build_skb|__alloc_skb|alloc_skb|kmalloc_slab|__napi_alloc|mod_timer|__mod_timer|sk_reset"
                     r"|inet_csk|reqsk_|__sys_connect|__sys_accept|do_accept|move_addr|__scm|scm_|sock_def|sk_stream"
                     r"|__sk_mem|sk_mem|__put_user|__get_user|_copy_from_user|_copy_to_user|check_heap_object"
                     r"|__check_object_size|__virt_addr_valid|fsnotify|__fsnotify|d_alloc|alloc_file|sock_alloc"
                     r"|__sock_release|sock_close|__fput_sync|dput|iput|evict|destroy_inode|inode_|new_inode"
                     r"|get_unused_fd|fd_install|alloc_fd|__close_fd|file_close_fd|filp_close|close_fd)"),
]
OTHER_KERNEL = "other kernel"
USER = "user space"
ORDER = [k for k, _ in KINDS] + [OTHER_KERNEL, USER]


def classify(sym: str, kernel: bool) -> str:
    if not kernel:
        return USER
    for kind, rx in KINDS:
        if re.match(rx, sym):
            return kind
    return OTHER_KERNEL


def perf_shares(data: Path) -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    """(percent of samples by kind, the top symbols) from a perf.data."""
    r = run.run_cmd(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio",
                     "-g", "none", "--percent-limit", "0"], timeout=300)
    shares: dict[str, float] = defaultdict(float)
    top = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[([k.])\]\s+(\S+)", line)
        if not m:
            continue
        pct, kernel, sym = float(m.group(1)), m.group(2) == "k", m.group(3)
        kind = classify(sym, kernel)
        shares[kind] += pct
        top.append((pct, sym, kind))
    # perf prints each symbol's share rounded to 0.01 %; over hundreds of
    # symbols the sum drifts from 100 by up to about 1 %.
    total = sum(shares.values()) or 1.0
    return {k: v * 100 / total for k, v in shares.items()}, sorted(top, reverse=True)


def h2load_argv(port: int, rate: int, seconds: float, close: bool) -> list[str]:
    url = f"http://127.0.0.1:{port}/"
    if close:
        n = max(1, int(rate * seconds))
        return ["h2load", "--h1", "-n", str(n), "-c", str(max(1, rate // 100)), "-r", str(max(1, rate // 100)),
                "--rate-period", "10ms", "-H", "Connection: close", url]
    n = int(rate * seconds)
    return ["h2load", "--h1", "-n", str(n), "-c", "20", "--rps", str(rate / 20), url]


def profile(env: run.Env, kind: str, backend: int, rate: int, seconds: float, close: bool, tmp: Path):
    proc, port = env.start_proxy(kind, backend)
    try:
        run.http_probe(port)
        pids = proc.pids()
        data = tmp / f"{kind}.perf.data"
        t0 = run.cpu_ticks(pids)
        load = subprocess.Popen(h2load_argv(port, rate, seconds, close), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # Skip the ramp-up; then sample for most of the run.
        time.sleep(min(1.0, seconds / 5))
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-o", str(data), "-p",
                                 ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out, _ = load.communicate(timeout=seconds * 3 + 60)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        cpu_s = (run.cpu_ticks(pids) - t0) / run.CLK_TCK
        proc.check_alive()
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        if not m:
            raise run.BenchError(f"h2load: {out}")
        done = int(m.group(1))
        shares, top = perf_shares(data)
        return shares, top, cpu_s / done * 1e5, done
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10000, help="offered requests/s (default 10000)")
    ap.add_argument("--seconds", type=float, default=10, help="length of the load (default 10)")
    ap.add_argument("--close", action="store_true", help="Connection: close (a new connection per request)")
    ap.add_argument("--only", default=",".join(run.PROXIES), help="comma-separated contenders")
    ap.add_argument("--top", type=int, default=12, help="symbols listed per contender (default 12)")
    ap.add_argument("--cplb", type=Path, default=run.REPO / "target" / "release" / "cplb")
    ap.add_argument("--uring-proto", type=Path, metavar="BIN", help="the io_uring prototype's binary")
    args = ap.parse_args()
    kinds = run.chosen(ap, args.only, args.uring_proto)
    for tool, pkg in (("perf", "linux-perf"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            print(f"missing: {tool}; on Debian: apt-get install {pkg}", file=sys.stderr)
            return 2
    results = run.each_contender(
        kinds, args.cplb, args.uring_proto, "cplb-profile-",
        lambda env, kind, port, tmp: profile(env, kind, port, args.rate, args.seconds, args.close, tmp),
        lambda r: f"{r[2]:.3f} CPU s per 100k requests, {r[3]} requests")
    mode = "`Connection: close`" if args.close else "keep-alive"
    print(f"Share of each proxy's CPU samples (`perf record -e cpu-clock`, every thread), {mode} at "
          f"{args.rate:,} req/s offered for {args.seconds:g} s; CPU s per 100k requests from /proc/PID/stat.\n")
    print("| kind of work | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for k in ORDER:
        print(f"| {k} | " + " | ".join(f"{results[c][0].get(k, 0.0):.1f} %" for c in kinds) + " |")
    print("| **CPU s per 100k requests** | " + " | ".join(f"**{results[c][2]:.3f}**" for c in kinds) + " |")
    print("| CPU s per 100k requests, by kind: TCP/IP stack | "
          + " | ".join(f"{results[c][2] * results[c][0].get('TCP/IP stack', 0.0) / 100:.3f}" for c in kinds) + " |")
    print("| CPU s per 100k requests, everything else | "
          + " | ".join(f"{results[c][2] * (100 - results[c][0].get('TCP/IP stack', 0.0)) / 100:.3f}" for c in kinds)
          + " |")
    for c in kinds:
        print(f"\n{c}, top symbols:\n")
        for pct, sym, kind in results[c][1][:args.top]:
            print(f"- {pct:.1f} % `{sym}` ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
