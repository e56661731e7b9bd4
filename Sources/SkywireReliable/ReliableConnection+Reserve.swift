extension ReliableConnection {
    /// Takes the next packet number for a datagram the layer below sends itself (sudph's CLOSE),
    /// so that no two datagrams of a connection ever share a number (it is the AEAD nonce).
    public func reservePacketNumber() -> UInt64 {
        let number = self.nextPacketNumber
        self.nextPacketNumber += 1
        return number
    }
}
