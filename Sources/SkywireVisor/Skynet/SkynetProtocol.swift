import NIOCore

/// The open header of a skynet stream on a visor↔visor session.
///
/// ```
/// 0x53 ('S') | version u8 (1) | flags u8 (bit 0: probe, bit 1: HTTP mode, bit 2: client address) | port u16
/// [ family u8 (4 or 6) | address (4 or 16 bytes, network order) | port u16 ]   (when bit 2 is set)
/// ```
/// A probe asks only "is this port exposed to me?": the server accepts or rejects it without
/// connecting to the backend, and the client closes it at once. `skynet start` probes before it
/// reports success.
public struct SkynetHeader: Equatable, Sendable {
    public var port: UInt16
    public var probe: Bool
    /// The stream carries HTTP/1.1: the server visor runs it through its reverse proxy.
    public var http: Bool
    /// Where the local connection came from, as the client visor saw it (its accepted socket's
    /// peer): what a PROXY protocol header hands the backend. `nil` when unknown.
    public var clientAddress: SocketAddress?

    static let magic: UInt8 = 0x53
    static let version: UInt8 = 1

    public init(port: UInt16, probe: Bool, http: Bool = false, clientAddress: SocketAddress? = nil) {
        self.port = port
        self.probe = probe
        self.http = http
        self.clientAddress = clientAddress.flatMap { ipBytes($0) == nil ? nil : $0 }
    }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        let client = self.clientAddress.flatMap { address in ipBytes(address).map { ($0, UInt16(address.port ?? 0)) } }
        buffer.writeInteger(UInt8((self.probe ? 1 : 0) | (self.http ? 2 : 0) | (client != nil ? 4 : 0)))
        buffer.writeInteger(self.port)
        if let (bytes, port) = client {
            buffer.writeInteger(UInt8(bytes.count == 4 ? 4 : 6))
            buffer.writeBytes(bytes)
            buffer.writeInteger(port)
        }
        return buffer
    }

    /// `nil` for anything malformed.
    public init?(_ buffer: ByteBuffer) {
        var buffer = buffer
        guard buffer.readInteger(as: UInt8.self) == Self.magic,
              buffer.readInteger(as: UInt8.self) == Self.version,
              let flags = buffer.readInteger(as: UInt8.self),
              flags & ~7 == 0,
              let port = buffer.readInteger(as: UInt16.self),
              port != 0
        else { return nil }
        self.port = port
        self.probe = flags & 1 == 1
        self.http = flags & 2 == 2
        self.clientAddress = nil
        if flags & 4 == 4 {
            guard let family = buffer.readInteger(as: UInt8.self), family == 4 || family == 6,
                  let bytes = buffer.readBytes(length: family == 4 ? 4 : 16),
                  let clientPort = buffer.readInteger(as: UInt16.self),
                  let address = try? SocketAddress(packedIPAddress: ByteBuffer(bytes: bytes), port: Int(clientPort))
            else { return nil }
            self.clientAddress = address
        }
        guard buffer.readableBytes == 0 else { return nil }
    }
}

/// Reject codes of skynet streams (in the mux REJECT frame), with the message shown to users.
public enum SkynetRejectCode {
    public static let notExposed: UInt16 = 0x0200
    public static let notWhitelisted: UInt16 = 0x0201
    public static let backendUnavailable: UInt16 = 0x0202
    public static let badRequest: UInt16 = 0x0203
}
