import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox

/// What an agent session needs from the world: the journal, the loop in the sandbox, the model
/// gateway, the cgroup, the node's confession feed, the progress display. `AgentRun` is the real one;
/// tests give a recording one, so the protocol logic runs without a kernel.
public protocol AgentSessionHost: AnyObject {
    /// Appends a journal record; returns its seq. Critical records are on disk when it returns.
    @discardableResult
    func journal(_ type: RecordType, _ data: JSON, critical: Bool) throws(AgentboxError) -> UInt64
    /// Sends a message to the loop in the sandbox (a closed channel is noticed by the supervision loop).
    func send(encoded: [UInt8])
    /// Whether a model call is in flight.
    var modelBusy: Bool { get }
    /// Starts a model call off the supervision thread; its outcome comes back through `modelDone`.
    func startModelCall(_ conversation: Conversation, tools: [ToolDefinition]) throws(AgentboxError)
    func cancelModelCall()
    /// The sandbox's cgroup counters now, nil without a cgroup.
    func cgroupReport() -> CgroupReport?
    /// Whether the journal's filesystem is below its floor once `reserve` more bytes are written.
    func journalDiskLow(reserve: UInt64) -> Bool
    /// Mirrors a confession (journal seq `seq`) to the node's feed.
    func feedConfession(seq: UInt64, severity: String, category: String, summary: String) throws(AgentboxError)
    /// A progress event for the display.
    func progress(_ event: AgentEvent)
    /// A warning for the operator (stderr).
    func warn(_ message: String)
    /// Every call of step `step` has its result (0: before the first model call): the workspace's
    /// checkpoint is taken here, before the next model call.
    func stepEnded(_ step: Int) throws(AgentboxError)
    /// Throws when this supervisor may no longer act for the run (another one took it over): checked
    /// right before a tool runs, after its `tool.call` is on disk.
    func confirmOwnership() throws(AgentboxError)
}

extension AgentSessionHost {
    func send(_ message: AgentMessage) { send(encoded: message.encoded) }
    public func stepEnded(_ step: Int) throws(AgentboxError) {}
    public func confirmOwnership() throws(AgentboxError) {}
}

/// The finished model call the gateway hands back.
public struct ModelCallOutcome: Sendable {
    public var result: Result<AssistantTurn, ModelError>
    public var attempts: [Attempt]
    public var request: (bytes: Int, crc32c: UInt32)?
    public init(result: Result<AssistantTurn, ModelError>, attempts: [Attempt], request: (bytes: Int, crc32c: UInt32)?) {
        self.result = result
        self.attempts = attempts
        self.request = request
    }
}

/// The supervisor's side of the agent protocol as a state machine (docs/agent.md): turns, matching
/// tool results to calls, the stuck-loop rule, reminders, budgets, bounds on calls, argument checks,
/// redaction of the key, confessions, and how the run ends. Events come in (`received`, `modelDone`,
/// `stop`, `heartbeat`); effects go out through the host. One thread (the supervision loop's).
public final class AgentSession {
    public static let stuckWarnAt = 3
    public static let stuckStopAt = 5
    public static let maxReminders = 2
    /// Tool calls of one turn that are run; the model gets an error result for each one past it.
    public static let maxCallsPerTurn = 32
    /// Bytes kept of an agent's confession fields (the rest is cut with a note).
    public static let confessionCaps = (category: 64, summary: 1024, details: 16 << 10)
    /// Free space the journal's filesystem must keep (DiskFloor) plus what one step may write: below it
    /// the run stops rather than fill the host's disk.
    public static let stepReserve: UInt64 = 64 << 20

    public enum Ending: Equatable, Sendable {
        case finished(status: String, summary: String)
        case budget(String)
        /// The run gave up without the agent finishing (stuck loop, no tool calls after reminders, a
        /// refusal, the model failing, a low disk): state `aborted`, exit 1.
        case aborted(String)
        /// A stop signal (`agentbox stop`, SIGTERM, SIGINT, SIGHUP): state `stopped`, exit 75, resumable.
        case stopped(signal: Int32)
    }

