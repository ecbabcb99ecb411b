import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox
import AgentboxSupervisor
import ArgumentParser
import CAgentboxShim
import Glibc

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Hand a task to an agent that works unattended in a sandbox; everything is journaled.",
        discussion: """
            The agent loop runs inside the sandbox; model calls go through agentbox's gateway outside it, which holds \
            the API key (OPENAI_API_KEY / ANTHROPIC_API_KEY; never passed into the sandbox). Tools: shell, read_file, \
            write_file, edit_file, confess, finish. Progress goes to stderr; --json prints the journal records on stdout \
            as they are written. Exit codes: 0 finished with success; 1 finished with failure or gave up without \
            finishing (aborted); 3 a budget ran out; 75 stopped by SIGTERM or `agentbox stop` (`agentbox resume` continues it); 124 --timeout; 125 agentbox failed. \
            Example: agentbox run --model openai:gpt-4o-mini --max-steps 30 --timeout 20m --task "make the tests pass". \
            Bring your own agent: `agentbox run [OPTIONS] -- CMD [ARG...]` runs CMD as the agent instead (docs/agents.md). \
            Inside, OPENAI_BASE_URL and ANTHROPIC_BASE_URL point at agentbox's model gateway and the *_API_KEY variables hold \
            a placeholder; the gateway forwards each call to the upstream (OPENAI_BASE_URL / ANTHROPIC_BASE_URL where agentbox \
            runs, or --base-url for --model's provider, default OpenAI) with the real key, streams the answer back, journals \
            it and holds --max-steps (model calls), --max-tokens and --max-cost. The exit code is CMD's, or 3 when a budget \
            ran out (further calls are refused; CMD gets 30 s to end), 75 when stopped, 124 on --timeout, 125 when agentbox failed.
            """)
    @OptionGroup(title: "Sandbox options") var sandbox: SandboxFlags
    @Option(parsing: .unconditional, help: ArgumentHelp("PROVIDER:MODEL: openai:MODEL, anthropic:MODEL or replay:FILE (default: $AGENTBOX_MODEL).", valueName: "P:M"))
    var model: String?
    @Option(name: .customLong("base-url"), parsing: .unconditional, help: ArgumentHelp("Endpoint base (else OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the official one; OpenAI-style bases include /v1).", valueName: "URL"))
    var baseURL: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("The task, as text.", valueName: "TEXT")) var task: String?
    @Option(name: .customLong("task-file"), parsing: .unconditional, help: ArgumentHelp("Read the task from FILE (- for stdin).", valueName: "FILE"))
    var taskFile: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("A name for the run (for ps, logs, stop); refused while a running run has it.", valueName: "NAME")) var name: String?
    @Flag(name: .customLong("allow-duplicate-name"), help: "Start even if a running run has the same --name (stop and kill then need the id).")
    var allowDuplicateName = false
    @Option(name: .customLong("max-steps"), parsing: .unconditional, help: ArgumentHelp("Stop (exit 3) after N model calls.", valueName: "N")) var maxSteps: Int?
    @Option(name: .customLong("max-tool-calls"), parsing: .unconditional, help: ArgumentHelp("Stop (exit 3) after N tool calls (one model call may ask for many; at most \(AgentSession.maxCallsPerTurn) of a turn are run).", valueName: "N")) var maxToolCalls: Int?
    @Option(name: .customLong("max-tokens"), parsing: .unconditional, help: ArgumentHelp("Stop (exit 3) once N tokens (input + output) are used.", valueName: "N"))
    var maxTokens: Int?
    @Option(name: .customLong("max-cost"), parsing: .unconditional, help: ArgumentHelp("Stop (exit 3) once the cost reaches USD (price table: docs/models.md).", valueName: "USD"))
    var maxCost: Double?
    @Flag(name: .customLong("resume-if-exists"), help: "With --name: the idempotent start for schedulers. No run of that name: start it; one that stopped before it finished: resume it; one that finished: print its outcome and exit with its code, running nothing; one running: refuse (125).")
    var resumeIfExists = false
    @Option(name: .customLong("checkpoint-exclude"), parsing: .unconditionalSingleValue, help: ArgumentHelp("Leave out of the workspace checkpoints (repeatable): a name (every file or folder so named, e.g. node_modules) or a path relative to the workspace.", valueName: "NAME|PATH"))
    var checkpointExclude: [String] = []
    @Flag(name: .customLong("no-checkpoints"), help: "Take no workspace checkpoints after the steps (`fork` then cannot copy this run's workspace).")
    var noCheckpoints = false
    @Flag(help: "Start the run in the background, print its id and return; follow it with `agentbox logs -f RUN`.") var detach = false
    @Flag(help: "Print the journal records on stdout as JSON lines while the run goes.") var json = false
    @Flag(name: .customLong("allow-provider-tools"), help: "With -- CMD: let the agent's calls use provider-side tools that reach the network (web search and fetch, remote MCP servers); refused by default: the provider would fetch for the agent around --network.")
    var allowProviderTools = false
    @Argument(parsing: .postTerminator, help: ArgumentHelp("Bring your own agent: the command to run as the agent, after --.", valueName: "CMD"))
    var command: [String] = []

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            if !command.isEmpty { return try runCommandAgent() }
            if allowProviderTools { throw .usage("--allow-provider-tools is for `run -- CMD` (the built-in agent uses no provider tools)") }
            if resumeIfExists, let code = try continueExisting() { return code }
            let prepared = try prepare()
            if detach { return try Detach.start(json: json) }
            return try runAgent(prepared)
        }
    }

    /// `--resume-if-exists`: what to do with the newest run of this name, if there is one (nil: none,
    /// start a new run).
    func continueExisting() throws(AgentboxError) -> Int32? {
        guard let name else { throw .usage("--resume-if-exists needs --name: the name is what makes the start idempotent") }
        let store = RunStore()
        // The newest agent run of that name (an `exec` run of the same name is not one to continue).
        guard let id = store.runs(named: name).first(where: { $0.kind == "run" })?.id else { return nil }
        let summary = try store.summary(id)
        // The run must be this command's: a run of that name working elsewhere (a fork given the name,
        // an import) is not continued in place of it.
        let here = AgentboxPaths.absolute(sandbox.args.workspace ?? ".")
        func real(_ p: String) -> String {
            guard let r = realpath(p, nil) else { return p }
            defer { free(r) }
            return String(cString: r)
        }
        if let ws = summary.workspace, real(ws) != real(here) {
            throw AgentboxError(stage: "run", "the newest run named \(name) (\(id)) works in \(ws), not in \(here)",
                                hint: "run it from its workspace (or with --workspace \(ws)), or give this run another --name")
        }
        if store.isLive(id) {
            throw AgentboxError(stage: "run", "run \(id) (\(name)) is running (supervisor pid \(FileIO.readSmall(store.runsDir + "/" + id + "/lock")?.trimmingSpaces() ?? "?"))",
                                hint: "follow it with agentbox logs -f \(id), or stop it")
        }
        if summary.state == "finished" {
            Console.note("run \(id) (\(name)) already finished: \(summary.reason ?? "") (exit \(summary.exitCode.map(String.init) ?? "?")); nothing was run")
            if let summaryText = try JournalReader.scan(path: store.journalPath(id)).records.last(where: { $0.kind == .runEnded })?.data["summary"]?.stringValue {
                Console.answer(summaryText)
            }
            return Int32(summary.exitCode ?? 0)
        }
        var args = [id]
        for (flag, value) in [("--max-steps", maxSteps.map(String.init)), ("--max-tool-calls", maxToolCalls.map(String.init)),
                              ("--max-tokens", maxTokens.map(String.init)), ("--max-cost", maxCost.map { "\($0)" }),
                              ("--timeout", sandbox.timeout)] {
            if let value { args += [flag, value] }
        }
        for e in sandbox.env { args += ["--env", e] }
        if json { args.append("--json") }
        if detach { args.append("--detach") }
        Console.note("resuming run \(id) (\(name)), \(summary.state)")
        do { try Resume.parse(args).run() } catch { throw AgentboxError(stage: "resume", "\(error)") }
        return 0  // not reached: Resume exits with the run's code
    }

    struct Prepared {
        var policy: SandboxPolicy
        var task: AgentTask
        /// `resume`: the journal as read to prepare it (reused under the run's lock when unchanged).
        var journal: JournalScan? = nil
    }

    /// Everything that can be checked before a run starts (so that `--detach` fails in the foreground).
    func prepare() throws(AgentboxError) -> Prepared {
        let text: String
        switch (task, taskFile) {
        case let (t?, nil): text = t
        case let (nil, f?): text = f == "-" ? readStdin() : try FileIO.readString(f)
        case (nil, nil): throw .usage("no task given", hint: "pass --task TEXT or --task-file FILE")
        default: throw .usage("--task and --task-file are both given; pass one")
        }
        guard !text.trimmingSpaces().isEmpty else { throw .usage("the task is empty") }
        if detach && taskFile == "-" {
            throw .usage("--detach with --task-file -: a detached run has no stdin", hint: "write the task to a file and pass --task-file FILE")
        }
        if let n = name {
            try checkRunName(n)
            if !allowDuplicateName { _ = try RunStore().claimName(n) }  // fail in the foreground; runAgent claims it for the run
        }
        var budget = Budget()
        if let s = maxSteps { guard s > 0 else { throw .usage("--max-steps \(s): must be at least 1") }; budget.maxSteps = s }
        if let n = maxToolCalls { guard n > 0 else { throw .usage("--max-tool-calls \(n): must be at least 1") }; budget.maxToolCalls = n }
        if let t = maxTokens { guard t > 0 else { throw .usage("--max-tokens \(t): must be at least 1") }; budget.maxTokens = t }
        if let c = maxCost { guard c > 0, c.isFinite else { throw .usage("--max-cost \(c): must be a positive amount of USD") }; budget.maxCost = c }
        // The model, its base URL and key: the same checks as `model check` (exit 125).
        let spec = try ModelSpec.resolve(model: model, baseURL: baseURL)
        if spec.provider == .replay { _ = try ReplayProvider(path: spec.model) }
        let prices = try PriceTable.load()
        let accounting = Accounting(provider: spec.provider.rawValue, model: spec.model, prices: prices)
        try accounting.validate(budget)
        var policy = try sandbox.resolve()
        let options = sandbox.args.json(policy: policy)
        AgentRun.applyDefaults(to: &policy)
        var exclude: [String]? = nil
        if !noCheckpoints {
            exclude = try checkpointExclude.map { (e: String) throws(AgentboxError) -> String in
                var p = e
                while p.hasSuffix("/") && p.count > 1 { p.removeLast() }
                if p.hasPrefix("./") { p.removeFirst(2) }
                guard WorkspaceCheckpoints.valid(p) else {
                    throw .usage("--checkpoint-exclude \(e): give a name or a path inside the workspace (relative, without ..)")
                }
                return p
            }
        } else if !checkpointExclude.isEmpty {
            throw .usage("--checkpoint-exclude with --no-checkpoints: there are no checkpoints to leave anything out of")
        }
        return Prepared(policy: policy, task: AgentTask(name: name ?? "", task: text, model: spec, budget: budget, prices: prices, options: options,
                                                        checkpointExclude: exclude))
    }

    /// The claim on `--name` (none with --allow-duplicate-name); a detached copy reports a refusal.
    func claimName() throws(AgentboxError) -> Descriptor {
        guard let name, !allowDuplicateName else { return Descriptor(-1) }
        do { return try RunStore().claimName(name) } catch {
            Detach.fail(error)
            throw error
        }
    }

    func runAgent(_ p: Prepared) throws(AgentboxError) -> Int32 {
        // The run's claim on its name, held until it ends.
        let nameClaim = try claimName()
        defer { _ = nameClaim.raw }  // held (open) until here
        return try superviseAgent(p, json: json, resuming: nil)
    }

    /// `run -- CMD`: CMD is the agent; agentbox is its sandbox, journal and model gateway.
    func runCommandAgent() throws(AgentboxError) -> Int32 {
        for (given, flag) in [(task != nil, "--task"), (taskFile != nil, "--task-file"), (resumeIfExists, "--resume-if-exists"),
                              (!checkpointExclude.isEmpty, "--checkpoint-exclude"), (noCheckpoints, "--no-checkpoints"),
                              (maxToolCalls != nil, "--max-tool-calls"), (detach, "--detach"), (json, "--json")] where given {
            throw .usage("\(flag) does not apply to `run -- CMD` (bring your own agent)",
                         hint: flag.hasPrefix("--task") ? "pass the task on the agent's own command line" : "see agentbox run --help")
        }
        if let n = name { try checkRunName(n) }
        var budget = Budget()
        if let s = maxSteps { guard s > 0 else { throw .usage("--max-steps \(s): must be at least 1") }; budget.maxSteps = s }
        if let t = maxTokens { guard t > 0 else { throw .usage("--max-tokens \(t): must be at least 1") }; budget.maxTokens = t }
        if let c = maxCost { guard c > 0, c.isFinite else { throw .usage("--max-cost \(c): must be a positive amount of USD") }; budget.maxCost = c }
        // The upstreams: --base-url is for --model's provider (OpenAI when no --model is given).
        let chosen = try model.map { (m: String) throws(AgentboxError) -> ModelSpec in try ModelSpec.parse(m) }
        if chosen?.provider == .replay { throw .usage("--model replay: is for the built-in agent; a command's calls go to openai or anthropic") }
        let openaiSpec = try ModelSpec.parse("openai:agent", baseURL: chosen?.provider != .anthropic ? baseURL : nil)
        let anthropicSpec = try ModelSpec.parse("anthropic:agent", baseURL: chosen?.provider == .anthropic ? baseURL : nil)
        if (openaiSpec.apiKey ?? "").isEmpty && (anthropicSpec.apiKey ?? "").isEmpty {
            throw AgentboxError(stage: "model gateway", "neither OPENAI_API_KEY nor ANTHROPIC_API_KEY is set",
                                hint: "export the key of the provider the agent uses where agentbox runs; the agent gets a placeholder, never the key")
        }
        let prices = try PriceTable.load()
        var policy = try sandbox.resolve()
        AgentRun.applyDefaults(to: &policy)
        // The gateway's variables win over --env: a real key passed with --env would be in the sandbox.
        let inside: [(String, String)] = [
            ("OPENAI_BASE_URL", "http://127.0.0.1:\(AgentboxAPI.defaultPort)/v1"), ("OPENAI_API_KEY", ModelGateway.placeholderKey),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:\(AgentboxAPI.defaultPort)"), ("ANTHROPIC_API_KEY", ModelGateway.placeholderKey),
        ]
        for (k, _) in inside where policy.env.contains(where: { $0.0 == k }) {
            Console.warning("--env \(k) is replaced by the model gateway's value inside the sandbox")
        }
        policy.env.removeAll { e in inside.contains { $0.0 == e.0 } }
        policy.env += inside
        let nameClaim = (name != nil && !allowDuplicateName) ? try RunStore().claimName(name!) : Descriptor(-1)
        defer { _ = nameClaim.raw }
        let gateway = ModelGateway(openai: .init(base: openaiSpec.baseURL, key: openaiSpec.apiKey),
                                   anthropic: .init(base: anthropicSpec.baseURL, key: anthropicSpec.apiKey), budget: budget, prices: prices,
                                   allowProviderTools: allowProviderTools)
        let journaled = JournaledRun(name: name ?? "", policy: policy, argv: command) { Console.warning($0) }
        journaled.gateway = gateway
        if let g = ModelSpec.env("AGENTBOX_GRACE").flatMap(Double.init), g >= 0 { journaled.budgetGrace = g }
        journaled.gatewayFacts = .object([
            ("openai", .string(openaiSpec.baseURL)), ("anthropic", .string(anthropicSpec.baseURL)),
            ("max_steps", budget.maxSteps.map { .number(Double($0)) } ?? .null), ("max_tokens", budget.maxTokens.map { .number(Double($0)) } ?? .null),
            ("max_cost", budget.maxCost.map { .number($0) } ?? .null), ("allow_provider_tools", .bool(allowProviderTools)),
            ("options", sandbox.args.json(policy: policy)),
        ])
        let result = try Console.relayed(run: journaled.id) { () throws(AgentboxError) in
            let r = try journaled.run()
            return (r, journaled.outputDelivered)
        }
        if result.termination == .timedOut {
            Console.note("timeout after \(Units.formatDuration(policy.limits.timeout ?? 0)): the sandbox was killed")
        }
        return journaled.outcome.code
    }

    func readStdin() -> String {
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(0, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Runs (or, with `resuming`, continues) an agent run in the foreground: progress on stderr, the
/// answer on stdout, agentbox's own output through relays; a detached copy reports how it started.
func superviseAgent(_ p: RunCommand.Prepared, json: Bool, resuming: String?) throws(AgentboxError) -> Int32 {
    let display = Progress(model: "\(p.task.model.provider.rawValue):\(p.task.model.model)", json: json)
    let run = AgentRun(policy: p.policy, task: p.task, warn: { Console.warning($0) }, progress: display.show)
    run.resuming = resuming
    run.resumingFrom = p.journal
    if let g = ModelSpec.env("AGENTBOX_GRACE").flatMap(Double.init), g >= 0 { run.grace = g }
    if json {
        run.journalObserver = { line in Console.out(bytes: line) }
    }
    run.onJournaled = { id, journal in Detach.report(id: id, journal: journal) }
    let outcome: AgentOutcome
    do {
        outcome = try Console.relayed(run: run.id) { () throws(AgentboxError) in
            let o = try run.run()
            display.finish(o)
            return (o, true)
        }
    } catch {
        Detach.fail(error)
        throw error
    }
    return outcome.exitCode
}

/// What `resume` and `fork` take for the part of the run they start.
struct ContinueOptions: ParsableArguments {
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("Set a sandbox variable again (repeatable): values are not journaled, so every --env of the run must be given again.", valueName: "KEY=VALUE"))
    var env: [String] = []
    @Option(name: .customLong("max-steps"), parsing: .unconditional, help: ArgumentHelp("A new step budget (all steps of the run count).", valueName: "N")) var maxSteps: Int?
    @Option(name: .customLong("max-tool-calls"), parsing: .unconditional, help: ArgumentHelp("A new tool-call budget (all calls of the run count).", valueName: "N")) var maxToolCalls: Int?
    @Option(name: .customLong("max-tokens"), parsing: .unconditional, help: ArgumentHelp("A new token budget (all tokens of the run count).", valueName: "N")) var maxTokens: Int?
    @Option(name: .customLong("max-cost"), parsing: .unconditional, help: ArgumentHelp("A new cost budget in USD (all of the run's cost counts).", valueName: "USD")) var maxCost: Double?
    @Option(parsing: .unconditional, help: ArgumentHelp("Wall-clock limit for this part of the run (default: the run's own).", valueName: "DURATION")) var timeout: String?
    @Flag(help: "Continue in the background, print the run's id and return.") var detach = false
    @Flag(help: "Print the journal records on stdout as JSON lines while the run goes.") var json = false

    /// These options as `resume` arguments (without --detach).
    var arguments: [String] {
        var a: [String] = []
        for e in env { a += ["--env", e] }
        if let n = maxSteps { a += ["--max-steps", String(n)] }
        if let n = maxToolCalls { a += ["--max-tool-calls", String(n)] }
        if let n = maxTokens { a += ["--max-tokens", String(n)] }
        if let c = maxCost { a += ["--max-cost", String(c)] }
        if let t = timeout { a += ["--timeout", t] }
        if json { a.append("--json") }
        return a
    }
}

/// `agentbox resume RUN`: continue an agent run that stopped before it finished (docs/lifecycle.md).
struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue an agent run that stopped before it finished (interrupted, killed, stopped, out of budget or time).",
        discussion: """
            The conversation is rebuilt from the run's journal and the run goes on in the same workspace, with the \
            same sandbox options, under a new journal epoch. A tool call that completed is never run again; the call \
            that was running when the run stopped goes back to the model as an interrupted result (it may have run in \
            part), with a confession. Budgets continue from the journal's totals; the options below may raise them. \
            Exit codes as `run`; 125 when the run cannot be resumed (finished, running, an exec run).
            """)
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @OptionGroup var options: ContinueOptions
    @Flag(help: "Resume a run that was exported (it continues where it was imported) here anyway.") var force = false

    func run() throws { guarded { () throws(AgentboxError) -> Int32 in try go() } }

    func go() throws(AgentboxError) -> Int32 {
        let (id, prepared, name): (String, RunCommand.Prepared, String?)
        switch try prepare() {
        case let .recorded(code): return code
        case let .resume(i, p, n): (id, prepared, name) = (i, p, n)
        }
        if options.detach { return try Detach.start(json: options.json) }
        var claim: Int32 = -1
        // Name claims are this node's: a run taken over from another node keeps its own name.
        let takeover = RunStore().foreignOwner(id) != nil
        do throws(AgentboxError) { claim = try name.map { n throws(AgentboxError) in takeover ? -1 : try RunStore().claimName(n).release() } ?? -1 } catch {
            Detach.fail(error)  // a detached copy says why it did not start
            throw error
        }
        defer { if claim >= 0 { close(claim) } }  // the run's name, held until it ends
        return try superviseAgent(prepared, json: options.json, resuming: id)
    }

    /// The run to continue, checked, and how to run it; everything that can fail fails here, before
    /// the journal is touched.
    enum Plan {
        /// Continue run `id` with this policy and task; its name to claim.
        case resume(String, RunCommand.Prepared, String?)
        /// Nothing to run: the end was recorded (exit code).
        case recorded(Int32)
    }

    func prepare() throws(AgentboxError) -> Plan {
        let store = RunStore()
        let id = try store.resolve(target)
        // Every record: where the run is now (`run.imported`, `run.forked`) and its latest options
        // (`run.resumed`) may be anywhere in a long journal. `resume` reads it again under the run's
        // lock, and checks that nothing changed the run meanwhile.
        let scan = try JournalReader.scan(path: store.journalPath(id))
        let summary = RunSummary(id: id, journal: store.journalPath(id), scan: scan, live: store.isLive(id))
        guard summary.kind == "run" else { throw .usage("run \(id) is an `exec` run: only agent runs are resumed") }
        if let owner = store.foreignOwner(id), owner.isLive() {
            throw AgentboxError(stage: "resume", "run \(id) runs on another node (\(owner.description))",
                                hint: "it can be taken over once that node stops renewing its lease (AGENTBOX_LEASE_S, default 30 s)")
        }
        if store.isLive(id) { throw AgentboxError(stage: "resume", "run \(id) is running", hint: "stop it first, or follow it: agentbox logs -f \(id)") }
        switch summary.state {
        case "finished": throw AgentboxError(stage: "resume", "run \(id) finished (exit \(summary.exitCode.map(String.init) ?? "?")): there is nothing to resume", hint: "start a new run, or fork it")
        case "damaged": throw AgentboxError(stage: "resume", "the journal of run \(id) is damaged: \(summary.damage ?? "")", hint: "agentbox journal verify \(id)")
        default: break
        }
        let records = scan.records
        let move = records.last { $0.kind == .runExported || $0.kind == .runImported || $0.kind == .runForked || $0.kind == .runResumed }
        if let move, move.kind == .runExported, !force {
            throw AgentboxError(stage: "resume", "run \(id) was exported to \(move.data["file"]?.stringValue ?? "a file") (\(move.ts)): it continues where it is imported",
                                hint: "--force resumes it here anyway")
        }
        if let code = try recordDecidedFinish(store, id, records) { return .recorded(code) }
        guard var start = records.first(where: { $0.kind == .runStarted })?.data, let task = start["task"]?.stringValue,
              let provider = start["model"]?["provider"]?.stringValue, let model = start["model"]?["model"]?.stringValue else {
            throw AgentboxError(stage: "resume", "run \(id) has no run.started record to continue from")
        }
        // The latest part's options and budget (a resume may have raised them), else the start's.
        let latestResumed = records.last { $0.kind == .runResumed }
        let latest = latestResumed?.data
        var recorded = latest?["options"] ?? start["options"] ?? .null
        // Imported or forked: the workspace is elsewhere now; every path under it moves with it, and a
        // profile file that is not on this machine is found by its name (its digest must match). The
        // options of a resume after the move were recorded moved already.
        for placed in records where placed.kind == .runImported || placed.kind == .runForked {
            guard let old = placed.data["from"]?["workspace"]?.stringValue, let new = placed.data["workspace"]?.stringValue else { continue }
            if (latestResumed?.seq ?? 0) < placed.seq { recorded = Resume.moved(recorded, from: old, to: new) }
            start = Resume.moved(start, from: old, to: new)
            if let profile = recorded["profile"]?.stringValue, profile.hasPrefix("/"), !FileIO.exists(profile), let name = start["policy"]?["profile"]?.stringValue {
                recorded = .object((recorded.objectValue ?? []).filter { $0.0 != "profile" } + [("profile", .string(name))])
            }
        }
        guard var args = SandboxArgs(recorded: recorded, env: options.env) else {
            throw AgentboxError(stage: "resume", "run \(id) was recorded by an older agentbox, without its sandbox options", hint: "start a new run")
        }
        let given = Set(options.env.compactMap { EnvVar.split($0)?.0 })
        let missing = (recorded["env"]?.arrayValue?.compactMap(\.stringValue) ?? []).filter { !given.contains($0) }
        if !missing.isEmpty {
            throw .usage("the run had --env \(missing.joined(separator: ", ")), whose values are not journaled",
                         hint: "give them again: " + missing.map { "--env \($0)=..." }.joined(separator: " "))
        }
        if let t = options.timeout {
            args.timeout = t
            recorded = .object((recorded.objectValue ?? []).filter { $0.0 != "timeout" } + [("timeout", .string(t))])
        }
        let spec = try ModelSpec.resolve(model: provider + ":" + model, baseURL: start["model"]?["base_url"]?.stringValue)
        var budget = Budget()
        let b = latest?["budget"] ?? start["budget"] ?? .null
        budget.maxSteps = options.maxSteps ?? b["max_steps"]?.intValue
        budget.maxToolCalls = options.maxToolCalls ?? b["max_tool_calls"]?.intValue
        budget.maxTokens = options.maxTokens ?? b["max_tokens"]?.intValue
        budget.maxCost = options.maxCost ?? b["max_cost"]?.numberValue
        for (flag, n) in [("--max-steps", options.maxSteps), ("--max-tool-calls", options.maxToolCalls), ("--max-tokens", options.maxTokens)] where (n ?? 1) < 1 {
            throw .usage("\(flag) \(n!): must be at least 1")
        }
        if let c = options.maxCost, !(c > 0 && c.isFinite) { throw .usage("--max-cost \(c): must be a positive amount of USD") }
        let prices = try PriceTable.load()
        var policy = try args.resolve(cwd: recorded["workdir"]?.stringValue)
        // The same sandbox, or none: the agent had the workspace to itself, and could have replaced a
        // folder the options name with a symlink to the host, or removed what --hide hid.
        if let change = Resume.sandboxChange(recorded: start, now: policy) {
            throw AgentboxError(stage: "resume", "run \(id)'s sandbox would not be the same: \(change)",
                                hint: "the options resolve differently now (a path in the workspace was moved or replaced, or the profile changed); start a new run")
        }
        AgentRun.applyDefaults(to: &policy)
        let name = summary.name
        let agentTask = AgentTask(name: name ?? "", task: task, model: spec, budget: budget, prices: prices, options: recorded,
                                  checkpointExclude: AgentTask.checkpointExclude(recorded: start["checkpoints"]))
        return .resume(id, RunCommand.Prepared(policy: policy, task: agentTask, journal: scan), name)
    }

    /// `json` with every string that is `old` or a path under it moved to `new`.
    static func moved(_ json: JSON, from old: String, to new: String) -> JSON {
        switch json {
        case let .string(s) where s == old: return .string(new)
        case let .string(s) where s.hasPrefix(old + "/"): return .string(new + s.dropFirst(old.count))
        case let .array(a): return .array(a.map { moved($0, from: old, to: new) })
        case let .object(o): return .object(o.map { ($0.0, moved($0.1, from: old, to: new)) })
        default: return json
        }
    }

    /// How the sandbox a resume would build differs from the one `run.started` recorded (nil: same):
    /// every mount (source, target, kind), the network, the seccomp policy and Landlock mode, and the
    /// contents of the profile and seccomp files (their digests).
    static func sandboxChange(recorded start: JSON, now policy: SandboxPolicy) -> String? {
        let was = start["policy"] ?? .null
        let now = policy.json
        for key in ["workspace", "network", "seccomp", "landlock"] where was[key] != now[key] {
            return "its \(key) was \(was[key]?.serialized ?? "null"), now \(now[key]?.serialized ?? "null")"
        }
        let before = was["mounts"]?.arrayValue ?? [], after = now["mounts"]?.arrayValue ?? []
        if let gone = before.first(where: { !after.contains($0) }) { return "the mount \(gone.serialized) would be missing" }
        if let new = after.first(where: { !before.contains($0) }) { return "the mount \(new.serialized) would be new" }
        if start["profile_digest"] != JournaledRun.digest(policy.profile.path.isEmpty ? nil : policy.profile.path) {
            return "the profile file \(policy.profile.path) changed"
        }
        if start["seccomp_digest"] != JournaledRun.digest(policy.profile.seccomp) { return "the seccomp policy changed" }
        return nil
    }

    /// A run whose agent called `finish` but whose supervisor stopped before recording the end: the
    /// end is recorded now and nothing runs (the model must not be asked again). Returns the exit code.
    func recordDecidedFinish(_ store: RunStore, _ id: String, _ records: [JournalRecord]) throws(AgentboxError) -> Int32? {
        let sinceResume = records.reversed().prefix { $0.kind != .runResumed && $0.kind != .runEnded }
        guard let done = sinceResume.first(where: { $0.kind == .toolDone && $0.data["name"]?.stringValue == "finish" && $0.data["is_error"]?.boolValue == false }),
              let callID = done.data["id"]?.stringValue,
              let args = records.last(where: { $0.kind == .toolCall && $0.data["id"]?.stringValue == callID })?.data["arguments"],
              let status = args["status"]?.stringValue else { return nil }
        let code: Int32 = status == "success" ? 0 : 1
        let writer = try JournalWriter.reopen(dir: store.runsDir + "/" + id)
        var ended: [(String, JSON)] = [("state", "finished"), ("exit_code", .number(Double(code))),
                                       ("reason", .string("the agent called finish with status \(status); its supervisor stopped before recording the end, resume recorded it"))]
        ended.append(("status", .string(status)))
        if let summary = args["summary"]?.stringValue { ended.append(("summary", .string(summary))) }
        try writer.append(.runEnded, .object(ended), critical: true)
        try writer.finish()
        Console.note("run \(id) had finished (\(status)) before its supervisor stopped: recorded, nothing was run")
        if let summary = args["summary"]?.stringValue { Console.answer(summary) }
        return code
    }
}

