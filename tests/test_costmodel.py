"""Cost model and simulator: hand-computed timelines."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from controller.graph.trace import trace_model
from controller.planner.costmodel import compute_s, send, transfer_s, unit_fixed_s
from controller.planner.methods.baselines import single_on
from controller.planner.partitions import even_partition
from controller.planner.plan import build_plan
from controller.planner.simulate import simulate
from edgeflowd.core.sizes import FRAME_HEADER_BYTES, FRAME_ROOM_BYTES
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link

LINK = Link(up_mbps=80.0, down_mbps=100.0, latency_ms=2.0)


def _device(name: str, gflops: float, load: float = 0.0) -> Device:
    return Device(name, DeviceProfile(name, gflops, 1000.0, 1, LINK, op_overhead_ms=0.5), load)


def test_transfer_pays_both_links_and_both_latencies() -> None:
    nbytes = 10_000
    bits = 8 * (nbytes + FRAME_HEADER_BYTES)
    assert transfer_s(nbytes, LINK, LINK) == pytest.approx(0.004 + bits / 80e6 + bits / 100e6)


def test_chunked_frames_pipeline_through_the_broker() -> None:
    nbytes = 8 * FRAME_ROOM_BYTES
    store_and_forward = 8 * (nbytes + FRAME_HEADER_BYTES) * (1 / 80e6 + 1 / 100e6)
    hop = send(nbytes, LINK, LINK)
    assert hop.arrival < 0.7 * store_and_forward
    assert hop.arrival > 8 * nbytes / 80e6  # never faster than the slower link


def test_a_busy_uplink_delays_the_message() -> None:
    idle, busy = send(1000, LINK, LINK), send(1000, LINK, LINK, ready=0.0, up_free=1.0)
    assert busy.arrival == pytest.approx(idle.arrival + 1.0)


def test_compute_scales_with_rows_and_load() -> None:
    graph = trace_model(nn.Conv2d(3, 8, 3, 1, 1), torch.zeros(1, 3, 10, 10), "conv")
    (conv,) = graph.compute_layers
    idle, loaded = _device("a", 1.0), _device("b", 1.0, load=0.5)
    assert compute_s(conv, 5, idle) == pytest.approx(0.0005 + conv.flops / 2 / 1e9)
    assert compute_s(conv, 5, loaded) - 0.0005 == pytest.approx(2 * (compute_s(conv, 5, idle) - 0.0005))
    assert compute_s(conv, 0, idle) == 0.0


def test_single_device_timeline_is_input_compute_output() -> None:
    graph = trace_model(nn.Conv2d(3, 8, 3, 1, 1), torch.zeros(1, 3, 10, 10), "conv")
    cluster = Cluster("one", (_device("a", 1.0),), client=LINK)
    timeline = simulate(build_plan(graph, single_on(graph, cluster, 0)), graph, cluster)
    (conv,) = graph.compute_layers
    expected = transfer_s(3 * 10 * 10 * 4, LINK, LINK) + compute_s(conv, 10, cluster.devices[0])
    expected += transfer_s(8 * 10 * 10 * 4, LINK, LINK)
    assert timeline.latency_s == pytest.approx(expected)


def test_resources_never_do_two_things_at_once() -> None:
    graph = trace_model(
        nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1)), torch.zeros(1, 3, 16, 9), "c"
    )
    cluster = Cluster("three", tuple(_device(n, g) for n, g in [("a", 1.0), ("b", 2.0), ("c", 4.0)]), client=LINK)
    timeline = simulate(build_plan(graph, even_partition(graph, 3)), graph, cluster)
    for device in range(-1, 3):
        for resource in ("compute", "up", "down"):
            spans = sorted(
                (i.start, i.end) for i in timeline.intervals if i.device == device and i.resource == resource
            )
            assert all(a_end <= b_start + 1e-12 for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert timeline.latency_s >= max(i.end for i in timeline.intervals if i.resource == "compute")


def test_every_unit_pays_a_pass_over_its_layers_weights_whatever_its_rows() -> None:
    graph = trace_model(nn.Conv2d(64, 64, 3, 1, 1), torch.zeros(1, 64, 10, 10), "conv")
    (conv,) = graph.compute_layers
    plain = _device("a", 1.0)
    passes = Device("b", dataclasses.replace(plain.profile, weights_gbps=0.5), 0.0)
    loaded = Device("c", passes.profile, 0.5)
    one_pass = conv.param_bytes / 0.5e9
    assert unit_fixed_s(conv, plain) == pytest.approx(0.0005)  # no rate declared or measured: not charged
    assert unit_fixed_s(conv, passes) == pytest.approx(0.0005 + one_pass)
    assert compute_s(conv, 1, passes) - compute_s(conv, 1, plain) == pytest.approx(one_pass)
    assert compute_s(conv, 10, passes) - compute_s(conv, 10, plain) == pytest.approx(one_pass)  # not per row
    assert unit_fixed_s(conv, loaded) == pytest.approx(0.0005 + 2 * one_pass)  # other work slows it too
    two_halves = compute_s(conv, 5, passes) * 2
    assert two_halves - compute_s(conv, 10, passes) == pytest.approx(unit_fixed_s(conv, passes))
