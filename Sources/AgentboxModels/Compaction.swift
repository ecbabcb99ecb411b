import AgentboxCore

/// Keeps a long run's conversation inside the model's context window (docs/agent.md, "Long runs").
///
/// The rule, applied before every model call: when the conversation's text (messages, tool arguments,
/// tool results) is larger than `limit` bytes, the oldest tool results are shortened one by one, each to
/// its first `keepHead` and last `keepTail` bytes with a marker, until the text is at most `target`
/// bytes. The results of the latest `protectTurns` assistant turns are never touched, nor are the task,
/// the system prompt or the model's own turns. Deterministic: the same conversation gives the same
/// result, so a resumed run rebuilds the same context from the journal.
public struct Compactor: Sendable {
    public var limit: Int
    public var target: Int
    public var keepHead = 1024
    public var keepTail = 512
    public var protectTurns = 2

    public init(limit: Int = 400_000, target: Int? = nil) {
        self.limit = limit
        self.target = target ?? limit * 3 / 4
    }

    public static func size(_ c: Conversation) -> Int {
        c.system.utf8.count + c.messages.reduce(0) { $0 + size($1) }
    }

    static func size(_ m: Message) -> Int {
        switch m {
        case let .user(text): return text.utf8.count
        case let .assistant(turn): return turn.text.utf8.count + turn.toolCalls.reduce(0) { $0 + $1.arguments.utf8.count + $1.name.utf8.count }
        case let .toolResults(results): return results.reduce(0) { $0 + $1.content.utf8.count }
        }
    }

    /// Shortens old tool results when the conversation is over the limit (or `force`). Returns the ids
    /// of the results it shortened, oldest first (empty: nothing to do or nothing left to shorten).
    public func compact(_ c: inout Conversation, force: Bool = false) -> [String] {
        var total = Compactor.size(c)
        guard force || total > limit else { return [] }
        // Results after the last `protectTurns` assistant turns stay whole.
        var assistantSeen = 0
        var protectFrom = c.messages.count
        for i in c.messages.indices.reversed() {
            if case .assistant = c.messages[i] {
                assistantSeen += 1
                if assistantSeen == protectTurns { protectFrom = i; break }
            }
        }
        if assistantSeen < protectTurns { protectFrom = 0 }
        var elided: [String] = []
        let floor = keepHead + keepTail + 200
        for i in 0..<protectFrom where total > target {
            guard case var .toolResults(results) = c.messages[i] else { continue }
            var changed = false
            for j in results.indices where total > target && results[j].content.utf8.count > floor {
                let before = results[j].content.utf8.count
                let shortened = shorten(results[j].content)
                total -= before - shortened.utf8.count
                results[j].content = shortened
                elided.append(results[j].callID)
                changed = true
            }
            if changed { c.messages[i] = .toolResults(results) }
        }
        return elided
    }

    /// One result as compaction shortens it: its first `keepHead` and last `keepTail` bytes and a marker.
    public func shorten(_ content: String) -> String {
        let bytes = Array(content.utf8)
        guard bytes.count > keepHead + keepTail else { return content }
        return ToolText.join(head: Array(bytes[..<keepHead]), tail: Array(bytes[(bytes.count - keepTail)...]),
                             cut: bytes.count - keepHead - keepTail) {
            "[... \($0) bytes of this old result elided by agentbox to keep the conversation within the model's context; run the tool again if you need them ...]"
        }
    }
}

