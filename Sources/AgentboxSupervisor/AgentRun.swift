import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox
import Glibc

/// What `agentbox run` was asked to do.
public struct AgentTask: Sendable {
    public var name: String
    public var task: String
    public var model: ModelSpec
    public var budget: Budget
    public var prices: PriceTable
    /// How the sandbox was asked for (the CLI's options, paths absolute, `--env` names only), recorded in
    /// `run.started` so that `resume` builds the same sandbox.
    public var options: JSON
    /// Workspace checkpoints after every step (docs/lifecycle.md): nil when off, else the names and
    /// workspace-relative paths left out.
    public var checkpointExclude: [String]?
    public init(name: String, task: String, model: ModelSpec, budget: Budget, prices: PriceTable, options: JSON = .null,
                checkpointExclude: [String]? = []) {
        self.name = name
        self.task = task
        self.model = model
        self.budget = budget
        self.prices = prices
        self.options = options
        self.checkpointExclude = checkpointExclude
    }

    /// How `run.started` records the checkpoint settings.
    public var checkpointsJSON: JSON {
        checkpointExclude.map { .object([("exclude", .array($0.map { .string($0) }))]) } ?? .bool(false)
    }

    /// The checkpoint settings `run.started` recorded (runs recorded before checkpoints: on, nothing left out).
    public static func checkpointExclude(recorded: JSON?) -> [String]? {
        guard let recorded else { return [] }
        if recorded.boolValue == false { return nil }
        return recorded["exclude"]?.arrayValue?.compactMap(\.stringValue) ?? []
    }
}

/// How a run ended (docs/agent.md, "Ending a run").
public struct AgentOutcome: Sendable {
    public var id: String
    public var state: String
    public var exitCode: Int32
    public var status: String?
    public var summary: String?
    public var reason: String
    public var steps: Int
    public var usage: Usage
    public var cost: Double?
    public var elapsed: Double
}

/// What the progress display shows (the CLI turns these into lines on stderr).
public enum AgentEvent {
    case started(id: String, journal: String)
    case modelResponse(step: Int, turn: AssistantTurn, seconds: Double, attempts: Int, totalTokens: Int, cost: Double?, elapsed: Double)
    case tool(name: String, arguments: JSON)
    case toolDone(name: String, result: String, isError: Bool, seconds: Double)
    case confession(severity: String, category: String, summary: String, by: String)
    case note(String)
}

/// One agent run: the sandbox with the loop inside, and this side of it. `AgentRun` wires the pieces
/// (journal, sandbox, model gateway thread, node feed, display) and is the sandbox's delegate; the
/// protocol logic is `AgentSession`'s. All of it runs on the supervision thread except the model call
/// itself (ModelWorker). docs/agent.md.
public final class AgentRun {
    let store: RunStore
    let policy: SandboxPolicy
    let task: AgentTask
    let warnHandler: (String) -> Void
    let progressHandler: (AgentEvent) -> Void
    /// Sees every journal line as written (`run --json`).
    public var journalObserver: (([UInt8]) -> Void)? = nil
    /// Called once the run is journaled (`--detach` reports the id then).
    public var onJournaled: ((String, String) -> Void)? = nil

    public private(set) var id = ""
    /// `resume`: the run to continue (its journal gets a new epoch) instead of a new one.
    public var resuming: String? = nil
    /// `resume`: the journal its options were prepared from; the run is refused when the journal went
    /// on since (another resume ran meanwhile), and its records are not read again when it did not.
    public var resumingFrom: JournalScan? = nil
    /// Seconds a stopped run's current tool may take before the sandbox is killed.
    public var grace = Sandbox.gracePeriod

    var writer: JournalWriter! = nil
    var box: Sandbox! = nil
    var worker: ModelWorker! = nil
    var session: AgentSession! = nil
    var checkpoints: WorkspaceCheckpoints? = nil
    var checkpointStep = -1
    var warnedSkipped = false
    var recorder: ServiceRecorder? = nil

    public init(store: RunStore = RunStore(), policy: SandboxPolicy, task: AgentTask, warn: @escaping (String) -> Void,
                progress: @escaping (AgentEvent) -> Void) {
        self.store = store
        self.policy = policy
        self.task = task
        self.warnHandler = warn
        self.progressHandler = progress
    }

