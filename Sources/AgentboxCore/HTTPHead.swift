/// The head of an HTTP/1.1 request or response (start line and header fields), as the supervisor's
/// proxy and the agentbox API read it from inside a sandbox: strictly (CRLF line ends, token names,
/// no folded or control-character values), within a size bound. Pure: tested without sockets.
public struct HTTPHead: Sendable, Equatable {
    public struct Field: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// Request: method, target, version. Response: version, status code, reason.
    public var start: (String, String, String)
    public var fields: [Field]

    public init(start: (String, String, String), fields: [Field]) {
        self.start = start
        self.fields = fields
    }

    public static func == (a: HTTPHead, b: HTTPHead) -> Bool {
        a.start == b.start && a.fields == b.fields
    }

    public var method: String { start.0 }
    public var target: String { start.1 }

    /// The first field named `name` (case-insensitive).
    public func field(_ name: String) -> String? {
        let n = name.lowercased()
        return fields.first { $0.name.lowercased() == n }?.value
    }

    /// The offset just past the blank line that ends a head in `bytes`, or nil when it has not come yet.
    public static func end(in bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 3..<bytes.count where bytes[i] == 0x0A && bytes[i - 1] == 0x0D && bytes[i - 2] == 0x0A && bytes[i - 3] == 0x0D {
            return i + 1
        }
        return nil
    }

    /// Parses a head (the bytes up to and including its blank line).
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(AgentboxError) -> HTTPHead {
        func bad(_ why: String) -> AgentboxError { AgentboxError(stage: "http", "malformed request: \(why)") }
        var lines: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == 0x0A {
                guard i > start, bytes[i - 1] == 0x0D else { throw bad("a line does not end with CRLF") }
                lines.append(bytes[start..<(i - 1)])
                start = i + 1
            }
            i += 1
        }
        guard start == bytes.endIndex, lines.count >= 2, lines.last?.isEmpty == true else { throw bad("the head does not end with a blank line") }
        lines.removeLast()
        let first = lines.removeFirst()
        let parts = first.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count >= 3 || (parts.count == 2 && parts[0].starts(with: Array("HTTP/".utf8))) else { throw bad("a start line of \(parts.count) words") }
        guard first.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { throw bad("control characters in the start line") }
        let words = parts.map { String(decoding: $0, as: UTF8.self) }
        let head = (words[0], words[1], words.count > 2 ? words[2...].joined(separator: " ") : "")
        var fields: [Field] = []
        for line in lines {
            guard let colon = line.firstIndex(of: 0x3A), colon > line.startIndex else { throw bad("a header line without a name") }
            let name = line[line.startIndex..<colon]
            guard name.allSatisfy(isToken) else { throw bad("a header name with characters not allowed") }
            let value = line[(colon + 1)...]
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else { throw bad("control characters in a header value") }
            fields.append(Field(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self).trimmingSpaces()))
        }
        return HTTPHead(start: head, fields: fields)
    }

    static func isToken(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || Array("!#$%&'*+-.^_`|~".utf8).contains(b)
    }

    /// The request body's length: Content-Length (one value, or equal duplicates), 0 without one. A
    /// chunked body, or a Content-Length that is not a number, is refused (the services read bodies
    /// whole; a request with both would be read differently by two parsers).
    public func contentLength() throws(AgentboxError) -> Int {
        if field("transfer-encoding") != nil {
            throw AgentboxError(stage: "http", "chunked request bodies are not supported", hint: "send a Content-Length")
        }
        let values = fields.filter { $0.name.lowercased() == "content-length" }.map(\.value)
        guard let first = values.first else { return 0 }
        guard values.allSatisfy({ $0 == first }), first.utf8.count <= 12, !first.isEmpty,
              first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(first) else {
            throw AgentboxError(stage: "http", "malformed request: Content-Length \"\(first)\"")
        }
        return n
    }

    /// The head as bytes, CRLF-terminated, with a blank line.
    public var bytes: [UInt8] {
        var text = start.2.isEmpty ? "\(start.0) \(start.1)\r\n" : "\(start.0) \(start.1) \(start.2)\r\n"
        for f in fields { text += "\(f.name): \(f.value)\r\n" }
        return Array((text + "\r\n").utf8)
    }
}

/// Where a proxy request goes: CONNECT's `host:port`, or an absolute `http://` URI.
public struct HTTPAuthority: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    /// The origin-form target (`/path?query`) of an absolute URI; "" for CONNECT.
    public var path: String

    public init(host: String, port: UInt16, path: String = "") {
        self.host = host
        self.port = port
        self.path = path
    }

    /// `host:port` or `[v6]:port` (CONNECT needs the port).
    public static func connect(_ target: String) -> HTTPAuthority? {
        guard let (host, port) = split(Substring(target)), let port else { return nil }
        return HTTPAuthority(host: host, port: port)
    }

    /// `http://host[:port][/path]`; nil for other schemes or a malformed URI.
    public static func absolute(_ target: String) -> HTTPAuthority? {
        guard target.lowercased().hasPrefix("http://") else { return nil }
        let rest = target.dropFirst(7)
        let slash = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let authority = rest[..<slash]
        guard !authority.contains("@"), let (host, port) = split(authority) else { return nil }
        var path = String(rest[slash...])
        if !path.hasPrefix("/") { path = "/" + path }
        return HTTPAuthority(host: host, port: port ?? 80, path: path)
    }

    static func split(_ text: Substring) -> (String, UInt16?)? {
        var host = text
        var port: UInt16? = nil
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.startIndex...close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = UInt16(rest.dropFirst()), p > 0 else { return nil }
                port = p
            }
        } else if let colon = text.lastIndex(of: ":") {
            guard !text[..<colon].contains(":"), let p = UInt16(text[text.index(after: colon)...]), p > 0 else { return nil }
            host = text[..<colon]
            port = p
        }
        guard !host.isEmpty, host.utf8.count <= 255 else { return nil }
        return (String(host), port)
    }
}
