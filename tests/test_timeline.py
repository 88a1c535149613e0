"""A request's measured timeline on a real cluster: every node of the plan answers for it, its
bars fall inside the request's own time (same machine: one clock), each node's units are there,
and ``edgeflow infer --timeline`` draws it under the controller's prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from controller.control.requester import InferenceClient
from controller.control.traced import request_timeline
from edgeflowd.core.units import CLIENT
from tests.cluster import DaemonProcess, mosquitto_broker, run_cli

pytestmark = pytest.mark.integration

CLUSTER = "timed"
NODES = ("t1", "t2")


def test_a_request_is_drawn_as_the_nodes_measured_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster_file = tmp_path / "timed.yaml"
    devices = "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in NODES)
    cluster_file.write_text(f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n{devices}")
    with mosquitto_broker(tmp_path) as broker:
        daemons = [DaemonProcess(n, broker.url, CLUSTER, tmp_path) for n in NODES]
        try:
            where = ["--cluster", str(cluster_file), "--broker", broker.url]
            code, out = run_cli(
                capsys, "deploy", "--model", "small_dag", *where, "--method", "equal", "--timeout", "120"
            )
            assert code == 0, out
            client = InferenceClient.connect(broker.settings, CLUSTER, "small_dag")
            try:
                # The requester runs torch on one thread while requests fly (its copies would
                # otherwise spin torch's pool on the nodes' cores), and gives the process back its own.
                threads, seen = torch.get_num_threads(), []
                torch.set_num_threads(2)
                try:
                    inputs = iter([torch.randn(client.input_shape) for _ in range(3)])
                    results = client.run(inputs, 1, 30.0, on_result=lambda r: seen.append(torch.get_num_threads()))
                    assert seen == [1, 1, 1] and torch.get_num_threads() == 2
                finally:
                    torch.set_num_threads(threads)
                assert all(r.ok for r in results)
                measured, predicted = request_timeline(client, results[-1])
            finally:
                client.close()
            latency = results[-1].latency_s
            print(f"latency {latency * 1e3:.1f} ms; measured bars:")
            for bar in measured.intervals:
                print(f"  {bar.device:>2} {bar.resource:<7} {bar.start * 1e3:7.2f} {bar.end * 1e3:7.2f} {bar.label}")
            computed = {bar.device for bar in measured.intervals if bar.resource == "compute"}
            assert computed == {0, 1}  # the equal plan splits every layer over both nodes
            slack = 0.005  # one clock here: only the correction's one-way delay and the rounding
            for bar in measured.intervals:
                assert -slack <= bar.start <= bar.end <= latency + slack, bar
            assert any(bar.device == CLIENT and bar.resource == "up" for bar in measured.intervals)
            assert any(bar.device == CLIENT and bar.resource == "down" for bar in measured.intervals)  # results
            assert predicted is not None and {b.device for b in predicted.intervals if b.resource == "compute"} == {
                0,
                1,
            }

            out_png = tmp_path / "timeline.png"
            asks = ["--cluster", CLUSTER, "--broker", broker.url, "--repeat", "3", "--timeline", str(out_png)]
            code, out = run_cli(capsys, "infer", "--model", "small_dag", *asks)
            assert code == 0 and f"wrote {out_png}: request" in out and "beside the prediction" in out, out
            assert out_png.stat().st_size > 10_000
        finally:
            for daemon in daemons:
                daemon.terminate()
