// The client side of the agentbox service inside a sandbox: the supervisor listens on AGENTBOX_API
// (`http://127.0.0.1:3129`, in the sandbox's network namespace) and records what `agentbox confess` and
// `agentbox mcp` send it. Plain HTTP/1.1 over a TCP socket: this binary is static (no libcurl, no NSS).
import AgentboxCore
import Glibc

/// How bad a confession is (the journal's `severity`).
enum ConfessionSeverity: String, CaseIterable {
    case info, warning, blocker

    /// "info, warning or blocker", for messages.
    static let choices = "info, warning or blocker"
}

/// A confession as the service takes it: checked here, bounded and recorded there.
struct Confession {
    let severity: ConfessionSeverity
    let category: String
    let summary: String
    let details: String?

    /// A confession from what the caller gave, or a usage error (exit 2) naming what is wrong.
    static func make(severity: String?, category: String?, summary: String?, details: String?) throws(AgentboxError) -> Confession {
        func usage(_ message: String, _ hint: String) -> AgentboxError {
            AgentboxError(stage: "agentbox confess", message, hint: hint, exitCode: 2)
        }
        guard let severity else { throw usage("a severity is required", "--severity \(ConfessionSeverity.choices)") }
        guard let level = ConfessionSeverity(rawValue: severity) else {
            throw usage("invalid severity '\(TerminalText.line(severity))'", "choose \(ConfessionSeverity.choices)")
        }
        guard let category, !isBlank(category) else {
            throw usage("a category is required", "a short word, e.g. environment, permissions, tests, network")
        }
        guard let summary, !isBlank(summary) else { throw usage("a summary is required", "one line saying what is wrong") }
        return Confession(severity: level, category: category, summary: summary,
                          details: details.flatMap { isBlank($0) ? nil : $0 })
    }

    static func isBlank(_ s: String) -> Bool { s.unicodeScalars.allSatisfy { $0.properties.isWhitespace } }

    /// The request body: `{"severity","category","summary"[,"details"]}`, details omitted when there are none.
    var json: JSON {
        var members: [(String, JSON)] = [("severity", .string(severity.rawValue)), ("category", .string(category)),
                                         ("summary", .string(summary))]
        if let details { members.append(("details", .string(details))) }
        return .object(members)
    }
}

/// Where the agentbox service listens: `http://HOST:PORT`, HOST an IPv4 literal or `localhost`.
struct ServiceEndpoint: Equatable {
    static let variable = "AGENTBOX_API"
    static let defaultURL = "http://127.0.0.1:3129"

    /// The URL as given (for messages).
    let url: String
    /// HOST:PORT as given (the Host header).
    let authority: String
    /// The IPv4 address, in network byte order.
    let address: UInt32
    let port: UInt16

    /// The endpoint named by `text`, or nil when it is not `http://HOST:PORT` (an optional final `/`).
    static func parse(_ text: String) -> ServiceEndpoint? {
        guard text.hasPrefix("http://"), text.utf8.count <= 64 else { return nil }
        var rest = text.dropFirst(7)
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":") else { return nil }
        let host = rest[..<colon], portText = rest[rest.index(after: colon)...]
        guard (1...5).contains(portText.utf8.count), portText.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
              let port = UInt16(portText), port > 0
        else { return nil }
        let address: UInt32
        if host == "localhost" {
            address = UInt32(0x7f00_0001).bigEndian
        } else if let a = parseIPv4(host) {
            address = a
        } else {
            return nil
        }
        return ServiceEndpoint(url: text, authority: String(rest), address: address, port: port)
    }

    /// A dotted quad (four decimal parts 0-255, no leading zeros), in network byte order.
    static func parseIPv4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for p in parts {
            guard (1...3).contains(p.utf8.count), p.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                  p.utf8.count == 1 || p.utf8.first != 0x30, let octet = UInt32(p), octet <= 255
            else { return nil }
            value = value << 8 | octet
        }
        return value.bigEndian
    }

    /// AGENTBOX_API, or the default when it is unset or empty; an error (exit 1) when it names anything else.
    static func fromEnvironment() throws(AgentboxError) -> ServiceEndpoint {
        let given = getenv(variable).map { String(cString: $0) } ?? ""
        let text = given.isEmpty ? defaultURL : given
        guard let endpoint = parse(text) else {
            throw AgentboxError(stage: "agentbox confess",
                                "\(variable) is '\(TerminalText.line(String(text.prefix(200))))', not an address of the agentbox service",
                                hint: "it must be http://HOST:PORT with HOST an IPv4 address or localhost (default \(defaultURL))",
                                exitCode: 1)
        }
        return endpoint
    }
}

/// One request to the agentbox service: connect, send, read the answer whole, all within `timeout`.
enum ServiceClient {
    static let confessPath = "/agentbox/v1/confess"
    static let timeout: Double = 30
    /// The most of an answer (head and body) read.
    static let answerLimit = 1 << 20
    /// The most of a server's error message shown.
    static let messageLimit = 2000

