// SPDX-License-Identifier: Apache-2.0
//
// cplb's kernel data plane: rewrite a TCP connect() to one of this cplb
// instance's listen addresses into a connect() to the chosen master, so the
// client talks to the master directly and cplb leaves the byte path.
// docs/kernel.md explains the design; src/kernel/maps.rs mirrors every
// struct below (a unit test there checks the sizes).
//
// Built by build.rs: clang -O2 -g -target bpf -mcpu=v3 (v3 for the atomic
// compare-and-swap and fetch-add of the passive health state).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6

// Keep in step with src/kernel/maps.rs.
#define MAX_BACKENDS 256
#define MAX_SERVICE_KEYS 256
#define MAX_SLOTS 4096
#define REGIONS 24 // 3 * MAX_SERVICES (8)
#define CANDIDATES 4
#define NO_BACKEND 0xffff
#define MAX_CONNS 32768
#define MAX_PEERS 8192

// backend.flags
#define BACKEND_USABLE 1
#define BACKEND_RETIRED 2

// conn.flags
#define CONN_REWRITTEN 1
#define CONN_ESTABLISHED 2

struct config {
	__u64 netns_cookie; // the host's network namespace; 0 = rewrite nothing
	__u64 cgroup_id;    // where the links are attached (user space's record)
	__u32 layout;       // LAYOUT in maps.rs
	__u32 pad;
};

// A listen address: IPv6, or IPv4 as ::ffff:a.b.c.d; both in network order.
struct svc_key {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

struct svc {
	__u32 base;  // first slot of this service's region in cplb_slots
	__u32 slots; // 1 for hash keys node and remote_addr, else the table size
};

// One slice of the hash space: backend indexes in ring-walk order; the
// first is the slice's home.
struct slot {
	__u16 cand[CANDIDATES];
};

// Written by user space only.
struct backend {
	__u32 addr[4]; // IPv6, or IPv4 as ::ffff:a.b.c.d
	__u16 port;    // network order
	__u16 family;  // AF_INET, AF_INET6; 0 = never used
	__u32 flags;
	__u32 max_fails; // 0 disables passive health
	__u32 pad;
	__u64 fail_timeout_ns;
};

// nginx's passive health, as src/health/passive.rs runs it in the proxy.
// Written by the programs (atomics); user space only reads it, or zeroes it
// to clear a mark.
struct health {
	__u64 down_until; // 0 while up; else no trial before this time
	__u64 window_start;
	__u32 fails;
	__u32 pad;
};

struct stats {
	__u64 connects; // SYN_SENT -> ESTABLISHED
	__u64 failures; // SYN_SENT -> CLOSE
	__s64 open;     // established, not yet closed
	__u64 marked_down;
};

// Who connected: issue 22 names clients from this.
struct ident {
	__u64 cgroup_id;
	__u64 at_ns; // bpf_ktime_get_ns() at connect()
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	__u32 pad;
	char comm[16];
};

struct conn {
	__u32 orig_addr[4]; // the listen address asked for (getpeername)
	__u16 orig_port;
	__u16 backend; // index chosen
	__u16 home;    // the slot's first candidate (fail-back)
	__u16 flags;
	struct ident who;
};

// The client's own address of a connect to a listen address that was NOT
// rewritten (it reaches the proxy): the proxy looks its accepted peer up here.
struct peer_key {
	__u32 addr[4];
	__u16 port; // network order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} cplb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICE_KEYS);
	__type(key, struct svc_key);
	__type(value, struct svc);
} cplb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, REGIONS * MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct slot);
} cplb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} cplb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct health);
} cplb_health SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct stats);
} cplb_stats SEC(".maps");

// LRU: an entry whose socket never reaches the sock_ops program (a connect
// refused by another program after this one) would otherwise leak.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64); // socket cookie
	__type(value, struct conn);
} cplb_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PEERS);
	__type(key, struct peer_key);
	__type(value, struct ident);
} cplb_peers SEC(".maps");

// Set to 1 by the loader when it holds CAP_PERFMON, which a cgroup
// program needs for bpf_get_current_comm(). The verifier reads this
// constant and never checks the call when it is 0, so the programs load
// with CAP_BPF and CAP_NET_ADMIN alone (comm is then left empty).
volatile const __u32 record_comm = 0;

static __always_inline void who(struct ident *w)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	w->tgid = pid_tgid >> 32;
	w->uid = (__u32)uid_gid;
	w->gid = uid_gid >> 32;
	w->cgroup_id = bpf_get_current_cgroup_id();
	w->at_ns = bpf_ktime_get_ns();
	if (record_comm)
		bpf_get_current_comm(w->comm, sizeof(w->comm));
}

