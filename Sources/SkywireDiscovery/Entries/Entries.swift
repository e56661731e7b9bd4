import SkywireCrypto

/// The two kinds of entry the discovery service stores.
///
/// The kind is part of the signed message (see ``SignedEntry``), so a relay entry can never be
/// replayed as a visor entry or the other way round.
public enum EntryKind: String, Sendable, Hashable, CaseIterable {
    /// A relay (dmsg server) announcing its TCP listener.
    case relay
    /// A visor announcing the relays it sits on and its direct addresses.
    case visor
}

/// What every discovery entry has in common: an owner key that signs it, and a sequence number
/// and timestamp that make a newer entry replace an older one.
public protocol DiscoveryEntry: Codable, Sendable, Equatable {
    /// The kind named in the signed message and used to pick the route and table.
    static var kind: EntryKind { get }
    /// The entry's owner; only this key's signature is accepted for it.
    var publicKey: PublicKey { get }
    /// Strictly increasing per key: the service refuses an entry whose sequence is not greater
    /// than the one it stores. See ``SequenceGenerator``.
    var sequence: UInt64 { get set }
    /// When the entry was made, in unix seconds. The service refuses timestamps too far from its clock.
    var timestamp: Int64 { get set }
    /// Checks the entry's own fields (addresses well formed, lists within bounds).
    /// Throws ``DiscoveryEntryError`` of kind ``DiscoveryEntryError/Kind/invalidEntry``.
    func validate() throws(DiscoveryEntryError)
}

/// Bounds that keep one entry small; the service's body limit is the outer bound.
public enum EntryLimits {
    /// Most relays a visor entry may list.
    public static let maxRelays = 32
    /// Most direct addresses a visor entry may list.
    public static let maxAddresses = 16
    /// Longest `host:port` string accepted.
    public static let maxAddressLength = 261  // 255-byte DNS name + ":" + 5 digits
    /// Largest sequence number accepted: storage keeps it as a signed 64-bit integer.
    public static let maxSequence = UInt64(Int64.max)
}

/// A relay's announcement: who it is and where its TCP listener is.
public struct RelayEntry: DiscoveryEntry {
    /// Always ``EntryKind/relay``.
    public static var kind: EntryKind { .relay }

    /// The relay's identity; visors dial it with Noise IK against this key.
    public var publicKey: PublicKey
    /// `host:port` of the relay's TCP listener (IPv6 hosts in brackets: `[::1]:8081`).
    public var address: String
    /// Strictly increasing per key (see ``DiscoveryEntry/sequence``).
    public var sequence: UInt64
    /// Creation time in unix seconds.
    public var timestamp: Int64

    /// Creates a relay entry.
    public init(publicKey: PublicKey, address: String, sequence: UInt64 = 0, timestamp: Int64 = 0) {
        self.publicKey = publicKey
        self.address = address
        self.sequence = sequence
        self.timestamp = timestamp
    }

    enum CodingKeys: String, CodingKey {
        case publicKey = "public_key"
        case address
        case sequence
        case timestamp
    }

    /// Checks that ``address`` is a `host:port` with a port in 1...65535.
    public func validate() throws(DiscoveryEntryError) {
        try EntryValidation.checkAddress(self.address, field: "address")
        try EntryValidation.checkSequence(self.sequence)
    }
}

/// A visor's announcement: which relays it can be reached through and its direct addresses.
public struct VisorEntry: DiscoveryEntry {
    /// Always ``EntryKind/visor``.
    public static var kind: EntryKind { .visor }

    /// The visor's identity.
    public var publicKey: PublicKey
    /// Relays the visor has a live session on; a dialer reaches it through any of them.
    public var relays: [PublicKey]
    /// Direct (stcpr) `host:port` addresses; may be empty.
    public var addresses: [String]
    /// Strictly increasing per key (see ``DiscoveryEntry/sequence``).
    public var sequence: UInt64
    /// Creation time in unix seconds.
    public var timestamp: Int64

    /// Creates a visor entry.
    public init(
        publicKey: PublicKey,
        relays: [PublicKey] = [],
        addresses: [String] = [],
        sequence: UInt64 = 0,
        timestamp: Int64 = 0
    ) {
        self.publicKey = publicKey
        self.relays = relays
        self.addresses = addresses
        self.sequence = sequence
        self.timestamp = timestamp
    }

    enum CodingKeys: String, CodingKey {
        case publicKey = "public_key"
        case relays
        case addresses
        case sequence
        case timestamp
    }

    /// Checks list sizes and that every address is a `host:port` with a port in 1...65535.
    public func validate() throws(DiscoveryEntryError) {
        guard self.relays.count <= EntryLimits.maxRelays else {
            throw DiscoveryEntryError(
                .invalidEntry,
                "relays lists \(self.relays.count) keys, at most \(EntryLimits.maxRelays) are allowed"
            )
        }
        guard self.addresses.count <= EntryLimits.maxAddresses else {
            throw DiscoveryEntryError(
                .invalidEntry,
                "addresses lists \(self.addresses.count) entries, at most \(EntryLimits.maxAddresses) are allowed"
            )
        }
        for (index, address) in self.addresses.enumerated() {
            try EntryValidation.checkAddress(address, field: "addresses[\(index)]")
        }
        try EntryValidation.checkSequence(self.sequence)
    }
}

enum EntryValidation {
    /// Accepts `host:port` and `[v6]:port`; the host is not resolved, only checked for shape.
    static func checkAddress(_ address: String, field: String) throws(DiscoveryEntryError) {
        guard !address.isEmpty else {
            throw DiscoveryEntryError(.invalidEntry, "\(field) is empty, expected host:port")
        }
        guard address.utf8.count <= EntryLimits.maxAddressLength else {
            throw DiscoveryEntryError(.invalidEntry, "\(field) is longer than \(EntryLimits.maxAddressLength) bytes")
        }
        guard HostPort(address) != nil else {
            throw DiscoveryEntryError(
                .invalidEntry,
                "\(field) \(quoted(address)) is not host:port with a port in 1...65535"
            )
        }
    }

    static func checkSequence(_ sequence: UInt64) throws(DiscoveryEntryError) {
        guard sequence <= EntryLimits.maxSequence else {
            throw DiscoveryEntryError(.invalidEntry, "sequence \(sequence) is larger than \(EntryLimits.maxSequence)")
        }
    }

    /// Quotes peer-supplied text for an error line, cutting it short and dropping control characters.
    static func quoted(_ text: String, limit: Int = 64) -> String {
        var scalars = String.UnicodeScalarView()
        for scalar in text.unicodeScalars.prefix(limit) {
            scalars.append(scalar.properties.generalCategory == .control ? "?" : scalar)
        }
        let suffix = text.unicodeScalars.count > limit ? "…" : ""
        return "\"\(String(scalars))\(suffix)\""
    }
}

/// A parsed `host:port`.
/// A parsed `host:port` (`[v6]:port` for IPv6): the one parser every part uses.
public struct HostPort: Equatable, Sendable {
    public var host: String
    public var port: Int

    public init?(_ text: String, allowZeroPort: Bool = false) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            // IPv6 literal: "[addr]:port"
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." || $0 == "%" }) else {
                return nil
            }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.isEmpty,
                host.allSatisfy({ ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "." || $0 == "-" || $0 == "_" })
            else {
                return nil
            }
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
            let port = Int(portText), ((allowZeroPort ? 0 : 1)...65535).contains(port)
        else {
            return nil
        }
        self.host = String(host)
        self.port = port
    }
}
