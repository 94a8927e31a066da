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

__all__ = [
    "API_VERSION",
    "ContainerPort",
    "ContractError",
    "EgressRule",
    "Endpoint",
    "EndpointConditions",
    "EndpointHints",
    "EndpointPort",
    "EndpointSlice",
    "IPBlock",
    "IngressRule",
    "K8sEvent",
    "Kind",
    "LabelSelector",
    "LabelSelectorRequirement",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "NodeAddress",
    "ObjectRef",
    "Op",
    "Payload",
    "Pod",
    "PolicyPeer",
    "PolicyPort",
    "Service",
    "ServicePort",
    "from_k8s",
    "to_event",
]
