"""Weir message contracts, version 1: the names other packages import.

Everything is re-exported here so that callers depend on ``contracts.v1`` and not on the module
split, which is free to change.
"""

from contracts.v1.convert import from_k8s, to_event
from contracts.v1.endpointslice import (
    Endpoint,
    EndpointConditions,
    EndpointHints,
    EndpointPort,
    EndpointSlice,
    ObjectRef,
)
from contracts.v1.envelope import API_VERSION, K8sEvent, Kind, Op, Payload
from contracts.v1.errors import ContractError
from contracts.v1.flow import (
    TCP,
    UDP,
    VERDICTS,
    Flow,
    FlowEndpoint,
    FlowIP,
    FlowService,
    Layer4,
    TCPFlags,
    Verdict,
)
from contracts.v1.identity import Identity, IPCacheEntry, identity_label
from contracts.v1.namespace import Namespace
from contracts.v1.networkpolicy import (
    EgressRule,
    IngressRule,
    IPBlock,
    LabelSelector,
    LabelSelectorRequirement,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
)
from contracts.v1.node import Node, NodeAddress
from contracts.v1.pod import ContainerPort, Pod
from contracts.v1.service import Service, ServicePort
from contracts.v1.status import MapFill, NodeStatus, ValidationReport

__all__ = [
    "API_VERSION",
    "TCP",
    "UDP",
    "VERDICTS",
    "ContainerPort",
    "ContractError",
    "EgressRule",
    "Endpoint",
    "EndpointConditions",
    "EndpointHints",
    "EndpointPort",
    "EndpointSlice",
    "Flow",
    "FlowEndpoint",
    "FlowIP",
    "FlowService",
    "IPBlock",
    "IPCacheEntry",
    "Identity",
    "IngressRule",
    "K8sEvent",
    "Kind",
    "LabelSelector",
    "LabelSelectorRequirement",
    "Layer4",
    "MapFill",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "NodeAddress",
    "NodeStatus",
    "ObjectRef",
    "Op",
    "Payload",
    "Pod",
    "PolicyPeer",
    "PolicyPort",
    "Service",
    "ServicePort",
    "TCPFlags",
    "ValidationReport",
    "Verdict",
    "from_k8s",
    "identity_label",
    "to_event",
]
