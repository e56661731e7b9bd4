import NIOCore

/// Unreliable datagrams beside a stream: a carrier that can send datagrams outside its reliable
/// byte stream (sudph) lets a stream's user send one datagram that is neither retransmitted nor
/// ordered, so a lost one never holds up later ones (no head-of-line blocking). The mux only
/// routes them by stream id; how the carrier seals and sends them is the carrier's business,
/// and a carrier without such a path never says it has one (the stream then keeps framing its
/// datagrams into its byte stream).
///
/// The four events, two per side:
/// - A carrier announces its path with ``CarrierCapacity`` (inbound user event, again whenever
///   the size changes); the ``MuxHandler`` remembers it and streams report it as
///   ``MuxChildChannel/datagramCapacity``.
/// - A stream's user triggers ``Send`` (outbound user event on the stream); the handler passes it
///   to the carrier as ``CarrierSend`` (outbound user event on the carrier's pipeline).
/// - The carrier fires ``CarrierReceived`` (inbound user event) for each authentic datagram; the
///   handler delivers it to the stream as ``Received`` (inbound user event on the stream), only
///   to a stream that opted in (``MuxChildChannel/acceptDatagrams()``) and is open; any other is
///   dropped and counted (``MuxHandler/datagramsDropped``), so a peer reaches only the streams
///   that agreed to datagrams.
public enum MuxDatagram {
    /// Outbound user event on a ``MuxChildChannel``: send `data` as one unreliable datagram.
    /// The promise fails with ``MuxError/datagramsUnavailable`` when the carrier has no such
    /// path, the datagram is larger than ``MuxChildChannel/datagramCapacity``, or the stream is
    /// not open (yet or any more); it succeeds once the carrier has sent it (not delivered it).
    public struct Send: Sendable {
        public var data: ByteBuffer
        public init(_ data: ByteBuffer) { self.data = data }
    }

    /// Inbound user event on a ``MuxChildChannel`` that accepts datagrams: one datagram the
    /// peer sent with ``Send``.
    public struct Received: Sendable {
        public var data: ByteBuffer
        public init(_ data: ByteBuffer) { self.data = data }
    }

    /// Inbound user event a carrier fires into its pipeline: it can send datagrams of up to
    /// `maximumSize` bytes (0: not any more).
    public struct CarrierCapacity: Sendable, Hashable {
        public var maximumSize: Int
        public init(maximumSize: Int) { self.maximumSize = maximumSize }
    }

    /// Outbound user event the ``MuxHandler`` sends to its carrier: `data` for stream `streamID`.
    public struct CarrierSend: Sendable {
        public var streamID: UInt32
        public var data: ByteBuffer
        public init(streamID: UInt32, data: ByteBuffer) {
            self.streamID = streamID
            self.data = data
        }
    }

    /// Inbound user event a carrier fires into its pipeline: an authentic datagram the peer's
    /// ``MuxHandler`` sent for `streamID`.
    public struct CarrierReceived: Sendable {
        public var streamID: UInt32
        public var data: ByteBuffer
        public init(streamID: UInt32, data: ByteBuffer) {
            self.streamID = streamID
            self.data = data
        }
    }
}