func checkRunName(_ name: String) throws(AgentboxError) {
    guard !name.isEmpty, name.utf8.count <= 128, !name.contains("/") else {
        throw .usage("--name \(name): use 1-128 characters without '/'")
    }
}

/// The human progress of a run, on stderr. Everything the model, the tools or the server wrote is escaped
/// and cut to one line (`safe`, docs/security.md "Terminal output").
final class Progress {
    let model: String
    /// `run --json`: stdout carries the journal records only.
    let json: Bool
    init(model: String, json: Bool) {
        self.model = model
        self.json = json
    }

    static func clip(_ s: String, _ n: Int) -> String {
        let one = s.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? ""
        let more = one.count < s.trimmingSpaces().count
        if one.count > n { return String(one.prefix(n)) + "…" }
        return more ? one + " …" : one
    }

    static func tokens(_ n: Int) -> String { n >= 10_000 ? "\(n / 1000)k" : n >= 1000 ? "\(n / 100 / 10).\(n / 100 % 10)k" : "\(n)" }
    static func money(_ c: Double?) -> String {
        guard let c else { return "$?" }
        if c == 0 { return "$0" }
        if c < 0.01 { return "$\((c * 10000).rounded() / 10000)" }
        return "$\((c * 100).rounded() / 100)"
    }
    static func clock(_ s: Double) -> String {
        let t = Int(s)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return t >= 3600 ? "\(t / 3600)h\(two(t / 60 % 60))m" : "\(t / 60):\(two(t % 60))"
    }

