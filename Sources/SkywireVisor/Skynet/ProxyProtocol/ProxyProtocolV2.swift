import NIOCore
import SkywireCrypto

/// The binary PROXY protocol header, version 2 (haproxy's `proxy-protocol.txt`, section 2.2),
/// that a server port opted in with `--proxy-protocol` sends to its backend before any byte of
/// the connection.
///
/// ```
/// signature (12) | 0x21 (v2, PROXY) or 0x20 (v2, LOCAL) | family | length u16 | addresses | TLVs
/// ```
/// The addresses are the client visor's view of its local client (source) and the exposed port
/// the server visor connected to (destination). One TLV in the custom range carries the client
/// visor's Ed25519 public key as the Noise handshake authenticated it: the raw-TCP counterpart of
/// the `X-Skywire-Remote-PK` header.
public struct ProxyProtocolV2: Equatable, Sendable {
    /// `\r\n\r\n\0\r\nQUIT\n`.
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// TLV type of the client visor's 32-byte Ed25519 public key. In the range the spec keeps for
    /// custom use (0xE0-0xEF); 0xE0 (GCP), 0xEA (AWS) and 0xEE (Azure) are taken by cloud load
    /// balancers, so a backend behind both can tell them apart.
    public static let remoteKeyType: UInt8 = 0xE5

    /// The connection endpoints; `nil` sends the LOCAL command with family UNSPEC (the receiver
    /// then uses the real endpoints), for a client that did not say where its connection came from.
    public var source: SocketAddress?
    public var destination: SocketAddress?
    /// The authenticated key of the client visor.
    public var remoteKey: [UInt8]

    public init(source: SocketAddress?, destination: SocketAddress?, remoteKey: [UInt8]) {
        self.source = source
        self.destination = destination
        self.remoteKey = remoteKey
    }

    /// The header's bytes.
    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeBytes(Self.signature)
        var addresses = ByteBuffer()
        let family: UInt8
        switch Self.pair(self.source, self.destination) {
        case .v4(let src, let dst, let sport, let dport):
            family = 0x11
            addresses.writeBytes(src)
            addresses.writeBytes(dst)
            addresses.writeInteger(sport)
            addresses.writeInteger(dport)
        case .v6(let src, let dst, let sport, let dport):
            family = 0x21
            addresses.writeBytes(src)
            addresses.writeBytes(dst)
            addresses.writeInteger(sport)
            addresses.writeInteger(dport)
        case .unspecified:
            family = 0x00
        }
        buffer.writeInteger(family == 0 ? UInt8(0x20) : UInt8(0x21))
        buffer.writeInteger(family)
        let tlvLength = 3 + self.remoteKey.count
        buffer.writeInteger(UInt16(addresses.readableBytes + tlvLength))
        buffer.writeBuffer(&addresses)
        buffer.writeInteger(Self.remoteKeyType)
        buffer.writeInteger(UInt16(self.remoteKey.count))
        buffer.writeBytes(self.remoteKey)
        return buffer
    }

    private enum Pair {
        case v4([UInt8], [UInt8], UInt16, UInt16)
        case v6([UInt8], [UInt8], UInt16, UInt16)
        case unspecified
    }

    /// Both endpoints in one family: IPv4 when both are, else IPv6 with IPv4 addresses mapped
    /// (`::ffff:a.b.c.d`), since the header has one family for both.
    private static func pair(_ source: SocketAddress?, _ destination: SocketAddress?) -> Pair {
        guard let source, let destination,
              let src = ipBytes(source), let dst = ipBytes(destination),
              let sport = source.port, let dport = destination.port
        else { return .unspecified }
        if src.count == 4, dst.count == 4 {
            return .v4(src, dst, UInt16(sport), UInt16(dport))
        }
        return .v6(mapped(src), mapped(dst), UInt16(sport), UInt16(dport))
    }

    private static func mapped(_ bytes: [UInt8]) -> [UInt8] {
        bytes.count == 16 ? bytes : [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + bytes
    }
}

/// The 4 or 16 address bytes of an IP socket address (network order), `nil` for others.
func ipBytes(_ address: SocketAddress) -> [UInt8]? {
    switch address {
    case .v4(let v4):
        return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
    case .v6(let v6):
        return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
    default:
        return nil
    }
}
