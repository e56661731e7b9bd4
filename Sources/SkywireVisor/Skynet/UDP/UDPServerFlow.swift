import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireMux
import SkywireSession

extension SkynetServer {
    /// Serves one UDP flow (a stream whose header has the UDP flag, already checked against
    /// the instance's UDP ports and whitelist): a UDP socket of its own, connected to
    /// `127.0.0.1:port`, so the backend sees one source address per flow and only the backend's
    /// answers come back. The stream closes the socket; the socket never closes the stream
    /// (UDP has no end), the idle timer does.
    func acceptUDPFlow(_ request: MuxStreamRequest, session: Session, instance: ServerInstance, port: Int) {
        let boundRequest = NIOLoopBound(request, eventLoop: session.eventLoop)
        let remote = session.remoteKey
        let logger = self.logger
        let datagrams = instance.datagrams
        DatagramBootstrap(group: session.eventLoop)
            .channelOption(.recvAllocator, value: UDPForwarding.receiveAllocator)
            .channelOption(.writeBufferWaterMark, value: UDPForwarding.socketWaterMark)
            .channelOption(.socketOption(.so_rcvbuf), value: UDPForwarding.receiveBuffer)
            .channelOption(.autoRead, value: false)
            .connect(to: SkynetServer.loopback(port))
            .whenComplete { result in
                switch result {
                case .success(let backend):
                    boundRequest.value.accept { stream in
                        UDPForwarding.addStreamHandlers(stream, sink: BackendDatagramSink(channel: backend), counters: datagrams).flatMap {
                            backend.eventLoop.makeCompletedFuture {
                                try backend.pipeline.syncOperations.addHandler(DatagramToStreamHandler(stream: stream, counters: datagrams))
                            }
                        }.flatMap {
                            backend.setOption(.autoRead, value: true)
                        }
                    }.whenComplete { [weak self] result in
                        switch result {
                        case .success(let stream):
                            let counters = instance.counters
                            counters.connectionOpened()
                            let id = SkynetServer.nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue
                            instance.admitted.withLock { $0[id] = .init(remote: remote, port: port, stream: stream, udp: true) }
                            stream.closeFuture.whenComplete { [weak self] _ in
                                backend.close(promise: nil)
                                instance.admitted.withLock { _ = $0.removeValue(forKey: id) }
                                self?.forget(connection: id)
                                // Bytes were counted per datagram.
                                counters.open.subtract(1, ordering: .relaxed)
                            }
                        case .failure(let error):
                            logger.info("UDP flow not accepted", metadata: ["port": "\(port)", "error": "\(error)"])
                            backend.close(promise: nil)
                        }
                    }
                case .failure(let error):
                    logger.info("UDP backend socket failed", metadata: ["port": "\(port)", "error": "\(error)"])
                    instance.counters.noteFailure(.backendUnavailable, "cannot open a UDP socket to port \(port) (\(error))")
                    boundRequest.value.reject(
                        code: SkynetRejectCode.backendUnavailable,
                        message: "cannot open a UDP socket to port \(port) of visor \(self.localKey.hex) (\(error))"
                    )
                }
            }
    }
}
