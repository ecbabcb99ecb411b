import AgentboxCore
import AgentboxJournal
import AgentboxSandbox
import AgentboxSupervisor
import ArgumentParser
import Glibc

let agentboxVersion = AgentboxVersion.string

/// stderr output for people: `agentbox: ...`, warnings in colour on a terminal (not with NO_COLOR).
///
/// `error`, `warning` and `note` escape their text (`TerminalText.line`): messages embed names, paths, and
/// what servers and sandboxes said. `write` and `out` print what they are given: callers escape every
/// piece of text agentbox did not write before they add their own formatting (docs/security.md,
/// "Terminal output").
enum Console {
    static let color = isatty(2) == 1 && getenv("NO_COLOR") == nil

    /// While a run supervises its sandbox, what agentbox writes goes through this relay: a reader that
    /// stalls (a pipe nobody reads) must not stall the supervision loop. Lines that do not fit are
    /// dropped and counted (the journal has everything).
    nonisolated(unsafe) static var relays: (out: OutputRelay, err: OutputRelay)? = nil
    /// Set once agentbox gave up on a reader of its stderr that stopped reading (a stop signal came
    /// while it waited): later messages are written only if stderr can take them at once.
    nonisolated(unsafe) static var stalled = false
    nonisolated(unsafe) static var lateSignals: StopSignals? = nil

    static func write(_ text: String) {
        var s = text
        if !s.hasSuffix("\n") { s += "\n" }
        let bytes = Array(s.utf8)
        if let relays { return relays.err.write(bytes) }
        if stalled { return writeIfReady(bytes) }
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
    static func error(_ e: AgentboxError) {
        let label = color ? "\u{1B}[1;31merror\u{1B}[0m" : "error"
        let safe = TerminalText.line
        write("agentbox: \(label): \(safe(e.stage)): \(safe(e.message))" + (e.hint.isEmpty ? "" : "\n  hint: \(safe(e.hint))"))
    }
    static func warning(_ message: String) {
        let label = color ? "\u{1B}[1;33mwarning\u{1B}[0m" : "warning"
        write("agentbox: \(label): \(TerminalText.line(message))")
    }
    /// Runs `body` (a run being supervised) with agentbox's own messages going through relays, so a
    /// stalled stdout or stderr never stalls the supervision loop; then delivers them: waits until the
    /// reader took what is queued, unless `body` says delivery was given up (a stop signal), and says
    /// what was dropped without blocking on a reader that is stuck.
    static func relayed<T>(run id: @autoclosure () -> String, _ body: () throws(AgentboxError) -> (T, delivered: Bool)) throws(AgentboxError) -> T {
        // The stop signals stay blocked until agentbox exits: one that comes after the sandbox's
        // supervision (while the result is journaled, or later) is not fatal; the exit code stays.
        lateSignals = lateSignals ?? StopSignals()
        let relays = (out: OutputRelay(fd: 1, capacity: 16 << 20, overflow: .drop), err: OutputRelay(fd: 2, capacity: 1 << 20, overflow: .drop))
        Console.relays = relays
        var delivered = true
        defer {
            Console.relays = nil
            // stderr first (the terminal, usually); a stop signal ends the wait for both.
            let complete = delivered && relays.err.finishUnlessSignalled() && relays.out.finishUnlessSignalled()
            if !complete { stalled = true }
            let dropped = relays.out.dropped + relays.err.dropped
            if dropped > 0 || !complete {
                let what = dropped > 0 ? "\(dropped) bytes of agentbox's output were dropped" : "agentbox's output was not all delivered"
                let run = id()
                warning("\(what): its reader did not keep up; the journal has everything" + (run.isEmpty ? "" : " (agentbox logs \(run))"))
            }
        }
        let (value, done) = try body()
        delivered = done
        return value
    }

    /// A line to stderr only if it can take it now (a reader that stopped reading must not hold agentbox).
    static func writeIfReady(_ bytes: [UInt8]) {
        var p = pollfd(fd: 2, events: Int16(POLLOUT), revents: 0)
        guard poll(&p, 1, 0) == 1, p.revents & Int16(POLLOUT) != 0 else { return }
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    static func note(_ message: String) { write("agentbox: \(TerminalText.line(message))") }
    /// A line to stdout, written at once (no stdio buffering: `logs -f --json | consumer` sees each
    /// record as it comes, and nothing is lost if the reader is killed).
    static func out(_ text: String) { out(bytes: Array((text + "\n").utf8)) }

    /// The agent's answer on stdout: as written for a pipe, escaped for a terminal (the model wrote it).
    static func answer(_ text: String) { out(isatty(1) == 1 ? TerminalText.block(text) : text) }

    static func out(bytes: [UInt8]) {
        if let relays { return relays.out.write(bytes) }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(1, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EPIPE {
                // The reader went away (`confessions -f | head -1`): end as a pipeline expects, as if
                // SIGPIPE were not ignored. (Runs never write here while they run: see SIGPIPE below.)
                signal(SIGPIPE, SIG_DFL)
                raise(SIGPIPE)
            }
            if n <= 0 { return }
            off += n
        }
    }
}

struct SandboxFlags: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp("Profile name or path to a profile file.", valueName: "NAME|PATH"))
    var profile: String = "workspace-write"

