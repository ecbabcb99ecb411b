/// The rules of `--network allow:RULES` (docs/network.md): which hosts and ports the proxy lets a
/// sandbox reach. Pure: parsing and deciding, no sockets.
///
/// RULES is a comma-separated list. A rule is a host name (`pypi.org`), a wildcard for every name
/// under a suffix (`*.pythonhosted.org`: not the suffix itself), or an IP address (IPv6 in brackets),
/// each with an optional `:port` (without one, every port). A rule starting with `!` denies; deny rules
/// win over allow rules. An IP literal, and any address that is loopback, private, link-local or
/// otherwise not public, is refused unless a rule names exactly that address. An empty list allows
/// nothing.
public struct NetworkRules: Equatable, Sendable, CustomStringConvertible {
    public struct Rule: Equatable, Sendable, CustomStringConvertible {
        public enum Pattern: Equatable, Sendable {
            /// One name, lowercased, without a trailing dot.
            case host(String)
            /// Every name ending in `.suffix` (the suffix is stored without the leading dot).
            case suffix(String)
            /// An address as written in the rule, normalized (`IPAddress.description`).
            case address(IPAddress)
        }
        public var deny: Bool
        public var pattern: Pattern
        public var port: UInt16?

        func matches(host: String, address: IPAddress?, port: UInt16) -> Bool {
            if let p = self.port, p != port { return false }
            switch pattern {
            case let .host(h): return address == nil && host == h
            case let .suffix(s): return address == nil && host.hasSuffix("." + s)
            case let .address(a): return address == a
            }
        }

        public var description: String {
            var s = deny ? "!" : ""
            switch pattern {
            case let .host(h): s += h
            case let .suffix(x): s += "*." + x
            case let .address(a): s += a.isV6 ? "[\(a)]" : a.description  // as it parses back
            }
            if let port { s += ":\(port)" }
            return s
        }
    }

    public var rules: [Rule]

    public init(rules: [Rule]) { self.rules = rules }

    public var description: String { rules.map(\.description).joined(separator: ",") }

