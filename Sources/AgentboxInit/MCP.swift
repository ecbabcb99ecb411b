// `agentbox mcp`: an MCP server (modelcontextprotocol.io, stdio transport) with one tool, confess.
// JSON-RPC 2.0, one message per line on stdin, one answer per line on stdout; requests are answered in
// order, one at a time (a confess call waits for the service, at most ServiceClient.timeout).
import AgentboxCore
import Glibc

/// The lines of a descriptor, each at most `limit` bytes: a longer line is reported as `.tooLong` and
/// skipped as it arrives, never held whole.
struct LineReader {
    enum Line {
        case text([UInt8])
        case tooLong
        case end
    }

    let fd: Int32
    let limit: Int
    var chunk = [UInt8](repeating: 0, count: 64 << 10)
    var start = 0, end = 0
    /// The start of the current line (at most `limit` bytes).
    var partial: [UInt8] = []
    /// The current line is past `limit`: its bytes are dropped until its newline.
    var overlong = false
    var finished = false

    init(fd: Int32, limit: Int) {
        self.fd = fd
        self.limit = limit
    }

    mutating func next() -> Line {
        while true {
            if let newline = chunk[start..<end].firstIndex(of: 0x0A) {
                let piece = chunk[start..<newline]
                start = newline + 1
                return take(piece)
            }
            if !overlong {
                partial += chunk[start..<end]
                if partial.count > limit {
                    overlong = true
                    partial = []
                }
            }
            start = 0
            end = 0
            if finished { return .end }
            var n: Int
            repeat { n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } } while n < 0 && errno == EINTR
            if n <= 0 {
                // End of input (or a read error, which ends it too): a last line without its newline counts.
                finished = true
                if overlong || !partial.isEmpty { return take([]) }
                return .end
            }
            end = n
        }
    }

    /// The current line, completed with `piece`.
    mutating func take(_ piece: ArraySlice<UInt8>) -> Line {
        defer { partial = []; overlong = false }
        if overlong || partial.count + piece.count > limit { return .tooLong }
        return .text(partial + piece)
    }
}

struct MCPServer {
    static let protocolVersions = ["2024-11-05", "2025-03-26", "2025-06-18"]
    static let latestVersion = "2025-06-18"
    static let lineLimit = 1 << 20

    /// JSON-RPC 2.0 error codes.
    enum ErrorCode: Int {
        case parseError = -32700
        case invalidRequest = -32600
        case methodNotFound = -32601
        case invalidParams = -32602
    }

    static let toolDescription = "Report a problem to the people who operate this machine (an agentbox sandbox): something blocks you, the environment is broken, missing something or wrong, a permission or limit stops you, the task is impossible or unsafe as stated, or you did something they should know about. Confess instead of working around a problem silently. It is recorded for the operators; it does not end your work."

    static let confessTool: JSON = [
        "name": "confess",
        "description": .string(toolDescription),
        "inputSchema": [
            "type": "object",
            "properties": [
                "severity": ["type": "string", "enum": ["info", "warning", "blocker"],
                             "description": "How bad it is: info (worth knowing), warning (something is wrong), blocker (you cannot go on)."],
                "category": ["type": "string", "description": "A short category, e.g. environment, permissions, tests, network."],
                "summary": ["type": "string", "description": "One line saying what is wrong."],
                "details": ["type": "string", "description": "More detail: what you tried, what you saw (optional)."],
            ],
            "required": ["severity", "category", "summary"],
            "additionalProperties": false,
        ],
    ]

    /// Serves stdin until its end: exit status 0, or 1 when stdout failed.
    func run() -> Int32 {
        var reader = LineReader(fd: 0, limit: Self.lineLimit)
        while true {
            let answer: JSON?
            switch reader.next() {
            case .end: return 0
            case .tooLong: answer = Self.error(id: .null, .invalidRequest, "message longer than 1 MiB")
            case let .text(bytes):
                var line = bytes[...]
                if line.last == 0x0D { line = line.dropLast() }
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
                answer = handle(line: Array(line))
            }
            if let answer, !writeAll(1, answer.serializedBytes + [0x0A]) { return 1 }
        }
    }