    @Option(parsing: .unconditional, help: ArgumentHelp("The workspace, bound read-write at the same path and used as the starting directory (default: the current directory).", valueName: "DIR"))
    var workspace: String?

    @Option(name: .customLong("ro"), parsing: .unconditionalSingleValue, help: ArgumentHelp("Also bind PATH read-only (repeatable).", valueName: "PATH"))
    var ro: [String] = []

    @Option(name: .customLong("rw"), parsing: .unconditionalSingleValue, help: ArgumentHelp("Also bind PATH read-write (repeatable).", valueName: "PATH"))
    var rw: [String] = []

    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("Hide PATH behind an empty read-only directory or file (repeatable).", valueName: "PATH"))
    var hide: [String] = []

    @Option(parsing: .unconditional, help: ArgumentHelp("none (or loopback): a private network namespace whose own loopback is up; no route to the host or the internet. allow:RULES: also agentbox's proxy at 127.0.0.1:3128 inside (HTTP_PROXY etc. are set), reaching only what RULES allow: comma-separated host, *.suffix, host:port, !rule to deny (denials win); IP addresses and the host's own networks only when a rule names the address. Example: allow:pypi.org,files.pythonhosted.org:443", valueName: "MODE"))
    var network: String?

    @Option(name: .customLong("add-host"), parsing: .unconditionalSingleValue, help: ArgumentHelp("With --network allow: the proxy resolves NAME to IP (repeatable; as Docker's --add-host). The name still needs an allow rule; its address counts as named.", valueName: "NAME:IP"))
    var addHost: [String] = []

    @Option(parsing: .unconditional, help: ArgumentHelp("Memory limit for the whole sandbox, e.g. 512M, 2G (OOM kill -> exit 137).", valueName: "SIZE"))
    var memory: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("Maximum number of processes and threads in the sandbox.", valueName: "N"))
    var pids: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("CPU limit in CPUs, fractional allowed (e.g. 0.5).", valueName: "N"))
    var cpus: Double?

    @Option(parsing: .unconditional, help: ArgumentHelp("Wall-clock limit, e.g. 90s, 30m, 2h; the whole sandbox is killed (exit 124).", valueName: "DURATION"))
    var timeout: String?

    @Option(name: .customLong("tmp-size"), parsing: .unconditional, help: ArgumentHelp("Size cap of the private /tmp and /dev/shm.", valueName: "SIZE"))
    var tmpSize: String?

    @Option(name: .customLong("journal-output"), parsing: .unconditional, help: ArgumentHelp("Command output a journaled run stores (default 256M); past it output is still shown but only counted. The journal also stops storing output when its disk runs low.", valueName: "SIZE"))
    var journalOutput: String?

    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("Set an environment variable in the sandbox (repeatable). The host environment is not inherited.", valueName: "KEY=VALUE"))
    var env: [String] = []

    @Flag(name: .customLong("strict-limits"), help: "Fail instead of falling back to rlimits when a limit cannot be enforced by a cgroup.")
    var strictLimits = false

    /// The options as plain values (shared with the `exec` fast path).
    var args: SandboxArgs {
        SandboxArgs(profile: profile, workspace: workspace, ro: ro, rw: rw, hide: hide, network: network, addHost: addHost, memory: memory,
                    pids: pids, cpus: cpus, timeout: timeout, tmpSize: tmpSize, journalOutput: journalOutput, env: env,
                    strictLimits: strictLimits)
    }

    func resolve() throws(AgentboxError) -> SandboxPolicy { try args.resolve() }
}

