import AgentboxCore
import AgentboxJournal
import AgentboxSandbox

/// Writes down what a sandbox's services report (docs/network.md, "What is recorded"): each proxy
/// decision as `net.connect`, each end as `net.closed`, a denied host also as a confession by the
/// supervisor (once per host and port per run), and confessions filed from inside (`agentbox confess`,
/// `agentbox mcp`) as the agent's, in the journal and the node's feed. Without a journal (an `exec`
/// without --name) confessions go to the node's feed under the sandbox's id, and denials are warnings.
/// Runs on the supervision thread.
final class ServiceRecorder {
    let store: RunStore
    let run: String
    let name: String?
    let writer: JournalWriter?
    let warn: (String) -> Void
    var deniedHosts = Set<String>()
    /// At most this many denied hosts become confessions; later ones are only records.
    static let maxDeniedConfessions = 100
    /// `net.connect`/`net.closed` records a run writes; past it connections are counted (a warning
    /// says so once; an exec's `usage` record has the count) instead of growing the journal without bound.
    static let maxNetRecords = 20_000
    var netRecords = 0
    private(set) var netUnrecorded = 0

    init(store: RunStore, run: String, name: String?, writer: JournalWriter?, warn: @escaping (String) -> Void) {
        self.store = store
        self.run = run
        self.name = name
        self.writer = writer
        self.warn = warn
    }

    func record(_ events: [ServiceEvent]) throws(AgentboxError) {
        for event in events {
            switch event {
            case let .netConnect(c):
                if !c.allowed { try denied(c) }
                guard try admitNetRecord() else { continue }
                var data: [(String, JSON)] = [("id", .number(Double(c.id))), ("host", .string(c.host)), ("port", .number(Double(c.port))),
                                              ("method", .string(c.method)), ("decision", .string(c.allowed ? "allowed" : "denied"))]
                data.append((c.allowed ? "rule" : "reason", .string(c.reason)))
                if let a = c.address { data.append(("address", .string(a))) }
                if let e = c.error { data.append(("error", .string(e))) }
                _ = try writer?.append(.netConnect, .object(data), critical: false)
            case let .netClosed(id, sent, received, seconds):
                guard try admitNetRecord() else { continue }
                _ = try writer?.append(.netClosed, .object([
                    ("id", .number(Double(id))), ("sent", .number(Double(sent))), ("received", .number(Double(received))),
                    ("seconds", .number((seconds * 1000).rounded() / 1000)),
                ]), critical: false)
            case let .confess(request, reply):
                do throws(AgentboxError) {
                    let seq = try confess(severity: request.severity, category: request.category, summary: request.summary,
                                          details: request.details, by: "agent")
                    reply.answer(.success(.object([("ok", true), ("seq", .number(Double(seq)))])))
                } catch {
                    reply.answer(.failure(error))
                    throw error
                }
            }
        }
    }

    /// Whether one more net record may be written (false, counted, past the cap).
    func admitNetRecord() throws(AgentboxError) -> Bool {
        guard netRecords < ServiceRecorder.maxNetRecords else {
            netUnrecorded += 1
            return false
        }
        netRecords += 1
        if netRecords == ServiceRecorder.maxNetRecords {
            let message = "\(ServiceRecorder.maxNetRecords) network records written: later connections are counted, not recorded"
            warn(message)
            _ = try writer?.append(.warning, .object([("message", .string(message))]), critical: false)
        }
        return true
    }

    /// The operator hears of a denied host once per host and port, without reading logs.
    func denied(_ c: NetConnection) throws(AgentboxError) {
        let key = "\(c.host.lowercased()):\(c.port)"
        guard deniedHosts.count < ServiceRecorder.maxDeniedConfessions, deniedHosts.insert(key).inserted else { return }
        let summary = "the agent tried to reach \(key) and was denied: \(c.reason)"
        if writer == nil { warn(TerminalText.line(summary)) }
        _ = try confess(severity: "warning", category: "network", summary: summary, details: nil, by: "supervisor")
    }

    /// A confession in the journal (critical) and the node's feed; its sequence number (0 without a journal).
    func confess(severity: String, category: String, summary: String, details: String?, by: String) throws(AgentboxError) -> UInt64 {
        var data: [(String, JSON)] = [("severity", .string(severity)), ("category", .string(category)), ("summary", .string(summary))]
        if let details { data.append(("details", .string(details))) }
        data.append(("by", .string(by)))
        let seq = try writer?.append(.confession, .object(data), critical: true) ?? 0
        if writer == nil && by == "agent" {
            warn("confession from the sandbox (\(severity)/\(TerminalText.line(category))): \(TerminalText.line(summary))")
        }
        do {
            try ConfessionFeed.append(store: store, run: run, name: name, seq: seq, severity: severity, category: category, summary: summary)
        } catch {
            // The journal has it; the feed is the node's mirror.
            warn("\(error.stage): \(error.message)")
        }
        return seq
    }
}

/// The delegate of an `exec` without a journal: its services' confessions go to the node's feed
/// under the sandbox's id, and denied connections are said on stderr.
public final class UnjournaledServices: SandboxDelegate {
    let recorder: ServiceRecorder

    public init(sandbox id: String, warn: @escaping (String) -> Void) {
        recorder = ServiceRecorder(store: RunStore(), run: id, name: nil, writer: nil, warn: warn)
    }

    public func sandboxServiceEvents(_ events: [ServiceEvent]) throws(AgentboxError) { try recorder.record(events) }
}