    struct Answer {
        var status: Int
        var body: [UInt8]
    }

    static func failure(_ message: String, hint: String = "") -> AgentboxError {
        AgentboxError(stage: "agentbox confess", message, hint: hint, exitCode: 1)
    }

    /// Sends `confession`; the sequence number the service gave it, or what failed (exit 1).
    static func confess(_ confession: Confession, to endpoint: ServiceEndpoint) throws(AgentboxError) -> UInt64 {
        let answer = try post(confessPath, body: confession.json.serializedBytes, to: endpoint)
        let json = try? JSON.parse(bytes: answer.body)
        if answer.status == 200 {
            guard let json, json["ok"]?.boolValue == true, let seq = json["seq"]?.uint64Value else {
                throw failure("the agentbox service at \(endpoint.url) answered 200 without a sequence number: \(excerpt(answer.body))",
                              hint: "is \(ServiceEndpoint.variable) the agentbox service?")
            }
            return seq
        }
        if let message = json?["error"]?["message"]?.stringValue {
            throw failure("the agentbox service refused the confession (HTTP \(answer.status)): \(shown(message))")
        }
        throw failure("the agentbox service answered HTTP \(answer.status): \(excerpt(answer.body))",
                      hint: "is \(ServiceEndpoint.variable) the agentbox service?")
    }

    /// Server text made safe for a terminal, on one line, bounded.
    static func shown(_ text: String) -> String {
        let line = TerminalText.line(text)
        return line.count <= messageLimit ? line : String(line.prefix(messageLimit)) + "..."
    }

    static func excerpt(_ body: [UInt8]) -> String {
        body.isEmpty ? "(no body)" : shown(String(decoding: body.prefix(messageLimit), as: UTF8.self))
    }

    /// POSTs `body` as JSON to `path` and returns the answer (the connection is closed after it).
    static func post(_ path: String, body: [UInt8], to endpoint: ServiceEndpoint) throws(AgentboxError) -> Answer {
        let deadline = Clock.monotonic() + timeout
        let socket = Descriptor(Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0))
        guard socket.isValid else { throw failure("socket: \(FileIO.errnoString())") }
        try connect(socket.raw, endpoint, deadline: deadline)
        var request = Array("POST \(path) HTTP/1.1\r\nHost: \(endpoint.authority)\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        request += body
        try send(socket.raw, request, endpoint, deadline: deadline)
        return try receive(socket.raw, endpoint, deadline: deadline)
    }

    /// Waits for `events` on `fd` until `deadline`; false when the time ran out.
    static func wait(_ fd: Int32, _ events: Int32, deadline: Double) throws(AgentboxError) -> Bool {
        while true {
            let left = deadline - Clock.monotonic()
            if left <= 0 { return false }
            var p = pollfd(fd: fd, events: Int16(events), revents: 0)
            let rc = poll(&p, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
            if rc < 0 {
                if errno == EINTR { continue }
                throw failure("poll: \(FileIO.errnoString())")
            }
            if rc > 0 { return true }
        }
    }

    static func timedOut(_ endpoint: ServiceEndpoint, _ stage: String) -> AgentboxError {
        failure("no answer from the agentbox service at \(endpoint.url) within \(Int(timeout)) s (\(stage))",
                hint: "the supervisor may be busy or stopped; try again later")
    }

    static func connect(_ fd: Int32, _ endpoint: ServiceEndpoint, deadline: Double) throws(AgentboxError) {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = endpoint.port.bigEndian
        sa.sin_addr.s_addr = endpoint.address
        let rc = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var code: Int32 = 0
        if rc < 0 {
            // Non-blocking: EINPROGRESS; an interrupted connect goes on in the background too.
            guard errno == EINPROGRESS || errno == EINTR else { throw unreachable(endpoint, errno) }
            guard try wait(fd, Int32(POLLOUT), deadline: deadline) else { throw timedOut(endpoint, "connect") }
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) < 0 { code = errno }
        }
        if code != 0 { throw unreachable(endpoint, code) }
    }

    static func unreachable(_ endpoint: ServiceEndpoint, _ code: Int32) -> AgentboxError {
        let why = code == ECONNREFUSED ? "connection refused" : FileIO.errnoString(code)
        return failure("the agentbox service at \(endpoint.url) is not reachable (\(why))",
                       hint: "is this inside an agentbox sandbox? The service is reachable only from one (\(ServiceEndpoint.variable) names it)")
    }

