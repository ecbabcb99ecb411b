/// The built-in tools of `agentbox run` (docs/agent.md, "Tools"), by the name the model calls them.
/// The first four run inside the sandbox; `confess` and `finish` are answered by the supervisor.
public enum BuiltinTool: String, CaseIterable, Sendable {
    case shell
    case readFile = "read_file"
    case writeFile = "write_file"
    case editFile = "edit_file"
    case confess
    case finish

    /// Whether the loop inside the sandbox runs it (the others never leave the supervisor).
    public var runsInSandbox: Bool { self != .confess && self != .finish }
}

/// One message of the agent protocol between the loop inside the sandbox and the supervisor
/// (docs/agent.md, "The agent protocol"). Both ends encode and decode through this type; the
/// supervisor decodes what the sandbox sends strictly, because the sandbox is not trusted.
public enum AgentMessage: Equatable, Sendable {
    // From the sandbox.
    /// The loop is ready for the next turn.
    case next
    /// The loop is about to run call `id` of the current turn.
    case toolStart(id: String)
    /// Call `id` ran in the sandbox.
    case toolDone(ToolReport)

    // From the supervisor.
    /// The model's tool calls, in order (empty: no call this turn).
    case turn([TurnCall])
    /// Run the current call with these arguments.
    case go(args: JSON)
    /// The current call was answered by the supervisor (skipped, refused, confess, finish).
    case done
    /// The run is over: the loop returns.
    case end

    public struct TurnCall: Equatable, Sendable {
        public var id: String
        public var name: String
        public init(id: String, name: String) {
            self.id = id
            self.name = name
        }
    }

    /// What a tool run in the sandbox reports.
    public struct ToolReport: Equatable, Sendable {
        public var id: String
        public var content: String
        public var isError: Bool
        /// Facts about the run, each a number or a boolean: exit_code, timed_out, truncated,
        /// output_bytes, duration_ms (journaled as they are).
        public var facts: [(String, JSON)]
        public static let factKeys = ["exit_code", "timed_out", "truncated", "output_bytes", "duration_ms"]

        public init(id: String, content: String, isError: Bool, facts: [(String, JSON)] = []) {
            self.id = id
            self.content = content
            self.isError = isError
            self.facts = facts
        }

        public static func == (a: ToolReport, b: ToolReport) -> Bool {
            a.id == b.id && a.content == b.content && a.isError == b.isError && a.facts.elementsEqual(b.facts) { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    public var json: JSON {
        switch self {
        case .next: return ["t": "next"]
        case let .toolStart(id): return ["t": "tool_start", "id": .string(id)]
        case let .toolDone(r):
            return .object([("t", "tool_done"), ("id", .string(r.id)), ("content", .string(r.content)), ("is_error", .bool(r.isError))] + r.facts)
        case let .turn(calls):
            return ["t": "turn", "calls": .array(calls.map { .object([("id", .string($0.id)), ("name", .string($0.name))]) })]
        case let .go(args): return ["t": "go", "args": args]
        case .done: return ["t": "done"]
        case .end: return ["t": "end"]
        }
    }

    /// Decodes a message; the error says what is wrong with it in words.
    public init(json m: JSON) throws(WireError) {
        func bad(_ what: String) -> WireError { WireError(description: what) }
        switch m["t"]?.stringValue {
        case "next": self = .next
        case "tool_start":
            guard let id = m["id"]?.stringValue else { throw bad("a tool_start without an id") }
            self = .toolStart(id: id)
        case "tool_done":
            guard let id = m["id"]?.stringValue else { throw bad("a tool result without an id") }
            guard let content = m["content"]?.stringValue, let isError = m["is_error"]?.boolValue else {
                throw bad("a tool result without a string content and a boolean is_error")
            }
            var facts: [(String, JSON)] = []
            for key in ToolReport.factKeys {
                guard let v = m[key] else { continue }
                guard v.numberValue != nil || v.boolValue != nil else { throw bad("a tool result whose \(key) is \(v.typeName)") }
                facts.append((key, v))
            }
            self = .toolDone(ToolReport(id: id, content: content, isError: isError, facts: facts))
        case "turn":
            guard let list = m["calls"]?.arrayValue else { throw bad("a turn without calls") }
            var calls: [TurnCall] = []
            for c in list {
                guard let id = c["id"]?.stringValue, let name = c["name"]?.stringValue else { throw bad("a turn call without an id and a name") }
                calls.append(TurnCall(id: id, name: name))
            }
            self = .turn(calls)
        case "go": self = .go(args: m["args"] ?? .object([]))
        case "done": self = .done
        case "end": self = .end
        default: throw bad("an unknown message \(m["t"]?.serialized ?? "without a type")")
        }
    }

    /// The encoded message (`JSON.serializedBytes`), what AgentWire splits into packets.
    public var encoded: [UInt8] { json.serializedBytes }
}
