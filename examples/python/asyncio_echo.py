#!/usr/bin/env python3
"""The drop-in path with asyncio: an echo server and its client, first over
TLS-PSK on asyncio's own streams (start_server/open_connection with an
m2mpsk.Context as ssl=), then over DTLS-PSK with m2mpsk's
create_dtls_server/create_dtls_connection, all in this process on
127.0.0.1. Each end prints the identity its association is bound to.

    asyncio_echo.py

Exit status: 0 when both echoes came back, each tagged by Entity B with
Entity A's bound identity; 1 otherwise, or after 20 seconds.
"""
import asyncio
import secrets
import sys

import m2mpsk

KPSA_ID = "asyncio-example@m2m.example.com"
IDB = "//m2m.example.com/cse-in"                     # the server: Entity B
IDA = "//m2m.example.com/cse-in/Casyncio-ae"         # the client: Entity A
TIMEOUT = 20                                         # seconds, for everything


def contexts():
    """The m2mpsk lines: one record with a fresh random Kpsa, provisioned
    on both ends (a real deployment loads a key file: keystore.load_file)."""
    kpsa = secrets.token_bytes(32)
    server_ctx = m2mpsk.Context(server_side=True)
    server_ctx.keystore.add(KPSA_ID, kpsa, IDA, IDB)
    server_ctx.config.add_local_id(IDB)
    client_ctx = m2mpsk.Context(kpsa_id=KPSA_ID)
    client_ctx.keystore.add(KPSA_ID, kpsa, IDA, IDB)
    return server_ctx, client_ctx


async def tls_echo(server_ctx, client_ctx):
    async def handle(reader, writer):
        # Entity B: the connection's PSKObject tells whom it is bound to.
        peer = writer.get_extra_info("ssl_object").peer_id()
        print("TLS  Entity B: bound to %s" % peer, file=sys.stderr)
        line = await reader.readline()
        writer.write(peer.encode() + b" said " + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        conn = writer.get_extra_info("ssl_object")
        print("TLS  Entity A: bound to %s over %s %s"
              % (conn.peer_id(), conn.version(), conn.suite()), file=sys.stderr)
        writer.write(b"hello over TLS\n")
        reply = await reader.readline()
        writer.close()
        await writer.wait_closed()
    print("TLS  Entity A received: %s" % reply.decode().strip(), file=sys.stderr)
    return reply == IDA.encode() + b" said hello over TLS\n"


class Echo(asyncio.DatagramProtocol):
    """Entity B's protocol, one per DTLS peer: an ordinary DatagramProtocol."""

    def connection_made(self, transport):            # after the handshake
        self.transport = transport
        self.peer = transport.get_extra_info("ssl_object").peer_id()
        print("DTLS Entity B: bound to %s" % self.peer, file=sys.stderr)

    def datagram_received(self, data, addr):         # one record, decrypted
        self.transport.write(self.peer.encode() + b" said " + data)


class Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.reply = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if not self.reply.done():
            self.reply.set_result(data)

    def connection_lost(self, exc):
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("closed before the echo"))


async def dtls_echo(server_ctx, client_ctx):
    server = await m2mpsk.create_dtls_server(server_ctx, Echo, ("127.0.0.1", 0))
    async with server:
        transport, client = await m2mpsk.create_dtls_connection(
            client_ctx, Client, server.sockname, handshake_timeout=10)
        conn = transport.get_extra_info("ssl_object")
        print("DTLS Entity A: bound to %s over %s %s"
              % (conn.peer_id(), conn.version(), conn.suite()), file=sys.stderr)
        transport.write(b"hello over DTLS")           # one datagram
        reply = await client.reply
        transport.close()                             # close_notify
    print("DTLS Entity A received: %s" % reply.decode(), file=sys.stderr)
    return reply == IDA.encode() + b" said hello over DTLS"


async def main():
    server_ctx, client_ctx = contexts()
    tls = await tls_echo(server_ctx, client_ctx)
    dtls = await dtls_echo(server_ctx, client_ctx)
    print("asyncio_echo: %s (TLS %s, DTLS %s)" % ("OK" if tls and dtls else "FAILED",
                                                  "ok" if tls else "wrong echo",
                                                  "ok" if dtls else "wrong echo"),
          file=sys.stderr)
    return 0 if tls and dtls else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(), TIMEOUT)))
    except (OSError, asyncio.TimeoutError, m2mpsk.Error) as e:
        print("asyncio_echo: %s" % (e or type(e).__name__), file=sys.stderr)
        sys.exit(1)