    static func send(_ fd: Int32, _ bytes: [UInt8], _ endpoint: ServiceEndpoint, deadline: Double) throws(AgentboxError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                guard try wait(fd, Int32(POLLOUT), deadline: deadline) else { throw timedOut(endpoint, "sending the request") }
                continue
            }
            throw failure("sending to the agentbox service at \(endpoint.url): \(FileIO.errnoString())")
        }
    }

    /// Reads until the server closes or the Content-Length is complete, at most `answerLimit` bytes.
    static func receive(_ fd: Int32, _ endpoint: ServiceEndpoint, deadline: Double) throws(AgentboxError) -> Answer {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if let head = try HTTPHead.parse(data), let length = head.contentLength, data.count >= head.size + length {
                return Answer(status: head.status, body: Array(data[head.size..<head.size + length]))
            }
            guard try wait(fd, Int32(POLLIN), deadline: deadline) else { throw timedOut(endpoint, "reading the answer") }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
                throw failure("reading the answer of the agentbox service at \(endpoint.url): \(FileIO.errnoString())")
            }
            if n == 0 { break }
            data += chunk[0..<n]
            if data.count > answerLimit {
                throw failure("the answer of the agentbox service at \(endpoint.url) is larger than 1 MiB",
                              hint: "is \(ServiceEndpoint.variable) the agentbox service?")
            }
        }
        guard let head = try HTTPHead.parse(data) else {
            throw failure("the agentbox service at \(endpoint.url) closed the connection before a complete answer",
                          hint: "is \(ServiceEndpoint.variable) the agentbox service?")
        }
        var body = Array(data[head.size...])
        if let length = head.contentLength {
            guard body.count >= length else {
                throw failure("the answer of the agentbox service at \(endpoint.url) ended early (\(body.count) of \(length) bytes)")
            }
            body = Array(body[..<length])
        } else if head.chunked {
            guard let decoded = HTTPHead.dechunk(body) else {
                throw failure("the answer of the agentbox service at \(endpoint.url) has a malformed chunked body")
            }
            body = decoded
        }
        return Answer(status: head.status, body: body)
    }
}

/// The status line and the headers that matter of an HTTP/1.x answer.
struct HTTPHead {
    var status: Int
    var contentLength: Int?
    var chunked = false
    /// Bytes of the head, blank line included.
    var size: Int

    /// The head at the start of `data`; nil while it is incomplete; an error when it is malformed.
    static func parse(_ data: [UInt8]) throws(AgentboxError) -> HTTPHead? {
        let crlf2: [UInt8] = [13, 10, 13, 10]
        guard data.count >= 4, let end = (0...(data.count - 4)).first(where: { data[$0..<$0 + 4].elementsEqual(crlf2) }) else {
            return nil
        }
        let lines = String(decoding: data[..<end], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        func malformed(_ what: String) -> AgentboxError {
            ServiceClient.failure("the answer of the agentbox service is not HTTP (\(what))",
                                  hint: "is \(ServiceEndpoint.variable) the agentbox service?")
        }
        let statusLine = lines[0].split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard statusLine.count >= 2, statusLine[0] == "HTTP/1.1" || statusLine[0] == "HTTP/1.0",
              statusLine[1].utf8.count == 3, let status = Int(statusLine[1]), status >= 100
        else { throw malformed("status line") }
        var head = HTTPHead(status: status, contentLength: nil, size: end + 4)
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { throw malformed("header line") }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingWhitespace()
            if name == "content-length" {
                guard head.contentLength == nil, value.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let n = Int(value) else {
                    throw malformed("Content-Length")
                }
                head.contentLength = n
            } else if name == "transfer-encoding" {
                head.chunked = value.lowercased() == "chunked"
                guard head.chunked else { throw malformed("Transfer-Encoding \(TerminalText.line(String(value.prefix(40))))") }
            }
        }
        if head.chunked { head.contentLength = nil }
        return head
    }

    /// A chunked body decoded (RFC 9112 7.1; extensions and trailers ignored), or nil when malformed.
    static func dechunk(_ body: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        var i = 0
        func line() -> Substring? {
            guard let end = (i..<max(i, body.count - 1)).first(where: { body[$0] == 13 && body[$0 + 1] == 10 }) else { return nil }
            defer { i = end + 2 }
            return Substring(String(decoding: body[i..<end], as: UTF8.self))
        }
        while true {
            guard let sizeLine = line(), let size = Int(sizeLine.split(separator: ";").first?.trimmingWhitespace() ?? "", radix: 16),
                  size >= 0
            else { return nil }
            if size == 0 { return out }
            guard size <= body.count - i - 2, body[i + size] == 13, body[i + size + 1] == 10 else { return nil }
            out += body[i..<i + size]
            i += size + 2
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    func trimmingWhitespace() -> String {
        let scalars = Array(unicodeScalars)
        var start = 0, end = scalars.count
        while start < end, scalars[start] == " " || scalars[start] == "\t" { start += 1 }
        while end > start, scalars[end - 1] == " " || scalars[end - 1] == "\t" { end -= 1 }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars[start..<end])
        return String(out)
    }
}