extension SandboxArgs {
    /// What `run.started` records of them (docs/lifecycle.md): paths absolute, the workspace and the
    /// starting directory as resolved, `--env` by name only (values can be secrets: `resume` asks again).
    func json(policy: SandboxPolicy) -> JSON {
        func abs(_ paths: [String]) -> JSON { .array(paths.map { .string(AgentboxPaths.absolute($0)) }) }
        func opt(_ v: String?) -> JSON { v.map { .string($0) } ?? .null }
        return .object([
            // The profile file it resolved to (a name is looked up again otherwise, maybe elsewhere).
            ("profile", .string(policy.profile.path.isEmpty ? profile : policy.profile.path)),
            ("workspace", .string(policy.workspace)), ("workdir", .string(policy.workdir)),
            ("ro", abs(ro)), ("rw", abs(rw)), ("hide", abs(hide)), ("network", opt(network)),
            ("add_host", .array(addHost.map { .string($0) })),
            ("memory", opt(memory)), ("pids", pids.map { .number(Double($0)) } ?? .null), ("cpus", cpus.map { .number($0) } ?? .null),
            ("timeout", opt(timeout)), ("tmp_size", opt(tmpSize)), ("journal_output", opt(journalOutput)),
            ("env", .array(env.compactMap { EnvVar.split($0).map { .string($0.0) } })), ("strict_limits", .bool(strictLimits)),
        ])
    }

    /// The options a run recorded, with `env` (KEY=VALUE) given again; nil when it recorded none.
    init?(recorded o: JSON, env: [String]) {
        guard o.objectValue != nil, let profile = o["profile"]?.stringValue else { return nil }
        func list(_ key: String) -> [String] { o[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }
        self.init(profile: profile, workspace: o["workspace"]?.stringValue, ro: list("ro"), rw: list("rw"), hide: list("hide"),
                  network: o["network"]?.stringValue, addHost: list("add_host"), memory: o["memory"]?.stringValue, pids: o["pids"]?.intValue,
                  cpus: o["cpus"]?.numberValue, timeout: o["timeout"]?.stringValue, tmpSize: o["tmp_size"]?.stringValue,
                  journalOutput: o["journal_output"]?.stringValue, env: env, strictLimits: o["strict_limits"]?.boolValue ?? false)
    }
}

/// The sandbox options as given on the command line, before validation.
struct SandboxArgs {
    var profile = "workspace-write"
    var workspace: String? = nil
    var ro: [String] = []
    var rw: [String] = []
    var hide: [String] = []
    var network: String? = nil
    var addHost: [String] = []
    var memory: String? = nil
    var pids: Int? = nil
    var cpus: Double? = nil
    var timeout: String? = nil
    var tmpSize: String? = nil
    var journalOutput: String? = nil
    var env: [String] = []
    var strictLimits = false