    unowned let host: AgentSessionHost
    public let runID: String
    let task: AgentTask
    let policy: SandboxPolicy
    /// Seconds a stopped run's current tool may take before the sandbox is killed.
    let grace: Double
    public private(set) var conversation: Conversation
    public private(set) var accounting: Accounting
    public private(set) var ending: Ending? = nil
    var turn: AssistantTurn? = nil
    var nextCall = 0
    var results: [ToolResult] = []
    var running: (id: String, name: String, started: Double)? = nil
    var reminders = 0
    var lastKey = ""
    var repeats = 0
    var lastReport = CgroupReport()
    var requestStarted = 0.0
    let started = Clock.monotonic()
    /// Long runs: old tool results are shortened before a request once the conversation passes this
    /// many bytes (`AGENTBOX_CONTEXT_BYTES`, default 400 kB, about 100k tokens).
    public var compactor = Compactor(limit: ModelSpec.env("AGENTBOX_CONTEXT_BYTES").flatMap { Int($0) }.map { max(10_000, $0) } ?? 400_000)
    var retriedContext = false
    lazy var keyRedactor: SecretRedactor? = task.model.apiKey.flatMap { SecretRedactor(secret: $0) }

    public init(host: AgentSessionHost, runID: String, task: AgentTask, policy: SandboxPolicy, grace: Double, system: String) {
        self.host = host
        self.runID = runID
        self.task = task
        self.policy = policy
        self.grace = grace
        conversation = Conversation(system: system, messages: [.user(task.task)])
        accounting = Accounting(provider: task.model.provider.rawValue, model: task.model.model, prices: task.prices)
    }

    /// Continues where a journal left the run (`resume`): its conversation through the last model turn,
    /// that turn with one result per call (the recorded ones, then those the resume answered), the
    /// budgets' totals and the reminders given. The loop's first `next` then closes the turn as usual.
    public func restore(_ tail: JournalConversation.Tail, results: [ToolResult]) {
        conversation = tail.conversation
        for usage in tail.usages { accounting.record(usage) }
        for _ in 0..<tail.toolCalls { accounting.recordToolCall() }
        turn = tail.lastTurn
        self.results = tail.lastTurn == nil ? [] : results
        nextCall = self.results.count
        reminders = tail.reminders
        (lastKey, repeats) = (tail.callKey, tail.repeats)
    }

    /// Long work shows progress: a line every 30 s while a tool runs or the model is thinking.
    static let heartbeatInterval = 30.0
    var lastHeartbeat = 0.0

    public func heartbeat() {
        let now = Clock.monotonic()
        let since: Double
        let what: String
        if let running { since = running.started; what = "\(running.name) still running" } else if host.modelBusy {
            since = requestStarted; what = "waiting for the model"
        } else { return }
        guard now - since >= AgentSession.heartbeatInterval, now - lastHeartbeat >= AgentSession.heartbeatInterval else { return }
        lastHeartbeat = now
        host.progress(.note("\(what) (\(Int(now - since)) s)"))
    }

    var budgetJSON: JSON {
        let b = task.budget
        return .object([("max_steps", b.maxSteps.map { .number(Double($0)) } ?? .null),
                        ("max_tool_calls", b.maxToolCalls.map { .number(Double($0)) } ?? .null),
                        ("max_tokens", b.maxTokens.map { .number(Double($0)) } ?? .null),
                        ("max_cost", b.maxCost.map { .number($0) } ?? .null),
                        ("timeout_s", policy.limits.timeout.map { .number($0) } ?? .null)])
    }

    public func stop(signal: Int32) {
        if case .stopped? = ending { return }
        ending = .stopped(signal: signal)
        _ = try? host.journal(.warning, .object([("message", .string("signal \(signal): stopping the run (the current tool may finish within \(Int(grace)) s)"))]),
                               critical: false)
        host.progress(.note("stopping: the current tool may finish within \(Int(grace)) s"))
        host.cancelModelCall()
    }

