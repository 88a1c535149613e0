"""Asking the nodes how one of a requester's requests went (``data/<plan>/trace``, answered on
``data/<plan>/spans``), and drawing it under the controller's prediction for the plan: what
``edgeflow infer --timeline`` and ``edgeflow demo --timelines`` do. The timeline itself is
assembled by :mod:`controller.control.timeline` (pure)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from controller.control.requester import InferenceClient, Result
from controller.control.timeline import measured_timeline, predicted_timeline
from controller.planner.gantt import draw_timelines
from controller.planner.simulate import Timeline
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import received
from edgeflowd.node.spans import KEEP
from edgeflowd.wire.messages import Spans, TimelineDoc, TraceAsk, decode_control, encode_control

__all__ = ["draw_request", "request_timeline"]

log = logging.getLogger(__name__)


def request_timeline(client: InferenceClient, result: Result, wait_s: float = 10.0) -> tuple[Timeline, Timeline | None]:
    """How ``result``'s request went, measured on every node of the plan (they keep the last
    :data:`~edgeflowd.node.spans.KEEP` requests), and the controller's prediction for the plan
    when it published one."""
    sent = client.sent_at(result.request)
    if not result.ok or sent is None:
        raise EdgeFlowError(f"request {result.request} did not complete here: nothing to draw")
    info = client.info
    plan_topic = client.topics.controller("timeline", info.model)
    spans_topic = client.topics.spans(info.plan)
    if not client.conn.subscribe_wait([spans_topic, plan_topic], qos=1):
        raise EdgeFlowError(f"{client.conn.broker} did not acknowledge the subscription to {spans_topic}")
    client.conn.publish(client.topics.trace(info.plan), encode_control(TraceAsk(result.request)), qos=1)
    answers: dict[str, tuple[Spans, float]] = {}
    predicted: TimelineDoc | None = None
    try:
        for topic, payload in received(client.messages, wait_s):
            try:
                if topic == spans_topic:
                    spans = decode_control(payload, topic, Spans)
                    if spans.request == result.request and spans.node in info.nodes:
                        answers[spans.node] = (spans, time.time())
                elif topic == plan_topic and payload:
                    doc = decode_control(payload, topic, TimelineDoc)
                    predicted = doc if doc.generation == info.generation else predicted
            except ProtocolError as exc:
                log.warning("ignored: %s", exc)
            if len(answers) == len(info.nodes) and predicted is not None:
                break
    finally:
        client.conn.unsubscribe(spans_topic)
        client.conn.unsubscribe(plan_topic)
    if not answers:
        raise EdgeFlowError(f"no node of plan {info.plan} answered for {result.request} within {wait_s:g} s")
    measured = measured_timeline(info.nodes, answers, client.topics, sent, result.latency_s)
    return measured, predicted_timeline(predicted, info.nodes) if predicted else None


def draw_request(client: InferenceClient, results: list[Result], out: str | Path) -> str:
    """Draw the request of median latency among the last the nodes remember, as measured,
    under the controller's prediction for the plan; returns what was drawn, to say."""
    recent = sorted((r for r in results[-KEEP:] if r.ok), key=lambda r: r.latency_s)
    if not recent:
        return "no request completed: no timeline to draw"
    chosen = recent[len(recent) // 2]
    measured, predicted = request_timeline(client, chosen)
    panels = [("predicted", predicted)] if predicted else []
    title = f"{client.info.model} plan {client.info.plan} ({client.info.method})"
    draw_timelines([*panels, (f"measured ({chosen.request})", measured)], client.info.nodes, title, out)
    said = "beside the prediction" if predicted else "(no prediction published for this plan)"
    return f"wrote {out}: request {chosen.request}, {chosen.latency_s * 1e3:.1f} ms, {said}"
