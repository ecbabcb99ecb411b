import AgentboxCore
import CAgentboxShim
import Glibc

/// How a sandboxed command ended, from the supervisor's point of view.
public enum Termination: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)
    /// Killed because --timeout expired.
    case timedOut
    /// The command could not be executed (127 not found, 126 not executable).
    case notExecuted(code: Int32, reason: String)
}

public struct SandboxResult: Sendable {
    public var termination: Termination
    public var report: CgroupReport
    /// True when the memory cgroup OOM-killed a process and the command died of SIGKILL.
    public var oomKilled: Bool
    public var landlockABI: Int32
    public var elapsed: Double
    /// The first stop signal agentbox received (SIGTERM, `agentbox stop`), if any.
    public var stopSignal: Int32? = nil

    /// The exit code of `agentbox exec` (docs/cli.md).
    public var exitCode: Int32 {
        switch termination {
        case let .exited(code): return code
        case let .signaled(sig): return 128 + sig
        case .timedOut: return 124
        case let .notExecuted(code, _): return code
        }
    }
}

/// Something the user must hear about while a sandbox runs: a weaker mode, a limit event.
public struct SandboxWarning: Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

/// What the owner of a running sandbox is told, and what it may decide (docs/architecture.md,
/// "Supervision"). Every call comes on the supervision thread; an error thrown from one stops the
/// sandbox (SIGKILL) and is rethrown by `Sandbox.run`.
public protocol SandboxDelegate: AnyObject {
    /// The sandbox is built and confined: the Landlock ABI in force (0: none) and the cgroup.
    func sandboxReady(landlockABI: Int32, cgroup: String?)
    /// A chunk of the command's output (`captureOutput` only), before it is queued for agentbox's own
    /// stdout/stderr: whatever the caller sees, the delegate has seen first.
    func sandboxOutput(_ stream: Sandbox.OutputStream, _ bytes: [UInt8]) throws(AgentboxError)
    /// After every wake-up of the loop, and at least every `Supervision.tickInterval`.
    func sandboxTick() throws(AgentboxError)
    /// Agent mode: a message from the loop inside the sandbox, decoded and checked for its form.
    func sandboxMessage(_ message: AgentMessage) throws(AgentboxError)
    /// A descriptor the loop polls for the delegate (the model gateway's completions), or -1.
    var wakeFD: Int32 { get }
    /// `wakeFD` is readable.
    func sandboxWake() throws(AgentboxError)
    /// The first SIGINT/SIGTERM/SIGHUP/SIGQUIT. True: the delegate ends the run itself (agent mode);
    /// false: it is forwarded to the command. Either way the sandbox is killed after the grace period.
    func sandboxStopSignal(_ signal: Int32) -> Bool
    /// Events from the sandbox's services (proxy decisions, confessions from inside): journal them and
    /// answer each confession's reply.
    func sandboxServiceEvents(_ events: [ServiceEvent]) throws(AgentboxError)
}

extension SandboxDelegate {
    public func sandboxReady(landlockABI: Int32, cgroup: String?) {}
    public func sandboxOutput(_ stream: Sandbox.OutputStream, _ bytes: [UInt8]) throws(AgentboxError) {}
    public func sandboxTick() throws(AgentboxError) {}
    public func sandboxMessage(_ message: AgentMessage) throws(AgentboxError) {
        throw AgentboxError(stage: "sandbox protocol", "agentbox-init sent an agent message to a sandbox that runs a command")
    }
    public var wakeFD: Int32 { -1 }
    public func sandboxWake() throws(AgentboxError) {}
    public func sandboxStopSignal(_ signal: Int32) -> Bool { false }
    public func sandboxServiceEvents(_ events: [ServiceEvent]) throws(AgentboxError) {
        for case let .confess(_, reply) in events { reply.answer(.failure(AgentboxError(stage: "confess", "this sandbox does not record confessions"))) }
    }
}

/// One sandbox: build it (SandboxLauncher), supervise it (Supervision), say how it ended
/// (`SandboxEnding.termination`). The supervisor side never runs Swift between clone() and execve():
/// see ab_spawn.
public final class Sandbox {
    /// The unprivileged host uids/gids that uid 0 of a sandbox maps to when agentbox runs as root: one
    /// picked at random per sandbox (it also owns the sandbox's user namespace), so that what the host
    /// counts per user (epoll watches, pipe buffers, inotify instances, pending signals) is counted per
    /// sandbox, not for all root-run sandboxes together, nor for root.
    public static let rootMappedIDs: Range<UInt32> = 2_147_400_000 ..< 2_147_400_000 + 65_536

    /// Seconds between a forwarded SIGTERM/SIGINT and SIGKILL of the whole sandbox.
    public static let gracePeriod = 10.0

    public enum Mode: Sendable {
        /// `exec`: the init runs one command and reports how it ended.
        case command
        /// `run`: the init runs the agent loop (docs/agent.md); its stdout goes to /dev/null.
        case agent
    }
    public enum OutputStream: String, Sendable { case stdout, stderr }

    public let id: String
    public let policy: SandboxPolicy
    public let argv: [String]
    public let mode: Mode
    /// The command's stdout/stderr are pipes read by the supervisor: each chunk goes to agentbox's own
    /// stdout/stderr through an OutputRelay (a stalled reader never stalls the loop) and to the delegate.
    public let captureOutput: Bool
    /// Seconds between the first stop signal and SIGKILL of the sandbox.
    public var grace = Sandbox.gracePeriod
    let warn: (SandboxWarning) -> Void
    var process: SandboxProcess? = nil
    /// Captured output on its way to agentbox's stdout and stderr (`captureOutput` only).
    let relays: [OutputRelay]
    /// Passed the agentbox API's requests it accepts (the model gateway of a bring-your-own-agent run).
    public var apiHandler: HTTPRequestHandler? = nil
    /// Served inside the sandbox on loopback ports: the agentbox API always, the proxy with `allow:`.
    /// Their events come to the delegate through `inbox`.
    public let inbox = ServiceInbox()

