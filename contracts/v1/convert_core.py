"""Reshapers from raw core/v1 and discovery/v1 JSON to v1 model input (structure only).

Each function maps camelCase fields to our snake_case fields and applies the Kubernetes
defaulting rules that are about *absence* (nil ready means ready, clusterIP "None" means headless,
nodePort 0 means unset). It never validates values itself: pydantic does, and the recorded paths
let errors name the Kubernetes field. See :mod:`contracts.v1.raw`.
"""

from __future__ import annotations

from contracts.v1.endpointslice import SERVICE_NAME_LABEL
from contracts.v1.raw import Out, Src

TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"


def labels(obj: Src, out: Out) -> None:
    meta = obj.obj("metadata")
    out.put("labels", meta.obj("labels").data or None, meta.at("labels"))


def service(obj: Src) -> Out:
    out = obj.out()
    spec, status, meta = obj.obj("spec"), obj.obj("status"), obj.obj("metadata")
    out.take("type", spec, "type")
    cluster_ip = spec.string("clusterIP")
    ips = spec.values("clusterIPs")
    if cluster_ip == "None" or (ips and ips[0] == "None"):
        out.put("headless", True, spec.at("clusterIP"))
    elif ips:
        out.put("cluster_ips", ips, spec.at("clusterIPs"))
    elif cluster_ip:
        out.put_items("cluster_ips", [(cluster_ip, spec.at("clusterIP"))], spec.at("clusterIP"))
    out.take("external_ips", spec, "externalIPs")
    ingress = status.obj("loadBalancer").items("ingress")
    lb_ips = [(item.get("ip"), item.at("ip")) for item in ingress if item.has("ip")]
    out.put_items("load_balancer_ips", lb_ips, status.obj("loadBalancer").at("ingress"))
    out.take("external_name", spec, "externalName")
    out.put("ports", [_service_port(p) for p in spec.items("ports")], spec.at("ports"))
    out.take("selector", spec, "selector")
    out.take("session_affinity", spec, "sessionAffinity")
    client_ip = spec.obj("sessionAffinityConfig").obj("clientIP")
    out.take("session_affinity_timeout_seconds", client_ip, "timeoutSeconds")
    out.take("external_traffic_policy", spec, "externalTrafficPolicy")
    out.take("internal_traffic_policy", spec, "internalTrafficPolicy")
    out.take("publish_not_ready_addresses", spec, "publishNotReadyAddresses")
    if spec.has("trafficDistribution"):
        out.take("traffic_distribution", spec, "trafficDistribution")
    else:
        annotations = meta.obj("annotations")
        for key in (TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION):
            value = annotations.get(key)
            if isinstance(value, str) and value.lower() == "auto":
                out.put("traffic_distribution", "PreferClose", f"{annotations.at(key)}")
                break
    labels(obj, out)
    return out


def _service_port(port: Src) -> Out:
    out = port.out()
    out.take("name", port, "name")
    out.take("protocol", port, "protocol")
    out.take("port", port, "port")
    if port.has("targetPort"):
        out.take("target_port", port, "targetPort")
    else:
        out.take("target_port", port, "port")
    if port.get("nodePort") != 0:
        out.take("node_port", port, "nodePort")
    out.take("app_protocol", port, "appProtocol")
    return out


def endpointslice(obj: Src) -> Out:
    out = obj.out()
    meta = obj.obj("metadata")
    out.take("address_type", obj, "addressType")
    out.take("service_name", meta.obj("labels"), SERVICE_NAME_LABEL)
    out.put("endpoints", [_endpoint(e) for e in obj.items("endpoints")], obj.at("endpoints"))
    out.put("ports", [_endpoint_port(p) for p in obj.items("ports")], obj.at("ports"))
    labels(obj, out)
    return out


def _endpoint(endpoint: Src) -> Out:
    out = endpoint.out()
    out.take("addresses", endpoint, "addresses")
    conditions = endpoint.obj("conditions")
    cond = conditions.out()
    ready = conditions.get("ready", True)
    cond.put("ready", ready, conditions.at("ready"))
    cond.put("serving", conditions.get("serving", ready), conditions.at("serving"))
    cond.put("terminating", conditions.get("terminating", False), conditions.at("terminating"))
    out.put("conditions", cond, conditions.path)
    out.take("node_name", endpoint, "nodeName")
    out.take("zone", endpoint, "zone")
    if endpoint.has("hints"):
        hints = endpoint.obj("hints")
        hint = hints.out()
        zones = hints.items("forZones")
        hint.put_items(
            "for_zones", [(z.get("name"), z.at("name")) for z in zones], hints.at("forZones")
        )
        nodes = hints.items("forNodes")
        hint.put_items(
            "for_nodes", [(n.get("name"), n.at("name")) for n in nodes], hints.at("forNodes")
        )
        out.put("hints", hint, hints.path)
    if endpoint.has("targetRef"):
        ref = endpoint.obj("targetRef")
        target = ref.out()
        for key in ("kind", "namespace", "name", "uid"):
            target.take(key, ref, key)
        out.put("target_ref", target, ref.path)
    return out


def _endpoint_port(port: Src) -> Out:
    out = port.out()
    if port.get("name") != "":
        out.take("name", port, "name")
    out.take("protocol", port, "protocol")
    out.take("port", port, "port")
    out.take("app_protocol", port, "appProtocol")
    return out


def pod(obj: Src) -> Out:
    out = obj.out()
    spec, status, meta = obj.obj("spec"), obj.obj("status"), obj.obj("metadata")
    pod_ips = status.items("podIPs")
    if pod_ips:
        ips = [(item.get("ip"), item.at("ip")) for item in pod_ips]
        out.put_items("ips", ips, status.at("podIPs"))
    elif status.has("podIP"):
        out.put_items("ips", [(status.get("podIP"), status.at("podIP"))], status.at("podIP"))
    out.take("host_ip", status, "hostIP")
    out.take("host_network", spec, "hostNetwork")
    out.take("node_name", spec, "nodeName")
    out.take("service_account", spec, "serviceAccountName")
    out.take("phase", status, "phase")
    for condition in status.items("conditions"):
        if condition.get("type") == "Ready":
            value = condition.get("status")
            ready = {"True": True, "False": False, "Unknown": False}.get(value, value)
            out.put("ready", ready, condition.at("status"))
    out.put("terminating", meta.has("deletionTimestamp"), meta.at("deletionTimestamp"))
    ports: list[Out] = []
    for container in spec.items("containers"):
        for port in container.items("ports"):
            item = port.out()
            item.take("container", container, "name")
            item.take("name", port, "name")
            item.take("port", port, "containerPort")
            item.take("protocol", port, "protocol")
            ports.append(item)
    out.put("container_ports", ports, spec.at("containers"))
    labels(obj, out)
    return out


def namespace(obj: Src) -> Out:
    out = obj.out()
    labels(obj, out)
    return out


def node(obj: Src) -> Out:
    out = obj.out()
    spec, status = obj.obj("spec"), obj.obj("status")
    addresses: list[Out] = []
    for address in status.items("addresses"):
        item = address.out()
        item.take("type", address, "type")
        item.take("address", address, "address")
        addresses.append(item)
    out.put("addresses", addresses, status.at("addresses"))
    if spec.has("podCIDRs"):
        out.take("pod_cidrs", spec, "podCIDRs")
    elif spec.has("podCIDR"):
        out.put_items("pod_cidrs", [(spec.get("podCIDR"), spec.at("podCIDR"))], spec.at("podCIDR"))
    labels(obj, out)
    return out