    func options() throws(AgentboxError) -> SandboxOptions {
        var o = SandboxOptions()
        o.profile = profile
        o.workspace = workspace
        o.ro = ro
        o.rw = rw
        o.hide = hide
        if let n = network {
            do { o.network = try Profile.Network(parsing: n) } catch { throw .usage("--network \(n): " + error.message, hint: error.hint) }
        }
        for item in addHost {
            guard let colon = item.firstIndex(of: ":"), case let name = String(item[..<colon]).lowercased(),
                  NetworkRules.validName(name), let ip = IPAddress(String(item[item.index(after: colon)...].filter { $0 != "[" && $0 != "]" })) else {
                throw .usage("--add-host \(item): expected NAME:IP", hint: "e.g. --add-host pkgs.internal:10.0.0.5 or --add-host name:[fd00::1]")
            }
            o.addHosts.append((name, ip))
        }
        if let m = memory {
            guard let bytes = Units.parseSize(m), bytes >= 1 << 20 else {
                throw .usage("--memory \(m): not a size of at least 1M", hint: "e.g. --memory 512M or --memory 2G")
            }
            o.memory = bytes
        }
        if let p = pids {
            guard p > 0 else { throw .usage("--pids \(p): must be at least 1") }
            o.pids = p
        }
        if let c = cpus {
            guard c > 0, c.isFinite else { throw .usage("--cpus \(c): must be a positive number of CPUs") }
            o.cpus = c
        }
        if let t = timeout {
            guard let seconds = Units.parseDuration(t) else {
                throw .usage("--timeout \(t): not a duration", hint: "e.g. --timeout 90s, 30m, 2h or 1h30m")
            }
            o.timeout = seconds
        }
        if let t = tmpSize {
            guard let bytes = Units.parseSize(t), bytes >= 64 << 10 else {
                throw .usage("--tmp-size \(t): not a size of at least 64K", hint: "e.g. --tmp-size 256M")
            }
            o.tmpSize = bytes
        }
        if let j = journalOutput {
            guard let bytes = Units.parseSize(j) else {
                throw .usage("--journal-output \(j): not a size", hint: "e.g. --journal-output 64M or 2G")
            }
            o.journalOutput = bytes
        }
        for assignment in env {
            guard let kv = EnvVar.split(assignment) else {
                throw .usage("--env \(assignment): expected KEY=VALUE with a valid variable name")
            }
            o.env.append(kv)
        }
        o.strictLimits = strictLimits
        return o
    }