    /// The answer to one line, or nil (a notification, or a response to a request this server never sent).
    func handle(line: [UInt8]) -> JSON? {
        guard let message = try? JSON.parse(bytes: line) else { return Self.error(id: .null, .parseError, "parse error: not JSON") }
        guard message.objectValue != nil else {
            return Self.error(id: .null, .invalidRequest, message.arrayValue != nil ? "batches are not supported" : "not a JSON-RPC message")
        }
        let id = message["id"]
        let validId: JSON? = switch id {
        case .string?, .number?, .uint?: id
        default: nil
        }
        guard message["jsonrpc"] == "2.0" else { return Self.error(id: validId ?? .null, .invalidRequest, "jsonrpc must be \"2.0\"") }
        guard let method = message["method"]?.stringValue else {
            if message["method"] == nil && (message["result"] != nil || message["error"] != nil) { return nil }
            return Self.error(id: validId ?? .null, .invalidRequest, "method must be a string")
        }
        guard id != nil else { return nil }  // a notification: never answered
        guard let validId else { return Self.error(id: .null, .invalidRequest, "id must be a string or an integer") }
        let params = message["params"]
        switch method {
        case "initialize":
            let asked = params?["protocolVersion"]?.stringValue ?? ""
            let version = Self.protocolVersions.contains(asked) ? asked : Self.latestVersion
            return Self.result(id: validId, [
                "protocolVersion": .string(version),
                "capabilities": ["tools": [:]],
                "serverInfo": ["name": "agentbox", "version": .string(AgentboxVersion.string)],
                "instructions": "Use the confess tool to tell the operators of this machine about a problem.",
            ])
        case "ping":
            return Self.result(id: validId, [:])
        case "tools/list":
            return Self.result(id: validId, ["tools": [Self.confessTool]])
        case "tools/call":
            guard let name = params?["name"]?.stringValue else {
                return Self.error(id: validId, .invalidParams, "tools/call needs params.name")
            }
            guard name == "confess" else {
                return Self.error(id: validId, .invalidParams, "unknown tool '\(TerminalText.line(String(name.prefix(200))))' (the tool is confess)")
            }
            return Self.result(id: validId, Self.callConfess(params?["arguments"]))
        default:
            return Self.error(id: validId, .methodNotFound, "method not found: \(TerminalText.line(String(method.prefix(200))))")
        }
    }

    /// A tools/call result: the confession recorded, or why not (`isError`: the model reads it).
    static func callConfess(_ arguments: JSON?) -> JSON {
        func outcome(_ text: String, isError: Bool) -> JSON {
            ["content": [["type": "text", "text": .string(text)]], "isError": .bool(isError)]
        }
        let members = arguments?.objectValue ?? []
        if let arguments, arguments.objectValue == nil {
            return outcome("arguments must be an object, not \(arguments.typeName)", isError: true)
        }
        let known = ["severity", "category", "summary", "details"]
        for (key, value) in members {
            guard known.contains(key) else {
                return outcome("unknown argument '\(TerminalText.line(String(key.prefix(100))))': the arguments are severity, category, summary and details", isError: true)
            }
            guard value.stringValue != nil else { return outcome("\(key) must be a string, not \(value.typeName)", isError: true) }
        }
        do {
            let confession = try Confession.make(severity: arguments?["severity"]?.stringValue, category: arguments?["category"]?.stringValue,
                                                 summary: arguments?["summary"]?.stringValue, details: arguments?["details"]?.stringValue)
            let seq = try ServiceClient.confess(confession, to: try ServiceEndpoint.fromEnvironment())
            return outcome("confession recorded (seq \(seq))", isError: false)
        } catch {
            return outcome(error.message + (error.hint.isEmpty ? "" : " (\(error.hint))"), isError: true)
        }
    }

    static func result(id: JSON, _ result: JSON) -> JSON {
        ["jsonrpc": "2.0", "id": id, "result": result]
    }

    static func error(id: JSON, _ code: ErrorCode, _ message: String) -> JSON {
        ["jsonrpc": "2.0", "id": id, "error": ["code": .number(Double(code.rawValue)), "message": .string(message)]]
    }
}
