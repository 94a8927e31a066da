/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Maps and records of the identity-based policy programs (policy.c).
 *
 * Why this layout (see services/datapath/policymap.py for the control plane's side):
 *
 *   policy_endpoints  host-side ifindex -> {endpoint id, identity, flags}       (hash)
 *   policy_ipcache    LPM {prefixlen, IPv4 address} -> {identity}             (LPM trie)
 *   policy_rules      LPM {prefixlen, endpoint id, peer identity, direction, proto, dport}
 *                     -> {flags}; present = allow                             (LPM trie)
 *   policy_ct         {endpoint id, direction opened, 5-tuple} -> conntrack   (LRU hash)
 *   policy_events     flow events for user space                             (ring buffer)
 *   policy_counters   per-CPU counters, indexed by enum policy_counter       (per-CPU array)
 *
 * The rules key puts every exactly-matched field before the port, so one LPM lookup matches a
 * port range stored as power-of-two aligned prefixes: the prefix length of an entry is
 * POLICY_FIXED_BITS + port prefix length. Fields matched whole (ids, identity) are in host
 * order; the port, matched bit by bit, is in network order (most significant bit first).
 *
 * Conntrack entries are scoped by endpoint: a pod-to-pod packet on one node crosses two
 * endpoints (from-endpoint on the sender's veth, to-endpoint on the receiver's), and each must
 * apply its own policy; an entry created by the sender's egress must not let the packet skip
 * the receiver's ingress.
 *
 * Every struct is explicitly padded and mirrored byte for byte in
 * services/datapath/policylayout.py; the loader verifies pinned maps before reusing them.
 *
 * Settings come in as -D flags (no defaults, so the sizes Python verifies are the sizes
 * compiled in): PIN_DIR, POLICY_ENDPOINTS_MAX, POLICY_IPCACHE_MAX, POLICY_RULES_MAX,
 * POLICY_CT_MAX, POLICY_EVENTS_BYTES (a power of two, a multiple of the page size),
 * CT_LIFETIME_TCP, CT_LIFETIME_NONTCP, CT_LIFETIME_CLOSE (seconds).
 */
#ifndef WEIR_POLICY_MAPS_H
#define WEIR_POLICY_MAPS_H

#if !defined(PIN_DIR) || !defined(POLICY_ENDPOINTS_MAX) || !defined(POLICY_IPCACHE_MAX) || \
	!defined(POLICY_RULES_MAX) || !defined(POLICY_CT_MAX) || !defined(POLICY_EVENTS_BYTES) || \
	!defined(CT_LIFETIME_TCP) || !defined(CT_LIFETIME_NONTCP) || !defined(CT_LIFETIME_CLOSE)
#error "PIN_DIR, POLICY_*_MAX, POLICY_EVENTS_BYTES and CT_LIFETIME_* must be -D flags"
#endif

/* EndpointFlags in services/datapath/policymap.py */
#define EP_F_ENFORCE_INGRESS 1
#define EP_F_ENFORCE_EGRESS  2

/* Direction in services/datapath/policymap.py */
#define DIR_INGRESS 0 /* to the endpoint */
#define DIR_EGRESS  1 /* from the endpoint */

#define WORLD_IDENTITY 2
#define ANY_IDENTITY   0
#define ANY_PROTO      0

/* Hubble's Verdict and TraceObservationPoint numbers, Cilium's drop reasons. */
#define VERDICT_FORWARDED   1
#define VERDICT_DROPPED     2
#define OBS_FROM_ENDPOINT   5
#define OBS_TO_ENDPOINT     101
#define DROP_INVALID        134 /* "Invalid packet" */
#define DROP_POLICY_DENIED  133 /* "Policy denied" */

#define POLICY_NO_PREALLOC 1 /* BPF_F_NO_PREALLOC: required by LPM tries */

struct policy_endpoint {
	__u32 endpoint_id;
	__u32 identity;
	__u8 flags; /* EP_F_* */
	__u8 pad[3];
};

struct ipcache_key {
	__u32 prefixlen; /* 0..32 */
	__be32 address;
};

struct ipcache_value {
	__u32 identity;
	__u32 pad;
};

struct policy_key {
	__u32 prefixlen;     /* POLICY_FIXED_BITS + port prefix length (0..16) */
	__u32 endpoint_id;
	__u32 peer_identity; /* ANY_IDENTITY = any peer */
	__u8 direction;      /* DIR_* */
	__u8 proto;          /* ANY_PROTO = every protocol and port */
	__be16 dport;
};

#define POLICY_FIXED_BITS 80 /* endpoint_id, peer_identity, direction, proto */
#define POLICY_FULL_BITS  96

struct policy_value {
	__u32 flags; /* reserved (0 = allow) */
};

struct ct_key {
	__u32 endpoint_id;
	__be32 saddr; /* as the packet that opened the flow */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 direction; /* the direction the flow was opened in (DIR_*) */
	__u8 pad[2];
};

struct ct_entry {
	__u64 created;   /* bpf_ktime_get_ns() */
	__u64 last_seen;
	__u32 packets_fwd; /* approximate: not updated atomically */
	__u32 packets_rev;
	__u8 tcp_flags;    /* union of the flags seen both ways */
	__u8 pad[7];
};

struct flow_event {
	__u64 ktime_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 ifindex;
	__u8 verdict;     /* VERDICT_* */
	__u8 drop_reason; /* 0 or DROP_* */
	__u8 proto;
	__u8 tcp_flags;
	__u8 direction;   /* DIR_* of the endpoint */
	__u8 is_reply;
	__u8 obs_point;   /* OBS_* */
	__u8 pad;
	__u32 pad2;
};

enum policy_counter {
	PCNT_NOT_IPV4 = 0,   /* passed: not IPv4 (ARP, IPv6) */
	PCNT_NO_ENDPOINT,    /* passed: interface is not a configured endpoint */
	PCNT_FRAGMENT,       /* passed: a non-first IPv4 fragment (no L4 header) */
	PCNT_INVALID,        /* dropped: truncated or malformed IPv4 */
	PCNT_NEW_ALLOWED,    /* new flow allowed, conntrack entry created */
	PCNT_ESTABLISHED,    /* packet of a tracked flow, in its opening direction */
	PCNT_REPLY,          /* packet of a tracked flow, in the reply direction */
	PCNT_POLICY_DENIED,  /* dropped by policy */
	PCNT_CT_EXPIRED,     /* conntrack entry found past its lifetime: evaluated anew */
	PCNT_CT_FULL,        /* conntrack update failed (allowed anyway) */
	PCNT_EVENTS_LOST,    /* ring buffer full: event not recorded */
	PCNT_MAX,
};

#define MAP_PIN(name) PIN_DIR "/" name

BPF_TABLE_PINNED("hash", __u32, struct policy_endpoint, policy_endpoints, POLICY_ENDPOINTS_MAX,
		 MAP_PIN("policy_endpoints"), POLICY_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, policy_ipcache,
		 POLICY_IPCACHE_MAX, MAP_PIN("policy_ipcache"), POLICY_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_value, policy_rules,
		 POLICY_RULES_MAX, MAP_PIN("policy_rules"), POLICY_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, policy_ct, POLICY_CT_MAX,
		 MAP_PIN("policy_ct"));
BPF_TABLE_PINNED("percpu_array", __u32, __u64, policy_counters, PCNT_MAX,
		 MAP_PIN("policy_counters"));

/* bcc's BPF_RINGBUF_OUTPUT cannot be pinned; the same table with the pinned section syntax. */
struct policy_events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" MAP_PIN("policy_events"))))
struct policy_events_table_t policy_events = { .max_entries = POLICY_EVENTS_BYTES };

#endif /* WEIR_POLICY_MAPS_H */