    /// Parses RULES; the error names the rule and says what is wrong with it.
    public static func parse(_ text: String) throws(AgentboxError) -> NetworkRules {
        var rules: [Rule] = []
        for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = String(raw).trimmingSpaces()
            if item.isEmpty {
                if text.trimmingSpaces().isEmpty { break }
                throw .usage("network rules \"\(text)\": an empty rule between commas")
            }
            rules.append(try parseRule(item))
        }
        return NetworkRules(rules: rules)
    }

    static func parseRule(_ item: String) throws(AgentboxError) -> Rule {
        func bad(_ why: String) -> AgentboxError { .usage("network rule \"\(item)\": \(why)") }
        var text = Substring(item)
        let deny = text.hasPrefix("!")
        if deny { text = text.dropFirst() }
        var hostPart = text
        var port: UInt16? = nil
        if text.hasPrefix("[") {
            // [IPv6] or [IPv6]:port
            guard let close = text.firstIndex(of: "]") else { throw bad("an IPv6 address needs its closing ]") }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw bad("only :PORT may follow an IPv6 address") }
                port = try parsePort(rest.dropFirst(), bad)
            }
            guard hostPart.contains(":"), let a = IPAddress(String(hostPart)) else { throw bad("\(hostPart) is not an IPv6 address") }
            return Rule(deny: deny, pattern: .address(a), port: port)
        }
        if let colon = text.lastIndex(of: ":") {
            if text[..<colon].contains(":") { throw bad("write an IPv6 address in brackets: [ADDRESS] or [ADDRESS]:PORT") }
            hostPart = text[..<colon]
            port = try parsePort(text[text.index(after: colon)...], bad)
        }
        var host = hostPart.lowercased()
        if host.hasSuffix(".") { host.removeLast() }
        if let a = IPAddress(host) { return Rule(deny: deny, pattern: .address(a), port: port) }
        if host.hasPrefix("*.") {
            let suffix = String(host.dropFirst(2))
            guard validName(suffix) else { throw bad("\"\(suffix)\" is not a host name") }
            return Rule(deny: deny, pattern: .suffix(suffix), port: port)
        }
        if host.contains("*") { throw bad("a wildcard is only `*.` at the start (*.example.com)") }
        guard validName(host) else { throw bad("\"\(host)\" is not a host name (letters, digits, '-' and '.')") }
        return Rule(deny: deny, pattern: .host(host), port: port)
    }

    static func parsePort(_ text: Substring, _ bad: (String) -> AgentboxError) throws(AgentboxError) -> UInt16 {
        guard !text.isEmpty, text.utf8.count <= 5, text.first != "0", text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let p = UInt16(text), p > 0 else { throw bad("\"\(text)\" is not a port (1-65535)") }
        return p
    }

    /// A DNS name: labels of letters, digits and hyphens (not at either end), 1-63 bytes each, 253 in all,
    /// the last not a number (`010.0.0.5`, `167772165` or `0x7f.1` would be read as an address by
    /// resolvers that accept the old numeric forms: an address only a rule naming it may reach).
    public static func validName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        if let last = labels.last {
            let l = last.lowercased()
            if l.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { return false }
            if l.hasPrefix("0x") && l.dropFirst(2).allSatisfy(\.isHexDigit) { return false }
        }
        return labels.allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || ($0 >= 0x41 && $0 <= 0x5A) }
        }
    }

    /// The decision for a connection to `host` (as the client asked for it) on `port`.
    public enum Decision: Equatable, Sendable {
        case allow(by: String)
        case deny(String)
        public var allowed: Bool { if case .allow = self { return true } else { return false } }
    }

    /// Decides on the name the client gave. A deny rule that matches wins; then an allow rule; else
    /// denied. An IP literal is allowed only by a rule naming that address.
    public func decide(host rawHost: String, port: UInt16) -> Decision {
        var host = rawHost.lowercased()
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.hasSuffix(".") { host.removeLast() }
        let address = IPAddress(host)
        guard address != nil || NetworkRules.validName(host) else { return .deny("\"\(rawHost)\" is not a host name") }
        if let deny = rules.first(where: { $0.deny && $0.matches(host: host, address: address, port: port) }) {
            return .deny("denied by \(deny)")
        }
        if let allow = rules.first(where: { !$0.deny && $0.matches(host: host, address: address, port: port) }) {
            return .allow(by: allow.description)
        }
        if address != nil { return .deny("an IP address is reached only when a rule names it") }
        return .deny("no rule allows \(host):\(port)")
    }

    /// Decides on an address a name resolved to (by the proxy, outside the sandbox): an address that is
    /// not public is refused unless a rule names exactly it, so that an allowed name cannot point into
    /// the host or its networks (DNS rebinding, `localhost.example.com`).
    public func admits(resolved address: IPAddress, port: UInt16) -> Decision {
        if let deny = rules.first(where: { $0.deny && $0.matches(host: "", address: address, port: port) }) {
            return .deny("denied by \(deny)")
        }
        if !address.isPublic {
            if let allow = rules.first(where: { !$0.deny && $0.matches(host: "", address: address, port: port) }) {
                return .allow(by: allow.description)
            }
            return .deny("\(address) is \(address.kind): reached only when a rule names it")
        }
        return .allow(by: "a public address")
    }
}