    func makeServices() -> [SandboxService] {
        var services: [SandboxService] = [AgentboxAPI(inbox: inbox, handler: apiHandler)]
        if let rules = policy.network.rules {
            services.append(NetworkProxy(rules: rules, hosts: policy.addHosts, inbox: inbox))
        }
        return services
    }
    /// Blocked from `run` until this Sandbox goes away (after its owner journaled the result and
    /// delivered the output): a late SIGTERM is consumed, not fatal.
    var signals: StopSignals? = nil

    public init(id: String = RunID.make(), policy: SandboxPolicy, argv: [String], mode: Mode = .command, captureOutput: Bool = false,
                warn: @escaping (SandboxWarning) -> Void) {
        self.id = id
        self.policy = policy
        self.argv = argv
        self.mode = mode
        self.captureOutput = captureOutput
        self.warn = warn
        relays = captureOutput ? [OutputRelay(fd: 1, overflow: .backpressure), OutputRelay(fd: 2, overflow: .backpressure)] : []
    }

    /// With `captureOutput`: waits until agentbox's own stdout/stderr have taken all of the command's
    /// output, or a stop signal says not to wait; false then (the journal has what was not delivered).
    /// Call it after `run` once the result is recorded: a reader that never reads then delays only the
    /// exit of agentbox, not the journal.
    @discardableResult
    public func deliverOutput() -> Bool {
        guard let signals else { return relays.allSatisfy { $0.finishUnlessSignalled() } }
        return relays.allSatisfy { $0.finish(interrupt: signals.fd) }
    }

    /// Kills the whole sandbox now (its init, hence every process in it); `run` then returns.
    public func kill() { process?.kill() }

    /// The sandbox's cgroup counters now (OOM kills, pids-limit hits), nil without a cgroup.
    public func cgroupReport() -> CgroupReport? { process?.cgroup?.report() }

    /// Agent mode: sends a message to the loop in the sandbox. False when the channel is gone.
    @discardableResult
    public func send(_ message: AgentMessage) -> Bool { send(encoded: message.encoded) }

    /// Agent mode: sends a message already encoded (`AgentMessage.encoded`).
    @discardableResult
    public func send(encoded: [UInt8]) -> Bool {
        guard let process else { return false }
        for p in AgentWire.packets(encoded: encoded) where !process.send(p) { return false }
        return true
    }

    /// Finds agentbox-init: $AGENTBOX_INIT, next to this executable, or in ../libexec/agentbox/.
    public static func locateInit() throws(AgentboxError) -> String {
        if let path = AgentboxPaths.file("AGENTBOX_INIT") { return path }
        guard let exe = ProfileStore.executablePath() else { throw AgentboxError(stage: "locate agentbox-init", "cannot read /proc/self/exe") }
        let dir = String(exe[..<exe.lastIndex(of: "/")!])
        for candidate in [dir + "/agentbox-init", dir + "/../libexec/agentbox/agentbox-init"] where access(candidate, X_OK) == 0 {
            return RealHostPaths().canonical(candidate) ?? candidate
        }
        throw AgentboxError(stage: "locate agentbox-init", "agentbox-init is not next to \(exe) nor in ../libexec/agentbox/",
                            hint: "reinstall with `make install`, or set AGENTBOX_INIT to its path")
    }

    /// Builds the sandbox, runs the command (or the agent loop), and returns how it ended. Errors are
    /// agentbox's own (125).
    public func run(delegate: SandboxDelegate? = nil) throws(AgentboxError) -> SandboxResult {
        let timing = Timing()
        defer { timing.mark("teardown") }
        let signals = self.signals ?? StopSignals()
        self.signals = signals
        let services = makeServices()
        let launcher = SandboxLauncher(signals: signals, id: id, policy: policy, argv: argv, mode: mode, captureOutput: captureOutput,
                                       ports: services.map(\.port), warn: warn, timing: timing)
        let process = try launcher.launch()
        self.process = process
        defer { self.process = nil }
        var supervision = Supervision(process: process, policy: policy, mode: mode, grace: grace, delegate: delegate, relays: relays,
                                      services: services, inbox: inbox, warn: warn, timing: timing)
        let ending = supervision.run()
        timing.mark("init exit")
        if let failure = ending.failure { throw failure }

        var report = process.cgroup?.report() ?? CgroupReport()
        let usage = process.usage
        if report.cpuSeconds == nil {
            report.cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
                + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        }
        if report.peakMemory == nil { report.peakMemory = UInt64(max(0, usage.ru_maxrss)) * 1024 }  // largest process
        if report.pidsLimitHits > 0, let pids = policy.limits.pids {
            warn(SandboxWarning("the pids limit (\(pids)) was hit \(report.pidsLimitHits) time(s): fork/clone failed inside the sandbox"))
        }
        let termination = try ending.termination(oomKills: report.oomKills)
        let oom = report.oomKills > 0 && termination == .signaled(SIGKILL)
        return SandboxResult(termination: termination, report: report, oomKilled: oom, landlockABI: ending.landlockABI,
                             elapsed: Clock.monotonic() - process.started, stopSignal: ending.stopSignal)
    }

    /// Writes all of `bytes` to `fd`; false, giving up silently, when the reader is gone (EPIPE) or
    /// the descriptor is unusable.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
}
