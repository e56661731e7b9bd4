#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SkywireCrypto

/// An entry as it travels to the discovery service: the entry's JSON text and an Ed25519
/// signature by the entry's own key.
///
/// The signature covers the UTF-8 bytes of
/// `"skywire-discovery/1 " + kind + "\n" + payload` (see ``signedMessage(kind:payload:)``),
/// where `kind` is `relay` or `visor`. Signing the exact payload text (rather than a re-encoding)
/// means the verifier never has to reproduce the signer's JSON byte for byte; naming the kind
/// and protocol version keeps a signature from being valid in any other context.
public struct SignedEntry: Codable, Sendable, Equatable {
    /// The entry's JSON text, exactly as signed.
    public var payload: String
    /// 128 lowercase hex characters: the 64-byte Ed25519 signature. Empty when absent.
    public var signature: String

    /// Wraps an already signed payload.
    public init(payload: String, signature: String) {
        self.payload = payload
        self.signature = signature
    }

    enum CodingKeys: String, CodingKey {
        case payload
        case signature
    }

    /// Decodes an envelope; a missing `signature` decodes as empty so that verification can
    /// report it as a missing signature rather than as malformed JSON.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.payload = try container.decode(String.self, forKey: .payload)
        self.signature = try container.decodeIfPresent(String.self, forKey: .signature) ?? ""
    }

    /// The prefix of every signed message; the version changes if the signed format does.
    public static let domain = "skywire-discovery/1 "

    /// The exact bytes that are signed for an entry of `kind` with this payload text.
    public static func signedMessage(kind: EntryKind, payload: String) -> [UInt8] {
        Array((Self.domain + kind.rawValue + "\n" + payload).utf8)
    }

    /// Signs `entry` (a ``RelayEntry`` or ``VisorEntry``) with its owner's key pair.
    ///
    /// - Throws: ``DiscoveryEntryError`` of kind ``DiscoveryEntryError/Kind/keyMismatch`` when
    ///   `keyPair` is not the entry's key, or ``DiscoveryEntryError/Kind/invalidEntry`` when the
    ///   entry fails ``DiscoveryEntry/validate()`` — both would be refused by the service anyway.
    public static func sign<Entry: DiscoveryEntry>(
        _ entry: Entry,
        with keyPair: KeyPair
    ) throws(DiscoveryEntryError) -> SignedEntry {
        guard keyPair.publicKey == entry.publicKey else {
            throw DiscoveryEntryError(
                .keyMismatch,
                "\(Entry.kind.rawValue) entry for \(entry.publicKey.hex) cannot be signed with the key of \(keyPair.publicKey.hex)"
            )
        }
        try entry.validate()
        let payload = try EntryCoding.encodeText(entry)
        let signature = keyPair.sign(Self.signedMessage(kind: Entry.kind, payload: payload))
        return SignedEntry(payload: payload, signature: Hex.encode(signature))
    }

    /// Checks the envelope and returns the entry it carries.
    ///
    /// Checks, in order: the signature is present, it is 128 lowercase hex characters, the
    /// payload decodes as `Entry`, the entry passes ``DiscoveryEntry/validate()``, and the
    /// signature is valid for the entry's own key over the message for `Entry.kind`.
    ///
    /// - Throws: ``DiscoveryEntryError`` whose ``DiscoveryEntryError/kind`` tells which check
    ///   failed and whose description is one line fit to show a user.
    public func verified<Entry: DiscoveryEntry>(as type: Entry.Type = Entry.self) throws(DiscoveryEntryError) -> Entry {
        guard !self.signature.isEmpty else {
            throw DiscoveryEntryError(.missingSignature, "missing signature")
        }
        guard let signatureBytes = Hex.decode(self.signature, byteCount: 64) else {
            throw DiscoveryEntryError(
                .malformedSignature,
                "signature must be 128 lowercase hex characters, got \(self.signature.count) characters"
            )
        }
        let entry: Entry = try EntryCoding.decodePayload(self.payload)
        try entry.validate()
        let message = Self.signedMessage(kind: Entry.kind, payload: self.payload)
        guard entry.publicKey.isValidSignature(signatureBytes, for: message) else {
            throw DiscoveryEntryError(
                .invalidSignature,
                "signature is not valid for this \(Entry.kind.rawValue) entry and key \(entry.publicKey.hex)"
            )
        }
        return entry
    }
}

