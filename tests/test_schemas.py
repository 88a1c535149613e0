"""The JSON Schemas editors check the hand-written files with: the copies in profiles/schema are
what the formats generate, every shipped YAML names its schema in a modeline and passes it (as
checked by jsonschema, a validator of its own), and documents the parser refuses are refused by
the schema too."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edgeflowd.errors import ProfileError
from edgeflowd.node.schemas import SCHEMAS, main, rendered
from edgeflowd.profiles.devices import DEFAULT_KIND_FACTORS, load_cluster, load_device_profile
from edgeflowd.profiles.formats import OpKind

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO / "profiles/schema"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return schema


def test_the_shipped_schemas_are_the_generated_ones(tmp_path: Path) -> None:
    for name in SCHEMAS:
        assert (SCHEMA_DIR / name).read_text() == rendered(name), (
            f"run: python -m edgeflowd.node.schemas --write {SCHEMA_DIR}"
        )
    assert main(["--write", str(tmp_path)]) == 0 and sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMAS)
    assert set(typing.get_args(OpKind)) == set(DEFAULT_KIND_FACTORS)  # the format's op kinds are the cost model's


@pytest.mark.parametrize("path", sorted((REPO / "profiles").glob("*/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_profile_names_its_schema_and_passes_it(path: Path) -> None:
    line = path.read_text().splitlines()[0]
    match = MODELINE.match(line)
    assert match, f"{path}:1 lacks the modeline: {line!r}"
    schema_path = (path.parent / match[1]).resolve()
    assert schema_path.parent == SCHEMA_DIR and schema_path.is_file()
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(schema_path.read_text()))


def test_the_shipped_configuration_passes_its_schema() -> None:
    text = (REPO / "packaging/edgeflowd.yaml").read_text()
    match = MODELINE.match(text.splitlines()[0])
    assert match and match[1] == "/opt/edgeflow/share/edgeflow/profiles/schema/edgeflowd.schema.json"
    uncommented = yaml.safe_load(re.sub(r"^#(\w+: )", r"\1", text, flags=re.M))
    schema = _schema("edgeflowd.schema.json")
    jsonschema.validate(uncommented, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**uncommented, "brokr": "x"}, schema)


BOARD = {"compute": {"gflops": 7.0}, "memory_mb": 2000, "link": {"up_mbps": 80, "down_mbps": 100, "latency_ms": 2}}


@pytest.mark.parametrize(
    "edit",
    [
        {"colour": "red"},
        {"compute": {"gflops": -1}},
        {"compute": {"gflops": 7, "per_kind": {"tensor": 2}}},
        {"threads": 0},
        {"link": {"up_mbps": 80, "down_mbps": 100}},
    ],
    ids=["unknown field", "negative rate", "unknown op kind", "no threads", "missing latency"],
)
def test_what_the_parser_refuses_the_schema_refuses(tmp_path: Path, edit: dict[str, Any]) -> None:
    bad = {**BOARD, **edit}
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ProfileError):
        load_device_profile(path)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("device.schema.json"))
    path.write_text(yaml.safe_dump(BOARD))
    jsonschema.validate(BOARD, _schema("device.schema.json"))  # and both take the good one
    assert load_device_profile(path).gflops == 7.0


def test_a_cluster_the_parser_refuses_the_schema_refuses(tmp_path: Path) -> None:
    bad = {"devices": [{"id": "a/b", "profile": "rpi4"}]}
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ProfileError, match=r"devices\[0\]\.id: expected a name without"):
        load_cluster(path)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("cluster.schema.json"))
