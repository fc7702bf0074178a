"""runners/platform/drain.py ``stop_listening``: at the end of a drain, a connection the kernel completed
but nobody accepted gets a 503, a new one is refused at once, one already being served finishes."""

from __future__ import annotations

import asyncio
import socket

import pytest

from runners.platform.drain import listening_fds, stop_listening


def test_pending_connections_get_a_503_and_new_ones_are_refused() -> None:
    async def main() -> None:
        served: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(await reader.readline())
            await asyncio.sleep(0.2)  # still in flight when the listener stops
            writer.write(b"done\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.sockets[0].fileno() in listening_fds()
        in_flight_r, in_flight_w = await asyncio.open_connection("127.0.0.1", port)
        in_flight_w.write(b"first\n")
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        loop.remove_reader(server.sockets[0].fileno())  # nobody accepts from here on
        pending = socket.create_connection(("127.0.0.1", port))
        pending.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        assert stop_listening(loop) == 1
        answer = await asyncio.to_thread(pending.recv, 4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        assert await asyncio.wait_for(in_flight_r.readline(), 2) == b"done\n" and served == [b"first\n"]
        pending.close()
        in_flight_w.close()
        server.close()

    asyncio.run(main())
