"""Home Assistant's MQTT discovery (device-based, Home Assistant 2024.11 and later): the retained
config under ``<prefix>/device/<object id>/config`` that makes a node, or the controller, one
device in Home Assistant with its entities. Every entity reads a topic EdgeFlow publishes anyway
(status, telemetry, the assignment report, the plan and the cost model): discovery adds a config,
never a second copy of a state. Availability follows the status topic, which the broker's last
will turns offline. An empty retained config removes the device and its entities.

These documents are Home Assistant's, not EdgeFlow's: msgspec structs like every document on the
wire, but with no ``schema`` field (Home Assistant reads them)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from edgeflowd.wire.topics import Topics

__all__ = [
    "HA_STATUS_ONLINE",
    "controller_config",
    "discovery_topic",
    "ha_status_topic",
    "node_config",
    "object_id",
]

HA_STATUS_ONLINE = b"online"
"""What Home Assistant publishes on ``<prefix>/status`` when it starts: every device announces
itself again, since a Home Assistant that lost its state does not read retained configs twice."""

_STATE = "{{ value_json.state }}"


class _Device(msgspec.Struct, frozen=True):
    identifiers: list[str]
    name: str
    model: str
    sw_version: str
    manufacturer: str = "EdgeFlow"


class _Origin(msgspec.Struct, frozen=True):
    name: str
    sw_version: str


class _Availability(msgspec.Struct, frozen=True):
    topic: str
    value_template: str = _STATE
    payload_available: str = "online"
    payload_not_available: str = "offline"


class _Component(msgspec.Struct, frozen=True, omit_defaults=True):
    platform: str
    unique_id: str
    name: str
    state_topic: str
    value_template: str
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    entity_category: str | None = None
    payload_on: str | None = None
    payload_off: str | None = None


class _Config(msgspec.Struct, frozen=True):
    device: _Device
    origin: _Origin
    components: dict[str, _Component]
    availability: list[_Availability]
    qos: int = 1


def object_id(cluster: str, name: str) -> str:
    """The device's id in discovery topics and unique ids: Home Assistant allows only
    ``[a-zA-Z0-9_-]`` there, so anything else in a cluster or node name becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"edgeflow_{cluster}_{name}")


def discovery_topic(prefix: str, device: str) -> str:
    return f"{prefix}/device/{device}/config"


def ha_status_topic(prefix: str) -> str:
    return f"{prefix}/status"


def _sensor(
    device: str, key: str, name: str, topic: str, template: str, unit: str | None = None, **options: str
) -> tuple[str, _Component]:
    measured = "measurement" if unit is not None else None
    component = _Component(
        "sensor", f"{device}_{key}", name, topic, template, unit, state_class=options.pop("state_class", measured)
    )
    return key, msgspec.structs.replace(component, **options)


def _online(device: str, topic: str) -> tuple[str, _Component]:
    template = "{{ 'ON' if value_json.state == 'online' else 'OFF' }}"
    component = _Component("binary_sensor", f"{device}_online", "Online", topic, template, device_class="connectivity")
    return "online", msgspec.structs.replace(component, payload_on="ON", payload_off="OFF")


def _announced(
    prefix: str, device: str, name: str, model: str, version: str, components: dict[str, _Component], status: str
) -> tuple[str, bytes]:
    """(topic, payload) of one device's config, available while ``status`` says online."""
    origin = _Origin(model.split(maxsplit=1)[0], version)
    config = _Config(_Device([device], name, model, version), origin, components, [_Availability(status)])
    return discovery_topic(prefix, device), msgspec.json.encode(config)


def node_config(topics: Topics, cluster: str, node: str, version: str, prefix: str) -> tuple[str, bytes]:
    """A node's discovery (topic, payload)."""
    device = object_id(cluster, node)
    status = topics.node(node, "status")
    telemetry = topics.node(node, "telemetry")
    reported = topics.node(node, "assignment/reported")
    components = dict(
        [
            _online(device, status),
            _sensor(device, "cpu", "CPU load", telemetry, "{{ value_json.cpu_percent }}", "%"),
            _sensor(
                device,
                "others_load",
                "Others' load",
                telemetry,
                "{{ [value_json.cpu_percent - value_json.process_cpu_percent, 0] | max | round(1) }}",
                "%",
            ),
            _sensor(device, "gflops", "Effective speed", telemetry, "{{ value_json.gflops }}", "GFLOP/s"),
            _sensor(device, "request_ms", "Work per request", telemetry, "{{ value_json.request_ms }}", "ms"),
            _sensor(device, "units", "Units", reported, "{{ value_json.units | length }}", state_class="measurement"),
            _sensor(device, "generation", "Generation", reported, "{{ value_json.generation }}"),
            _sensor(
                device,
                "last_error",
                "Last error",
                reported,
                "{{ value_json.error or 'none' }}",
                entity_category="diagnostic",
            ),
        ]
    )
    return _announced(prefix, device, f"EdgeFlow {node}", "edgeflowd", version, components, status)


def controller_config(
    topics: Topics, cluster: str, version: str, prefix: str, models: Sequence[str]
) -> tuple[str, bytes]:
    """The controller's discovery (topic, payload): for each of its ``models``, the plan, method,
    predicted and measured latency and the nodes it plans on (one entity each, named by the model
    where it serves several)."""
    device = object_id(cluster, "controller")
    status = topics.controller("status")
    components = dict([_online(device, status)])
    for model in models:
        plan, costs = topics.controller("plan", model), topics.controller("costs", model)
        several = len(models) > 1
        said = f" ({model})" if several else ""

        def key(name: str, model: str = model, several: bool = several) -> str:
            return f"{name}_{re.sub(r'[^A-Za-z0-9_-]', '_', model)}" if several else name

        template = "{{ value_json.%s | round(1) }}"
        components.update(
            [
                _sensor(device, key("plan"), f"Plan{said}", plan, "{{ value_json.plan }}"),
                _sensor(device, key("model"), f"Model{said}", plan, "{{ value_json.model }}"),
                _sensor(device, key("method"), f"Method{said}", plan, "{{ value_json.method }}"),
                _sensor(
                    device,
                    key("nodes"),
                    f"Nodes{said}",
                    plan,
                    "{{ value_json.nodes | length }}",
                    state_class="measurement",
                ),
                _sensor(
                    device, key("predicted_ms"), f"Predicted latency{said}", costs, template % "predicted_ms", "ms"
                ),
                _sensor(device, key("measured_ms"), f"Measured latency{said}", costs, template % "measured_ms", "ms"),
                _sensor(device, key("single_ms"), f"Best single device{said}", costs, template % "single_ms", "ms"),
            ]
        )
    name = f"EdgeFlow controller {cluster}"
    return _announced(prefix, device, name, "edgeflow controller", version, components, status)
