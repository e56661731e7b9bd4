import NIOCore

/// The open header of a skynet stream on a visor↔visor session.
///
/// ```
/// 0x53 ('S') | version u8 (1) | flags u8 (bit 0: probe, bit 1: HTTP mode, bit 2: client address,
///     bit 3: UDP, bit 4: client port) | port u16
/// [ | address length u8 | address (an IP address as text, at most 45 bytes) ]   (when bit 2 is set)
/// [ | client port u16 ]                                                           (when bit 4 is set)
/// ```
/// A UDP stream is one flow of datagrams to a UDP port (see `UDP/`); HTTP and UDP exclude each other.
/// The client address is the client visor's view of its local client (the peer address of the
/// accepted local connection); HTTP mode puts it in `X-Forwarded-For`, raw-TCP ports with the
/// PROXY protocol put it and the port in their header. Nothing else trusts it.
/// A probe asks only "is this port exposed to me?": the server accepts or rejects it without
/// connecting to the backend, and the client closes it at once. `skynet start` probes before it
/// reports success.
public struct SkynetHeader: Equatable, Sendable {
    public var port: UInt16
    public var probe: Bool
    /// The stream carries HTTP/1.1: the server visor runs it through its reverse proxy.
    public var http: Bool
    /// The address of the local client as the client visor saw it (an IP address as text).
    public var clientAddress: String?
    /// The local client's port (with `clientAddress`; the PROXY protocol carries it).
    public var clientPort: UInt16?
    /// The stream carries one UDP flow (length-prefixed datagrams) to a UDP port.
    public var udp: Bool

    static let magic: UInt8 = 0x53
    static let version: UInt8 = 1

    /// The longest address text: an IPv6 address with an embedded IPv4 one.
    static let maxAddressLength = 45

    public init(port: UInt16, probe: Bool, http: Bool = false, clientAddress: String? = nil, clientPort: UInt16? = nil, udp: Bool = false) {
        self.udp = udp
        self.port = port
        self.probe = probe
        self.http = http
        self.clientAddress = clientAddress.flatMap { $0.utf8.count <= Self.maxAddressLength && !$0.isEmpty ? $0 : nil }
        self.clientPort = self.clientAddress == nil ? nil : clientPort
    }

    /// A header carrying `client` (a local connection's peer) as address and port.
    public init(port: UInt16, probe: Bool, http: Bool = false, client: SocketAddress?) {
        self.init(port: port, probe: probe, http: http, clientAddress: client?.ipAddress, clientPort: client?.port.map { UInt16(truncatingIfNeeded: $0) })
    }

    /// The client's address and port as a socket address (port 0 when not sent), `nil` without
    /// an address.
    var clientSocketAddress: SocketAddress? {
        self.clientAddress.flatMap { try? SocketAddress(ipAddress: $0, port: Int(self.clientPort ?? 0)) }
    }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(UInt8((self.probe ? 1 : 0) | (self.http ? 2 : 0) | (self.clientAddress != nil ? 4 : 0) | (self.udp ? 8 : 0) | (self.clientPort != nil ? 16 : 0)))
        buffer.writeInteger(self.port)
        if let address = self.clientAddress {
            buffer.writeInteger(UInt8(address.utf8.count))
            buffer.writeString(address)
        }
        if let clientPort = self.clientPort {
            buffer.writeInteger(clientPort)
        }
        return buffer
    }

    /// `nil` for anything malformed.
    public init?(_ buffer: ByteBuffer) {
        var buffer = buffer
        guard buffer.readableBytes >= 5,
              buffer.readInteger(as: UInt8.self) == Self.magic,
              buffer.readInteger(as: UInt8.self) == Self.version,
              let flags = buffer.readInteger(as: UInt8.self),
              flags & ~31 == 0,
              flags & 10 != 10,  // HTTP and UDP
              flags & 20 != 16,  // a port without an address
              let port = buffer.readInteger(as: UInt16.self),
              port != 0
        else { return nil }
        var address: String?
        if flags & 4 == 4 {
            guard let length = buffer.readInteger(as: UInt8.self), length > 0, Int(length) <= Self.maxAddressLength,
                  let text = buffer.readString(length: Int(length)),
                  text.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isASCIIHexDigit || ".:".unicodeScalars.contains($0)) })
            else { return nil }
            address = text
        }
        var clientPort: UInt16?
        if flags & 16 == 16 {
            guard let value = buffer.readInteger(as: UInt16.self) else { return nil }
            clientPort = value
        }
        guard buffer.readableBytes == 0 else { return nil }
        self.port = port
        self.probe = flags & 1 == 1
        self.http = flags & 2 == 2
        self.clientAddress = address
        self.clientPort = clientPort
        self.udp = flags & 8 == 8
    }
}

/// Reject codes of skynet streams (in the mux REJECT frame), with the message shown to users.
public enum SkynetRejectCode {
    public static let notExposed: UInt16 = 0x0200
    public static let notWhitelisted: UInt16 = 0x0201
    public static let backendUnavailable: UInt16 = 0x0202
    public static let badRequest: UInt16 = 0x0203
}