    func violation(_ what: String) -> AgentboxError {
        AgentboxError(stage: "agent protocol", "the sandbox sent \(what)", hint: "agentbox-init and agentbox must come from the same build")
    }

    /// A message from the loop in the sandbox.
    public func received(_ message: AgentMessage) throws(AgentboxError) {
        switch message {
        case .next: try next()
        case let .toolStart(id): try toolStart(id)
        case let .toolDone(report):
            guard let running, running.id == report.id else { throw violation("a result for a tool call that is not running") }
            var result = ToolResult(callID: report.id, content: report.content, isError: report.isError)
            self.running = nil
            try checkLimits(&result)
            try redactKey(&result, tool: running.name)
            try complete(result, name: running.name, extra: report.facts, seconds: Clock.monotonic() - running.started)
        case .turn, .go, .done, .end:
            throw violation("a message only the supervisor sends (\(message.json["t"]?.stringValue ?? "?"))")
        }
    }

    /// The loop asks for the next turn: close the previous one, check the budget, call the model.
    func next() throws(AgentboxError) {
        guard running == nil, !host.modelBusy else { throw violation("\"next\" while a call is in progress") }
        if let turn {
            guard nextCall == turn.toolCalls.count else { throw violation("\"next\" before every tool call of the turn was answered") }
            if !results.isEmpty { conversation.messages.append(.toolResults(results)) }
            if turn.toolCalls.isEmpty && ending == nil {
                reminders += 1
                if reminders > AgentSession.maxReminders {
                    ending = .aborted("the model stopped calling tools without calling finish (\(AgentSession.maxReminders) reminders)")
                } else {
                    conversation.messages.append(.user(AgentPrompt.reminder))
                    try host.journal(.reminder, .object([("text", .string(AgentPrompt.reminder)), ("count", .number(Double(reminders)))]),
                                      critical: false)
                }
            }
            self.turn = nil
            results = []
            nextCall = 0
        }
        try host.stepEnded(accounting.steps)
        if ending == nil, let exceeded = try accounting.check(task.budget) {
            try host.journal(.budget, .object([("kind", .string(budgetKind(exceeded))), ("detail", .string(exceeded.description))]),
                              critical: true)
            try confess(severity: "warning", category: "budget", summary: exceeded.description + ": the run was stopped", details: nil,
                        by: "supervisor")
            ending = .budget(exceeded.description)
        }
        if ending == nil, host.journalDiskLow(reserve: AgentSession.stepReserve) {
            let what = "the journal's disk is almost full: the run was stopped before the next model call"
            try host.journal(.limit, .object([("kind", "journal_disk"), ("detail", .string(what))]), critical: true)
            try confess(severity: "blocker", category: "limits", summary: what, details: nil, by: "supervisor")
            ending = .aborted(what)
        }
        if ending != nil {
            host.send(.end)
            return
        }
        try compact(compactor, reason: "size")
        retriedContext = false
        try request()
    }

    /// Applies a compaction rule and journals what it shortened; false when nothing could be.
    @discardableResult
    func compact(_ rule: Compactor, force: Bool = false, reason: String) throws(AgentboxError) -> Bool {
        let before = Compactor.size(conversation)
        let elided = rule.compact(&conversation, force: force)
        guard !elided.isEmpty else { return false }
        try host.journal(.contextCompacted, .object([
            ("reason", .string(reason)), ("bytes_before", .number(Double(before))),
            ("bytes_after", .number(Double(Compactor.size(conversation)))), ("limit", .number(Double(rule.limit))),
            ("target", .number(Double(rule.target))), ("elided", .array(elided.map { .string($0) })),
        ]), critical: false)
        host.progress(.note("conversation compacted (\(reason)): \(elided.count) old tool result(s) shortened, \(before / 1000) kB -> \(Compactor.size(conversation) / 1000) kB"))
        return true
    }