// Passive health's admission: usable, or marked down and due its one trial
// per fail_timeout (the compare-and-swap grants it to one connect only).
static __always_inline int admit(const struct backend *be, struct health *h, __u64 now)
{
	if (be->max_fails == 0)
		return 1;
	__u64 until = *(volatile __u64 *)&h->down_until;
	if (until == 0)
		return 1;
	if (now < until)
		return 0;
	__u64 ft = be->fail_timeout_ns ? be->fail_timeout_ns : 1;
	return __sync_val_compare_and_swap(&h->down_until, until, now + ft) == until;
}

static __always_inline int rewrite(struct bpf_sock_addr *ctx, struct svc_key *key, int v4)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&cplb_config, &zero);
	if (!cfg || cfg->netns_cookie == 0)
		return 1;
	// The hook runs for every network namespace under the cgroup: a
	// container's own 127.0.0.1:PORT is not this cplb.
	if (bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return 1;
	struct svc *s = bpf_map_lookup_elem(&cplb_services, key);
	if (!s)
		return 1;

	struct conn c = {};
	c.orig_addr[0] = key->addr[0];
	c.orig_addr[1] = key->addr[1];
	c.orig_addr[2] = key->addr[2];
	c.orig_addr[3] = key->addr[3];
	c.orig_port = key->port;
	c.backend = NO_BACKEND;
	c.home = NO_BACKEND;
	who(&c.who);
	__u64 cookie = bpf_get_socket_cookie(ctx);

	__u32 n = s->slots;
	struct slot *sl = 0;
	if (n > 0 && n <= MAX_SLOTS) {
		__u32 i = s->base;
		// One slot: the whole node goes to one master (hash keys node
		// and remote_addr). Else a uniform slice of the hash space: the
		// proxy's key for `connection` (client ip:port) is not known
		// before the connect, and it is as uniform.
		if (n > 1)
			i += bpf_get_prandom_u32() % n;
		sl = bpf_map_lookup_elem(&cplb_slots, &i);
	}
	struct backend *chosen = 0;
	if (sl) {
		__u64 now = bpf_ktime_get_ns();
		c.home = sl->cand[0];
#pragma unroll
		for (int k = 0; k < CANDIDATES; k++) {
			__u32 b = sl->cand[k];
			if (b == NO_BACKEND)
				break;
			struct backend *be = bpf_map_lookup_elem(&cplb_backends, &b);
			struct health *h = bpf_map_lookup_elem(&cplb_health, &b);
			if (!be || !h || !(be->flags & BACKEND_USABLE))
				continue;
			// connect4 can only reach IPv4; connect6 reaches both
			// (IPv4 as ::ffff:a.b.c.d).
			if (be->family != AF_INET && (v4 || be->family != AF_INET6))
				continue;
			if (!admit(be, h, now))
				continue;
			chosen = be;
			c.backend = b;
			break;
		}
	}
	if (!chosen) {
		// Left alone: the connect reaches cplb's own listener, the
		// proxy. Its identity waits for the sock_ops program, which
		// knows the client's port.
		c.flags = 0;
		bpf_map_update_elem(&cplb_conns, &cookie, &c, BPF_ANY);
		return 1;
	}
	if (v4) {
		ctx->user_ip4 = chosen->addr[3];
	} else {
		ctx->user_ip6[0] = chosen->addr[0];
		ctx->user_ip6[1] = chosen->addr[1];
		ctx->user_ip6[2] = chosen->addr[2];
		ctx->user_ip6[3] = chosen->addr[3];
	}
	ctx->user_port = chosen->port;
	c.flags = CONN_REWRITTEN;
	bpf_map_update_elem(&cplb_conns, &cookie, &c, BPF_ANY);
	return 1;
}

SEC("cgroup/connect4")
int cplb_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	struct svc_key key = {};
	key.addr[2] = bpf_htonl(0xffff);
	key.addr[3] = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	return rewrite(ctx, &key, 1);
}

SEC("cgroup/connect6")
int cplb_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	struct svc_key key = {};
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	key.port = (__u16)ctx->user_port;
	return rewrite(ctx, &key, 0);
}

// getpeername() on a rewritten socket returns the listen address it asked
// for; every other socket (a direct connection to a master) is untouched.
static __always_inline struct conn *rewritten(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct conn *c = bpf_map_lookup_elem(&cplb_conns, &cookie);
	if (!c || !(c->flags & CONN_REWRITTEN))
		return 0;
	return c;
}