    func show(_ e: AgentEvent) {
        switch e {
        case let .started(id, journal):
            Console.write("agentbox: run \(safe(id)) · \(safe(model)) · journal \(safe(journal))")
        case let .modelResponse(step, turn, seconds, attempts, total, cost, elapsed):
            var line = "step \(step) · model \(Int(seconds * 10) / 10 == 0 ? String(Int(seconds * 1000)) + " ms" : String(Double(Int(seconds * 10)) / 10) + " s")"
            if attempts > 1 { line += " (\(attempts) attempts)" }
            line += " · \(Progress.tokens(total)) tokens · \(Progress.money(cost)) · \(Progress.clock(elapsed))"
            Console.write(Style.bold(line))
            if !turn.text.trimmingSpaces().isEmpty { Console.write("  " + Style.dim(safe(Progress.clip(turn.text, 160)))) }
            if let refusal = turn.refusal { Console.write("  refused: " + safe(Progress.clip(refusal, 160))) }
        case let .tool(name, args):
            let detail: String
            switch name {
            case "shell": detail = "$ " + safe(Progress.clip(args["command"]?.stringValue ?? "", 140))
            case "read_file", "write_file", "edit_file": detail = "\(name) \(safe(args["path"]?.stringValue ?? "?"))"
            case "confess", "finish": return  // shown as their own events
            default: detail = "\(safe(name)) \(safe(Progress.clip(args.serialized, 100)))"
            }
            Console.write("  " + detail)
        case let .toolDone(name, result, isError, seconds):
            if name == "confess" || name == "finish" { return }
            var text = safe(Progress.clip(result, 140))
            let lines = result.split(separator: "\n", omittingEmptySubsequences: true)
            if name == "read_file" && !isError { text = "\(result.split(separator: "\n", omittingEmptySubsequences: false).count) lines" }
            if name == "shell", lines.count > 1 {
                text = safe(String(lines[0])) + " · " + safe(Progress.clip(String(lines[lines.count - 1]), 110))
            }
            let mark = isError ? "✗" : "→"
            Console.write(Style.dim("    \(mark) \(text)\(seconds >= 0.1 ? " (\(Double(Int(seconds * 10)) / 10) s)" : "")"))
        case let .confession(severity, category, summary, by):
            Console.write("  confess \(safe(severity))/\(safe(category))\(by == "agent" ? "" : " (by agentbox)"): \(safe(summary))")
        case let .note(text):
            Console.write("agentbox: \(safe(text))")
        }
    }

