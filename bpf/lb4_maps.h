/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 load-balancing maps shared by the socket-level programs (sock_lb.c).
 *
 * Why this layout: it is Cilium's slot layout (bpf/lib/lb.h), so the control plane can change a
 * service with a fixed write order and the datapath never sees a half-written service:
 *
 *   lb4_services   {vip, port, slot, proto} -> {backend_id, count, rev_nat_id, flags, timeout}
 *                  slot 0 is the master (count, rev_nat_id, flags, affinity timeout),
 *                  slots 1..count hold one backend id each.
 *   lb4_backends   backend_id -> {ip, port, proto, state}
 *   lb4_revnat     rev_nat_id (u32; Cilium's u16 would cap a node at 65k frontends) -> {vip, port}
 *   lb4_frontends  {vip, port, 0, proto} -> the master's fields + up to LB4_INLINE_MAX backends
 *                  {address, port, backend_id} inline. What connect4 reads: for a service with
 *                  1..LB4_INLINE_MAX backends and no affinity, one lookup picks the backend
 *                  (instead of master + slot + backend); otherwise n_inline is 0 and the program
 *                  goes on to the slots. A map of its own, one entry per frontend (capacity
 *                  LB4_REVNAT_MAX, like lb4_revnat), so its bucket array is a fraction of
 *                  lb4_services': on a VM each bucket array a lookup touches costs a cache and TLB
 *                  miss. Derived from lb4_services/lb4_backends by the control plane (written
 *                  after the master, deleted before it) and rebuilt by the loader before attach.
 *   lb4_affinity   {client netns cookie, rev_nat_id} -> {backend_id, slot, last_used}   (LRU)
 *   lb4_sk_peer    array of LB4_SK_PEER_MAX slots, slot = socket cookie & (LB4_SK_PEER_MAX - 1):
 *                  {owner cookie, backend ip, backend port, vip, port, rev_nat_id}. The reverse
 *                  NAT of a *connected* socket (TCP, connected UDP: one peer per socket). A slot
 *                  is owned by the socket whose cookie it holds (0 = free): connect4 claims it
 *                  with a compare-and-swap, sock4_release frees it when the socket closes, so a
 *                  slot lives exactly as long as its socket. Why an array: its lookup is inlined
 *                  and the kernel hands cookies out per CPU in batches, so consecutive sockets
 *                  write adjacent, cache-hot slots (an LRU insert pops a cold node, takes locks
 *                  and touches a cold bucket: half of connect4's cost at 100k services). A
 *                  socket whose slot is owned by another live socket falls back to lb4_sk_revnat.
 *   lb4_sk_revnat  {socket cookie, backend ip, backend port} -> {vip, port, rev_nat_id} (LRU):
 *                  unconnected UDP (sendmsg4: many peers per socket) and the ring's fallback.
 *   lb4_counters   per-CPU counters, indexed by enum lb4_counter
 *   lb4_service_ranges  LPM trie {prefixlen, addr} -> u8: the service CIDR(s). A connect or
 *                  sendmsg to an address inside a range that has no lb4_services entry (a deleted
 *                  Service, or a port the Service does not have) is refused with ECONNREFUSED,
 *                  like kube-proxy's REJECT; written once at install time by the loader.
 *
 * Map accessors (.lookup, .update) must be used only in sock_lb.c itself: bcc rewrites them in
 * the main file, not in headers.
 *
 * Every struct is explicitly padded: the Python side (services/datapath/bpflayout.py) mirrors
 * them byte for byte with ctypes, and the loader verifies pinned maps' key/value sizes before
 * reusing them. Addresses and ports are in network byte order, everything else in host order.
 *
 * Settings come in as -D flags (the loader passes them; nothing here has a default so that the
 * sizes Python verifies can never silently differ from the sizes compiled in):
 *   PIN_DIR            bpffs directory holding the pins, e.g. "/sys/fs/bpf/weir/node-1/v1"
 *   LB4_SERVICES_MAX, LB4_BACKENDS_MAX, LB4_REVNAT_MAX, LB4_AFFINITY_MAX, LB4_SK_REVNAT_MAX,
 *   LB4_SERVICE_RANGES_MAX, LB4_SK_PEER_MAX (a power of two: the slot is a mask of the cookie)
 */
#ifndef WEIR_LB4_MAPS_H
#define WEIR_LB4_MAPS_H

#if !defined(PIN_DIR) || !defined(LB4_SERVICES_MAX) || !defined(LB4_BACKENDS_MAX) || \
	!defined(LB4_REVNAT_MAX) || !defined(LB4_AFFINITY_MAX) || !defined(LB4_SK_REVNAT_MAX) || \
	!defined(LB4_SERVICE_RANGES_MAX) || !defined(LB4_SK_PEER_MAX)
#error "PIN_DIR and LB4_*_MAX must be passed as -D flags (see services/datapath/loader.py)"
#endif
#if LB4_SK_PEER_MAX <= 0 || (LB4_SK_PEER_MAX & (LB4_SK_PEER_MAX - 1)) != 0
#error "LB4_SK_PEER_MAX must be a power of two (the slot is cookie & (LB4_SK_PEER_MAX - 1))"
#endif

/* ServiceFlags in services/datapath/lbmap.py */
#define SVC_F_AFFINITY    1 /* ClientIP session affinity, timeout in affinity_timeout */
#define SVC_F_LOCAL_ONLY  2 /* traffic policy Local: the slots hold node-local backends only */
#define SVC_F_NO_BACKENDS 4 /* master with count 0: refuse */

/* BackendState in services/datapath/lbmap.py */
#define BE_STATE_ACTIVE      0
#define BE_STATE_TERMINATING 1
#define BE_STATE_QUARANTINED 2

/* BPF hash flag: allocate entries on demand, so an idle node does not pin megabytes of memory
 * for capacity it never uses. LRU maps cannot use it (they need preallocation). */
#define LB4_NO_PREALLOC 1

struct lb4_key {
	__be32 address;     /* service VIP */
	__be16 dport;       /* service port */
	__u16 backend_slot; /* 0 = master, 1..count = backend slots */
	__u8 proto;         /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad[3];
};

struct lb4_service {
	__u32 backend_id;       /* slots: the backend in this slot */
	__u32 rev_nat_index;    /* master: id in lb4_revnat (32 bits: more than 65k frontends) */
	__u16 count;            /* master: number of backend slots */
	__u8 flags;             /* master: SVC_F_* */
	__u8 pad;
	__u32 affinity_timeout; /* master: seconds; 0 = never expires */
};

#define LB4_INLINE_MAX 4 /* INLINE_BACKENDS_MAX in services/datapath/lbmap.py */

struct lb4_inline_backend {
	__be32 address;
	__be16 port;
	__u16 pad;
	__u32 backend_id; /* its id in lb4_backends: for inspection, not read by the programs */
};

struct lb4_frontend {
	__u32 rev_nat_index;
	__u16 count;            /* backend slots in lb4_services (0: refuse) */
	__u8 flags;             /* SVC_F_* */
	__u8 n_inline;          /* 0: use the slots; else == count, the backends below */
	__u32 affinity_timeout; /* seconds; 0 = never expires */
	__u32 pad;
	struct lb4_inline_backend backends[LB4_INLINE_MAX];
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* BE_STATE_*: informational, the slots already hold only the chosen set */
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_affinity_key {
	__u64 client_cookie; /* netns cookie of the connecting socket */
	__u32 rev_nat_id;    /* identifies the service */
	__u32 pad;
};

struct lb4_affinity_val {
	__u64 last_used;  /* bpf_ktime_get_ns() of the last use */
	__u32 backend_id;
	__u16 slot;       /* the slot it was picked from: lets us prove it is still a member */
	__u16 pad;
};

struct ipv4_revnat_tuple {
	__u64 cookie;   /* socket cookie */
	__be32 address; /* backend address the socket was sent to */
	__be16 port;    /* backend port */
	__u16 pad;
};

struct ipv4_revnat_entry {
	__be32 address; /* service VIP to show instead */
	__be16 port;
	__u16 pad;
	__u32 rev_nat_index;
};

/* One slot of lb4_sk_peer: 32 bytes, two slots per cache line. */
struct lb4_sk_peer {
	__u64 cookie;           /* the owning socket's cookie; 0 = free */
	__be32 backend_address; /* the backend the socket was connected to */
	__be16 backend_port;
	__be16 port;            /* service port to show instead */
	__be32 address;         /* service VIP to show instead */
	__u32 rev_nat_index;    /* checked against lb4_revnat: a changed service shows the backend */
	__u64 pad;
};

struct lb4_range_key {
	__u32 prefixlen;  /* LPM: 0..32 bits of address that must match */
	__be32 address;
};

enum lb4_counter {
	CNT_TRANSLATED = 0,    /* connect/sendmsg rewritten to a backend */
	CNT_REFUSED,           /* no backends, or no service in a service range: ECONNREFUSED */
	CNT_BACKEND_MISSING,   /* a slot pointed at an id absent from lb4_backends (skipped) */
	CNT_AFFINITY_HIT,      /* affinity entry reused */
	CNT_AFFINITY_EXPIRED,  /* affinity entry older than the timeout: re-picked */
	CNT_AFFINITY_STALE,    /* affinity backend no longer in the service's slots: re-picked */
	CNT_REVNAT_HIT,        /* recvmsg/getpeername rewritten back to the VIP */
	CNT_REVNAT_STALE,      /* sk revnat entry whose service changed: dropped */
	CNT_MAX,
};

#define MAP_PIN(name) PIN_DIR "/" name

BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_service, lb4_services, LB4_SERVICES_MAX,
		 MAP_PIN("lb4_services"), LB4_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_frontend, lb4_frontends, LB4_REVNAT_MAX,
		 MAP_PIN("lb4_frontends"), LB4_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lb4_backend, lb4_backends, LB4_BACKENDS_MAX,
		 MAP_PIN("lb4_backends"), LB4_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lb4_reverse_nat, lb4_revnat, LB4_REVNAT_MAX,
		 MAP_PIN("lb4_revnat"), LB4_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct lb4_affinity_key, struct lb4_affinity_val, lb4_affinity,
		 LB4_AFFINITY_MAX, MAP_PIN("lb4_affinity"));
BPF_TABLE_PINNED("lru_hash", struct ipv4_revnat_tuple, struct ipv4_revnat_entry, lb4_sk_revnat,
		 LB4_SK_REVNAT_MAX, MAP_PIN("lb4_sk_revnat"));
BPF_TABLE_PINNED("array", __u32, struct lb4_sk_peer, lb4_sk_peer, LB4_SK_PEER_MAX,
		 MAP_PIN("lb4_sk_peer"));
BPF_TABLE_PINNED("percpu_array", __u32, __u64, lb4_counters, CNT_MAX, MAP_PIN("lb4_counters"));
/* LPM tries require BPF_F_NO_PREALLOC */
BPF_TABLE_PINNED("lpm_trie", struct lb4_range_key, __u8, lb4_service_ranges,
		 LB4_SERVICE_RANGES_MAX, MAP_PIN("lb4_service_ranges"), LB4_NO_PREALLOC);

#endif /* WEIR_LB4_MAPS_H */