/// An IPv4 or IPv6 address, parsed without the C library (so it is the same everywhere), kept as 16
/// bytes (IPv4 as ::ffff:a.b.c.d).
public struct IPAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public let isV6: Bool

    public init?(_ text: String) {
        if let v4 = IPAddress.parseV4(Substring(text)) {
            bytes = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + v4
            isV6 = false
        } else if let v6 = IPAddress.parseV6(text) {
            // ::ffff:a.b.c.d is a.b.c.d: one address, one way of comparing it.
            let mapped = v6[0..<10].allSatisfy { $0 == 0 } && v6[10] == 0xFF && v6[11] == 0xFF
            bytes = v6
            isV6 = !mapped
        } else {
            return nil
        }
    }

    public init(v4: [UInt8]) {
        bytes = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + v4
        isV6 = false
    }

    public init(v6: [UInt8]) {
        bytes = v6
        isV6 = !(v6[0..<10].allSatisfy { $0 == 0 } && v6[10] == 0xFF && v6[11] == 0xFF)
    }

    static func parseV4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            // Decimal only, no leading zeros (0x7f.1 and 0177.0.0.1 are not accepted as addresses).
            guard !p.isEmpty, p.utf8.count <= 3, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), p == "0" || p.first != "0",
                  let v = UInt8(p) else { return nil }
            out.append(v)
        }
        return out
    }

    static func parseV6(_ text: String) -> [UInt8]? {
        guard text.contains(":"), !text.contains("%") else { return nil }
        var halves: [String] = []
        let b = Array(text.utf8)
        var start = 0, i = 0
        while i < b.count {
            if i + 1 < b.count && b[i] == 0x3A && b[i + 1] == 0x3A {
                halves.append(String(decoding: b[start..<i], as: UTF8.self))
                i += 2
                start = i
            } else {
                i += 1
            }
        }
        halves.append(String(decoding: b[start...], as: UTF8.self))
        guard halves.count <= 2 else { return nil }
        // Hex digits only (no sign), and a dotted IPv4 only as the very last part of the address.
        func groups(_ s: String, last: Bool) -> [UInt8]? {
            if s.isEmpty { return [] }
            var out: [UInt8] = []
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            for (i, p) in parts.enumerated() {
                if last, i == parts.count - 1, p.contains("."), let v4 = parseV4(p) { out += v4; continue }
                guard !p.isEmpty, p.count <= 4, p.allSatisfy(\.isHexDigit), let v = UInt16(p, radix: 16) else { return nil }
                out += [UInt8(v >> 8), UInt8(v & 0xFF)]
            }
            return out
        }
        guard let head = groups(halves[0], last: halves.count == 1) else { return nil }
        if halves.count == 1 { return head.count == 16 ? head : nil }
        guard let tail = groups(halves[1], last: true), head.count + tail.count <= 14 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }

    var v4: [UInt8]? { isV6 ? nil : Array(bytes[12...]) }

    /// What kind of address it is when it is not a public one ("public" otherwise).
    public var kind: String {
        if let a = v4 { return IPAddress.kind(v4: a) }
        // IPv6 forms that carry an IPv4 address are what that address is.
        if bytes[0] == 0x20 && bytes[1] == 0x02 { return IPAddress.kind(v4: Array(bytes[2..<6])) }  // 6to4
        if bytes[0] == 0x00 && bytes[1] == 0x64 && bytes[2] == 0xFF && bytes[3] == 0x9B && bytes[4..<12].allSatisfy({ $0 == 0 }) {
            return IPAddress.kind(v4: Array(bytes[12...]))  // NAT64
        }
        if bytes == [UInt8](repeating: 0, count: 15) + [1] { return "loopback" }
        if bytes.allSatisfy({ $0 == 0 }) { return "unspecified" }
        if bytes[0] & 0xFE == 0xFC { return "private (unique local)" }
        if bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80 { return "link-local" }
        if bytes[0] == 0xFF { return "multicast" }
        if bytes[0..<12].allSatisfy({ $0 == 0 }) { return "IPv4-compatible (deprecated)" }
        if bytes[0..<8].allSatisfy({ $0 == 0 }) && bytes[8] == 0xFF && bytes[9] == 0xFF { return "IPv4-translated" }
        if bytes[0] == 0xFE && bytes[1] & 0xC0 == 0xC0 { return "site-local" }
        if bytes[0] == 0x01 && bytes[1..<8].allSatisfy({ $0 == 0 }) { return "discard-only" }
        if bytes[0] == 0x20 && bytes[1] == 0x01 && bytes[2] == 0x0D && bytes[3] == 0xB8 { return "documentation" }
        if bytes[0] == 0x20 && bytes[1] == 0x01 && bytes[2] == 0x00 && bytes[3] == 0x00 { return "Teredo" }
        if bytes[0] == 0x20 && bytes[1] == 0x01 && bytes[2] == 0x00 && bytes[3] < 0x20 { return "IETF protocol assignments" }
        return "public"
    }

    static func kind(v4 a: [UInt8]) -> String {
        switch (a[0], a[1], a[2]) {
        case (127, _, _): return "loopback"
        case (10, _, _), (192, 168, _), (172, 16...31, _): return "private"
        case (169, 254, _): return "link-local"
        case (100, 64...127, _): return "shared (CGNAT)"
        case (0, _, _): return "unspecified"
        case (192, 0, 0): return "IETF protocol assignments"
        case (192, 0, 2), (198, 51, 100), (203, 0, 113): return "documentation"
        case (198, 18...19, _): return "benchmarking"
        case (224...239, _, _): return "multicast"
        case (240...255, _, _): return "reserved"
        default: return "public"
        }
    }

    public var isPublic: Bool { kind == "public" }

    public var description: String {
        if let a = v4 { return a.map(String.init).joined(separator: ".") }
        // RFC 5952: lowercase, the longest run of two or more zero groups as ::.
        let groups = stride(from: 0, to: 16, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
        var best = (start: -1, length: 0), run = (start: -1, length: 0)
        for (i, g) in groups.enumerated() {
            if g == 0 {
                run = run.start < 0 ? (i, 1) : (run.start, run.length + 1)
                if run.length > best.length { best = run }
            } else {
                run = (-1, 0)
            }
        }
        if best.length < 2 { return groups.map { String($0, radix: 16) }.joined(separator: ":") }
        let head = groups[..<best.start].map { String($0, radix: 16) }.joined(separator: ":")
        let tail = groups[(best.start + best.length)...].map { String($0, radix: 16) }.joined(separator: ":")
        return head + "::" + tail
    }
}
