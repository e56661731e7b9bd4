import NIOCore

/// The `endpoint` field of rendezvous datagrams: `family (u8: 4 or 6) | address (4 or 16 bytes) |
/// port (u16)`, big-endian; and the address rules the rendezvous server applies to endpoints.
enum RendezvousEndpoint {
    /// Encoded size of an IPv4 endpoint.
    static let ipv4Size = 1 + 4 + 2
    /// Encoded size of an IPv6 endpoint.
    static let ipv6Size = 1 + 16 + 2

    /// Writes `address`. A Unix-domain address has no wire form: it is written as the lone family
    /// byte 0, which every decoder refuses (the server never observes one).
    static func write(_ address: SocketAddress, into buffer: inout ByteBuffer) {
        let port = UInt16(truncatingIfNeeded: address.port ?? 0)
        switch address {
        case .v4(let ip):
            buffer.writeInteger(UInt8(4))
            withUnsafeBytes(of: ip.address.sin_addr) { _ = buffer.writeBytes($0) }
            buffer.writeInteger(port)
        case .v6(let ip):
            buffer.writeInteger(UInt8(6))
            withUnsafeBytes(of: ip.address.sin6_addr) { _ = buffer.writeBytes($0) }
            buffer.writeInteger(port)
        case .unixDomainSocket:
            buffer.writeInteger(UInt8(0))
        }
    }

    /// Reads one endpoint, consuming exactly its bytes.
    static func read(from buffer: inout ByteBuffer, field: String) throws(RendezvousError) -> SocketAddress {
        guard let family = buffer.readInteger(as: UInt8.self) else {
            throw RendezvousError(.truncated, "truncated \(field): no address family")
        }
        let length: Int
        switch family {
        case 4: length = 4
        case 6: length = 16
        default: throw RendezvousError(.malformed, "\(field) has address family \(family), expected 4 or 6")
        }
        guard let packed = buffer.readSlice(length: length), let port = buffer.readInteger(as: UInt16.self) else {
            throw RendezvousError(.truncated, "truncated \(field): IPv\(family) address needs \(length + 2) more bytes")
        }
        do {
            return try SocketAddress(packedIPAddress: packed, port: Int(port))
        } catch {
            // Unreachable: the length is 4 or 16 by construction.
            throw RendezvousError(.malformed, "\(field) is not an IP address")
        }
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
    /// as the plain IPv4 address; any other address unchanged. What the rendezvous tells visors.
    static func normalized(_ address: SocketAddress) -> SocketAddress {
        guard case .v6(let ip) = address else { return address }
        let bytes = withUnsafeBytes(of: ip.address.sin6_addr) { Array($0) }
        guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF else { return address }
        return (try? SocketAddress(packedIPAddress: ByteBuffer(bytes: bytes[12..<16]), port: address.port ?? 0)) ?? address
    }

    /// Whether a datagram from `address` may be answered: a unicast IP address and a non-zero
    /// port. Datagrams claiming an unspecified, broadcast or multicast source are forged or
    /// misrouted; answering them would only reflect traffic at someone else.
    static func isPlausibleSource(_ address: SocketAddress) -> Bool {
        guard let port = address.port, port != 0 else { return false }
        switch self.normalized(address) {
        case .v4(let ip):
            let bytes = withUnsafeBytes(of: ip.address.sin_addr) { Array($0) }
            if bytes == [0, 0, 0, 0] || bytes == [255, 255, 255, 255] { return false }
            return bytes[0] < 224  // 224/4 multicast, 240/4 reserved
        case .v6(let ip):
            let bytes = withUnsafeBytes(of: ip.address.sin6_addr) { Array($0) }
            if bytes.allSatisfy({ $0 == 0 }) { return false }
            return bytes[0] != 0xFF  // ff00::/8 multicast
        case .unixDomainSocket:
            return false
        }
    }
}

/// An endpoint reduced to what identifies it on the wire (family, address bytes, port): the
/// table key of the rendezvous server. `SocketAddress` equality also compares IPv6 flow labels
/// and scope ids, which a NAT does not keep stable.
struct EndpointKey: Hashable, Sendable {
    var bytes: [UInt8]
    var port: Int

    init(_ address: SocketAddress) {
        let address = RendezvousEndpoint.normalized(address)
        switch address {
        case .v4(let ip): self.bytes = withUnsafeBytes(of: ip.address.sin_addr) { Array($0) }
        case .v6(let ip): self.bytes = withUnsafeBytes(of: ip.address.sin6_addr) { Array($0) }
        case .unixDomainSocket: self.bytes = []
        }
        self.port = address.port ?? 0
    }
}
