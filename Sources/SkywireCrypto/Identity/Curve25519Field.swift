/// Arithmetic modulo p = 2^255 - 19, in sixteen signed 16-bit limbs (TweetNaCl's representation).
///
/// Written by hand because swift-crypto does not expose Edwards point decoding or the
/// Ed25519 → X25519 map. It only ever handles public values (public keys), so it is variable-time
/// on purpose and favours being short and checkable over speed; it runs once per handshake.
/// Limb bounds: inputs of `*` stay below 2^18 in magnitude, so no product sum can overflow Int64.
struct FieldElement: Equatable {
    var limbs: SIMD16<Int64>

    static let zero = FieldElement(limbs: SIMD16(repeating: 0))
    static let one = FieldElement(small: 1)
    /// The Edwards curve constant d = -121665 / 121666.
    static let d = FieldElement.zero - FieldElement(small: 121665) * FieldElement(small: 121666).inverse()
    static let d2 = d + d
    /// A square root of -1: 2^((p-1)/4).
    static let sqrtMinusOne = FieldElement(small: 2).power(littleEndianExponent: [0xfb] + [UInt8](repeating: 0xff, count: 30) + [0x1f])

    init(limbs: SIMD16<Int64>) {
        self.limbs = limbs
    }

    init(small value: Int64) {
        var limbs = SIMD16<Int64>(repeating: 0)
        limbs[0] = value & 0xffff
        limbs[1] = value >> 16
        self.limbs = limbs
    }

    /// Little-endian bytes; the top bit (the sign of x in a point encoding) is ignored.
    init(bytes: [UInt8]) {
        var limbs = SIMD16<Int64>(repeating: 0)
        for i in 0..<16 {
            limbs[i] = Int64(bytes[2 * i]) | Int64(bytes[2 * i + 1]) << 8
        }
        limbs[15] &= 0x7fff
        self.limbs = limbs
    }

    /// `true` if the 32 little-endian bytes (top bit ignored) are a number below p.
    static func isCanonical(_ bytes: [UInt8]) -> Bool {
        guard bytes[31] & 0x7f == 0x7f, bytes[1..<31].allSatisfy({ $0 == 0xff }) else { return true }
        return bytes[0] < 0xed
    }

    /// The unique little-endian encoding of the value in [0, p).
    var canonicalBytes: [UInt8] {
        var t = limbs
        Self.carry(&t)
        Self.carry(&t)
        Self.carry(&t)
        // Subtract p at most twice, keeping the result whenever it does not borrow.
        for _ in 0..<2 {
            var m = SIMD16<Int64>(repeating: 0)
            m[0] = t[0] - 0xffed
            for i in 1..<15 {
                m[i] = t[i] - 0xffff - ((m[i - 1] >> 16) & 1)
                m[i - 1] &= 0xffff
            }
            m[15] = t[15] - 0x7fff - ((m[14] >> 16) & 1)
            let borrow = (m[15] >> 16) & 1
            m[14] &= 0xffff
            if borrow == 0 { t = m }
        }
        var out = [UInt8](repeating: 0, count: 32)
        for i in 0..<16 {
            out[2 * i] = UInt8(truncatingIfNeeded: t[i])
            out[2 * i + 1] = UInt8(truncatingIfNeeded: t[i] >> 8)
        }
        return out
    }

    var isZero: Bool { canonicalBytes.allSatisfy { $0 == 0 } }
    /// The "sign" of a field element in Ed25519 encodings: its lowest bit.
    var isNegative: Bool { canonicalBytes[0] & 1 == 1 }

    static func == (lhs: FieldElement, rhs: FieldElement) -> Bool {
        lhs.canonicalBytes == rhs.canonicalBytes
    }

    static func + (lhs: FieldElement, rhs: FieldElement) -> FieldElement {
        FieldElement(limbs: lhs.limbs &+ rhs.limbs)
    }

    static func - (lhs: FieldElement, rhs: FieldElement) -> FieldElement {
        FieldElement(limbs: lhs.limbs &- rhs.limbs)
    }

    static func * (lhs: FieldElement, rhs: FieldElement) -> FieldElement {
        var low = SIMD16<Int64>(repeating: 0)
        var high = SIMD16<Int64>(repeating: 0)
        for i in 0..<16 {
            let a = lhs.limbs[i]
            for j in 0..<16 {
                let product = a &* rhs.limbs[j]
                if i + j < 16 { low[i + j] &+= product } else { high[i + j - 16] &+= product }
            }
        }
        // 2^256 = 38 (mod p): fold the high half onto the low half.
        var out = low &+ high &* 38
        carry(&out)
        carry(&out)
        return FieldElement(limbs: out)
    }

    func squared() -> FieldElement { self * self }

    /// self^(p-2) = 1/self (0 for 0).
    func inverse() -> FieldElement {
        var c = self
        for bit in stride(from: 253, through: 0, by: -1) {
            c = c.squared()
            if bit != 2 && bit != 4 { c = c * self }
        }
        return c
    }

    /// self^((p-5)/8), the core of the square root used in point decompression.
    func powP58() -> FieldElement {
        var c = self
        for bit in stride(from: 250, through: 0, by: -1) {
            c = c.squared()
            if bit != 1 { c = c * self }
        }
        return c
    }

    func power(littleEndianExponent exponent: [UInt8]) -> FieldElement {
        var result = FieldElement.one
        for byte in exponent.reversed() {
            for bit in stride(from: 7, through: 0, by: -1) {
                result = result.squared()
                if (byte >> UInt8(bit)) & 1 == 1 { result = result * self }
            }
        }
        return result
    }

    /// Propagates carries so every limb is back near 16 bits; the carry out of the top limb
    /// re-enters limb 0 multiplied by 38 (2^256 = 38 mod p). `>>` on Int64 is arithmetic, so
    /// negative limbs borrow correctly.
    private static func carry(_ o: inout SIMD16<Int64>) {
        for i in 0..<15 {
            let c = o[i] >> 16
            o[i] &-= c &<< 16
            o[i + 1] &+= c
        }
        let c = o[15] >> 16
        o[15] &-= c &<< 16
        o[0] &+= 38 &* c
    }
}

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
