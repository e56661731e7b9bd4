"""Reference values from libsodium (via PyNaCl) for the Ed25519 -> X25519 conversion.

Usage: nacl_convert.py SEED_HEX...
Prints JSON: for each seed the Ed25519 public key and libsodium's X25519 public and secret keys,
and a list of encodings libsodium refuses to convert (small order, mixed order, off-curve) that
the Swift side must refuse too. Point arithmetic here is plain Python integers, independent of
the Swift implementation.
"""
import json
import sys

import nacl.bindings as sodium

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2**252 + 27742317777372353535851937790883648493
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decode(b):
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    x = recover_x(y, b[31] >> 7)
    return None if x is None else (x, y)


def encode(pt):
    x, y = pt
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def add(p1, p2):
    (x1, y1), (x2, y2) = p1, p2
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return (x3, y3)


def mul(k, pt):
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, pt)
        pt = add(pt, pt)
        k >>= 1
    return result


def order8_point():
    y = 2
    while True:
        x = recover_x(y, 0)
        if x is not None:
            t = mul(L, (x, y))
            if mul(4, t) != IDENTITY:
                return t
        y += 1


def libsodium_rejects(encoding):
    try:
        sodium.crypto_sign_ed25519_pk_to_curve25519(encoding)
        return False
    except Exception:
        return True


def main():
    keys = []
    for seed_hex in sys.argv[1:]:
        pk, sk = sodium.crypto_sign_seed_keypair(bytes.fromhex(seed_hex))
        keys.append({
            "seed": seed_hex,
            "ed_pk": pk.hex(),
            "x_pk": sodium.crypto_sign_ed25519_pk_to_curve25519(pk).hex(),
            "x_sk": sodium.crypto_sign_ed25519_sk_to_curve25519(sk).hex(),
        })

    rejected = []
    t8 = order8_point()
    for k in range(8):
        rejected.append(("small order %d*T8" % k, encode(mul(k, t8))))
    for key in keys[:3]:
        a = decode(bytes.fromhex(key["ed_pk"]))
        rejected.append(("mixed order A+T8", encode(add(a, t8))))
    y, found = 2, 0
    while found < 3:
        if recover_x(y, 0) is None:
            rejected.append(("not on curve", y.to_bytes(32, "little")))
            found += 1
        y += 1

    print(json.dumps({
        "keys": keys,
        "rejected": [
            {"what": what, "encoding": enc.hex(), "libsodium_rejects": libsodium_rejects(enc)}
            for what, enc in rejected
        ],
    }))


main()
