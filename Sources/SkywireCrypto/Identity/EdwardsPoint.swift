/// A point of the Ed25519 curve -x^2 + y^2 = 1 + d x^2 y^2 in extended coordinates (X:Y:Z:T).
struct EdwardsPoint {
    var x: FieldElement
    var y: FieldElement
    var z: FieldElement
    var t: FieldElement

    static let identity = EdwardsPoint(x: .zero, y: .one, z: .one, t: .zero)

    /// The order of the prime-order subgroup, 2^252 + 27742317777372353535851937790883648493, little-endian.
    static let groupOrder: [UInt8] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    ]

    /// Decodes a standard 32-byte encoding; `nil` unless it is canonical (y < p, no "negative zero" x)
    /// and on the curve.
    init?(encoded bytes: [UInt8]) {
        guard bytes.count == 32, FieldElement.isCanonical(bytes) else { return nil }
        let y = FieldElement(bytes: bytes)
        let ySquared = y.squared()
        let num = ySquared - .one  // y^2 - 1
        let den = ySquared * .d + .one  // d y^2 + 1
        // x = num den^3 (num den^7)^((p-5)/8), then fix up by sqrt(-1) if that squared to -x^2.
        let den2 = den.squared()
        let den3 = den2 * den
        let den7 = den2.squared() * den3
        var x = (num * den7).powP58() * num * den3
        if x.squared() * den != num { x = x * .sqrtMinusOne }
        guard x.squared() * den == num else { return nil }
        let signBit = bytes[31] >> 7 == 1
        if x.isZero && signBit { return nil }
        if x.isNegative != signBit { x = .zero - x }
        self.init(x: x, y: y, z: .one, t: x * y)
    }

    init(x: FieldElement, y: FieldElement, z: FieldElement, t: FieldElement) {
        self.x = x
        self.y = y
        self.z = z
        self.t = t
    }

    var isIdentity: Bool { x.isZero && y == z }

    /// The affine y coordinate.
    var affineY: FieldElement { y * z.inverse() }

    /// The standard encoding (y with x's sign in the top bit).
    var encoded: [UInt8] {
        let zInverse = z.inverse()
        var bytes = (y * zInverse).canonicalBytes
        if (x * zInverse).isNegative { bytes[31] |= 0x80 }
        return bytes
    }

    /// Unified addition (also correct for doubling), "add-2008-hwcd-3".
    static func + (p: EdwardsPoint, q: EdwardsPoint) -> EdwardsPoint {
        let a = (p.y - p.x) * (q.y - q.x)
        let b = (p.x + p.y) * (q.x + q.y)
        let c = p.t * q.t * .d2
        var d = p.z * q.z
        d = d + d
        let e = b - a
        let f = d - c
        let g = d + c
        let h = b + a
        return EdwardsPoint(x: e * f, y: h * g, z: g * f, t: e * h)
    }

    /// scalar · self, double-and-add over a little-endian scalar.
    func multiplied(byLittleEndianScalar scalar: [UInt8]) -> EdwardsPoint {
        var result = EdwardsPoint.identity
        for byte in scalar.reversed() {
            for bit in stride(from: 7, through: 0, by: -1) {
                result = result + result
                if (byte >> UInt8(bit)) & 1 == 1 { result = result + self }
            }
        }
        return result
    }

    /// `true` for a point of prime order ℓ: not the identity, no small-order (torsion) component.
    /// Such keys are the only ones honest key generation produces; rejecting the rest matches
    /// libsodium and means one X25519 key can never stand for two different Ed25519 keys.
    var isInPrimeOrderSubgroup: Bool {
        !isIdentity && multiplied(byLittleEndianScalar: Self.groupOrder).isIdentity
    }
}
