"""JSON Schemas of the files people write by hand: device profiles and cluster files (from their
formats in :mod:`edgeflowd.profiles.formats`, the types the parser converts them into) and the
daemon's configuration (from :class:`~edgeflowd.node.config.DaemonConfig`, whose fields declare
every setting). Editors that read the ``yaml-language-server`` modeline every shipped YAML carries
check and complete these files as they are typed.

``python -m edgeflowd.node.schemas --write profiles/schema`` writes them; a test keeps the copies
in the repository equal to what this generates. They are installed under
``<prefix>/share/edgeflow/profiles/schema/``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from edgeflowd.node.config import SETTINGS, DaemonConfig
from edgeflowd.profiles.formats import ClusterDoc, DeviceProfileDoc

__all__ = ["SCHEMAS", "config_schema", "main", "schema_of"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"  # the draft msgspec writes


def schema_of(cls: type[Any], title: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"$schema": _DRAFT, "title": title, **msgspec.json.schema(cls)}
    return schema


def config_schema() -> dict[str, Any]:
    """The daemon's configuration file: every setting, with its help as description. YAML also
    takes ``plugins`` as a list and ``mqtt_version: 5`` as a number, as the parser does."""
    schema = schema_of(DaemonConfig, "edgeflowd configuration (/etc/edgeflow/edgeflowd.yaml)")
    body = schema["$defs"]["DaemonConfig"]
    body["description"] = "Settings of edgeflowd; each is also a variable EDGEFLOWD_<NAME> and a flag --<name>."
    body["additionalProperties"] = False
    body.pop("required", None)  # node_id may come from the environment or a flag instead
    for name, setting in SETTINGS.items():
        prop = body["properties"][name]
        prop["description"] = setting.help
        if setting.choices:
            prop["enum"] = list(setting.choices)
    body["properties"]["plugins"]["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    body["properties"]["plugins"].pop("type", None)
    version = body["properties"]["mqtt_version"]
    version.pop("type", None)
    version["enum"] = [*version["enum"], 5]
    return schema


SCHEMAS = {
    "device.schema.json": lambda: schema_of(DeviceProfileDoc, "EdgeFlow device profile (edgeflow.device/1)"),
    "cluster.schema.json": lambda: schema_of(ClusterDoc, "EdgeFlow cluster file (edgeflow.cluster/1)"),
    "edgeflowd.schema.json": config_schema,
}
"""File name -> the schema it holds."""


def rendered(name: str) -> str:
    return json.dumps(SCHEMAS[name](), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeflowd.node.schemas", description=__doc__)
    parser.add_argument("--write", metavar="DIR", required=True, help="directory to write the schemas into")
    args = parser.parse_args(argv)
    out = Path(args.write)
    out.mkdir(parents=True, exist_ok=True)
    for name in SCHEMAS:
        (out / name).write_text(rendered(name))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