SEC("cgroup/getpeername4")
int cplb_getpeername4(struct bpf_sock_addr *ctx)
{
	struct conn *c = rewritten(ctx);
	if (c) {
		ctx->user_ip4 = c->orig_addr[3];
		ctx->user_port = c->orig_port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int cplb_getpeername6(struct bpf_sock_addr *ctx)
{
	struct conn *c = rewritten(ctx);
	if (c) {
		ctx->user_ip6[0] = c->orig_addr[0];
		ctx->user_ip6[1] = c->orig_addr[1];
		ctx->user_ip6[2] = c->orig_addr[2];
		ctx->user_ip6[3] = c->orig_addr[3];
		ctx->user_port = c->orig_port;
	}
	return 1;
}

// nginx's max_fails / fail_timeout on a failed connect (see
// PassiveHealth::on_failure): max_fails failures within fail_timeout mark
// the backend down until now + fail_timeout; a failed trial keeps it down.
static __always_inline void on_failure(const struct backend *be, struct health *h,
				       struct stats *st, __u64 now)
{
	if (be->max_fails == 0)
		return;
	__u64 ft = be->fail_timeout_ns;
	__u32 fails;
	if (h->fails == 0 || now - h->window_start > ft) {
		h->window_start = now;
		h->fails = 1;
		fails = 1;
	} else {
		fails = __sync_fetch_and_add(&h->fails, 1) + 1;
	}
	__u64 next = now + (ft ? ft : 1);
	__u64 until = *(volatile __u64 *)&h->down_until;
	if (until != 0) {
		if (next > until)
			__sync_val_compare_and_swap(&h->down_until, until, next);
		return;
	}
	if (fails >= be->max_fails && __sync_val_compare_and_swap(&h->down_until, 0, next) == 0)
		__sync_fetch_and_add(&st->marked_down, 1);
}

SEC("sockops")
int cplb_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct conn *c = bpf_map_lookup_elem(&cplb_conns, &cookie);
	if (!c)
		return 1;

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		if (c->flags & CONN_REWRITTEN) {
			// Keep other programs' flags.
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
								 BPF_SOCK_OPS_STATE_CB_FLAG);
			return 1;
		}
		// A connect left to the proxy: the port is chosen now, so
		// the proxy can name the peer it accepts.
		// Every field read before the branch: clang would otherwise
		// merge the branches' loads through one computed context
		// pointer, which the verifier refuses.
		__u32 family = skops->family;
		__u32 ip4 = skops->local_ip4;
		__u32 ip6_0 = skops->local_ip6[0];
		__u32 ip6_1 = skops->local_ip6[1];
		__u32 ip6_2 = skops->local_ip6[2];
		__u32 ip6_3 = skops->local_ip6[3];
		struct peer_key pk = {};
		if (family == AF_INET) {
			pk.addr[2] = bpf_htonl(0xffff);
			pk.addr[3] = ip4;
		} else {
			pk.addr[0] = ip6_0;
			pk.addr[1] = ip6_1;
			pk.addr[2] = ip6_2;
			pk.addr[3] = ip6_3;
		}
		pk.port = bpf_htons((__u16)skops->local_port);
		bpf_map_update_elem(&cplb_peers, &pk, &c->who, BPF_ANY);
		bpf_map_delete_elem(&cplb_conns, &cookie);
		return 1;
	}

	__u32 from = skops->args[0];
	__u32 to = skops->args[1];
	__u32 b = c->backend;
	struct backend *be = bpf_map_lookup_elem(&cplb_backends, &b);
	struct health *h = bpf_map_lookup_elem(&cplb_health, &b);
	struct stats *st = bpf_map_lookup_elem(&cplb_stats, &b);
	if (!be || !h || !st)
		return 1;

	if (from == BPF_TCP_SYN_SENT && to == BPF_TCP_ESTABLISHED) {
		__sync_fetch_and_add(&st->connects, 1);
		__sync_fetch_and_add(&st->open, 1);
		c->flags |= CONN_ESTABLISHED;
		// nginx: a success resets the failure count, and ends a mark.
		if (h->fails)
			h->fails = 0;
		if (*(volatile __u64 *)&h->down_until)
			h->down_until = 0;
		return 1;
	}
	if (to != BPF_TCP_CLOSE)
		return 1;
	if (from == BPF_TCP_SYN_SENT) {
		__sync_fetch_and_add(&st->failures, 1);
		on_failure(be, h, st, bpf_ktime_get_ns());
	} else if (c->flags & CONN_ESTABLISHED) {
		__sync_fetch_and_add(&st->open, -1);
	}
	bpf_map_delete_elem(&cplb_conns, &cookie);
	return 1;
}

char LICENSE[] SEC("license") = "Apache-2.0";
