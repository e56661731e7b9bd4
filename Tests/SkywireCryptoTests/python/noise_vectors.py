"""Deterministic IK transcript from `noiseprotocol` with fixed keys, for byte-exact comparison.

Usage: noise_vectors.py PROTOCOL_NAME INIT_STATIC RESP_STATIC INIT_EPHEMERAL RESP_EPHEMERAL PROLOGUE PAYLOAD1 PAYLOAD2 PLAINTEXT
(all hex). Prints JSON: both handshake messages, the handshake hash, and the first two transport
messages in each direction (plaintext, then plaintext reversed).
"""
import json
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

warnings.simplefilter("ignore")  # noiseprotocol warns when ephemeral keys are fixed


def main():
    name, i_s, r_s, i_e, r_e, prologue, p1, p2, plaintext = sys.argv[1:10]
    name = name.encode()
    unhex = bytes.fromhex
    r_pub = X25519PrivateKey.from_private_bytes(unhex(r_s)).public_key().public_bytes_raw()

    init = NoiseConnection.from_name(name)
    init.set_as_initiator()
    init.set_keypair_from_private_bytes(Keypair.STATIC, unhex(i_s))
    init.set_keypair_from_private_bytes(Keypair.EPHEMERAL, unhex(i_e))
    init.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, r_pub)
    init.set_prologue(unhex(prologue))
    init.start_handshake()

    resp = NoiseConnection.from_name(name)
    resp.set_as_responder()
    resp.set_keypair_from_private_bytes(Keypair.STATIC, unhex(r_s))
    resp.set_keypair_from_private_bytes(Keypair.EPHEMERAL, unhex(r_e))
    resp.set_prologue(unhex(prologue))
    resp.start_handshake()

    msg1 = init.write_message(unhex(p1))
    assert resp.read_message(msg1) == unhex(p1)
    msg2 = resp.write_message(unhex(p2))
    assert init.read_message(msg2) == unhex(p2)
    pt = unhex(plaintext)
    print(json.dumps({
        "msg1": bytes(msg1).hex(),
        "msg2": bytes(msg2).hex(),
        "hash": bytes(init.get_handshake_hash()).hex(),
        "i2r": [init.encrypt(pt).hex(), init.encrypt(pt[::-1]).hex()],
        "r2i": [resp.encrypt(pt).hex(), resp.encrypt(pt[::-1]).hex()],
    }))


main()
