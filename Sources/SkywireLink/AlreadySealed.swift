/// An outbound user event: the next `byteCount` bytes written after it are already sealed end to
/// end (they are another Noise session's frames), so an encrypting handler below may send them
/// without sealing them again — provided its own framing stays authenticated, so that the
/// number and position of such bytes cannot be altered (see docs/ARCHITECTURE.md, "Relay path").
///
/// A handler that does not know this event lets it pass; at the head of a pipeline it is dropped,
/// and the bytes are then written (and sealed, if anything seals) like any others.
public struct AlreadySealed: Sendable, Hashable {
    /// How many of the bytes written next carry end-to-end sealed data.
    public var byteCount: Int

    public init(byteCount: Int) {
        self.byteCount = byteCount
    }
}