    func finish(_ o: AgentOutcome) {
        var line = "agentbox: \(o.state)"
        if let s = o.status { line += " (\(s))" }
        line += " · \(o.steps) step\(o.steps == 1 ? "" : "s") · \(Progress.tokens(o.usage.total)) tokens · \(Progress.money(o.cost)) · \(Progress.clock(o.elapsed)) · exit \(o.exitCode)"
        Console.write(Style.bold(line))
        Console.write("  " + safe(o.reason))
        Console.write(Style.dim("  see: agentbox logs \(o.id) · agentbox confessions \(o.id)"))
        // The agent's answer is the run's output, on stdout (`summary=$(agentbox run ...)`), as
        // `claude -p` and `codex exec` print theirs; escaped when stdout is a terminal.
        if !json, let summary = o.summary { Console.answer(summary) }
    }
}


/// `run --detach`: the foreground process validates, starts a copy of itself in a new session without a
/// terminal, waits until the run is journaled, prints its id and returns. The copy reports through a
/// pipe named by AGENTBOX_DETACH_FD.
enum Detach {
    nonisolated(unsafe) static var fd: Int32 = {
        guard let v = getenv("AGENTBOX_DETACH_FD"), let n = Int32(String(cString: v)) else { return -1 }
        unsetenv("AGENTBOX_DETACH_FD")
        return n
    }()

