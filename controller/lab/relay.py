"""A TCP relay that delays every byte by a fixed time in each direction: link latency for the
testbed, whose kernel has no ``netem``. One relay per emulated device listens at the host end of
the device's link and forwards to the broker on loopback; what it reads from either side it
writes to the other ``delay_ms`` later, in order. It adds delay only: rates are the ``tbf`` shaping
of the device's link (controller/lab/testbed.py).

    python -m controller.lab.relay --listen 10.200.0.1:1883 --to 127.0.0.1:1883 --delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "serve"]

_CHUNK = 1 << 16


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it was read; ends at EOF."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)  # a slow reader holds the writer back

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(_CHUNK):
            await queue.put((time.monotonic() + delay_s, data))
    except ConnectionError:
        pass
    await queue.put((0.0, b""))
    with contextlib.suppress(ConnectionError):
        await sender
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def serve(listen: tuple[str, int], to: tuple[str, int], delay_ms: float) -> None:
    delay_s = delay_ms / 1e3

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*to)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, broker_writer, delay_s), _pump(broker_reader, client_writer, delay_s))

    server = await asyncio.start_server(relay, *listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"relaying {listen[0]}:{listen[1]} -> {to[0]}:{to[1]} with {delay_ms:g} ms each way", flush=True)
    await stop.wait()
    server.close()  # not wait_closed: open connections die with the process, which exits now


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.lab.relay", description=__doc__)
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--to", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.to, args.delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