/// Why an entry was refused or could not be signed.
public struct DiscoveryEntryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Which check failed.
    public enum Kind: Sendable, Hashable {
        /// The payload is not JSON of the expected entry shape (includes a bad public key).
        case malformedPayload
        /// The entry decoded but a field is out of bounds (address, list size, sequence).
        case invalidEntry
        /// The envelope has no signature.
        case missingSignature
        /// The signature is not 128 lowercase hex characters.
        case malformedSignature
        /// The signature does not verify for the entry's key and kind.
        case invalidSignature
        /// Signing was attempted with a key pair that does not own the entry.
        case keyMismatch
    }

    /// Which check failed.
    public var kind: Kind
    /// One line describing the failure.
    public var message: String

    /// Creates an error of `kind` with a one-line `message`.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The one-line message.
    public var description: String { self.message }
}

/// JSON coding shared by signing, the server and the client, so every part writes the same text.
enum EntryCoding {
    static func makeEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func encodeText<Value: Encodable>(_ value: Value) throws(DiscoveryEntryError) -> String {
        do {
            return String(decoding: try makeEncoder().encode(value), as: UTF8.self)
        } catch {
            throw DiscoveryEntryError(.malformedPayload, "cannot encode entry: \(error)")
        }
    }

    static func decodePayload<Entry: DiscoveryEntry>(_ payload: String) throws(DiscoveryEntryError) -> Entry {
        do {
            return try JSONDecoder().decode(Entry.self, from: Data(payload.utf8))
        } catch {
            throw DiscoveryEntryError(
                .malformedPayload,
                "payload is not a valid \(Entry.kind.rawValue) entry: \(describeDecodingError(error))"
            )
        }
    }

    /// A short, single-line account of a decoding failure (Foundation's own descriptions are long
    /// and multi-line).
    static func describeDecodingError(_ error: any Error) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            let text = codingPath.map { key in key.intValue.map { "[\($0)]" } ?? key.stringValue }
                .joined(separator: ".")
            return text.isEmpty ? "top level" : "'\(text)'"
        }
        let text: String
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            let parent = context.codingPath.isEmpty ? "" : " in \(path(context.codingPath))"
            text = "missing field '\(key.stringValue)'\(parent)"
        case DecodingError.typeMismatch(let type, let context):
            text = "\(path(context.codingPath)): expected \(describe(type))"
        case DecodingError.valueNotFound(let type, let context):
            text = "\(path(context.codingPath)): expected \(describe(type)), found null"
        case DecodingError.dataCorrupted(let context):
            var line = context.codingPath.isEmpty ? "not valid JSON" : "\(path(context.codingPath)): \(context.debugDescription)"
            if let underlying = context.underlyingError, !(underlying is DecodingError) {
                line += context.codingPath.isEmpty ? " (\(underlying))" : ": \(underlying)"
            }
            text = line
        default:
            text = "\(error)"
        }
        return singleLine(text)
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is UInt64.Type, is Int64.Type, is Int.Type: "an integer"
        case is [Any].Type: "an array"
        default: "\(type)"
        }
    }

    /// Makes any text one bounded line: error bodies and log lines must not be split or flooded.
    static func singleLine(_ text: String, limit: Int = 300) -> String {
        var line = text.split(whereSeparator: \.isNewline).joined(separator: " ")
        if line.count > limit {
            line = String(line.prefix(limit)) + "…"
        }
        return line
    }
}