    /// The policy these options give; `cwd` stands for the current directory (resume: the run's).
    func resolve(cwd: String? = nil) throws(AgentboxError) -> SandboxPolicy {
        let o = try options()
        let profile = try ProfileStore.load(o.profile)
        var here = cwd ?? ""
        if cwd == nil { here = try currentDirectory(needed: o.workspace == nil) }
        let policy = try PolicyResolver.resolve(profile: profile, options: o, cwd: here, host: RealHostPaths(),
                                                protected: ProtectedPaths.current(profile: profile))
        for p in policy.protections {
            Console.note("\(p.access == .hidden ? "hiding" : "making read-only") \(p.path) inside the sandbox: it is \(p.what)")
        }
        return policy
    }
}

enum Timing {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// The current directory. When it is gone (deleted or moved away under the shell) and it is `needed`
/// (it would be the workspace), that is the error; otherwise "/" stands in for it.
func currentDirectory(needed: Bool = false) throws(AgentboxError) -> String {
    guard let p = getcwd(nil, 0) else {
        let err = errno
        if needed {
            throw AgentboxError(stage: "workspace", err == ENOENT ? "the current directory no longer exists (deleted or moved)" : "cannot read the current directory: \(FileIO.errnoString(err))",
                                hint: "cd to the project directory again, or pass --workspace DIR")
        }
        return "/"
    }
    defer { free(p) }
    return String(cString: p)
}

/// Runs a command body and turns AgentboxError into the documented message and exit code.
func guarded(_ body: () throws(AgentboxError) -> Int32) -> Never {
    do {
        exit(try body())
    } catch {
        Console.error(error)
        exit(error.exitCode)
    }
}

extension Agentbox {
    /// The first of `words` (a command line after `agentbox`) that should name a subcommand and names
    /// none, with the command path before it and the names it could have been; nil when all is well.
    static func unknownCommand(_ words: [String]) -> (String, [String], [String])? {
        var command: ParsableCommand.Type = Agentbox.self
        var path = ["agentbox"]
        for word in words {
            let subcommands = command.configuration.subcommands
            if word.hasPrefix("-") || subcommands.isEmpty { return nil }  // options, or a leaf's arguments
            guard let next = subcommands.first(where: { $0._commandName == word }) else {
                return word == "help" && path.count == 1 ? nil : (word, path, subcommands.map { $0._commandName })
            }
            command = next
            path.append(word)
        }
        return nil
    }
}

struct Agentbox: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentbox",
        abstract: "Run AI agents and commands in Linux sandboxes.",
        discussion: """
            `run` hands a task to an agent in a sandbox (exit 0 success, 1 failure or aborted, 3 budget, 75 stopped (resume continues it), \
            124 timeout, 125 agentbox failed); `exec` runs one command (its own status; 124 timeout; 125 agentbox \
            failed, the message names the stage; 126 not executable; 127 not found; 128+N killed by signal N, 137 also \
            for an OOM kill). See docs/cli.md.
            """,
        version: "agentbox \(agentboxVersion)",
        subcommands: [Exec.self, RunCommand.self, Resume.self, Fork.self, Export.self, Import.self, Stop.self, Kill.self, PS.self, Logs.self, Inspect.self, Confessions.self, Remove.self, Prune.self, JournalCommand.self,
                      ModelCommand.self, ProfileCommand.self, Doctor.self, Version.self])
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one command in a fresh sandbox.",
        discussion: """
            The command runs in new user, pid, mount, network, uts, ipc and cgroup namespaces with a new root: \
            read-only system directories, the workspace read-write, a private /tmp, a minimal /dev, no capabilities, \
            no_new_privs, Landlock and a seccomp filter. Standard input and output are passed through; the exit \
            status is the command's. Example: agentbox exec --memory 1G --timeout 10m -- make test
            """)

    @OptionGroup(title: "Sandbox options") var sandbox: SandboxFlags

    @Option(parsing: .unconditional, help: ArgumentHelp("Make a journaled run with this name (see `agentbox ps`, `logs`, `inspect`); without it the run is ephemeral. Refused while a running run has the name.", valueName: "NAME"))
    var name: String?

    @Flag(name: .customLong("allow-duplicate-name"), help: "With --name: start even if a running run has the same name (stop and kill then need the id).")
    var allowDuplicateName = false

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "CMD"))
    var command: [String] = []

    func run() throws { runExec(sandbox.args, name: name, allowDuplicateName: allowDuplicateName, command: command) }

    /// The hot path: `exec` with long options in their `--option value` form and the command after `--`.
    /// Anything else (`--help`, `--option=value`, an unknown or repeated option, a bad number) returns nil
    /// and goes through ArgumentParser, which owns the definitions, the help and the error messages.
    /// Saves ArgumentParser's first-use cost (1-2 ms) on every sandbox start.
    static func fastParse(_ argv: ArraySlice<String>) -> (SandboxArgs, String?, [String])? {
        var a = SandboxArgs()
        var name: String? = nil
        var seen = Set<String>()
        var i = argv.startIndex
        while i < argv.endIndex {
            let arg = argv[i]
            if arg == "--" { return (a, name, Array(argv[(i + 1)...])) }
            if arg == "--strict-limits" { a.strictLimits = true; i += 1; continue }
            guard i + 1 < argv.endIndex else { return nil }
            let value = argv[i + 1]
            let repeatable = ["--ro", "--rw", "--hide", "--env", "--add-host"].contains(arg)
            if !repeatable && !seen.insert(arg).inserted { return nil }
            switch arg {
            case "--profile": a.profile = value
            case "--workspace": a.workspace = value
            case "--ro": a.ro.append(value)
            case "--rw": a.rw.append(value)
            case "--hide": a.hide.append(value)
            case "--network": a.network = value
            case "--add-host": a.addHost.append(value)
            case "--memory": a.memory = value
            case "--pids": guard let n = Int(value) else { return nil }; a.pids = n
            case "--cpus": guard let n = Double(value) else { return nil }; a.cpus = n
            case "--timeout": a.timeout = value
            case "--tmp-size": a.tmpSize = value
            case "--journal-output": a.journalOutput = value
            case "--env": a.env.append(value)
            case "--name": name = value
            default: return nil
            }
            i += 2
        }
        return nil  // no `--`: let ArgumentParser explain
    }
}

