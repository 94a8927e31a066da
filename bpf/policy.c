/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Identity-based network policy for IPv4, enforced on each pod's host-side veth (tc, direct
 * action), after Cilium's bpf_lxc.c.
 *
 *   policy_from_endpoint  tc ingress of the host-side veth: packets FROM the pod (its egress)
 *   policy_to_endpoint    tc egress of the host-side veth: packets TO the pod (its ingress)
 *
 * Why identities: the peer address is turned into a numeric identity through the ipcache LPM
 * trie (pod /32s, policy CIDRs; no match = WORLD), and the policy is keyed by identity, so pod
 * churn changes one ipcache entry, not every rule that mentions the pod.
 *
 * Why connection tracking: policy is decided once per flow. A new flow that is allowed (or not
 * enforced in its direction) creates a conntrack entry scoped to the endpoint and remembering
 * the direction it was opened in; later packets of the flow, and its replies, pass on the entry
 * without a policy lookup. So replies of an allowed egress connection pass while ingress is
 * enforced, and turning enforcement on does not cut established flows. Entries end by LRU
 * eviction or by a lifetime check (shorter once a FIN or RST was seen).
 *
 * Why events only for new flows and drops: the ring buffer carries what an operator needs
 * (every policy drop, every new allowed flow) without a record per packet; a full ring buffer
 * never blocks the datapath, it bumps PCNT_EVENTS_LOST.
 *
 * Not handled here, on purpose: non-first IPv4 fragments pass (they carry no ports and cannot
 * open a flow without their first fragment, which is policed); non-echo ICMP (errors) is
 * policed as a new flow with ports 0.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>

#include "policy_maps.h"

#define PL_NSEC_PER_SEC 1000000000ULL

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8

#define IP_MF     0x2000
#define IP_OFFSET 0x1FFF

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,
	PARSE_FRAGMENT,
	PARSE_INVALID,
};

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;    /* policy and events: ports (0 for ICMP and other protocols) */
	__be16 dport;
	__be16 ct_sport; /* conntrack: the ports, or the ICMP echo id on the requester's side */
	__be16 ct_dport;
	__u8 proto;
	__u8 tcp_flags;
};

static __always_inline void count(__u32 which)
{
	__u64 *val = policy_counters.lookup(&which);

	if (val)
		*val += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr iph;
	__u32 l4;
	__u16 frag;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
		return PARSE_INVALID;
	if (iph.version != 4 || iph.ihl < 5)
		return PARSE_INVALID;
	p->saddr = iph.saddr;
	p->daddr = iph.daddr;
	p->proto = iph.protocol;
	frag = bpf_ntohs(iph.frag_off);
	if (frag & IP_OFFSET)
		return PARSE_FRAGMENT;
	l4 = ETH_HLEN + iph.ihl * 4;

	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return PARSE_INVALID;
		p->sport = ports[0];
		p->dport = ports[1];
		p->ct_sport = ports[0];
		p->ct_dport = ports[1];
		if (p->proto == IPPROTO_TCP &&
		    bpf_skb_load_bytes(skb, l4 + 13, &p->tcp_flags, 1) < 0)
			return PARSE_INVALID;
	} else if (p->proto == IPPROTO_ICMP) {
		__u8 icmp[8]; /* type, code, checksum, echo id, echo sequence */
		__be16 id;

		if (bpf_skb_load_bytes(skb, l4, icmp, sizeof(icmp)) < 0)
			return PARSE_INVALID;
		id = (__be16)(icmp[4] | (icmp[5] << 8));
		/* Echo: the id stands in for the requester's port, so a reply matches the request
		 * and a request from the other side does not. */
		if (icmp[0] == ICMP_ECHO)
			p->ct_sport = id;
		else if (icmp[0] == ICMP_ECHOREPLY)
			p->ct_dport = id;
	}
	return PARSE_OK;
}

static __always_inline __u32 ipcache_identity(__be32 address)
{
	struct ipcache_key key = { .prefixlen = 32, .address = address };
	struct ipcache_value *val = policy_ipcache.lookup(&key);

	return val ? val->identity : WORLD_IDENTITY;
}

/* The four lookups, most specific first: (peer, proto, port), (peer, any), (any peer, proto,
 * port), (any peer, any). Each LPM lookup also matches port-range prefixes. */
static __always_inline int policy_allows(__u32 endpoint_id, __u8 dir, __u32 peer, __u8 proto,
					 __be16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_BITS,
		.endpoint_id = endpoint_id,
		.peer_identity = peer,
		.direction = dir,
		.proto = proto,
		.dport = dport,
	};

	if (policy_rules.lookup(&key))
		return 1;
	key.proto = ANY_PROTO;
	key.dport = 0;
	if (policy_rules.lookup(&key))
		return 1;
	key.peer_identity = ANY_IDENTITY;
	key.proto = proto;
	key.dport = dport;
	if (policy_rules.lookup(&key))
		return 1;
	key.proto = ANY_PROTO;
	key.dport = 0;
	return policy_rules.lookup(&key) != NULL;
}

