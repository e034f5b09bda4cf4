"""Bare trio TCP byte relay: the baseline sqlward is measured against.

    python bench/relay.py --listen 127.0.0.1:6543 --upstream 127.0.0.1:5432

Per accepted connection it opens one upstream connection and runs two tasks,
each copying ``receive_some(65536)`` -> ``send_all`` in one direction. When
either direction ends (EOF or error), both sockets are closed. Nothing else:
no parsing, no buffering policy, no logging per connection. TCP_NODELAY is
trio's default for TCP streams.
"""

from __future__ import annotations

import argparse
import sys

import trio

BUFSIZE = 65536


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def _pump(
    src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope
) -> None:
    try:
        while True:
            data = await src.receive_some(BUFSIZE)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()


def _make_handler(upstream_host: str, upstream_port: int):
    async def handle(client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream(upstream_host, upstream_port)
            except OSError:
                return
            async with upstream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)

    return handle


async def _serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    handler = _make_handler(*upstream)
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    print(
        f"relay listening on {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}",
        file=sys.stderr,
        flush=True,
    )
    await trio.serve_listeners(handler, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        trio.run(_serve, args.listen, args.upstream)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