/// `agentbox exec`: build the sandbox (journaled with a name), run the command, exit with its status.
func runExec(_ sandbox: SandboxArgs, name: String?, allowDuplicateName: Bool = false, command: [String]) -> Never {
    guarded { () throws(AgentboxError) -> Int32 in
        guard !command.isEmpty else {
            throw .usage("no command given", hint: "usage: agentbox exec [OPTIONS] -- CMD [ARG...]")
        }
        let t0 = Timing.now()
        let policy = try sandbox.resolve()
        if getenv("AGENTBOX_TIMING") != nil { Console.note("timing: policy \(Int((Timing.now() - t0) * 1e6)) us") }
        let result: SandboxResult
        if let name {
            guard !name.isEmpty, name.utf8.count <= 128, !name.contains("/") else {
                throw .usage("--name \(name): use 1-128 characters without '/'")
            }
            let claim = allowDuplicateName ? Descriptor(-1) : try RunStore().claimName(name)
            defer { _ = claim.raw }  // held (open) until here
            let journaled = JournaledRun(name: name, policy: policy, argv: command) { Console.warning($0) }
            result = try Console.relayed(run: journaled.id) { () throws(AgentboxError) in
                let r = try journaled.run()
                return (r, journaled.outputDelivered)
            }
        } else {
            let box = Sandbox(policy: policy, argv: command) { Console.warning($0.message) }
            result = try box.run(delegate: UnjournaledServices(sandbox: box.id) { Console.warning($0) })
        }
        switch result.termination {
        case .timedOut:
            Console.note("timeout after \(Units.formatDuration(policy.limits.timeout ?? 0)): the sandbox was killed")
        case let .notExecuted(_, reason):
            Console.note(reason)
        default: break
        }
        if result.report.oomKills > 0 {
            Console.note("memory limit \(Units.formatSize(policy.limits.memory ?? 0)) reached: the OOM killer killed \(result.report.oomKills) process(es) in the sandbox")
        }
        return result.exitCode
    }
}

