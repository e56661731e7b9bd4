/// Arithmetic modulo p = 2^255 - 19 in five unsigned 51-bit limbs ("radix 2^51").
///
/// Written by hand because swift-crypto does not expose Edwards point decoding or the
/// Ed25519 → X25519 map. It only ever handles public values (public keys), so it is variable-time
/// on purpose. Straight-line code without loops or subscripts keeps it fast even in debug builds,
/// where the subgroup check (≈ 3000 multiplications) runs on every handshake.
///
/// Invariant: every operation returns limbs below 2^52, which is what `*` and `-` require.
struct FieldElement: Equatable {
    var l0: UInt64
    var l1: UInt64
    var l2: UInt64
    var l3: UInt64
    var l4: UInt64

    private static let mask: UInt64 = (1 << 51) - 1

    static let zero = FieldElement(l0: 0, l1: 0, l2: 0, l3: 0, l4: 0)
    static let one = FieldElement(small: 1)
    /// The Edwards curve constant d = -121665 / 121666.
    static let d = FieldElement.zero - FieldElement(small: 121665) * FieldElement(small: 121666).inverse()
    static let d2 = d + d
    /// A square root of -1: 2^((p-1)/4).
    static let sqrtMinusOne = FieldElement(small: 2).power(
        littleEndianExponent: [0xfb] + [UInt8](repeating: 0xff, count: 30) + [0x1f]
    )

    init(l0: UInt64, l1: UInt64, l2: UInt64, l3: UInt64, l4: UInt64) {
        self.l0 = l0
        self.l1 = l1
        self.l2 = l2
        self.l3 = l3
        self.l4 = l4
    }

    init(small value: UInt64) {
        self.init(l0: value & Self.mask, l1: value >> 51, l2: 0, l3: 0, l4: 0)
    }

    /// 32 little-endian bytes; the top bit (the sign of x in a point encoding) is ignored.
    init(bytes: [UInt8]) {
        func word(_ index: Int) -> UInt64 {
            var word: UInt64 = 0
            for byte in bytes[(8 * index)..<(8 * index + 8)].reversed() { word = word << 8 | UInt64(byte) }
            return word
        }
        let w0 = word(0)
        let w1 = word(1)
        let w2 = word(2)
        let w3 = word(3) & ((1 << 63) - 1)
        self.init(
            l0: w0 & Self.mask,
            l1: (w0 >> 51 | w1 << 13) & Self.mask,
            l2: (w1 >> 38 | w2 << 26) & Self.mask,
            l3: (w2 >> 25 | w3 << 39) & Self.mask,
            l4: w3 >> 12
        )
    }

    /// `true` if the 32 little-endian bytes (top bit ignored) are a number below p.
    static func isCanonical(_ bytes: [UInt8]) -> Bool {
        guard bytes[31] & 0x7f == 0x7f, bytes[1..<31].allSatisfy({ $0 == 0xff }) else { return true }
        return bytes[0] < 0xed
    }

