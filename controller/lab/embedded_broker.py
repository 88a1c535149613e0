"""A pure-Python MQTT broker for machines without Mosquitto (``edgeflow demo`` falls back to it):
amqtt, which speaks MQTT 3.1.1 only and moves ~100 MB/s, against Mosquitto's ~400. Run as its own
process (``python -m controller.lab.embedded_broker --bind 127.0.0.1:1883 [--bind IP:PORT ...]``) so
that its event loop never waits on a torch computation; it serves until SIGTERM or Ctrl-C.
Anonymous clients only: for anything beyond one machine, use Mosquitto."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _config(binds: Sequence[str]) -> dict[str, object]:
    listeners = {
        ("default" if i == 0 else f"listener-{i}"): {"type": "tcp", "bind": bind} for i, bind in enumerate(binds)
    }
    # No $SYS topics and no per-packet logging: the data plane moves megabytes per request.
    return {
        "listeners": listeners,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def _serve(binds: Sequence[str]) -> None:
    from amqtt.broker import Broker  # noqa: PLC0415 - an optional dependency: fail in main() with a hint

    broker = Broker(_config(binds))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.lab.embedded_broker", description=__doc__)
    parser.add_argument("--bind", action="append", required=True, metavar="HOST:PORT", help="listen here")
    args = parser.parse_args(argv)
    try:
        import amqtt  # noqa: F401, PLC0415
    except ImportError:
        print(
            "the embedded broker needs amqtt: pip install 'edgeflow[embedded]' (or install mosquitto)", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