    func request() throws(AgentboxError) {
        requestStarted = Clock.monotonic()
        try host.journal(.modelRequest, .object([("step", .number(Double(accounting.steps + 1))),
                                                     ("messages", .number(Double(conversation.messages.count)))]), critical: false)
        try host.startModelCall(conversation, tools: BuiltinTools.definitions)
    }

    func budgetKind(_ e: Accounting.Exceeded) -> String {
        switch e {
        case .steps: return "steps"
        case .toolCalls: return "tool_calls"
        case .tokens: return "tokens"
        case .cost: return "cost"
        case .wallTime: return "time"
        }
    }

    /// The gateway's call finished.
    public func modelDone(_ outcome: ModelCallOutcome) throws(AgentboxError) {
        let attempts = outcome.attempts
        let requestDigest: JSON = outcome.request.map { .object([("bytes", .number(Double($0.bytes))), ("crc32c", .string(CRC32C.hex($0.crc32c)))]) } ?? .null
        let seconds = Clock.monotonic() - requestStarted
        let attemptsJSON: JSON = .array(attempts.map { a in
            .object([("attempt", .number(Double(a.number))), ("status", a.status.map { .number(Double($0)) } ?? .null),
                     ("error", a.error.map { .string($0.description) } ?? .null), ("wait_s", .number(a.waitBefore)),
                     ("seconds", .number((a.seconds * 1000).rounded() / 1000))])
        })
        for a in attempts where a.error != nil {
            try host.journal(.modelAttempt, .object([("attempt", .number(Double(a.number))),
                                                        ("status", a.status.map { .number(Double($0)) } ?? .null),
                                                        ("error", .string(a.error!.description)), ("kind", .string(a.error!.kind.rawValue))]),
                              critical: false)
        }
        switch outcome.result {
        case var .success(turn):
            // Every call needs a unique, non-empty id (Anthropic requires it; results are matched by it).
            var seen = Set<String>()
            for i in turn.toolCalls.indices where turn.toolCalls[i].id.isEmpty || !seen.insert(turn.toolCalls[i].id).inserted {
                turn.toolCalls[i].id = "call_\(accounting.steps + 1)_\(i)"
                seen.insert(turn.toolCalls[i].id)
            }
            accounting.record(turn.usage)
            try host.journal(.modelResponse, .object([
                ("step", .number(Double(accounting.steps))),
                ("turn", AgentSession.turnJSON(turn)),
                ("attempts", attemptsJSON),
                ("request", requestDigest),
                ("seconds", .number((seconds * 1000).rounded() / 1000)),
                ("total_tokens", .number(Double(accounting.usage.total))),
                ("cost", accounting.cost.map { .number($0) } ?? .null),
            ]), critical: turn.toolCalls.isEmpty)
            // A turn with tool calls: the response guards no action by itself and is made durable with
            // its first `tool.call`, which is critical (one fdatasync for both: a step costs two, not
            // three). A crash between them loses the response, as one during the call would: the
            // resumed run asks the model again (docs/journal.md, "Durability").
            host.progress(.modelResponse(step: accounting.steps, turn: turn, seconds: seconds, attempts: attempts.count,
                                    totalTokens: accounting.usage.total, cost: accounting.cost, elapsed: Clock.monotonic() - started))
            if attempts.count >= 3 {
                try confess(severity: "warning", category: "model",
                            summary: "the model call of step \(accounting.steps) needed \(attempts.count) attempts", details: attempts.compactMap { $0.error?.description }.joined(separator: "\n"),
                            by: "supervisor")
            }
            conversation.messages.append(.assistant(turn))
            if turn.isRefusal && turn.toolCalls.isEmpty && ending == nil {
                // The model declined the task: reminding it would only repeat that. The operators hear
                // why, and the run ends (docs/agent.md, "Ending a run").
                let why = turn.refusal ?? (turn.text.isEmpty ? "no reason given" : turn.text)
                try confess(severity: "blocker", category: "refusal",
                            summary: "the model refused the task: " + ToolText.clip(why, maxBytes: AgentSession.confessionCaps.summary), details: nil,
                            by: "supervisor")
                ending = .aborted("the model refused: " + ToolText.clip(why, maxBytes: 200))
            }
            if !turn.toolCalls.isEmpty { reminders = 0 }
            self.turn = turn
            nextCall = 0
            results = []
            // When the run is stopping, the loop still gets the turn: toolStart answers its calls as skipped.
            host.send(.turn(turn.toolCalls.map { AgentMessage.TurnCall(id: $0.id, name: $0.name) }))
        case let .failure(error):
            if error.kind == .contextLength, ending == nil, !retriedContext {
                // Too long for the model after all: shorten harder (to half) and ask once more.
                retriedContext = true
                var rule = compactor
                rule.target = Compactor.size(conversation) / 2
                if try compact(rule, force: true, reason: "the model's context length was exceeded") {
                    try request()
                    return
                }
            }
            if error.kind == .cancelled, ending != nil {
                try host.journal(.modelCancelled, .object([("reason", "the run is stopping")]), critical: false)
            } else {
                try host.journal(.modelError, .object([("kind", .string(error.kind.rawValue)), ("error", .string(error.description)),
                                                          ("attempts", attemptsJSON), ("request", requestDigest)]), critical: true)
                try confess(severity: "blocker", category: "model",
                            summary: "the model call failed after \(attempts.count) attempt(s): \(error.description)", details: nil, by: "supervisor")
                if ending == nil { ending = .aborted("the model call failed: \(error.description)") }
            }
            host.send(.end)
        }
    }