static __always_inline void emit(struct __sk_buff *skb, const struct pkt *p, __u64 now,
				 __u8 verdict, __u8 reason, __u32 src_id, __u32 dst_id,
				 __u32 endpoint_id, __u8 dir)
{
	struct flow_event *ev = policy_events.ringbuf_reserve(sizeof(struct flow_event));

	if (!ev) {
		count(PCNT_EVENTS_LOST);
		return;
	}
	ev->ktime_ns = now;
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->src_identity = src_id;
	ev->dst_identity = dst_id;
	ev->endpoint_id = endpoint_id;
	ev->ifindex = skb->ifindex;
	ev->verdict = verdict;
	ev->drop_reason = reason;
	ev->proto = p->proto;
	ev->tcp_flags = p->tcp_flags;
	ev->direction = dir;
	ev->is_reply = 0; /* events are for new flows and drops; replies are never either */
	ev->obs_point = dir == DIR_INGRESS ? OBS_TO_ENDPOINT : OBS_FROM_ENDPOINT;
	ev->pad = 0;
	ev->pad2 = 0;
	policy_events.ringbuf_submit(ev, 0);
}

/* Is a tracked flow still alive? Also refreshes it. */
static __always_inline int ct_alive(struct ct_entry *ct, const struct pkt *p, __u64 now, int rev)
{
	__u64 lifetime = CT_LIFETIME_NONTCP;

	if (p->proto == IPPROTO_TCP) {
		if (ct->tcp_flags & (TCP_FIN | TCP_RST)) {
			/* A fresh SYN on a closing tuple opens a new flow: police it again. */
			if ((p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
				return 0;
			lifetime = CT_LIFETIME_CLOSE;
		} else {
			lifetime = CT_LIFETIME_TCP;
		}
	}
	if (now - ct->last_seen > lifetime * PL_NSEC_PER_SEC)
		return 0;
	ct->last_seen = now;
	ct->tcp_flags |= p->tcp_flags;
	if (rev)
		ct->packets_rev += 1;
	else
		ct->packets_fwd += 1;
	return 1;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct policy_endpoint *ep;
	struct ct_entry *ct;
	struct pkt p = {};
	__u32 endpoint_id, identity, peer_id, src_id, dst_id;
	__u8 flags, enforce;
	__u64 now;
	int rc;

	rc = parse(skb, &p);
	if (rc == PARSE_NOT_IPV4) {
		count(PCNT_NOT_IPV4);
		return TC_ACT_OK;
	}
	ep = policy_endpoints.lookup(&ifindex);
	if (!ep) {
		count(PCNT_NO_ENDPOINT);
		return TC_ACT_OK;
	}
	endpoint_id = ep->endpoint_id;
	identity = ep->identity;
	flags = ep->flags;
	if (rc == PARSE_FRAGMENT) {
		count(PCNT_FRAGMENT);
		return TC_ACT_OK;
	}

	now = bpf_ktime_get_ns();
	peer_id = ipcache_identity(dir == DIR_EGRESS ? p.daddr : p.saddr);
	src_id = dir == DIR_EGRESS ? identity : peer_id;
	dst_id = dir == DIR_EGRESS ? peer_id : identity;

	if (rc == PARSE_INVALID) {
		count(PCNT_INVALID);
		emit(skb, &p, now, VERDICT_DROPPED, DROP_INVALID, src_id, dst_id, endpoint_id, dir);
		return TC_ACT_SHOT;
	}

	{
		struct ct_key fwd = {
			.endpoint_id = endpoint_id,
			.saddr = p.saddr,
			.daddr = p.daddr,
			.sport = p.ct_sport,
			.dport = p.ct_dport,
			.proto = p.proto,
			.direction = dir,
		};
		struct ct_key rev = {
			.endpoint_id = endpoint_id,
			.saddr = p.daddr,
			.daddr = p.saddr,
			.sport = p.ct_dport,
			.dport = p.ct_sport,
			.proto = p.proto,
			.direction = dir ^ 1,
		};

		ct = policy_ct.lookup(&fwd);
		if (ct) {
			if (ct_alive(ct, &p, now, 0)) {
				count(PCNT_ESTABLISHED);
				return TC_ACT_OK;
			}
			count(PCNT_CT_EXPIRED);
			policy_ct.delete(&fwd);
		}
		ct = policy_ct.lookup(&rev);
		if (ct) {
			if (ct_alive(ct, &p, now, 1)) {
				count(PCNT_REPLY);
				return TC_ACT_OK;
			}
			count(PCNT_CT_EXPIRED);
			policy_ct.delete(&rev);
		}

		/* A new flow. */
		enforce = flags & (dir == DIR_INGRESS ? EP_F_ENFORCE_INGRESS : EP_F_ENFORCE_EGRESS);
		if (enforce && !policy_allows(endpoint_id, dir, peer_id, p.proto, p.dport)) {
			count(PCNT_POLICY_DENIED);
			emit(skb, &p, now, VERDICT_DROPPED, DROP_POLICY_DENIED, src_id, dst_id,
			     endpoint_id, dir);
			return TC_ACT_SHOT;
		}
		{
			struct ct_entry entry = {
				.created = now,
				.last_seen = now,
				.packets_fwd = 1,
				.tcp_flags = p.tcp_flags,
			};

			if (policy_ct.update(&fwd, &entry) != 0)
				count(PCNT_CT_FULL);
		}
	}
	count(PCNT_NEW_ALLOWED);
	emit(skb, &p, now, VERDICT_FORWARDED, 0, src_id, dst_id, endpoint_id, dir);
	return TC_ACT_OK;
}

int policy_from_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

int policy_to_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}
