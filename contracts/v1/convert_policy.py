"""Reshaper from raw networking.k8s.io/v1 NetworkPolicy JSON to v1 model input.

Kept apart from the core kinds because a policy is a deep tree (rules, peers, selectors); this
module also applies the API server's ``policyTypes`` defaulting: Ingress always, plus Egress when
the policy has egress rules. Structure only; values are validated by the models.
"""

from __future__ import annotations

from contracts.v1.convert_core import labels
from contracts.v1.raw import Out, Src


def networkpolicy(obj: Src) -> Out:
    out = obj.out()
    spec = obj.obj("spec")
    out.put("pod_selector", selector(spec.obj("podSelector")), spec.at("podSelector"))
    ingress = [_rule(r, "from", "from_peers") for r in spec.items("ingress")]
    egress = [_rule(r, "to", "to_peers") for r in spec.items("egress")]
    out.put("ingress", ingress, spec.at("ingress"))
    out.put("egress", egress, spec.at("egress"))
    if spec.has("policyTypes"):
        out.take("policy_types", spec, "policyTypes")
    else:
        defaulted = ["Ingress", "Egress"] if egress else ["Ingress"]
        out.put("policy_types", defaulted, spec.at("policyTypes"))
    labels(obj, out)
    return out


def selector(sel: Src) -> Out:
    out = sel.out()
    out.take("match_labels", sel, "matchLabels")
    exprs: list[Out] = []
    for expr in sel.items("matchExpressions"):
        item = expr.out()
        for raw_key in ("key", "operator", "values"):
            item.take(raw_key, expr, raw_key)
        exprs.append(item)
    out.put("match_expressions", exprs, sel.at("matchExpressions"))
    return out


def _rule(rule: Src, peers_key: str, field: str) -> Out:
    out = rule.out()
    out.put("ports", [_port(p) for p in rule.items("ports")], rule.at("ports"))
    out.put(field, [_peer(p) for p in rule.items(peers_key)], rule.at(peers_key))
    return out


def _port(port: Src) -> Out:
    out = port.out()
    out.take("protocol", port, "protocol")
    out.take("port", port, "port")
    out.take("end_port", port, "endPort")
    return out


def _peer(peer: Src) -> Out:
    out = peer.out()
    if peer.has("podSelector"):
        out.put("pod_selector", selector(peer.obj("podSelector")), peer.at("podSelector"))
    if peer.has("namespaceSelector"):
        ns_sel = peer.obj("namespaceSelector")
        out.put("namespace_selector", selector(ns_sel), peer.at("namespaceSelector"))
    if peer.has("ipBlock"):
        block = peer.obj("ipBlock")
        ip_block = block.out()
        ip_block.take("cidr", block, "cidr")
        ip_block.take("except_cidrs", block, "except")
        out.put("ip_block", ip_block, block.path)
    return out
