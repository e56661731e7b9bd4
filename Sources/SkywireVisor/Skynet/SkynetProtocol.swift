import NIOCore

/// The open header of a skynet stream on a visor↔visor session.
///
/// ```
/// 0x53 ('S') | version u8 (1) | flags u8 (bit 0: probe, bit 1: HTTP mode, bit 2: UDP) | port u16
/// ```
/// A UDP stream is one flow of datagrams to a UDP port (see `UDP/`); HTTP and UDP exclude each other.
/// A probe asks only "is this port exposed to me?": the server accepts or rejects it without
/// connecting to the backend, and the client closes it at once. `skynet start` probes before it
/// reports success.
public struct SkynetHeader: Equatable, Sendable {
    public var port: UInt16
    public var probe: Bool
    /// The stream carries HTTP/1.1: the server visor runs it through its reverse proxy.
    public var http: Bool
    /// The stream carries one UDP flow (length-prefixed datagrams) to a UDP port.
    public var udp: Bool

    static let magic: UInt8 = 0x53
    static let version: UInt8 = 1

    public init(port: UInt16, probe: Bool, http: Bool = false, udp: Bool = false) {
        self.port = port
        self.probe = probe
        self.http = http
        self.udp = udp
    }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(UInt8((self.probe ? 1 : 0) | (self.http ? 2 : 0) | (self.udp ? 4 : 0)))
        buffer.writeInteger(self.port)
        return buffer
    }

    /// `nil` for anything malformed.
    public init?(_ buffer: ByteBuffer) {
        var buffer = buffer
        guard buffer.readableBytes == 5,
              buffer.readInteger(as: UInt8.self) == Self.magic,
              buffer.readInteger(as: UInt8.self) == Self.version,
              let flags = buffer.readInteger(as: UInt8.self),
              flags & ~7 == 0, flags & 6 != 6,
              let port = buffer.readInteger(as: UInt16.self),
              port != 0
        else { return nil }
        self.port = port
        self.probe = flags & 1 == 1
        self.http = flags & 2 == 2
        self.udp = flags & 4 == 4
    }
}

/// Reject codes of skynet streams (in the mux REJECT frame), with the message shown to users.
public enum SkynetRejectCode {
    public static let notExposed: UInt16 = 0x0200
    public static let notWhitelisted: UInt16 = 0x0201
    public static let backendUnavailable: UInt16 = 0x0202
    public static let badRequest: UInt16 = 0x0203
}
