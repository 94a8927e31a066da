/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket-level load balancer for IPv4 (cgroup sock_addr hooks), after Cilium's bpf_sock.c.
 *
 * Why at the socket: connect() and sendmsg() to a service VIP are rewritten to a backend before
 * any packet exists, so there is no per-packet NAT, no conntrack entry and no rule chain; the
 * cost is one hash lookup per connect (for services with up to 4 backends), whatever the number
 * of services.
 *
 *   connect4     TCP and connected UDP: VIP:port -> backend:port
 *   sendmsg4     unconnected UDP sendto(VIP): the same translation per datagram
 *   recvmsg4     UDP replies: the backend source address is shown as the VIP again
 *   getpeername4 the peer of a translated socket is shown as the VIP
 *
 * The reverse direction works through lb4_sk_revnat, keyed by the socket cookie and the backend
 * the socket was sent to (Cilium's lb4_reverse_sk): written on every forward translation, read by
 * recvmsg4/getpeername4, and checked against lb4_revnat so a deleted or changed service never
 * shows a stale VIP.
 *
 * Backend choice: the control plane writes only the backends to use (active ones, or the
 * terminating ones when none is active) into slots 1..count, so the datapath picks a random slot.
 * The first and usually only lookup is lb4_frontends: a service with up to LB4_INLINE_MAX
 * backends and no affinity carries them inline, so the pick needs no other map; larger services
 * and affinity go on to the slots in lb4_services and lb4_backends (Cilium's layout).
 * A master with count 0 refuses the connection with ECONNREFUSED without any packet leaving;
 * so does an address inside the configured service CIDR(s) with no service entry at all (a
 * deleted Service, or a port it does not have): nothing else could answer there, and failing
 * fast beats a connect that hangs until it times out.
 * Session affinity remembers {backend, slot} per client network namespace and service; the slot
 * lets us prove in O(1) that the backend is still a member before reusing it.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#include "lb4_maps.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

#define SYS_PROCEED 1 /* cgroup sock_addr: let the syscall go on */
#define SYS_REJECT  0 /* ... fail it with the errno set by bpf_set_retval() */

/* How many consecutive slots to try when a slot points at a missing backend. Bounded so the
 * verifier sees a fixed loop; a transiently inconsistent service is rare (the control plane
 * writes backends before slots and removes slots before backends). */
#define MAX_SLOT_PROBES 4

#define LB_NSEC_PER_SEC 1000000000ULL

/* bcc 0.26 declares bpf_get_socket_cookie() as returning u32; the kernel returns u64, and a
 * truncated cookie could collide between sockets. Call the helper id with the right type. */
static __u64 (*sock_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

static __always_inline void count_event(__u32 which)
{
	__u64 *val = lb4_counters.lookup(&which);

	if (val)
		*val += 1; /* per-CPU slot: no atomic needed */
}

/* Is the backend in this slot of the service usable? Returns it, or NULL. */
static __always_inline struct lb4_backend *slot_backend(struct lb4_key *key, __u16 slot,
							__u32 *backend_id)
{
	struct lb4_service *entry;
	struct lb4_backend *backend;

	key->backend_slot = slot;
	entry = lb4_services.lookup(key);
	if (!entry)
		return NULL;
	backend = lb4_backends.lookup(&entry->backend_id);
	if (!backend) {
		count_event(CNT_BACKEND_MISSING);
		return NULL;
	}
	*backend_id = entry->backend_id;
	return backend;
}

/* Reuse the client's affinity entry if it is fresh and its backend is still in its slot. */
static __always_inline struct lb4_backend *affinity_backend(struct lb4_key *key,
							    struct lb4_affinity_key *akey,
							    __u16 count, __u32 timeout, __u64 now,
							    __u32 *backend_id, __u16 *slot)
{
	struct lb4_affinity_val *aval = lb4_affinity.lookup(akey);
	struct lb4_backend *backend;
	__u32 id = 0;

	if (!aval)
		return NULL;
	if (timeout && now - aval->last_used > (__u64)timeout * LB_NSEC_PER_SEC) {
		count_event(CNT_AFFINITY_EXPIRED);
		return NULL;
	}
	if (aval->slot == 0 || aval->slot > count) {
		count_event(CNT_AFFINITY_STALE);
		return NULL;
	}
	backend = slot_backend(key, aval->slot, &id);
	if (!backend || id != aval->backend_id) {
		count_event(CNT_AFFINITY_STALE);
		return NULL;
	}
	aval->last_used = now;
	count_event(CNT_AFFINITY_HIT);
	*backend_id = id;
	*slot = aval->slot;
	return backend;
}

/* Forward translation shared by connect4 and sendmsg4. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct lb4_key key = {};
	struct lb4_frontend *fe;
	struct lb4_backend *backend = NULL;
	struct lb4_affinity_key akey = {};
	__u32 backend_id = 0, timeout, idx;
	__u32 rev_nat;
	__u16 count, slot = 0;
	__u8 flags, n_inline;
	__u64 now = 0;
	__be32 vip = ctx->user_ip4, be_address;
	__be16 vport = (__be16)ctx->user_port, be_port;
	int i;

	key.address = vip;
	key.dport = vport;
	key.proto = proto;
	fe = lb4_frontends.lookup(&key);
	if (!fe) {
		struct lb4_range_key range = { .prefixlen = 32, .address = vip };

		if (lb4_service_ranges.lookup(&range))
			goto refuse; /* in the service CIDR, but no such service */
		return SYS_PROCEED; /* not a service address */
	}

	/* Copy what we need: the pointer is into a map the control plane may update under us (an
	 * update replaces the element, so fields read through one pointer belong together). */
	count = fe->count;
	rev_nat = fe->rev_nat_index;
	flags = fe->flags;
	timeout = fe->affinity_timeout;
	n_inline = fe->n_inline;

	if (count == 0 || (flags & SVC_F_NO_BACKENDS))
		goto refuse;

	if (n_inline) {
		/* The backends are in the entry: one lookup for the whole decision. The mask only
		 * proves the bound to the verifier (the control plane writes n_inline <= LB4_INLINE_MAX,
		 * a power of two); the barrier keeps the compiler from folding it into the modulo. */
		idx = bpf_get_prandom_u32() % n_inline;
		asm volatile("" : "+r"(idx));
		idx &= LB4_INLINE_MAX - 1;
		be_address = fe->backends[idx].address;
		be_port = fe->backends[idx].port;
		goto translate;
	}

	key.backend_slot = 0;
	if (flags & SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		akey.client_cookie = bpf_get_netns_cookie(ctx);
		akey.rev_nat_id = rev_nat;
		backend = affinity_backend(&key, &akey, count, timeout, now, &backend_id, &slot);
	}

	if (!backend) {
		slot = (bpf_get_prandom_u32() % count) + 1;
		for (i = 0; i < MAX_SLOT_PROBES; i++) {
			backend = slot_backend(&key, slot, &backend_id);
			if (backend)
				break;
			slot = (slot % count) + 1; /* next slot, wrapping to 1 */
		}
		if (!backend)
			goto refuse;
		if (flags & SVC_F_AFFINITY) {
			struct lb4_affinity_val aval = {
				.last_used = now,
				.backend_id = backend_id,
				.slot = slot,
			};
			lb4_affinity.update(&akey, &aval);
		}
	}
	be_address = backend->address;
	be_port = backend->port;

translate:
	{
		/* Remember the service for this socket so replies and getpeername() show the VIP. */
		struct ipv4_revnat_tuple rkey = {
			.cookie = sock_cookie(ctx),
			.address = be_address,
			.port = be_port,
		};
		struct ipv4_revnat_entry rval = {
			.address = vip,
			.port = vport,
			.rev_nat_index = rev_nat,
		};
		lb4_sk_revnat.update(&rkey, &rval);
	}

	ctx->user_ip4 = be_address;
	ctx->user_port = (__u32)be_port;
	count_event(CNT_TRANSLATED);
	return SYS_PROCEED;

refuse:
	/* No packet leaves: the syscall fails with ECONNREFUSED, as if the service had answered
	 * with a reset (kube-proxy's REJECT rule for services without endpoints). */
	count_event(CNT_REFUSED);
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* Reverse translation shared by recvmsg4 and getpeername4: backend -> VIP. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct ipv4_revnat_tuple rkey = {
		.cookie = sock_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct ipv4_revnat_entry *rval = lb4_sk_revnat.lookup(&rkey);
	struct lb4_reverse_nat *rnat;
	__u32 rev_nat;

	if (!rval)
		return;
	rev_nat = rval->rev_nat_index;
	rnat = lb4_revnat.lookup(&rev_nat);
	if (!rnat || rnat->address != rval->address || rnat->port != rval->port) {
		/* The service was deleted or changed since the socket was translated. */
		lb4_sk_revnat.delete(&rkey);
		count_event(CNT_REVNAT_STALE);
		return;
	}
	ctx->user_ip4 = rval->address;
	ctx->user_port = (__u32)rval->port;
	count_event(CNT_REVNAT_HIT);
}

int sock4_connect(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock4_xlate_fwd(ctx, (__u8)proto);
}

int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, IPPROTO_UDP);
}

int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}
