"""The controller's registry: effective rates from declared profile, benchmark and live load;
membership events; protocol refusal; load hysteresis."""

from __future__ import annotations

import pytest

from controller.control.registry import LoadWatch, NodeView, Registry, effective_device, others_load
from edgeflowd.profiles.devices import MEASURED_KINDS, Cluster, Device, DeviceProfile, Link
from edgeflowd.wire.messages import Info, Status, Telemetry

LINK = Link(100.0, 100.0, 1.0)
PROFILE = DeviceProfile(
    "board",
    gflops=10.0,
    memory_mb=1000.0,
    threads=1,
    link=LINK,
    kind_factors={"conv": 1.0, "dwconv": 0.3, "matmul": 0.6, "pool": 0.25},
)
CLUSTER = Cluster("c", (Device("a", PROFILE), Device("b", PROFILE, load=0.5)))


def _telemetry(cpu: float, own: float) -> Telemetry:
    return Telemetry(cpu_percent=cpu, memory_percent=10.0, load_avg=[0.0, 0.0, 0.0], process_cpu_percent=own)


def test_effective_rate_combines_benchmark_factors_and_others_load() -> None:
    view = NodeView(
        "a",
        info=Info(node="a", version="x", benchmark={"conv_gflops": 30.0, "dwconv_gflops": 3.0, "weights_gbps": 7.5}),
        telemetry=_telemetry(cpu=70.0, own=20.0),
    )
    device = effective_device(CLUSTER.devices[0], view)
    assert device.profile.gflops == 30.0  # measured beats declared
    assert device.profile.kind_factors["dwconv"] == pytest.approx(0.1)  # measured ratio
    assert device.profile.kind_factors["matmul"] == 0.6  # not measured: declared
    assert device.profile.weights_gbps == 7.5  # measured beats declared (none)
    assert device.load == pytest.approx(0.5)  # 70% busy, 20% of it the daemon itself
    assert device.rate("conv") == pytest.approx(30e9 * 0.5)
    assert device.rate("dwconv") == pytest.approx(3e9 * 0.5)


def test_every_kind_the_benchmark_measures_replaces_its_declared_factor() -> None:
    bench = {"conv_gflops": 100.0, **{f"{kind}_gflops": float(k + 1) for k, kind in enumerate(MEASURED_KINDS)}}
    device = effective_device(CLUSTER.devices[0], NodeView("a", info=Info(node="a", version="x", benchmark=bench)))
    for k, kind in enumerate(MEASURED_KINDS):
        assert device.rate(kind) == pytest.approx((k + 1) * 1e9), kind
    assert {"eltwise", "pool", "concat", "upsample"} <= set(MEASURED_KINDS)  # memory-bound kinds are measured


def test_effective_rate_falls_back_to_the_profile_and_its_static_load() -> None:
    assert effective_device(CLUSTER.devices[1], None) == CLUSTER.devices[1]
    assert effective_device(CLUSTER.devices[1], NodeView("b")).rate("conv") == pytest.approx(10e9 * 0.5)


@pytest.mark.parametrize(("cpu", "own", "load"), [(100.0, 0.0, 0.95), (10.0, 30.0, 0.0), (45.0, 5.0, 0.4)])
def test_others_load_is_clamped(cpu: float, own: float, load: float) -> None:
    assert others_load(_telemetry(cpu, own)) == pytest.approx(load)


def test_membership_events_and_live_nodes() -> None:
    reg = Registry(CLUSTER)
    assert [e.event for e in reg.on_status("a", Status("online", "i1", 1), 0.0)] == ["joined"]
    assert reg.live() == []  # no info yet: not benchmarked
    reg.on_info("a", Info(node="a", version="x"), 0.0)
    assert reg.live() == ["a"]
    assert reg.on_status("a", Status("online", "i1", 2), 1.0) == []  # a reconnect of the same process
    assert [e.event for e in reg.on_status("a", Status("offline", "i1", 2), 2.0)] == ["left"]
    assert reg.live() == []
    assert [e.event for e in reg.on_status("a", Status("online", "i2", 1), 3.0)] == ["joined"]
    assert reg.live() == ["a"]


def _beat(interval_s: float, quiet_s: float = 0.0) -> Telemetry:
    return Telemetry(10.0, 10.0, [0.0, 0.0, 0.0], interval_s=interval_s, quiet_s=quiet_s)


