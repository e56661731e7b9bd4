import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SkywireVisor

/// Talks to a visor's control API on behalf of its owner (the token is found by itself, see
/// `ControlToken`).
struct ControlClient {
    let host: String
    let port: Int

    var display: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }

    init(rpc: String) throws {
        guard let (host, port) = parseLoopbackHostPort(rpc), port != 0 else {
            throw CLIError("invalid --rpc \"\(rpc)\": expected a loopback host:port such as 127.0.0.1:3435")
        }
        self.host = host
        self.port = port
    }

    func get<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws -> T {
        try await self.request(.GET, path, body: Optional<String>.none)
    }

    func post<T: Decodable>(_ path: String, _ body: some Encodable, as type: T.Type = T.self) async throws -> T {
        try await self.request(.POST, path, body: body)
    }

    func delete<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws -> T {
        try await self.request(.DELETE, path, body: Optional<String>.none)
    }

    private func request<T: Decodable, B: Encodable>(_ method: HTTPMethod, _ path: String, body: B?) async throws -> T {
        let token: String
        do {
            token = try ControlToken.read(host: self.host, port: self.port)
        } catch {
            throw CLIError("\(error)")
        }
        let hostPart = self.host.contains(":") ? "[\(self.host)]" : self.host
        var request = HTTPClientRequest(url: "http://\(hostPart):\(self.port)\(path)")
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try ControlJSON.encoder().encode(body)))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            // Starting a forward may dial a remote visor: allow it time, but not forever.
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            bytes = try await response.body.collect(upTo: 16 * 1024 * 1024)
        } catch {
            throw CLIError("no visor running at \(self.display) (\(Self.describe(error)))")
        }
        let data = Data(buffer: bytes)
        guard response.status == .ok else {
            if let problem = try? ControlJSON.decoder().decode(ErrorResponse.self, from: data) {
                throw CLIError(problem.error)
            }
            throw CLIError("visor at \(self.display) answered \(response.status.code)")
        }
        do {
            return try ControlJSON.decoder().decode(T.self, from: data)
        } catch {
            throw CLIError("unexpected answer from the visor at \(self.display): \(error)")
        }
    }

    private static func describe(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("connectionRefused") || text.contains("Connection refused") || text.contains("ECONNREFUSED") {
            return "connection refused"
        }
        if text.contains("Timeout") || text.contains("timeout") { return "timed out" }
        return text
    }
}

/// An error shown to the user as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
