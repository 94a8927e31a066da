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
 *   sock4_release (cgroup sock, inet_release): frees the closing socket's lb4_sk_peer slot
 *
 * The reverse direction: a connected socket (TCP, connected UDP) has one peer, kept in its slot
 * of the lb4_sk_peer ring (slot = cookie & (LB4_SK_PEER_MAX - 1)), which connect4 claims with a
 * compare-and-swap of cookie 0 -> its cookie and sock4_release frees: an inlined array write
 * instead of an LRU insert (half of connect4's cost at 100k services), and an entry lives
 * exactly as long as its socket, so churn of short connections can never evict a long-lived
 * socket's entry. When the slot is owned by another live socket, and for unconnected UDP
 * (sendmsg4: many peers per socket), the entry goes to lb4_sk_revnat (an LRU keyed by the socket
 * cookie and the backend, Cilium's lb4_reverse_sk). recvmsg4/getpeername4 read the ring slot,
 * else the LRU, and check the entry against lb4_revnat so a deleted or changed service never
 * shows a stale VIP (the peer is then shown as the backend it really is).
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

#ifndef AF_INET
#define AF_INET 2
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

/* The socket's slot in lb4_sk_peer (NULL only if the verifier's bound check could fail). */
static __always_inline struct lb4_sk_peer *sk_peer_slot(__u64 cookie)
{
	__u32 idx = (__u32)cookie & (LB4_SK_PEER_MAX - 1);

	return lb4_sk_peer.lookup(&idx);
}

/* Record a connected socket's peer in its ring slot: claim the slot if it is free (cookie 0 ->
 * ours, atomically: two sockets of one slot may connect at once on two CPUs), overwrite it if it
 * is already ours (the same socket connecting again). Returns 0 when another live socket owns
 * the slot: the caller falls back to the LRU. */
static __always_inline int sk_peer_claim(__u64 cookie, __be32 be_address, __be16 be_port,
					 __be32 vip, __be16 vport, __u32 rev_nat)
{
	struct lb4_sk_peer *peer = sk_peer_slot(cookie);
	__u64 owner;

	if (!peer)
		return 0;
	owner = __sync_val_compare_and_swap(&peer->cookie, 0, cookie);
	if (owner != 0 && owner != cookie)
		return 0;
	peer->backend_address = be_address;
	peer->backend_port = be_port;
	peer->address = vip;
	peer->port = vport;
	peer->rev_nat_index = rev_nat;
	return 1;
}

/* sendmsg4 to a backend that the socket's own ring slot names (a UDP socket that was connected,
 * disconnected, and now sends to a service with that backend): the slot must show the service
 * of this latest translation, as the LRU entry for {cookie, backend} does, or replies would be
 * shown as coming from the earlier service (the ring is read before the LRU). */
static __always_inline void sk_peer_follow(__u64 cookie, __be32 be_address, __be16 be_port,
					   __be32 vip, __be16 vport, __u32 rev_nat)
{
	struct lb4_sk_peer *peer = sk_peer_slot(cookie);

	if (!peer || peer->cookie != cookie || peer->backend_address != be_address ||
	    peer->backend_port != be_port)
		return;
	peer->address = vip;
	peer->port = vport;
	peer->rev_nat_index = rev_nat;
}

/* Forward translation shared by connect4 (connected: one peer per socket, recorded in the
 * socket's lb4_sk_peer slot) and sendmsg4 (unconnected UDP: recorded in the LRU). */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u8 proto, int connected)
{
	struct lb4_key key = {};
	struct lb4_frontend *fe;
	struct lb4_backend *backend = NULL;
	struct lb4_affinity_key akey = {};
	__u32 backend_id = 0, timeout, idx;
	__u32 rev_nat;
	__u16 count, slot = 0;
	__u8 flags, n_inline;
	__u64 now = 0, cookie;
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
	/* Remember the service for this socket so replies and getpeername() show the VIP. */
	cookie = sock_cookie(ctx);
	if (!connected || !sk_peer_claim(cookie, be_address, be_port, vip, vport, rev_nat)) {
		struct ipv4_revnat_tuple rkey = {
			.cookie = cookie,
			.address = be_address,
			.port = be_port,
		};
		struct ipv4_revnat_entry rval = {
			.address = vip,
			.port = vport,
			.rev_nat_index = rev_nat,
		};
		lb4_sk_revnat.update(&rkey, &rval);
		if (!connected)
			sk_peer_follow(cookie, be_address, be_port, vip, vport, rev_nat);
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

/* Reverse translation shared by recvmsg4 and getpeername4: backend -> VIP. The socket's ring
 * slot first (it is ours while the socket lives: no other socket can take it before our
 * release), else the LRU. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct ipv4_revnat_tuple rkey = {
		.cookie = sock_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_sk_peer *peer = sk_peer_slot(rkey.cookie);
	struct ipv4_revnat_entry *rval;
	struct lb4_reverse_nat *rnat;
	__be32 vip;
	__be16 vport;
	__u32 rev_nat;
	int in_ring = 0;

	if (peer && peer->cookie == rkey.cookie && peer->backend_address == rkey.address &&
	    peer->backend_port == rkey.port) {
		vip = peer->address;
		vport = peer->port;
		rev_nat = peer->rev_nat_index;
		in_ring = 1;
	} else {
		rval = lb4_sk_revnat.lookup(&rkey);
		if (!rval)
			return;
		vip = rval->address;
		vport = rval->port;
		rev_nat = rval->rev_nat_index;
	}
	rnat = lb4_revnat.lookup(&rev_nat);
	if (!rnat || rnat->address != vip || rnat->port != vport) {
		/* The service was deleted or changed since the socket was translated: show the
		 * backend. A stale LRU entry is dropped; a stale ring slot stays until the socket's
		 * release frees it (the slot is the socket's either way). */
		if (!in_ring)
			lb4_sk_revnat.delete(&rkey);
		count_event(CNT_REVNAT_STALE);
		return;
	}
	ctx->user_ip4 = vip;
	ctx->user_port = (__u32)vport;
	count_event(CNT_REVNAT_HIT);
}

int sock4_connect(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock4_xlate_fwd(ctx, (__u8)proto, 1);
}

int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, IPPROTO_UDP, 0);
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

/* BPF_CGROUP_INET_SOCK_RELEASE: runs in inet_release for every inet socket of the cgroup that
 * closes. Frees the socket's lb4_sk_peer slot if it holds it (compare-and-swap cookie -> 0, so
 * a slot another socket holds is never touched). */
int sock4_release(struct bpf_sock *ctx)
{
	struct lb4_sk_peer *peer;
	__u64 cookie;

	if (ctx->family != AF_INET)
		return SYS_PROCEED;
	cookie = sock_cookie(ctx);
	peer = sk_peer_slot(cookie);
	if (peer && peer->cookie == cookie)
		__sync_val_compare_and_swap(&peer->cookie, cookie, 0);
	return SYS_PROCEED;
}