    /// An agent runs unattended: without a limit from the profile or the options, a run gets a memory
    /// limit of half the host's memory and a wall-time ceiling of 24 hours (docs/agent.md, "Limits").
    public static let defaultTimeout = 24.0 * 3600
    public static func applyDefaults(to policy: inout SandboxPolicy) {
        if policy.limits.memory == nil {
            let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
            if pages > 0 && size > 0 { policy.limits.memory = UInt64(pages) * UInt64(size) / 2 }
        }
        if policy.limits.timeout == nil { policy.limits.timeout = defaultTimeout }
    }

    static func systemPrompt(policy: SandboxPolicy, budget: Budget) -> String {
        var limits: [String] = []
        if let m = policy.limits.memory { limits.append("memory \(Units.formatSize(m))") }
        if let p = policy.limits.pids { limits.append("\(p) processes") }
        if let c = policy.limits.cpus { limits.append("\(c) CPUs") }
        if let t = policy.limits.timeout { limits.append("wall time \(Units.formatDuration(t)) for the whole run") }
        var b: [String] = []
        if let s = budget.maxSteps { b.append("\(s) model calls") }
        if let n = budget.maxToolCalls { b.append("\(n) tool calls") }
        if let t = budget.maxTokens { b.append("\(t) tokens") }
        if let c = budget.maxCost { b.append("$\(c)") }
        return AgentPrompt.system(AgentPrompt.Facts(workspace: policy.workdir, network: policy.network.description,
                                                    limits: limits, budget: b))
    }

    public func run() throws(AgentboxError) -> AgentOutcome {
        try Accounting(provider: task.model.provider.rawValue, model: task.model.model, prices: task.prices).validate(task.budget)
        let provider = try makeProvider(task.model)
        let id: String
        let writer: JournalWriter
        var earlier: [JournalRecord] = []
        if let resuming {
            id = resuming
            // The run's writer lock: of two resumes one wins; the other sees the run finished, or running.
            (writer, earlier) = try JournalWriter.reopenScanned(dir: store.runsDir + "/" + id, known: resumingFrom) { [resumingFrom] records throws(AgentboxError) in
                if let seen = resumingFrom?.lastSeq, records.last?.seq != seen {
                    throw AgentboxError(stage: "resume", "run \(id) went on while this resume was getting ready (its journal has records past seq \(seen))",
                                        hint: "look at it (agentbox ps --all) and resume it again if it is still not finished")
                }
                if let last = records.last(where: { $0.kind == .runEnded || $0.kind == .runResumed }), last.kind == .runEnded,
                   last.data["state"]?.stringValue == "finished" {
                    throw AgentboxError(stage: "resume", "run \(id) finished: there is nothing to resume")
                }
            }
        } else {
            (id, writer) = try store.createRun()
        }
        self.id = id
        self.writer = writer
        writer.observer = journalObserver
        let session = AgentSession(host: self, runID: id, task: task, policy: policy, grace: grace,
                                   system: AgentRun.systemPrompt(policy: policy, budget: task.budget))
        self.session = session
        if resuming != nil {
            try resume(session, writer: writer, records: earlier)
            // A replayed session goes on with its next turn, as a model would go on from the conversation.
            if let replay = provider as? ReplayProvider { replay.next = session.accounting.steps }
        } else {
            let modelJSON: JSON = .object([("provider", .string(task.model.provider.rawValue)), ("model", .string(task.model.model)),
                                           ("base_url", task.model.baseURL.isEmpty ? .null : .string(task.model.baseURL))])
            try writer.append(.runStarted, .object([
                ("id", .string(id)), ("name", task.name.isEmpty ? .null : .string(task.name)), ("kind", "run"),
                ("task", .string(task.task)), ("model", modelJSON), ("budget", session.budgetJSON),
                ("system_prompt", .string(session.conversation.system)),
                ("grace_s", .number(grace)),
                ("tools", .array(BuiltinTools.definitions.map { .string($0.name) })),
                ("policy", policy.json),
                ("options", task.options),
                ("checkpoints", task.checkpointsJSON),
                ("profile_digest", JournaledRun.digest(policy.profile.path.isEmpty ? nil : policy.profile.path)),
                ("seccomp_digest", JournaledRun.digest(policy.profile.seccomp)),
                ("host", JournaledRun.hostFacts()),
            ]), critical: true)
        }
        if let exclude = task.checkpointExclude {
            if let why = WorkspaceCheckpoints.unavailable {
                let message = "workspace checkpoints are off: \(why)"
                warnHandler(message)
                try writer.append(.warning, .object([("message", .string(message))]), critical: false)
            } else {
                let c = WorkspaceCheckpoints(workspace: policy.workspace, runDir: store.runsDir + "/" + id, exclude: exclude)
                if resuming != nil {
                    c.restore(from: earlier)
                    checkpointStep = earlier.last { $0.kind == .checkpoint }?.data["step"]?.intValue ?? -1
                }
                checkpoints = c
            }
        }
        onJournaled?(id, store.journalPath(id))
        progressHandler(.started(id: id, journal: store.journalPath(id)))
        let envFiles = policy.exposedEnvFiles(AgentRun.envFiles(in: policy.workspace))
        if !envFiles.isEmpty {
            let message = "the workspace holds \(envFiles.joined(separator: ", ")), readable in the sandbox: the agent and the model "
                + "see any secret in it (only the model's API key is redacted); pass " + envFiles.map { "--hide \($0)" }.joined(separator: " ")
            warnHandler(message)
            try writer.append(.warning, .object([("message", .string(message))]), critical: false)
        }

        worker = ModelWorker(provider: provider)
        let box = Sandbox(id: id, policy: policy, argv: [], mode: .agent) { [warnHandler] w in
            warnHandler(w.message)
            _ = try? writer.append(.warning, .object([("message", .string(w.message))]), critical: false)
        }
        self.box = box
        box.grace = grace

        let result: SandboxResult
        do {
            result = try box.run(delegate: self)
        } catch {
            worker.cancel()
            worker.join()
            _ = try? writer.append(.runEnded, .object([
                ("state", "failed"), ("exit_code", .number(Double(error.exitCode))),
                ("reason", .string("\(error.stage): \(error.message)")),
            ]), critical: true)
            throw error
        }
        worker.cancel()
        worker.join()
        try writer.flush(sync: false)
        let outcome = try session.conclude(result)
        try writer.finish()
        return outcome
    }

