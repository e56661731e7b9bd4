#!/usr/bin/env python3
"""Delays packets by a fixed time: a userspace NFQUEUE verdict loop, standard library only.

The kernel here has no sch_netem, so `tc … netem delay` is not available. Instead an iptables rule
sends packets to an NFQUEUE (`-j NFQUEUE --queue-num N`); this process binds that queue over raw
netlink (NETLINK_NETFILTER), notes when each packet arrived and gives the ACCEPT verdict `delay`
milliseconds later. The kernel holds the packets meanwhile (only their ids come up here), so the
cost per packet is one small netlink message; verdicts go out in batches (NFQNL_MSG_VERDICT_BATCH
accepts every queued id up to the given one, which fits a constant delay: ids arrive in order and
become due in order).

Run inside the namespace whose queue it serves (`ip netns exec NS python3 netdelay.py …`): queues
are per network namespace. Prints `ready` once bound; install the iptables rule after that. Ends
on SIGTERM/SIGINT (packets still queued are dropped by the kernel when the queue is unbound).
"""
from __future__ import annotations

import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 1 << 2
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


class Queue:
    """One bound NFQUEUE on a netlink socket."""

    def __init__(self, num: int, maxlen: int):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind((0, 0))
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                     + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                     + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)))

    def _send(self, msg_type: int, payload: bytes, flags: int = NLM_F_REQUEST) -> int:
        self.seq += 1
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.num) + payload
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
        self.sock.send(hdr + body)
        return self.seq

    def _config(self, payload: bytes) -> None:
        seq = self._send(NFQNL_MSG_CONFIG, payload, NLM_F_REQUEST | NLM_F_ACK)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            for msg_type, msg_seq, body in self._messages(data):
                if msg_type == NLMSG_ERROR and msg_seq == seq:
                    code = struct.unpack_from("=i", body)[0]
                    if code != 0:
                        raise OSError(-code, f"NFQUEUE config on queue {self.num}: {os.strerror(-code)}")
                    return
        raise TimeoutError("no netlink ack")

    @staticmethod
    def _messages(data: bytes):
        off = 0
        while off + 16 <= len(data):
            length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                return
            yield msg_type, seq, data[off + 16: off + length]
            off += (length + 3) & ~3

    def packet_ids(self, data: bytes):
        """The packet ids in one netlink read."""
        for msg_type, _seq, body in self._messages(data):
            if msg_type != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                continue
            off = 4  # nfgenmsg
            while off + 4 <= len(body):
                n, kind = struct.unpack_from("=HH", body, off)
                if n < 4:
                    break
                if kind & 0x3FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", body, off + 4)[0]
                    break
                off += (n + 3) & ~3

    def accept_through(self, packet_id: int) -> None:
        """ACCEPT for every queued packet with an id up to `packet_id`."""
        self._send(NFQNL_MSG_VERDICT_BATCH, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))

    def close(self) -> None:
        try:
            self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, socket.AF_UNSPEC)))
        except OSError:
            pass
        self.sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--maxlen", type=int, default=65536, help="packets the kernel may hold (more are dropped)")
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    q = Queue(args.queue, args.maxlen)
    q.sock.setblocking(False)
    print("ready", flush=True)
    pending: collections.deque[tuple[float, int]] = collections.deque()
    while not stop:
        now = time.monotonic()
        last_due = None
        while pending and pending[0][0] <= now:
            last_due = pending.popleft()[1]
        if last_due is not None:
            q.accept_through(last_due)
        timeout = max(0.0, pending[0][0] - now) if pending else 0.5
        try:
            readable, _, _ = select.select([q.sock], [], [], timeout)
        except InterruptedError:
            continue
        if not readable:
            continue
        # Drain what is there; stamp all of a burst with one arrival time.
        now = time.monotonic()
        for _ in range(1024):
            try:
                data = q.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped those packets itself
                    continue
                raise
            for pid in q.packet_ids(data):
                pending.append((now + delay, pid))
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