def test_a_node_whose_telemetry_stops_leaves_and_comes_back_with_it() -> None:
    reg = Registry(CLUSTER)
    reg.on_status("a", Status("online", "i1", 1), 0.0)
    reg.on_info("a", Info(node="a", version="x"), 0.0)
    assert reg.on_telemetry("a", _beat(2.0), 10.0) == []
    assert reg.silence(15.9) == []  # three periods of 2 s: not yet
    assert reg.live() == ["a"]
    [left] = reg.silence(16.1)
    assert (left.event, left.node) == ("left", "a")
    assert "no telemetry for 6.1 s (every 2 s)" in left.detail
    assert reg.live() == [] and reg.silence(30.0) == []  # said once
    assert reg.on_status("a", Status("offline", "i1", 1), 31.0) == []  # the last will, later: left already
    assert [e.event for e in reg.on_status("a", Status("online", "i1", 2), 32.0)] == ["joined"]
    assert reg.live() == ["a"]  # a new connection: its silence is over


def test_silence_ends_with_telemetry_and_honours_quiet_periods_and_minimum() -> None:
    reg = Registry(CLUSTER)
    reg.on_status("a", Status("online", "i1", 1), 0.0)
    reg.on_info("a", Info(node="a", version="x"), 0.0)
    reg.on_telemetry("a", _beat(0.5), 0.0)
    assert reg.silence(2.9) == []  # 3 x 0.5 s is below the 3 s minimum
    assert [e.event for e in reg.silence(3.1)] == ["left"]
    [joined] = reg.on_telemetry("a", _beat(0.5), 4.0)
    assert joined.event == "joined" and "after 4.0 s of silence" in joined.detail
    assert reg.live() == ["a"]
    reg.on_telemetry("a", _beat(1.0, quiet_s=20.0), 5.0)  # about to measure itself
    assert reg.silence(27.9) == []
    assert [e.event for e in reg.silence(28.1)] == ["left"]


def test_silence_needs_a_stated_period_and_counts_from_our_own_reconnect() -> None:
    reg = Registry(CLUSTER)
    for node in ("a", "b"):
        reg.on_status(node, Status("online", "i1", 1), 0.0)
        reg.on_info(node, Info(node=node, version="x"), 0.0)
    reg.on_telemetry("a", _beat(0.0), 0.0)  # a node that does not say its period: never judged
    reg.on_telemetry("b", _beat(1.0), 0.0)
    reg.heard_all(100.0)  # the controller was cut off until now: what b said meanwhile was lost
    assert reg.silence(102.0) == []
    assert [e.node for e in reg.silence(103.5)] == ["b"]


def test_a_node_id_seen_twice_is_an_event_not_silent() -> None:
    reg = Registry(CLUSTER)
    reg.on_status("a", Status("online", "i1", 1), 0.0)
    events = reg.on_status("a", Status("online", "i9", 1), 1.0)
    assert [e.event for e in events] == ["duplicate", "joined"]
    assert "i9 came online while instance i1 is still online" in events[0].detail
    assert reg.on_status("a", Status("offline", "i1", 1), 2.0) == []  # the other one's will: a is still up


def test_unknown_protocols_and_nodes_are_refused_with_both_sides_versions() -> None:
    reg = Registry(CLUSTER)
    reg.on_status("b", Status("online", "i1", 1), 0.0)
    events = reg.on_info("b", Info(node="b", version="9", protocol=[3, 4]), 0.0)
    assert [e.event for e in events] == ["refused"]
    assert "node speaks protocol versions [3, 4], this controller [2]" in events[0].detail
    assert reg.live() == []
    assert [e.event for e in reg.on_status("zz", Status("online", "i", 1), 0.0)] == ["unknown"]
    assert reg.on_status("zz", Status("online", "i", 1), 0.0) == []  # said once


def test_load_watch_needs_a_sustained_change() -> None:
    watch = LoadWatch(threshold=0.25, samples=3)
    watch.planned_with({"a": 0.0})
    assert not watch.observe("a", 0.9)
    assert not watch.observe("a", 0.1)  # a blip resets the streak
    assert [watch.observe("a", 0.8) for _ in range(4)] == [False, False, True, False]  # asked once per streak
    assert not watch.observe("b", 0.9)  # not in the plan


def test_live_cluster_at_measured_or_declared_rates() -> None:
    reg = Registry(CLUSTER)
    reg.on_status("a", Status("online", "i1", 1), 0.0)
    reg.on_info("a", Info(node="a", version="x", benchmark={"conv_gflops": 2.0}), 0.0)  # a throttled benchmark
    assert [d.profile.gflops for d in reg.live_cluster().devices] == [2.0]
    assert reg.live_cluster(measured=False).devices == (CLUSTER.devices[0],)  # emulated: the profile is the truth
