"""The device daemon: the thin threaded shell that carries out what the node runtime and the
assignment state machine decide.

Threads and what they own:
- paho's network thread only enqueues (:class:`~edgeflowd.node.events.Inbox`; what does not fit
  is counted);
- the engine thread (the caller of :meth:`Daemon.run`) owns the assignment state and the
  periodic work (expiry, telemetry, watchdog), and receives data frames;
- workers run units (:meth:`NodeRuntime.compute`), publish what leaves the node, and deliver
  slices for units of this node themselves (never through the broker), under the one lock that
  guards the runtime's buffers; the engine takes it to receive frames and to expire.
New work (a plan per model) is switched in by the engine; frames of any other plan are dropped
as stale.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping

import torch

from edgeflowd import __version__
from edgeflowd.core.ops import plugin_resolver
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection
from edgeflowd.node import assignments as a
from edgeflowd.node.benchmark import RateDrift, conv_gflops, cpu_quota, cpu_seconds, run_benchmark
from edgeflowd.node.config import DaemonConfig
from edgeflowd.node.events import Connected, Counts, Event, Inbox, Message, heartbeat
from edgeflowd.node.homeassistant import Announcer
from edgeflowd.node.linkprobe import LinkProbe
from edgeflowd.node.notify import Notifier
from edgeflowd.node.plugins import load_plugins
from edgeflowd.node.runtime import NodeRuntime
from edgeflowd.node.slices import BufferFullError
from edgeflowd.node.telemetry import sample_telemetry
from edgeflowd.node.weights import WeightStore
from edgeflowd.node.workers import Workers
from edgeflowd.profiles.devices import DeviceProfile
from edgeflowd.wire.assignment import NodeWork
from edgeflowd.wire.messages import AssignmentReport, Info, Status, encode_control
from edgeflowd.wire.topics import BlobTopic, BusyTopic, NodeTopic, Topics, TraceTopic, UnitInputTopic

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

_TICK_S = 0.25  # engine wake-up period for expiry, telemetry and the watchdog
_IDLE_S = 2.0  # no message for this long: the node is idle, and may measure itself


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        profile: DeviceProfile | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.profile = profile
        self.node = config.node_id
        self.topics = Topics(config.cluster)
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.instance = uuid.uuid4().hex[:12]
        self.counts = Counts()
        budget = int(config.buffer_mb * 2**20)
        self.events = Inbox(config.queue_messages, budget, f"{self.topics.root}/data/", self.counts)
        self.plugins = load_plugins(config.plugin_modules)  # checked with the configuration
        self.plugin_ops = {name: fn for ops in self.plugins.values() for name, fn in ops.items()}
        self.assignments = a.Assignments(
            self.node, self.topics, WeightStore(config.cache_dir), config.assignment_timeout_s, self.plugin_ops
        )
        self.runtimes: dict[str, NodeRuntime] = {}  # by plan id: one per model served
        self._sessions = 0
        self.benchmark: dict[str, float] = {}
        self._echo_topic = self.topics.node(self.node, "echo")
        self._last_event = self._last_probe = self._last_link = clock()
        self._last_telemetry = 0.0
        self._measuring_s = 0.0  # what the slowest of its own measurements took (benchmark + link)
        # One probe: with two in a row, throttled demo nodes were left unmeasured past the demo's
        # 120 s wait while probes were timed on the wall clock (under a quota that read a rate at
        # random, so two in a row rarely agreed). RateDrift keeps the two-probe rule for others.
        self._drift = RateDrift(probes=1)
        self._quota = cpu_quota()  # the cgroup's CPU share its benchmark ran under
        self._stop = threading.Event()
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            config.broker_settings(),
            f"edgeflowd-{self.node}-{self.instance}",
            self._on_wire,
            will=(self.topics.node(self.node, "status"), offline),
            on_connect=self._on_connect,
            packet_bytes=config.packet_bytes,
        )
        self.probe = LinkProbe(self.conn, self._echo_topic, self.node)
        self.announcer = Announcer.configured(self.conn, self.topics, config)
        self.workers = Workers(config.workers, self.node, self.conn, self.counts, clock, self._serves)

    # -- network thread and workers: only enqueue ------------------------------------------------
    def _on_wire(self, topic: str, payload: bytes) -> None:
        if topic == self._echo_topic:  # the link probe's own echo: the engine is waiting for it
            self.probe.heard(payload)
        else:
            self.events.put(Message(topic, payload))

    def _on_connect(self) -> None:
        self._sessions += 1
        status = Status(state="online", instance=self.instance, session=self._sessions)
        self.conn.publish(self.topics.node(self.node, "status"), encode_control(status), qos=1, retain=True)
        self.events.put(Connected())  # the engine measures the link, then publishes the info

    def _publish_info(self) -> None:
        profile = dataclasses.asdict(self.profile) if self.profile else {}
        plugins = {module: sorted(ops) for module, ops in self.plugins.items()}
        info = Info(node=self.node, version=__version__, profile=profile, benchmark=self.benchmark, plugins=plugins)
        self.conn.publish(self.topics.node(self.node, "info"), encode_control(info), qos=1, retain=True)

    # -- engine --------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        threads = self._threads()
        torch.set_num_threads(threads)
        started = self.clock()
        self.benchmark = run_benchmark(stamped=True)
        self._measuring_s = self.clock() - started
        log.info("node=%s instance=%s threads=%d benchmark: %s", self.node, self.instance, threads, self.benchmark)
        self.conn.subscribe(self.topics.node(self.node, "assignment"), qos=1)
        self.conn.begin()
        # Ready once started, assignment or not, broker or not: a boot (or `apt install`, or
        # `systemctl restart`) must not wait for a deploy; STATUS says what the node is doing.
        self.notifier.ready(f"connecting to {self.conn.broker}")
        said = ""
        while not self._stop.is_set():
            event = self.events.get(_TICK_S)
            try:
                now = self.clock()
                if event is not None:
                    self._last_event = now
                    self._handle(event)
                self._expire(now)
                self._measure_if_idle(now)
                if self.conn.connected.is_set() and now - self._last_telemetry >= self.config.telemetry_interval_s:
                    self._publish_telemetry()
            except (ProtocolError, BufferFullError) as exc:  # a bad message; valid data with no room
                self.counts.add("malformed" if isinstance(exc, ProtocolError) else "dropped")
                log.warning("node=%s refused: %s", self.node, exc)
            except Exception:  # the daemon outlives any one bad message or bug in one path
                self.counts.add("errors")
                log.exception("node=%s: error while handling %s", self.node, type(event).__name__)
            problem = "" if self.conn.connected.is_set() else self.conn.problem
            if problem != said:  # the broker not there, or refusing us: in STATUS as in the journal
                said = problem
                if problem:
                    self.notifier.status(f"{problem}; retrying")
            self.notifier.watchdog_due(self.clock())
        self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _threads(self) -> int:
        """Torch threads: the setting, else the profile's, else one."""
        return self.config.threads or (self.profile.threads if self.profile else 1)

    def measure(self, connect_s: float = 10.0) -> dict[str, float]:
        """The benchmark and, if the broker answers within ``connect_s``, the link: what
        ``--measure-profile`` prints, without serving."""
        torch.set_num_threads(self._threads())
        figures = run_benchmark()
        self.conn.begin()
        try:
            if self.conn.connected.wait(connect_s):
                figures.update(self._measure_link())
            else:
                log.warning(
                    "node=%s: no broker at %s within %g s; link not measured", self.node, self.conn.broker, connect_s
                )
        finally:
            self._say_offline()  # it was online only to measure: say it is gone
            self.conn.stop()
        return figures

    def _handle(self, event: Event) -> None:
        if isinstance(event, Connected):
            if "link_latency_ms" not in self.benchmark:
                try:
                    self.benchmark.update(self._measure_link())
                except EdgeFlowError as exc:  # the info goes out all the same: the node serves unmeasured
                    log.warning("node=%s: link not measured: %s", self.node, exc)
            current = self.assignments.current
            if current is not None:
                # Again on every connect: a broker that lost its retained state learns the generation
                # served here, so that no deploy hands it out again (controller.control.deploy).
                self._report(a.Report(current.generation, "ready"))
            self._publish_info()
            if self.announcer is not None:
                self.announcer.connected()
            if self.assignments.current is not None:
                self.notifier.ready(self._serving())
            else:
                self.notifier.status(f"connected to {self.conn.broker}; waiting for an assignment")
        else:
            self._on_message(event.topic, event.payload)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.announcer is not None and self.announcer.heard(topic, payload):
            return
        about = self.topics.parse(topic)
        if isinstance(about, UnitInputTopic | BusyTopic | TraceTopic):
            runtime = self.runtimes.get(about.plan)
            if runtime is not None:
                self.workers.receive(runtime, about, payload, topic)
            elif isinstance(about, UnitInputTopic):
                self.counts.add("stale")
        elif isinstance(about, BlobTopic):
            self._apply(self.assignments.on_blob(about.sha256, about.part, payload, topic))
        elif about == NodeTopic(self.node, "assignment"):
            self._apply(self.assignments.on_assignment(payload, topic, self.clock()))
        else:
            raise ProtocolError(f"{topic}: not a topic node {self.node} reads")

    def _expire(self, now: float) -> None:
        self._apply(self.assignments.tick(now))
        for runtime in list(self.runtimes.values()):
            with self.workers.buffers:
                partial, buffers = runtime.expire(now)
            for request, unit in buffers:
                log.info("node=%s unit=%s req=%s: inputs incomplete in time; dropped", self.node, unit, request)
            self.counts.add("dropped", partial + len(buffers))

    # -- carrying out the assignment state machine's actions (engine) ----------------------------
    def _apply(self, actions: list[a.AssignmentAction]) -> None:
        for action in actions:
            if isinstance(action, a.Subscribe):
                self.conn.subscribe(action.topic, qos=1)
            elif isinstance(action, a.Unsubscribe):
                self.conn.unsubscribe(action.topic)
            elif isinstance(action, a.Say):
                self.notifier.status(action.text)
            elif isinstance(action, a.Report):
                self._report(action)
            elif isinstance(action, a.Activate):
                self._activate(action)
            elif isinstance(action, a.Refuse):
                self.counts.add("malformed")
                log.warning("node=%s refused: %s", self.node, action.message)

    def _activate(self, action: a.Activate) -> None:
        work = action.work
        if work is None:
            self._switch(None, {})
            return
        try:
            beat = f"edgeflowd[{self.node}].heartbeat"
            with heartbeat(self.config.telemetry_interval_s, self._publish_telemetry, beat):
                self._switch(work, action.tensors)
        except (EdgeFlowError, RuntimeError, ValueError) as exc:  # torch's own errors are RuntimeErrors
            self._apply(self.assignments.not_activated(work, str(exc)))  # its report is logged
        else:
            self._apply(self.assignments.activated(work))
            serving = self._serving()
            self.notifier.ready(serving)
            log.info("node=%s %s", self.node, serving)

    def _serves(self, runtime: NodeRuntime) -> bool:
        """Whether ``runtime`` is still one the node serves (workers stop a replaced one's work)."""
        return self.runtimes.get(runtime.plan) is runtime

    def _switch(self, work: NodeWork | None, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Build the runtimes of the plans that changed (a plan the node already runs keeps its
        runtime, and the requests in it), subscribe their inputs, then swap, then unsubscribe the
        old ones: frames of a new plan are never missed, frames of an old plan find no runtime and
        are dropped. Nothing is swapped unless every new runtime could be built."""
        old = self.runtimes
        new: dict[str, NodeRuntime] = {}
        served = self.assignments.current.plans if self.assignments.current else {}
        for model, assignment in (work.plans if work else {}).items():
            kept = old.get(assignment.plan)
            if kept is not None and served.get(model) == assignment:
                new[assignment.plan] = kept
                continue
            new[assignment.plan] = NodeRuntime(
                assignment.plan,
                self.topics,
                assignment.units,
                tensors.get(model, {}),
                int(self.config.buffer_mb * 2**20),
                self.config.request_ttl_s,
                assignment.keys,
                timer=cpu_seconds,  # packs a convolution's weights where that runs faster here
                admit=self.config.max_requests,
                node=self.node,
                resolve=plugin_resolver(self.plugin_ops),
            )
        new_topics, old_topics = (
            {t for r in runtimes.values() for t in r.input_topics() | {self.topics.trace(r.plan)}}
            for runtimes in (new, old)
        )
        if not self.conn.subscribe_wait(sorted(new_topics - old_topics), qos=0):
            log.warning("node=%s: the broker did not acknowledge the new input subscriptions", self.node)
        self.runtimes = new
        for topic in sorted(old_topics - new_topics):
            self.conn.unsubscribe(topic)

    def _serving(self) -> str:
        current = self.assignments.current
        assert current is not None
        plans = [f"{a.model} plan {a.plan}: {len(a.units)} units" for a in current.plans.values()]
        return f"serving generation {current.generation}: " + ("; ".join(plans) or "nothing")

    def _report(self, report: a.Report) -> None:
        ready = report.state == "ready"
        units = sorted(u for r in self.runtimes.values() for u in r.units) if ready else []
        current = self.assignments.current
        models = {m: a.generation for m, a in current.plans.items()} if ready and current else {}
        admits = self.config.max_requests if ready else 0  # a node with no units too
        message = AssignmentReport(report.generation, report.state, report.error, units, self.instance, admits, models)
        if report.error:
            log.error("node=%s generation %d: %s", self.node, report.generation, report.error)
        topic = self.topics.node(self.node, "assignment/reported")
        self.conn.publish(topic, encode_control(message), qos=1, retain=report.retain)

    # -- measuring itself (engine, when idle) ---------------------------------------------------
    def _measure_if_idle(self, now: float) -> None:
        """Every ``measure_interval_s`` of idleness, probe the conv rate; when it has moved
        (:class:`RateDrift`: a new CPU quota, throttling, a governor), benchmark again and
        re-publish the info, so that the controller plans with what the node can do now. The link
        is measured again with it, and on its own every thirty intervals."""
        interval = self.config.measure_interval_s
        quiet = now - self._last_event >= _IDLE_S
        idle = quiet and not self.workers.busy and not any(r.slices.pending for r in self.runtimes.values())
        if interval <= 0 or not idle or not self.conn.connected.is_set() or now - self._last_probe < interval:
            return
        self._last_probe = now
        published = self.benchmark.get("conv_gflops", 0.0)
        probe = conv_gflops(repeats=5)
        quota, self._quota = self._quota, cpu_quota()
        moved = self._drift.moved(published, probe) or quota != self._quota
        if not moved and now - self._last_link < 30 * interval:
            return
        # The engine says nothing while it measures: the controller must not take that for a
        # freeze. It takes what it took before, at the speed the probe found now.
        slower = max(1.0, published / probe) if probe > 0 else 1.0
        self._publish_telemetry(quiet_s=2 * self._measuring_s * slower + 1.0)
        if moved:
            log.info("node=%s conv rate %.1f GFLOP/s, published %.1f: measuring again", self.node, probe, published)
            self.benchmark = run_benchmark(stamped=True)
        self.benchmark.update(self._measure_link())
        self._publish_info()
        self._last_event = self._last_probe = self.clock()  # what the measuring took is not idleness
        self._measuring_s = max(self._measuring_s, self._last_event - now)
        self._publish_telemetry()  # not quiet any more

    def _measure_link(self) -> dict[str, float]:
        self._last_link = self.clock()
        return self.probe.measure()

    # -- periodic and shutdown -----------------------------------------------------------------
    def _publish_telemetry(self, quiet_s: float = 0.0) -> None:
        self._last_telemetry = self.clock()
        current = self.assignments.current
        generation = current.generation if current else -1
        pending = sum(r.slices.pending for r in self.runtimes.values())
        times = self.workers.times.take()
        interval = self.config.telemetry_interval_s
        gflops = self.benchmark.get("conv_gflops", 0.0)
        telemetry = sample_telemetry(self.counts.snapshot(), generation, pending, times, interval, quiet_s, gflops)
        self.conn.publish(self.topics.node(self.node, "telemetry"), encode_control(telemetry))

    def _say_offline(self) -> None:
        """The retained offline status, while connected (a clean stop leaves no last will)."""
        offline = encode_control(Status(state="offline", instance=self.instance, session=self._sessions))
        try:
            if self.conn.connected.is_set():
                self.conn.publish_wait(self.topics.node(self.node, "status"), offline, timeout_s=2.0, retain=True)
        except EdgeFlowError as exc:
            log.warning("node=%s could not publish offline status: %s", self.node, exc)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("node=%s stopping", self.node)
        self._say_offline()
        self.workers.shutdown()
        self.conn.stop()
