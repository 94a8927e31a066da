"""Generate the published contract documents: JSON Schemas and the AsyncAPI description of the bus.

The pydantic models are the single source of truth; the generated files exist for consumers that
are not Python (and for reviewers), so they are committed and a drift test fails when they no
longer match the models. :func:`render` is pure and deterministic (sorted keys, fixed order) so
the drift test can regenerate in memory; ``python -m contracts.generate`` (``make schemas``) writes
the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel

from contracts import subjects as s
from contracts.v1 import (
    VERDICTS,
    Flow,
    Identity,
    IPCacheEntry,
    K8sEvent,
    NodeStatus,
    ValidationReport,
)

ROOT: Final = Path(__file__).parent
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# message name -> (schema file stem, model, stream, channel id)
MESSAGES: Final[dict[str, tuple[str, type[BaseModel], str, str]]] = {
    "K8sEvent": ("k8s-event", K8sEvent, s.STREAM_K8S, "k8sObject"),
    "Identity": ("identity", Identity, s.STREAM_IDENTITY, "identity"),
    "IPCacheEntry": ("ipcache", IPCacheEntry, s.STREAM_IDENTITY, "ipcache"),
    "Flow": ("flow", Flow, s.STREAM_FLOWS, "flow"),
    "NodeStatus": ("node-status", NodeStatus, s.STREAM_STATUS, "nodeStatus"),
    "ValidationReport": ("validation-report", ValidationReport, s.STREAM_ERRORS, "validationError"),
}

_TOKEN: Final = (
    "One NATS subject token, escaped with contracts.subjects.escape_token: bytes outside"
    " [A-Za-z0-9-] become _xx (lower-case hex of the UTF-8 byte)."
)
_NAMESPACE: Final = f"Escaped namespace token, or {s.CLUSTER_SCOPE_TOKEN} for cluster-scoped kinds."

# channel id -> address, parameters, message, description, producer, consumers
CHANNELS: Final[dict[str, dict[str, Any]]] = {
    "k8sObject": {
        "address": f"{s.PREFIX}.k8s.{{kind}}.{{namespace}}.{{name}}",
        "parameters": {
            "kind": {"enum": list(s.K8S_KINDS), "description": "Lower-case object kind."},
            "namespace": {"description": _NAMESPACE},
            "name": {"description": "Escaped object name. " + _TOKEN},
        },
        "message": "K8sEvent",
        "description": "One Kubernetes object change; a DELETE is a tombstone on the same"
        " subject. Rebuild state with DeliverPolicy LAST_PER_SUBJECT.",
        "producer": "watcher",
        "consumers": "identity, datapath",
    },
    "identity": {
        "address": f"{s.PREFIX}.identity.{{id}}",
        "parameters": {"id": {"description": "Numeric identity 1..65535 in decimal."}},
        "message": "Identity",
        "description": "A numeric security identity and its label set.",
        "producer": "identity",
        "consumers": "datapath",
    },
    "ipcache": {
        "address": f"{s.PREFIX}.ipcache.{{ip}}",
        "parameters": {"ip": {"description": "Escaped canonical IP address. " + _TOKEN}},
        "message": "IPCacheEntry",
        "description": "IP address to identity mapping (LPM trie in the datapath).",
        "producer": "identity",
        "consumers": "datapath",
    },
    "flow": {
        "address": f"{s.PREFIX}.flows.{{node}}.{{verdict}}",
        "parameters": {
            "node": {"description": "Escaped node name. " + _TOKEN},
            "verdict": {"enum": list(VERDICTS), "description": "Hubble verdict."},
        },
        "message": "Flow",
        "description": "One datapath verdict (Hubble-shaped flow record).",
        "producer": "datapath",
        "consumers": "weir observe, any subscriber",
    },
    "validationError": {
        "address": f"{s.PREFIX}.errors.{{kind}}.{{namespace}}.{{name}}",
        "parameters": {
            "kind": {"description": "Escaped kind token."},
            "namespace": {"description": _NAMESPACE},
            "name": {"description": "Escaped object name, - when unknown. " + _TOKEN},
        },
        "message": "ValidationReport",
        "description": "An object that failed contract validation, naming the field.",
        "producer": "watcher",
        "consumers": "weir status, operators",
    },
    "nodeStatus": {
        "address": f"{s.PREFIX}.status.{{node}}",
        "parameters": {"node": {"description": "Escaped node name. " + _TOKEN}},
        "message": "NodeStatus",
        "description": "What one datapath node has applied.",
        "producer": "datapath",
        "consumers": "weir status, benchmarks",
    },
}

HEADERS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "Deterministic JetStream de-duplication id (the message's msg_id()).",
        },
        "traceparent": {
            "type": "string",
            "description": "W3C Trace Context traceparent of the change that caused the message.",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        },
        "tracestate": {"type": "string", "description": "W3C Trace Context tracestate."},
    },
    "required": ["Nats-Msg-Id", "traceparent"],
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema of each published message."""
    out: dict[str, dict[str, Any]] = {}
    for name, (stem, model, _stream, _channel) in MESSAGES.items():
        schema = model.model_json_schema()
        schema["$schema"] = JSON_SCHEMA_DIALECT
        schema["title"] = name
        out[stem] = schema
    return out


def _stream_channels(stream: str) -> list[dict[str, str]]:
    return [
        {"$ref": f"#/channels/{channel}"}
        for _name, (_stem, _model, owner, channel) in MESSAGES.items()
        if owner == stream
    ]


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the Weir bus."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel_id, spec in CHANNELS.items():
        message = spec["message"]
        stem, model, stream, _ = MESSAGES[message]
        channels[channel_id] = {
            "address": spec["address"],
            "description": spec["description"],
            "parameters": spec["parameters"],
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "x-weir-stream": stream,
        }
        ref = {"$ref": f"#/channels/{channel_id}"}
        msg_ref = [{"$ref": f"#/channels/{channel_id}/messages/{message}"}]
        operations[f"publish{message}"] = {
            "action": "send",
            "channel": ref,
            "messages": msg_ref,
            "summary": f"Published by {spec['producer']}.",
        }
        operations[f"consume{message}"] = {
            "action": "receive",
            "channel": ref,
            "messages": msg_ref,
            "summary": f"Consumed by {spec['consumers']}.",
        }
        messages[message] = {
            "name": message,
            "title": message,
            "summary": (model.__doc__ or message).strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/NatsHeaders"},
            "payload": {"$ref": f"./schemas/{stem}.json"},
        }
    streams = {
        name: {
            "subjects": list(filters),
            "channels": _stream_channels(name),
        }
        for name, filters in s.STREAM_SUBJECTS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Weir bus",
            "version": "1.0.0",
            "description": "NATS JetStream subjects, streams and messages of Weir (v1). Generated"
            " by `python -m contracts.generate` from contracts/; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Any NATS server with JetStream enabled.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": {"NatsHeaders": HEADERS_SCHEMA}},
        "x-weir-streams": streams,
        "x-weir-kv-buckets": {
            s.KV_IDENTITIES: {"description": "label-hash -> id and id -> labels (create-only)."},
            s.KV_LEADER: {"description": "leader election for cluster-wide services."},
        },
    }


def render() -> dict[str, str]:
    """Relative path -> file text of every generated file (pure, deterministic)."""
    files = {
        f"schemas/{stem}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for stem, schema in json_schemas().items()
    }
    files["asyncapi.yaml"] = yaml.safe_dump(
        asyncapi(), sort_keys=True, default_flow_style=False, width=100, allow_unicode=True
    )
    return files


def main(root: Path = ROOT) -> int:
    for rel, text in render().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