    /// `resume` (docs/lifecycle.md): the conversation and the totals from the journal; the calls of the
    /// last turn that have no result get one now, recorded before anything runs: the one that was
    /// running when the supervisor stopped is said to be interrupted (it may have run in part, and is
    /// never run again by agentbox), the ones after it were not run. A completed call is never run twice.
    func resume(_ session: AgentSession, writer: JournalWriter, records: [JournalRecord]) throws(AgentboxError) {
        let tail: JournalConversation.Tail
        do { tail = try JournalConversation.walk(records) } catch {
            throw AgentboxError(stage: "resume", "the journal of run \(id) cannot be continued: \(error.description)")
        }
        let endedAs = records.last { $0.kind == .runEnded || $0.kind == .runResumed }.flatMap { $0.kind == .runEnded ? $0.data["state"]?.stringValue : nil } ?? "interrupted"
        var results = tail.results
        let unanswered = Array(tail.lastTurn?.toolCalls.dropFirst(results.count) ?? [])
        try writer.append(.runResumed, .object([
            ("from_state", .string(endedAs)), ("epoch", .number(Double(writer.epoch))),
            ("steps", .number(Double(tail.usages.count))), ("tool_calls", .number(Double(tail.toolCalls))),
            ("answered", .array(unanswered.map { .object([("id", .string($0.id)), ("name", .string($0.name)),
                                                          ("interrupted", .bool($0.id == tail.inFlight?.id))]) })),
            ("budget", session.budgetJSON), ("options", task.options), ("policy", policy.json),
        ]), critical: true)
        for call in unanswered {
            let interrupted = call.id == tail.inFlight?.id
            let content = interrupted
                ? "interrupted: the run stopped while this call ran (its supervisor ended); it may have run in part: check its effects before doing it again"
                : "not run: the run stopped before this call"
            try writer.append(.toolDone, .object([("id", .string(call.id)), ("name", .string(call.name)), ("is_error", true),
                                                  ("content", .string(content)), ("by", "supervisor"),
                                                  (interrupted ? "interrupted" : "skipped", true)]), critical: false)
            results.append(ToolResult(callID: call.id, content: content, isError: true))
        }
        session.restore(tail, results: results)
        // The answers and the confession reach the journal in one write (the confession is critical and
        // takes the batch with it): a resume killed here leaves both or neither, never an interrupted
        // call without its confession.
        if let call = tail.inFlight {
            try session.confess(severity: "warning", category: "resume",
                                summary: "the run was resumed; \(call.name) (call \(call.id)) was running when it stopped and may have run in part: the model was told",
                                details: nil, by: "supervisor")
        } else {
            try writer.flush(sync: true)
        }
    }