    /// Starts the background copy: this command line without --detach, or agentbox with `arguments`.
    static func start(json: Bool, arguments: [String]? = nil) throws(AgentboxError) -> Int32 {
        var p: [Int32] = [-1, -1]
        guard pipe(&p) == 0 else { throw AgentboxError(stage: "detach", "pipe: \(FileIO.errnoString())") }
        _ = fcntl(p[0], F_SETFD, FD_CLOEXEC)
        var args = CommandLine.arguments
        args.removeAll { $0 == "--detach" }
        if let arguments { args = [CommandLine.arguments[0]] + arguments }
        // The background copy must not keep anything of ours open (a caller waiting for our stdout's
        // EOF would wait for the whole run): everything but 0-2 and the report pipe closes on exec.
        if let dir = opendir("/proc/self/fd") {
            var fds: [Int32] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if let fd = Int32(name), fd > 2, fd != p[1] { fds.append(fd) }
            }
            closedir(dir)
            for fd in fds { _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC) }
        }
        setenv("AGENTBOX_DETACH_FD", String(p[1]), 1)
        var exe = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &exe, exe.count - 1)
        guard n > 0 else { throw AgentboxError(stage: "detach", "cannot read /proc/self/exe") }
        var cArgs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var actions = posix_spawn_file_actions_t()
        var attr = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attr)
        defer { posix_spawn_file_actions_destroy(&actions); posix_spawnattr_destroy(&attr) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawnattr_setflags(&attr, 0x80 /* POSIX_SPAWN_SETSID */)
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, &cArgs, environ)
        unsetenv("AGENTBOX_DETACH_FD")
        close(p[1])
        defer { close(p[0]) }
        guard rc == 0 else { throw AgentboxError(stage: "detach", "cannot start the background supervisor: \(FileIO.errnoString(rc))") }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let r = read(p[0], &buf, buf.count)
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            bytes += buf[0..<r]
        }
        let text = String(decoding: bytes, as: UTF8.self)
        if text.hasPrefix("ok ") {
            let parts = text.dropFirst(3).split(separator: " ", maxSplits: 1).map { String($0).trimmingSpaces() }
            if json {
                Console.out(JSON.object([("id", .string(parts[0])), ("journal", .string(parts.count > 1 ? parts[1] : "")),
                                         ("pid", .number(Double(pid)))]).serialized)
            } else {
                Console.out(parts[0])
            }
            return 0
        }
        if text.hasPrefix("error ") { throw AgentboxError(stage: "detach", String(text.dropFirst(6)).trimmingSpaces()) }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        throw AgentboxError(stage: "detach", "the background supervisor exited (status \(status >> 8)) before the run started")
    }

    /// In the detached copy: the run is journaled; tell the foreground and move stderr to the run's log.
    static func report(id: String, journal: String) {
        guard fd >= 0 else { return }
        let dir = String(journal[..<journal.lastIndex(of: "/")!])
        let log = open(dir + "/supervisor.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if log >= 0 { dup2(log, 2); close(log) }
        let line = Array("ok \(id) \(journal)\n".utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        fd = -1
    }

    static func fail(_ error: AgentboxError) {
        guard fd >= 0 else { return }
        let line = Array("error \(error.stage): \(error.message)\(error.hint.isEmpty ? "" : " (\(error.hint))")\n".utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        fd = -1
    }
}

/// Waits until the run's writer is gone; false on timeout.
func waitForEnd(_ store: RunStore, _ id: String, seconds: Double) -> Bool {
    let deadline = Timing.now() + seconds
    while Timing.now() < deadline {
        if !store.isLive(id) { return true }
        usleep(20_000)
    }
    return !store.isLive(id)
}

/// Records a SIGKILLed supervisor's end: the writer is gone, so this process may write.
func recordKilled(_ store: RunStore, _ id: String, reason: String) throws(AgentboxError) {
    let writer = try JournalWriter.reopen(dir: store.runsDir + "/" + id)
    try writer.append(RecordType.runEnded, .object([("state", "killed"), ("exit_code", 137), ("reason", .string(reason))]), critical: true)
    try writer.finish()
}

/// The supervisor of a live run, as a pidfd (closed with this): the pid comes from the run's lock
/// file, and the kernel's lock table (/proc/locks) must show that very process holding that lock after
/// the pidfd is open, so a pid reused by an unrelated process is never signalled.
final class Supervisor {
    let store = RunStore()
    let id: String
    let pid: pid_t
    let pidfd: Descriptor

    init(_ target: String) throws(AgentboxError) {
        let id = try store.resolve(target, running: true)
        self.id = id
        if let owner = store.foreignOwner(id), owner.isLive() {
            throw AgentboxError(stage: "run", "run \(id) runs on another node (\(owner.description))", hint: "stop it there", exitCode: 1)
        }
        // A writer that took the run over from another node holds no lock here: its claim names it,
        // with its start time (a pid used again is not it).
        if let claim = Lease.current(store.runsDir + "/" + id), claim.node == Lease.node(), claim.isLive() {
            pid = claim.pid
            pidfd = Descriptor(ab_pidfd_open(claim.pid))
            guard pidfd.isValid, Lease.startTime(claim.pid) == claim.start else {
                throw AgentboxError(stage: "run", "run \(id) is not running (its supervisor, pid \(claim.pid), is gone)", exitCode: 1)
            }
            return
        }
        let summary = try store.summary(id, full: false)
        let lockPath = store.runsDir + "/" + id + "/lock"
        // A run that ended but still delivers its output to a slow reader holds its lock: it can be stopped.
        guard summary.state == "running" || store.isLive(id), let text = FileIO.readSmall(lockPath), let pid = pid_t(text.trimmingSpaces()), pid > 0 else {
            throw AgentboxError(stage: "run", "run \(id) is not running (state: \(summary.state))", exitCode: 1)
        }
        self.pid = pid
        pidfd = Descriptor(ab_pidfd_open(pid))
        var st = stat()
        guard pidfd.isValid, stat(lockPath, &st) == 0 else {
            throw AgentboxError(stage: "run", "run \(id) is not running (its supervisor, pid \(pid), is gone)", exitCode: 1)
        }
        // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        let holds = (FileIO.readSmall("/proc/locks") ?? "").split(separator: "\n").contains { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, f[1] == "FLOCK", pid_t(f[4]) == pid else { return false }
            return f[5].split(separator: ":").last.flatMap { UInt64($0) } == UInt64(st.st_ino)
        }
        guard holds else { throw AgentboxError(stage: "run", "run \(id) is not running (pid \(pid) does not hold its lock)", exitCode: 1) }
    }

    func signal(_ sig: Int32) throws(AgentboxError) {
        guard ab_pidfd_send_signal(pidfd.raw, sig) == 0 else {
            throw AgentboxError(stage: "signal", "signal \(sig) to pid \(pid): \(FileIO.errnoString())")
        }
    }

    /// SIGKILL, then the end record the dead writer could not write.
    func kill(reason: String) throws(AgentboxError) {
        try signal(SIGKILL)
        guard waitForEnd(store, id, seconds: 10) else {
            throw AgentboxError(stage: "kill", "run \(id) still has a writer 10 s after SIGKILL to pid \(pid)")
        }
        try recordKilled(store, id, reason: reason)
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a run: SIGTERM, the current tool may finish within the grace period, then SIGKILL.",
        discussion: "An agent run ends with state interrupted and exit code 75 (resumable); an exec run's command gets SIGTERM.")
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Seconds to wait before SIGKILL (default: the run's own grace period, 10 s unless AGENTBOX_GRACE said otherwise when it started, plus 5).", valueName: "SECONDS"))
    var grace: Double?
    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            if let g = grace, !(g >= 0 && g.isFinite) { throw .usage("--grace \(g): must be 0 or more seconds") }
            let s = try Supervisor(target)
            let recorded = (try? s.store.summary(s.id, full: false))?.grace
            let grace = self.grace ?? (recorded ?? Sandbox.gracePeriod) + 5
            try s.signal(SIGTERM)
            Console.note("sent SIGTERM to run \(s.id) (supervisor pid \(s.pid)); waiting up to \(Int(grace)) s")
            if !waitForEnd(s.store, s.id, seconds: grace) {
                Console.warning("run \(s.id) did not stop within \(Int(grace)) s: sending SIGKILL")
                try s.kill(reason: "SIGKILL by `agentbox stop` after a \(Int(grace)) s grace period")
            }
            let summary = try s.store.summary(s.id, full: false)
            Console.note("run \(s.id): \(summary.state), exit code \(summary.exitCode.map { String($0) } ?? "-")")
            return 0
        }
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Kill a run now: SIGKILL to its supervisor (the sandbox dies with it); the journal records it.")
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let s = try Supervisor(target)
            try s.kill(reason: "SIGKILL by `agentbox kill`")
            Console.note("run \(s.id): killed")
            return 0
        }
    }
}