struct ProfileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile", abstract: "List, show and check sandbox profiles.",
        subcommands: [List.self, Show.self, Check.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the profiles agentbox can find, and where.")
        @Flag(help: "JSON output.") var json = false
        func run() throws {
            guarded { () throws(AgentboxError) -> Int32 in
                let found = ProfileStore.list()
                if json {
                    Console.out(JSON.array(found.map { item in
                        let description = (try? ProfileStore.load(item.path).description) ?? ""
                        return .object([("name", .string(item.name)), ("path", .string(item.path)), ("description", .string(description))])
                    }).serialized)
                    return 0
                }
                if found.isEmpty {
                    Console.note("no profiles found (searched: \(ProfileStore.searchPath().joined(separator: ", ")))")
                    return 1
                }
                let width = found.map(\.name.count).max() ?? 0
                for item in found {
                    let description: String
                    do throws(AgentboxError) { description = try ProfileStore.load(item.path).description } catch {
                        description = "INVALID: \(error.message)"
                    }
                    Console.out(item.name.padding(width) + "  " + description + "\n" + String(repeating: " ", count: width + 2) + item.path)
                }
                return 0
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the policy a profile resolves to here (with the sandbox options applied), as JSON.")
        @OptionGroup(title: "Sandbox options") var sandbox: SandboxFlags
        @Argument(help: ArgumentHelp("Profile name or path (overrides --profile).", valueName: "NAME|PATH")) var name: String?
        func run() throws {
            guarded { () throws(AgentboxError) -> Int32 in
                var flags = sandbox
                if let name { flags.profile = name }
                Console.out(try flags.resolve().json.pretty)
                return 0
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a profile file and its seccomp policy; exit 0 when valid, 1 with the problem when not.")
        @Argument(help: ArgumentHelp("Profile name or path.", valueName: "FILE")) var file: String
        func run() throws {
            do {
                let profile = try ProfileStore.check(file)
                Console.out("ok: \(profile.path)" + (profile.seccomp.map { " (seccomp: \($0))" } ?? ""))
                Glibc.exit(0)
            } catch {
                Console.error(error)
                Glibc.exit(1)
            }
        }
    }
}

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what this host supports and which guarantees `exec` gives here.")
    @Flag(help: "JSON output.") var json = false
    func run() throws {
        let report = HostReport.probe()
        if json {
            Console.out(report.json.pretty)
            Glibc.exit(0)
        }
        let ok = Console.color ? "\u{1B}[32mok\u{1B}[0m  " : "ok  "
        let weak = Console.color ? "\u{1B}[33mWEAK\u{1B}[0m" : "WEAK"
        Console.out("agentbox \(agentboxVersion) on Linux \(report.kernel), uid \(report.uid)")
        Console.out("cgroups: \(report.cgroupMode.rawValue)\(report.cgroupWritable ? " (this user can create cgroups)" : " (this user cannot create cgroups: \(report.cgroupDetail))")")
        if report.apparmorRestrictsUserns {
            Console.out("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)")
        }
        Console.out("init: \(report.initPath ?? "NOT FOUND (reinstall with make install)")")
        Console.out("")
        for (name, good, detail) in report.guarantees {
            Console.out("\(good ? ok : weak) \(name.padding(16)) \(detail)")
        }
        Glibc.exit(report.sandboxWorks ? 0 : 1)
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() throws { Console.out("agentbox \(agentboxVersion)") }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

// A parent may have blocked signals (test runners, some process managers): SIGINT/SIGTERM/SIGHUP
// must work for every command. (`exec` blocks them again itself and reads them from a signalfd.)
var unblock = sigset_t()
sigemptyset(&unblock)
for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&unblock, sig) }
sigprocmask(SIG_UNBLOCK, &unblock, nil)
// A reader that goes away (`agentbox run --json | head -1`) must not kill a run: writes to it fail with
// EPIPE and are dropped, the journal keeps everything. (The sandbox gets SIGPIPE back: ab_spawn.)
signal(SIGPIPE, SIG_IGN)

// Usage errors exit 125 (docs/cli.md), not ArgumentParser's 64; help and --version exit 0.
do {
    // `exec` is on the hot path: parse it directly instead of through the whole command tree.
    // (On a parse error the whole tree parses again, for messages that name `agentbox exec`.)
    let args = CommandLine.arguments
    var command: ParsableCommand
    if args.count > 1 && args[1] == "exec", let (sandbox, name, cmd) = Exec.fastParse(args.dropFirst(2)), !cmd.isEmpty {
        runExec(sandbox, name: name, command: cmd)
    } else if args.count > 1 && args[1] == "exec", let fast = try? Exec.parse(Array(args.dropFirst(2))) {
        command = fast
    } else {
        // A word that names no command says so (ArgumentParser would call it an unexpected argument),
        // and `help NOSUCH` too (it would print the overview and exit 0), at any depth.
        let words = Array(args.dropFirst(args.count > 1 && args[1] == "help" ? 2 : 1))
        if let (word, path, names) = Agentbox.unknownCommand(words) {
            let near = names.filter { $0.hasPrefix(String(word.prefix(2))) }
            Console.error(.usage("no command \"\((path.dropFirst() + [word]).joined(separator: " "))\"" + (near.isEmpty ? "" : "; did you mean \(near.joined(separator: " or "))?"),
                                 hint: "the commands are \(names.joined(separator: ", ")); `\(path.joined(separator: " ")) --help` says what each does"))
            exit(125)
        }
        command = try Agentbox.parseAsRoot()
    }
    try command.run()
    exit(0)
} catch {
    let code = Agentbox.exitCode(for: error)
    let message = Agentbox.fullMessage(for: error)
    if code == .success {
        if !message.isEmpty { print(message) }
        exit(0)
    }
    if !message.isEmpty {
        Console.write(TerminalText.block(message.hasPrefix("Error:") ? "agentbox: error: usage: " + message.dropFirst(7) : message))
    }
    exit(125)
}