    static func turnJSON(_ turn: AssistantTurn) -> JSON {
        var fields: [(String, JSON)] = [
            ("text", .string(turn.text)),
            ("tool_calls", .array(turn.toolCalls.map { .object([("id", .string($0.id)), ("name", .string($0.name)), ("arguments", .string($0.arguments))]) })),
            ("thinking", .array(turn.thinking)),
            ("stop_reason", .string(turn.stopReason.rawValue)),
            ("usage", turn.usage.json),
        ]
        if let refusal = turn.refusal { fields.append(("refusal", .string(refusal))) }
        return .object(fields)
    }

    /// The loop is about to run the next call of the turn: journal it, then let it run or answer it here.
    func toolStart(_ id: String) throws(AgentboxError) {
        guard running == nil, let turn, nextCall < turn.toolCalls.count, turn.toolCalls[nextCall].id == id else {
            throw violation("tool_start for \(id), which is not the next call of the turn")
        }
        let call = turn.toolCalls[nextCall]
        if let ending {
            // The run is ending: later calls are not run, and the model is not asked again.
            try answer(call, ToolResult(callID: id, content: "skipped: \(endingText(ending))", isError: true), extra: [("skipped", true)])
            return
        }
        // Bounds on what a model can make the sandbox do: calls per turn, then the run's tool-call budget.
        if nextCall >= AgentSession.maxCallsPerTurn {
            try answer(call, ToolResult(callID: id, content: "not run: one turn may call at most \(AgentSession.maxCallsPerTurn) tools; call fewer at once",
                                        isError: true), extra: [("refused", "calls_per_turn")])
            return
        }
        if let max = task.budget.maxToolCalls, accounting.toolCalls >= max {
            let exceeded = Accounting.Exceeded.toolCalls(max)
            try host.journal(.budget, .object([("kind", "tool_calls"), ("detail", .string(exceeded.description))]), critical: true)
            try confess(severity: "warning", category: "budget", summary: exceeded.description + ": the run was stopped", details: nil,
                        by: "supervisor")
            ending = .budget(exceeded.description)
            try answer(call, ToolResult(callID: id, content: "skipped: \(exceeded.description)", isError: true), extra: [("skipped", true)])
            return
        }
        accounting.recordToolCall()
        let parsed = call.parsed
        let argsJSON: JSON
        if case let .success(v) = parsed { argsJSON = v } else { argsJSON = .string(call.arguments) }
        try host.journal(.toolCall, .object([("id", .string(id)), ("name", .string(call.name)), ("arguments", argsJSON)]), critical: true)
        // The record's fdatasync takes a while: a supervisor paused meanwhile (and taken over) must not
        // run the tool when it continues.
        try host.confirmOwnership()
        host.progress(.tool(name: call.name, arguments: argsJSON))
        let args: JSON
        switch parsed {
        case let .failure(e):
            try answer(call, ToolResult(callID: id, content: e.message, isError: true), extra: [])
            return
        case let .success(v): args = v
        }
        guard let def = BuiltinTools.definitions.first(where: { $0.name == call.name }) else {
            let names = BuiltinTools.definitions.map(\.name).joined(separator: ", ")
            try answer(call, ToolResult(callID: id, content: "there is no tool named \(call.name); the tools are: \(names)", isError: true), extra: [])
            return
        }
        if let problem = AgentSession.validate(args, against: def) {
            try answer(call, ToolResult(callID: id, content: "\(call.name): \(problem)", isError: true), extra: [])
            return
        }
        switch BuiltinTool(rawValue: call.name) {
        case .confess?:
            // Confessions go to the node's feed, read by people: one is at most a few KiB.
            let c = AgentSession.confessionCaps
            let seq = try confess(severity: args["severity"]!.stringValue!,
                                  category: ToolText.clip(args["category"]!.stringValue!, maxBytes: c.category),
                                  summary: ToolText.clip(args["summary"]!.stringValue!, maxBytes: c.summary),
                                  details: args["details"]?.stringValue.map { ToolText.clip($0, maxBytes: c.details) }, by: "agent")
            try answer(call, ToolResult(callID: id, content: "confession recorded (journal seq \(seq)); the operators of this machine will see it"), extra: [])
        case .finish?:
            let status = args["status"]!.stringValue!
            let summary = args["summary"]!.stringValue!
            ending = .finished(status: status, summary: summary)
            try answer(call, ToolResult(callID: id, content: "the run is finished (\(status))"), extra: [])
        default:
            // What the loop in the sandbox cannot take (AgentWire.maxMessage once encoded) is answered
            // as any bad call is: a model must never be able to make a run fail as agentbox's fault.
            let message = AgentMessage.go(args: args).encoded
            guard message.count <= AgentWire.maxMessage else {
                try answer(call, ToolResult(callID: id, content: "\(call.name): the arguments are too large (more than \(AgentWire.maxMessage >> 20) MiB once encoded); write the content in smaller parts",
                                            isError: true), extra: [])
                return
            }
            running = (id, call.name, Clock.monotonic())
            host.send(encoded: message)
        }
    }

