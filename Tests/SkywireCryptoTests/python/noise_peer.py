"""A Noise IK peer built on the independent `noiseprotocol` package, driven over stdin/stdout.

Usage: noise_peer.py initiator|responder PROTOCOL_NAME STATIC_PRIVATE_HEX REMOTE_STATIC_HEX|- PROLOGUE_HEX
                     [skywire [ED25519_PUBLIC_HEX]]

Frames on both pipes are a 2-byte big-endian length and the bytes. After the handshake
(initiator payload b"hello from python"; a responder answers b"re:" + the initiator's payload)
the peer sends its handshake hash encrypted, then echoes every transport message reversed, until
an empty frame arrives. Any failure exits non-zero with a traceback on stderr.

With `skywire`, the peer speaks Skywire's channel wire format instead (as NoiseHandshakeHandler
does): the initiator first sends the suite byte in clear and its payload starts with its Ed25519
key (ED25519_PUBLIC_HEX: Python has no Ed25519-to-X25519 conversion, so the caller passes it);
the responder reads and checks the suite byte. The transport then ends at end of input.
"""
import struct
import sys

from noise.connection import Keypair, NoiseConnection


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = sys.stdin.buffer.read(n - len(data))
        if not chunk:
            raise EOFError("stdin closed")
        data += chunk
    return data


def recv(eof_ok=False):
    if eof_ok:
        first = sys.stdin.buffer.read(1)
        if not first:
            return None
        header = first + read_exact(1)
    else:
        header = read_exact(2)
    (length,) = struct.unpack(">H", header)
    return read_exact(length)


SUITE_BYTES = {"ChaChaPoly": 1, "AESGCM": 2}


def send(data):
    sys.stdout.buffer.write(struct.pack(">H", len(data)) + bytes(data))
    sys.stdout.buffer.flush()


def main():
    role, name, static_hex, remote_hex, prologue_hex = sys.argv[1:6]
    skywire = len(sys.argv) > 6 and sys.argv[6] == "skywire"
    suite_byte = SUITE_BYTES[name.split("_")[3]]
    noise = NoiseConnection.from_name(name.encode())
    noise.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(static_hex))
    noise.set_prologue(bytes.fromhex(prologue_hex))
    if role == "initiator":
        noise.set_as_initiator()
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(remote_hex))
        noise.start_handshake()
        if skywire:
            sys.stdout.buffer.write(bytes([suite_byte]))
            send(noise.write_message(bytes.fromhex(sys.argv[7]) + b"hello from python"))
        else:
            send(noise.write_message(b"hello from python"))
        reply = noise.read_message(recv())
        if bytes(reply) != b"re:hello from python":
            raise ValueError("unexpected responder payload %r" % bytes(reply))
    else:
        noise.set_as_responder()
        noise.start_handshake()
        if skywire and read_exact(1) != bytes([suite_byte]):
            raise ValueError("unexpected suite byte")
        payload = noise.read_message(recv())
        send(noise.write_message(b"re:" + bytes(payload)))
    if not noise.handshake_finished:
        raise ValueError("handshake not finished")
    send(noise.encrypt(bytes(noise.get_handshake_hash())))
    while True:
        frame = recv(eof_ok=skywire)
        if not frame:
            return
        send(noise.encrypt(bytes(noise.decrypt(frame))[::-1]))


main()
