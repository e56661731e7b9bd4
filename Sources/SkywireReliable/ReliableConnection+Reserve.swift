extension ReliableConnection {
    /// Takes the next packet number for a datagram the layer below sends itself (sudph's CLOSE
    /// and path probes), so that no two datagrams of a connection ever share a number (it is the
    /// AEAD nonce).
    public func reservePacketNumber() -> UInt64 {
        let number = self.nextPacketNumber
        self.nextPacketNumber += 1
        return number
    }

    /// Lets packets grow to `size` bytes once the layer below has found that the path carries
    /// them (path MTU discovery). Only raises, within ``ReliableConfiguration/maximumPacketSize``;
    /// the congestion window keeps its size in packets.
    public func raiseMaxPacketSize(to size: Int) {
        let size = min(size, ReliableConfiguration.maximumPacketSize)
        guard size > self.configuration.maxPacketSize else { return }
        self.configuration.maxPacketSize = size
        self.congestion.raiseMaxDatagramSize(to: size)
    }
}