    func endingText(_ e: Ending) -> String {
        switch e {
        case .finished: return "the run already finished"
        case let .budget(why): return why
        case let .aborted(why): return why
        case .stopped: return "the run was stopped"
        }
    }

    /// A call answered by the supervisor: journal its result and tell the loop.
    func answer(_ call: ToolCall, _ result: ToolResult, extra: [(String, JSON)]) throws(AgentboxError) {
        try complete(result, name: call.name, extra: extra, seconds: 0, supervisor: true)
        host.send(.done)
    }

    /// Records a call's result (after the stuck-loop rule) and keeps it for the next request.
    func complete(_ given: ToolResult, name: String, extra: [(String, JSON)], seconds: Double, supervisor: Bool = false) throws(AgentboxError) {
        var result = given
        let call = turn!.toolCalls[nextCall]
        let skipped = extra.contains { $0.0 == "skipped" || $0.0 == "refused" }
        var stuck: (severity: String, summary: String)? = nil
        if !skipped {
            // The call and its result as a CRC-32C (journaled: a resume goes on counting).
            let key = CRC32C.hex(CRC32C.checksum(Array((call.name + "\u{0}" + call.arguments + "\u{0}" + result.content).utf8)))
            repeats = key == lastKey ? repeats + 1 : 1
            lastKey = key
            if repeats == AgentSession.stuckWarnAt {
                result.content += "\n[agentbox: this exact call returned this exact result \(repeats) times in a row. Change your approach, or confess if you are blocked.]"
                stuck = ("warning", "\(call.name) was called \(repeats) times in a row with the same arguments and the same result")
            } else if repeats >= AgentSession.stuckStopAt && ending == nil {
                stuck = ("blocker", "\(call.name) was called \(repeats) times in a row with the same arguments and result: the run was stopped")
                ending = .aborted("stuck loop: the same call and result \(repeats) times in a row")
            }
        }
        var data: [(String, JSON)] = [("id", .string(call.id)), ("name", .string(name)), ("is_error", .bool(result.isError)),
                                      ("content", .string(result.content))]
        data += extra
        if !extra.contains(where: { $0.0 == "duration_ms" }) { data.append(("duration_ms", .number((seconds * 1e6).rounded() / 1000))) }
        if supervisor { data.append(("by", "supervisor")) }
        if !skipped { data += [("call_key", .string(lastKey)), ("repeats", .number(Double(repeats)))] }
        try host.journal(.toolDone, .object(data), critical: true)
        if !skipped { host.progress(.toolDone(name: name, result: result.content, isError: result.isError, seconds: seconds)) }
        results.append(result)
        nextCall += 1
        if let stuck { try confess(severity: stuck.severity, category: "stuck_loop", summary: stuck.summary, details: nil, by: "supervisor") }
    }