    /// The unique little-endian encoding of the value in [0, p).
    var canonicalBytes: [UInt8] {
        var t = self.carried().carried()
        // t < 2^255 now; t >= p exactly when t + 19 carries into bit 255.
        var q = (t.l0 + 19) >> 51
        q = (t.l1 + q) >> 51
        q = (t.l2 + q) >> 51
        q = (t.l3 + q) >> 51
        q = (t.l4 + q) >> 51
        t.l0 += 19 * q
        t.l1 += t.l0 >> 51
        t.l0 &= Self.mask
        t.l2 += t.l1 >> 51
        t.l1 &= Self.mask
        t.l3 += t.l2 >> 51
        t.l2 &= Self.mask
        t.l4 += t.l3 >> 51
        t.l3 &= Self.mask
        t.l4 &= Self.mask  // drops 2^255, completing the subtraction of p
        let words = [
            t.l0 | t.l1 << 51,
            t.l1 >> 13 | t.l2 << 38,
            t.l2 >> 26 | t.l3 << 25,
            t.l3 >> 39 | t.l4 << 12,
        ]
        return words.flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * UInt64($0))) } }
    }

    var isZero: Bool { canonicalBytes.allSatisfy { $0 == 0 } }
    /// The "sign" of a field element in Ed25519 encodings: its lowest bit.
    var isNegative: Bool { canonicalBytes[0] & 1 == 1 }

    static func == (lhs: FieldElement, rhs: FieldElement) -> Bool {
        lhs.canonicalBytes == rhs.canonicalBytes
    }

    static func + (a: FieldElement, b: FieldElement) -> FieldElement {
        FieldElement(l0: a.l0 + b.l0, l1: a.l1 + b.l1, l2: a.l2 + b.l2, l3: a.l3 + b.l3, l4: a.l4 + b.l4).carried()
    }

    /// a + 4p - b, so no limb goes negative (b's limbs are below 2^52 < 4p's).
    static func - (a: FieldElement, b: FieldElement) -> FieldElement {
        let fourP0: UInt64 = 0x1F_FFFF_FFFF_FFB4  // 4 * (2^51 - 19)
        let fourP: UInt64 = 0x1F_FFFF_FFFF_FFFC  // 4 * (2^51 - 1)
        return FieldElement(
            l0: a.l0 + fourP0 - b.l0, l1: a.l1 + fourP - b.l1, l2: a.l2 + fourP - b.l2,
            l3: a.l3 + fourP - b.l3, l4: a.l4 + fourP - b.l4
        ).carried()
    }

    static func * (a: FieldElement, b: FieldElement) -> FieldElement {
        // Limbs that wrap past 2^255 come back multiplied by 19 (2^255 = 19 mod p).
        let b1 = b.l1 * 19
        let b2 = b.l2 * 19
        let b3 = b.l3 * 19
        let b4 = b.l4 * 19
        var r0 = Wide(a.l0, b.l0)
        r0.add(a.l1, b4)
        r0.add(a.l2, b3)
        r0.add(a.l3, b2)
        r0.add(a.l4, b1)
        var r1 = Wide(a.l0, b.l1)
        r1.add(a.l1, b.l0)
        r1.add(a.l2, b4)
        r1.add(a.l3, b3)
        r1.add(a.l4, b2)
        var r2 = Wide(a.l0, b.l2)
        r2.add(a.l1, b.l1)
        r2.add(a.l2, b.l0)
        r2.add(a.l3, b4)
        r2.add(a.l4, b3)
        var r3 = Wide(a.l0, b.l3)
        r3.add(a.l1, b.l2)
        r3.add(a.l2, b.l1)
        r3.add(a.l3, b.l0)
        r3.add(a.l4, b4)
        var r4 = Wide(a.l0, b.l4)
        r4.add(a.l1, b.l3)
        r4.add(a.l2, b.l2)
        r4.add(a.l3, b.l1)
        r4.add(a.l4, b.l0)
        r1.add(r0.shifted)
        r2.add(r1.shifted)
        r3.add(r2.shifted)
        r4.add(r3.shifted)
        var out = FieldElement(l0: r0.low, l1: r1.low, l2: r2.low, l3: r3.low, l4: r4.low)
        out.l0 += r4.shifted * 19
        out.l1 += out.l0 >> 51
        out.l0 &= mask
        return out
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

    /// One carry pass: limbs back below 2^51 (limb 1 below 2^51 + 2^14); the carry out of the
    /// top limb re-enters limb 0 multiplied by 19.
    private func carried() -> FieldElement {
        var t = self
        t.l1 += t.l0 >> 51
        t.l0 &= Self.mask
        t.l2 += t.l1 >> 51
        t.l1 &= Self.mask
        t.l3 += t.l2 >> 51
        t.l2 &= Self.mask
        t.l4 += t.l3 >> 51
        t.l3 &= Self.mask
        t.l0 += (t.l4 >> 51) * 19
        t.l4 &= Self.mask
        t.l1 += t.l0 >> 51
        t.l0 &= Self.mask
        return t
    }

    /// A 128-bit accumulator for limb products (each below 2^109; five of them fit easily).
    private struct Wide {
        var high: UInt64
        var low64: UInt64

        init(_ a: UInt64, _ b: UInt64) {
            (high, low64) = a.multipliedFullWidth(by: b)
        }

        mutating func add(_ a: UInt64, _ b: UInt64) {
            let (productHigh, productLow) = a.multipliedFullWidth(by: b)
            let (sum, overflow) = low64.addingReportingOverflow(productLow)
            low64 = sum
            high = high &+ productHigh &+ (overflow ? 1 : 0)
        }

        mutating func add(_ value: UInt64) {
            let (sum, overflow) = low64.addingReportingOverflow(value)
            low64 = sum
            high = high &+ (overflow ? 1 : 0)
        }

        /// The value shifted right by 51 (fits in 64 bits for our magnitudes).
        var shifted: UInt64 { high << 13 | low64 >> 51 }
        /// The low 51 bits.
        var low: UInt64 { low64 & FieldElement.mask }
    }
}
