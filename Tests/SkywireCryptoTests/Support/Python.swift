import Foundation

/// Runs the reference scripts in `Tests/SkywireCryptoTests/python/` with `python3` from PATH.
/// A missing interpreter or package makes the script exit non-zero, which fails the test
/// (never skips it): the cross-checks are the point.
enum Python {
    static let scriptDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("python")

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs a script to completion and returns its standard output.
    static func run(_ script: String, _ arguments: [String]) throws -> Data {
        let process = makeProcess(script, arguments)
        let stdout = Pipe()
        let stderr = try temporaryFile()
        process.standardOutput = stdout
        process.standardError = stderr.handle
        try process.run()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "python3 \(script) exited \(process.terminationStatus): \(stderr.contents())")
        }
        return output
    }

    static func makeProcess(_ script: String, _ arguments: [String]) -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", scriptDirectory.appendingPathComponent(script).path] + arguments
        return process
    }

    /// Stderr goes to a file, not a pipe, so a chatty script can never block on a full pipe.
    static func temporaryFile() throws -> (handle: FileHandle, contents: () -> String) {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("skywire-python-\(UUID().uuidString).log").path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        let reader = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        // Unlinked at once: the open handles keep it readable, and nothing is left behind even
        // when a test fails before reading it.
        try? FileManager.default.removeItem(atPath: path)
        return (handle, {
            try? reader.seek(toOffset: 0)
            let data = (try? reader.readToEnd()) ?? Data()
            return String(decoding: data, as: UTF8.self)
        })
    }
}

/// A long-running script spoken to in frames (2-byte big-endian length + bytes) over its pipes.
final class PythonPeer {
    private let process: Process
    private let input = Pipe()
    private let output = Pipe()
    private let stderr: (handle: FileHandle, contents: () -> String)

    init(_ script: String, _ arguments: [String]) throws {
        process = Python.makeProcess(script, arguments)
        stderr = try Python.temporaryFile()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = stderr.handle
        try process.run()
    }

    func send(_ frame: [UInt8]) throws {
        try input.fileHandleForWriting.write(contentsOf: [UInt8(frame.count >> 8), UInt8(frame.count & 0xff)] + frame)
    }

    /// Writes bytes as they are (for peers that speak a wire format of their own).
    func sendRaw(_ bytes: [UInt8]) throws {
        try input.fileHandleForWriting.write(contentsOf: bytes)
    }

    /// Exactly `count` bytes of its output.
    func receiveExactly(_ count: Int) throws -> [UInt8] {
        try read(count)
    }

    /// One frame with its 2-byte length prefix, as it was on the pipe.
    func receiveFrameBytes() throws -> [UInt8] {
        let header = try read(2)
        return try header + read(Int(header[0]) << 8 | Int(header[1]))
    }

    func receive() throws -> [UInt8] {
        let header = try read(2)
        return try read(Int(header[0]) << 8 | Int(header[1]))
    }

    /// Closes its stdin and waits; throws with its stderr unless it exited 0.
    func finish() throws {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Python.Failure(description: "peer exited \(process.terminationStatus): \(stderr.contents())")
        }
        _ = stderr.contents()
    }

    private func read(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8]()
        while bytes.count < count {
            guard let chunk = try output.fileHandleForReading.read(upToCount: count - bytes.count), !chunk.isEmpty else {
                try? input.fileHandleForWriting.close()
                process.waitUntilExit()
                throw Python.Failure(description: "peer closed its output early: \(stderr.contents())")
            }
            bytes += chunk
        }
        return bytes
    }
}