    /// The API key never reaches the model or the journal through a tool result, even when the
    /// workspace holds it (a `.env` file): it is replaced (also encoded, or in part at the edge of the
    /// output cap's cut: SecretRedactor) and the operators are told.
    func redactKey(_ result: inout ToolResult, tool: String) throws(AgentboxError) {
        guard let redactor = keyRedactor else { return }
        let (text, n) = redactor.redact(result.content, replacement: "[redacted by agentbox: the model API key]")
        guard n > 0 else { return }
        result.content = text
        try confess(severity: "warning", category: "secrets",
                    summary: "the model's API key appeared \(n) time(s) in the result of \(tool) and was redacted; it is readable inside the sandbox (a file in the workspace?)",
                    details: nil, by: "supervisor")
    }

    /// After a tool ran: OOM kills and pids-limit hits in the sandbox's cgroup since the last check.
    func checkLimits(_ result: inout ToolResult) throws(AgentboxError) {
        guard let report = host.cgroupReport() else { return }
        defer { lastReport = report }
        if report.oomKills > lastReport.oomKills {
            let what = "memory limit \(Units.formatSize(policy.limits.memory ?? 0)) reached: \(report.oomKills - lastReport.oomKills) process(es) OOM-killed"
            try host.journal(.limit, .object([("kind", "oom"), ("detail", .string(what))]), critical: true)
            try confess(severity: "warning", category: "limits", summary: what, details: nil, by: "supervisor")
            result.content += "\n[agentbox: the sandbox's \(what); use less memory]"
        }
        if report.pidsLimitHits > lastReport.pidsLimitHits {
            let what = "pids limit \(policy.limits.pids ?? 0) reached: fork failed \(report.pidsLimitHits - lastReport.pidsLimitHits) time(s)"
            try host.journal(.limit, .object([("kind", "pids"), ("detail", .string(what))]), critical: true)
            try confess(severity: "warning", category: "limits", summary: what, details: nil, by: "supervisor")
            result.content += "\n[agentbox: the sandbox's \(what); run fewer processes at once]"
        }
    }

    /// A confession record, mirrored to the node-wide feed. Returns its seq.
    @discardableResult
    func confess(severity: String, category: String, summary: String, details: String?, by: String) throws(AgentboxError) -> UInt64 {
        var data: [(String, JSON)] = [("severity", .string(severity)), ("category", .string(category)), ("summary", .string(summary))]
        if let details, !details.isEmpty { data.append(("details", .string(details))) }
        data.append(("by", .string(by)))
        let seq = try host.journal(.confession, .object(data), critical: true)
        host.progress(.confession(severity: severity, category: category, summary: summary, by: by))
        do {
            try host.feedConfession(seq: seq, severity: severity, category: category, summary: summary)
        } catch {
            host.warn("\(error.stage): \(error.message)")
        }
        return seq
    }