    /// The regular files (symlinks followed) at the top of `dir` whose names start with `.env`, with
    /// their canonical paths.
    static func envFiles(in dir: String) -> [(name: String, path: String)] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [(name: String, path: String)] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(".env") else { continue }
            var st = stat()
            guard stat(dir + "/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFREG, let real = realpath(dir + "/" + name, nil) else { continue }
            out.append((name, String(cString: real)))
            free(real)
        }
        return out
    }
}

extension AgentRun: SandboxDelegate {
    public func sandboxReady(landlockABI: Int32, cgroup: String?) {
        _ = try? writer.append(.sandboxReady, JournaledRun.readyRecord(landlockABI: landlockABI, cgroup: cgroup, policy: policy),
                               critical: false)
    }

    public func sandboxServiceEvents(_ events: [ServiceEvent]) throws(AgentboxError) {
        if recorder == nil { recorder = ServiceRecorder(store: store, run: id, name: task.name.isEmpty ? nil : task.name, writer: writer, warn: warnHandler) }
        try recorder!.record(events)
    }

    public func sandboxMessage(_ message: AgentMessage) throws(AgentboxError) { try session.received(message) }

    public var wakeFD: Int32 { worker.fd }

    public func sandboxWake() throws(AgentboxError) {
        for notice in worker.notices() { progressHandler(.note(notice.description)) }
        guard let outcome = worker.collect() else { return }
        try session.modelDone(outcome)
    }

    public func sandboxTick() throws(AgentboxError) {
        try writer.flushIfDue()
        session.heartbeat()
    }

    public func sandboxStopSignal(_ signal: Int32) -> Bool {
        session.stop(signal: signal)
        return true
    }
}

extension AgentRun: AgentSessionHost {
    @discardableResult
    public func journal(_ type: RecordType, _ data: JSON, critical: Bool) throws(AgentboxError) -> UInt64 {
        try writer.append(type, data, critical: critical)
    }

    public func send(encoded: [UInt8]) { box.send(encoded: encoded) }

    public func confirmOwnership() throws(AgentboxError) { try writer.checkFence() }

    public var modelBusy: Bool { worker.busy }

    public func startModelCall(_ conversation: Conversation, tools: [ToolDefinition]) throws(AgentboxError) {
        guard worker.start(conversation, tools: tools) else {
            throw AgentboxError(stage: "model gateway", "cannot start a thread: \(FileIO.errnoString())")
        }
    }

    public func cancelModelCall() { worker.cancel() }

    public func cgroupReport() -> CgroupReport? { box.cgroupReport() }

    public func journalDiskLow(reserve: UInt64) -> Bool { DiskFloor.reached(store.runsDir + "/" + id, adding: reserve) }

    public func feedConfession(seq: UInt64, severity: String, category: String, summary: String) throws(AgentboxError) {
        try ConfessionFeed.append(store: store, run: id, name: task.name.isEmpty ? nil : task.name, seq: seq, severity: severity,
                                  category: category, summary: summary)
    }

    public func progress(_ event: AgentEvent) { progressHandler(event) }

    /// The workspace's checkpoint after a step (once per step: a resume that finds the step's
    /// checkpoint in the journal does not take it again). A checkpoint that cannot be taken turns
    /// checkpoints off for the run, with a warning; the run goes on.
    public func stepEnded(_ step: Int) throws(AgentboxError) {
        guard let checkpoints, step != checkpointStep else { return }
        checkpointStep = step
        let taken: WorkspaceCheckpoints.Taken
        do { taken = try checkpoints.take(step: step) } catch {
            self.checkpoints = nil
            let message = "workspace checkpoints are off from step \(step): \(error.message)" + (error.hint.isEmpty ? "" : " (\(error.hint))")
            warnHandler(message)
            try writer.append(.warning, .object([("message", .string(message))]), critical: false)
            return
        }
        try writer.append(.checkpoint, taken.record, critical: false)
        if !taken.skipped.isEmpty && !warnedSkipped {
            warnedSkipped = true
            let message = "the checkpoint of step \(step) left out \(taken.skipped.prefix(3).joined(separator: ", "))\(taken.skipped.count > 3 ? " and \(taken.skipped.count - 3) more" : "") (unreadable, a name that is not UTF-8 or holds a line break, too deep, too large, past the run's storage quota, or the disk is nearly full)"
            warnHandler(message)
            try writer.append(.warning, .object([("message", .string(message))]), critical: false)
        }
    }

    public func warn(_ message: String) { warnHandler(message) }
}
