"""Generated documents: committed files match the models, and real messages satisfy the schemas."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
import yaml

from contracts import generate
from contracts import subjects as s
from contracts.v1 import Op, to_event
from tests.contracts.conftest import load
from tests.contracts.test_models import EXAMPLES

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
KINDS_WITH_FIXTURES = ("service", "endpointslice", "pod", "namespace", "node", "networkpolicy")


def test_committed_files_match_models() -> None:
    stale = [
        rel
        for rel, text in generate.render().items()
        if not (generate.ROOT / rel).exists() or (generate.ROOT / rel).read_text() != text
    ]
    assert not stale, f"generated contract files are stale: {stale}; run `make schemas`"


def test_render_is_deterministic() -> None:
    assert generate.render() == generate.render()


def test_main_writes_every_file(tmp_path: Any) -> None:
    assert generate.main(tmp_path) == 0
    for rel, text in generate.render().items():
        assert (tmp_path / rel).read_text() == text


def _validator(stem: str) -> jsonschema.protocols.Validator:
    schema = json.loads((generate.ROOT / "schemas" / f"{stem}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("kind", KINDS_WITH_FIXTURES)
@pytest.mark.parametrize("op", [Op.UPSERT, Op.DELETE])
def test_events_validate_against_schema(kind: str, op: Op) -> None:
    event = to_event(kind, op, load(f"{kind}-realistic.yaml"), "watcher-0", NOW)
    _validator("k8s-event").validate(json.loads(event.model_dump_json()))


def test_schema_rejects_what_the_model_rejects() -> None:
    event = to_event("service", Op.UPSERT, load("service-realistic.yaml"), "w", NOW)
    data = json.loads(event.model_dump_json())
    validator = _validator("k8s-event")
    mutations: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d["object"]["ports"][0].update(port=0),
        lambda d: d["object"]["ports"][0].update(port=65536),
        lambda d: d["object"]["ports"][0].update(protocol="ICMP"),
        lambda d: d["object"]["ports"][0].update(target_port="Not A Name"),
        lambda d: d["object"]["labels"].update({"k": "v" * 64}),
        lambda d: d.update(kind="deployment"),
        lambda d: d.update(op="PATCH"),
        lambda d: d["object"].update(colour="red"),
    ]
    for i, mutate in enumerate(mutations):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)
            pytest.fail(f"mutation {i} was accepted by the schema")


STEMS = {
    "Identity": "identity",
    "IPCacheEntry": "ipcache",
    "Flow": "flow",
    "NodeStatus": "node-status",
    "ValidationReport": "validation-report",
}


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_messages_validate_against_schema(model: Any) -> None:
    _validator(STEMS[type(model).__name__]).validate(json.loads(model.model_dump_json()))


def _doc() -> dict[str, Any]:
    data = yaml.safe_load((generate.ROOT / "asyncapi.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_asyncapi_describes_every_stream_subject_and_message() -> None:
    doc = _doc()
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["x-weir-streams"]) == set(s.STREAM_SUBJECTS)
    channels = doc["channels"]
    for stream, filters in s.STREAM_SUBJECTS.items():
        assert doc["x-weir-streams"][stream]["subjects"] == list(filters)
        owned = [c for c in channels.values() if c["x-weir-stream"] == stream]
        assert owned, f"no channel for stream {stream}"
        for channel in owned:  # each channel's address falls under its stream's filter
            prefix = channel["address"].split("{")[0]
            assert any(prefix.startswith(f.rstrip(">")) for f in filters)
    for channel in channels.values():
        params = set(re.findall(r"{(\w+)}", channel["address"]))
        assert params == set(channel["parameters"]), channel["address"]
    assert channels["k8sObject"]["parameters"]["kind"]["enum"] == list(s.K8S_KINDS)
    messages = doc["components"]["messages"]
    assert set(messages) == set(generate.MESSAGES)
    for name, message in messages.items():
        stem = generate.MESSAGES[name][0]
        assert message["payload"] == {"$ref": f"./schemas/{stem}.json"}
        assert message["headers"] == {"$ref": "#/components/schemas/NatsHeaders"}
    headers = doc["components"]["schemas"]["NatsHeaders"]["properties"]
    assert {"Nats-Msg-Id", "traceparent", "tracestate"} <= set(headers)


def test_asyncapi_addresses_match_subject_builders() -> None:
    channels = _doc()["channels"]

    def fill(channel: str, **values: str) -> str:
        return str(channels[channel]["address"].format(**values))

    assert fill("k8sObject", kind="pod", namespace="shop", name="a_2eb") == s.k8s_subject(
        "pod", "shop", "a.b"
    )
    assert fill("identity", id="300") == s.identity_subject(300)
    assert fill("ipcache", ip=s.escape_token("10.0.0.1")) == s.ipcache_subject("10.0.0.1")
    assert fill("flow", node="n1", verdict="DROPPED") == s.flow_subject("n1", "DROPPED")
    assert fill("nodeStatus", node="n1") == s.status_subject("n1")
    assert fill("validationError", kind="pod", namespace="shop", name="x") == s.error_subject(
        "pod", "shop", "x"
    )