    /// Checks a tool's arguments against its schema: required parameters, types, enums.
    static func validate(_ args: JSON, against def: ToolDefinition) -> String? {
        let properties = def.parameters["properties"]?.objectValue ?? []
        for name in def.parameters["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where args[name] == nil || args[name] == .null {
            return "the parameter \(name) is required"
        }
        for (name, schema) in properties {
            guard let value = args[name], value != .null else { continue }
            switch schema["type"]?.stringValue {
            case "string":
                guard let s = value.stringValue else { return "\(name) must be a string, not \(value.typeName)" }
                if let allowed = schema["enum"]?.arrayValue?.compactMap(\.stringValue), !allowed.contains(s) {
                    return "\(name) must be one of \(allowed.joined(separator: ", ")), not \"\(s)\""
                }
            case "integer":
                guard let n = value.numberValue, n == n.rounded() else { return "\(name) must be an integer, not \(value.serialized)" }
            default: break
            }
        }
        return nil
    }

    // MARK: the end

    public func conclude(_ result: SandboxResult) throws(AgentboxError) -> AgentOutcome {
        if let running {
            try host.journal(.toolInterrupted, .object([("id", .string(running.id)), ("name", .string(running.name)),
                                                           ("reason", "the sandbox ended while the call ran")]), critical: true)
        }
        var state: String
        var code: Int32
        var reason: String
        var status: String? = nil
        var summary: String? = nil
        if result.termination == .timedOut {
            let what = "timeout after \(Units.formatDuration(policy.limits.timeout ?? 0)): the sandbox was killed"
            try host.journal(.limit, .object([("kind", "timeout"), ("detail", .string(what))]), critical: true)
            try confess(severity: "warning", category: "limits", summary: what, details: nil, by: "supervisor")
            (state, code, reason) = ("timeout", 124, what)
        } else if let ending {
            switch ending {
            case let .finished(s, text):
                (state, code, reason) = ("finished", s == "success" ? 0 : 1, "the agent called finish with status \(s)")
                status = s
                summary = text
            case let .budget(why): (state, code, reason) = ("budget", 3, why)
            case let .aborted(why): (state, code, reason) = ("aborted", 1, why)
            case let .stopped(sig): (state, code, reason) = ("stopped", 75, "stopped by signal \(sig)")
            }
        } else {
            let how: String
            switch result.termination {
            case let .exited(c): how = "exited with status \(c)"
            case let .signaled(s): how = "was killed by signal \(s)" + (result.oomKilled ? " (out of memory)" : "")
            default: how = "ended"
            }
            (state, code, reason) = ("failed", 125, "agentbox-init \(how) before the run ended")
            if result.oomKilled {
                try confess(severity: "blocker", category: "limits", summary: "the sandbox ran out of memory and its init was killed", details: nil,
                            by: "supervisor")
            }
        }
        let elapsed = Clock.monotonic() - started
        try host.journal(.usage, .object([
            ("wall_s", .number((elapsed * 1000).rounded() / 1000)),
            ("cpu_s", result.report.cpuSeconds.map { .number($0) } ?? .null),
            ("peak_memory", result.report.peakMemory.map { .number(Double($0)) } ?? .null),
            ("steps", .number(Double(accounting.steps))),
            ("tokens", accounting.usage.json),
            ("cost", accounting.cost.map { .number($0) } ?? .null),
        ]), critical: false)
        var ended: [(String, JSON)] = [("state", .string(state)), ("exit_code", .number(Double(code))), ("reason", .string(reason))]
        if let status { ended.append(("status", .string(status))) }
        if let summary { ended.append(("summary", .string(summary))) }
        try host.journal(.runEnded, .object(ended), critical: true)
        return AgentOutcome(id: runID, state: state, exitCode: code, status: status, summary: summary, reason: reason, steps: accounting.steps,
                            usage: accounting.usage, cost: accounting.cost, elapsed: elapsed)
    }
}
