import NIOCore

/// Settings of one reliable connection (placeholder; the protocol is being written).
public struct ReliableConfiguration: Sendable {
    public init() {}
}
