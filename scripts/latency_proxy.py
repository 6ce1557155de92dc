"""A TCP proxy on loopback that delays every byte by a fixed one-way time,
both ways: a remote cache "across a network" for benchmarks where `tc
netem` is not available (scripts/bench_remote.sh).

    python3 scripts/latency_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS [CONN_MBPS]

A request and its answer each wait ONE_WAY_MS, so a round trip costs
twice that. With CONN_MBPS, each connection carries at most that many
MB/s each way, as one TCP connection's window over a long round trip
allows (64 MiB/s for a 4 MiB window over 60 ms); the connections
together are not limited. Runs until killed.
"""
import asyncio
import sys
import time


async def pipe(reader, writer, delay, rate):
    """Forwards what `reader` gets to `writer`, each chunk `delay` s after
    it arrived, and at most `rate` bytes a second (0: no limit)."""
    queue = asyncio.Queue()

    async def read():
        while data := await reader.read(1 << 16):
            await queue.put((time.monotonic() + delay, data))
        await queue.put((time.monotonic() + delay, b""))

    async def write():
        free = 0.0  # when the paced link is free again
        while True:
            due, data = await queue.get()
            if rate:
                free = max(free, due) + len(data) / rate
                due = free
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, asyncio.IncompleteReadError):
        writer.close()


async def main(listen, target, delay, rate):
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer, delay, rate), pipe(server_reader, client_writer, delay, rate))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    rate = float(sys.argv[4]) * 1e6 if len(sys.argv) > 4 else 0.0
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000, rate))
