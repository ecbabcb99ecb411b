import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox
import Glibc

/// A journaled `exec` (`agentbox exec --name NAME`): the sandbox with its journal. The supervisor is
/// the only writer; the sandbox cannot touch the record (it is outside its filesystem). The command's
/// output goes to raw files next to the journal (`stdout`, `stderr`), which `output` records point into.
///
/// Order of records: journal.opened, run.started (critical: on disk before the sandbox exists),
/// sandbox.ready, output/warning (batched), limit + confession (critical), exit, usage, run.ended.
public final class JournaledRun {
    public let store: RunStore
    public let name: String
    public let policy: SandboxPolicy
    public let argv: [String]
    let warn: (String) -> Void

    public private(set) var id = ""
    /// A bring-your-own-agent run (`run -- CMD`): the model gateway inside, its calls journaled, its
    /// budgets held (docs/agents.md). nil for `exec`.
    public var gateway: ModelGateway? = nil
    /// Recorded in run.started with a gateway: the options and budgets.
    public var gatewayFacts: JSON = .null
    /// Seconds the command may go on after a budget ran out before the sandbox is killed.
    public var budgetGrace = 30.0
    /// How the run ended, in `run`'s terms (with a gateway): its exit code and state.
    public private(set) var outcome: (code: Int32, state: String) = (0, "exited")
    /// False when agentbox stopped waiting for the reader of its output (a stop signal): what the reader
    /// did not take is in the journal.
    public private(set) var outputDelivered = true

    public init(store: RunStore = RunStore(), name: String, policy: SandboxPolicy, argv: [String], warn: @escaping (String) -> Void) {
        self.store = store
        self.name = name
        self.policy = policy
        self.argv = argv
        self.warn = warn
    }

    public static func hostFacts() -> JSON {
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let node = withUnsafeBytes(of: &uts.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return .object([("hostname", .string(node)), ("kernel", .string(kernel)), ("uid", .number(Double(getuid()))),
                        ("cgroup_mode", .string(CgroupMode.detect().rawValue))])
    }

    public static func digest(_ path: String?) -> JSON {
        guard let path, let bytes = try? FileIO.read(path) else { return .null }
        return .string("crc32c:" + CRC32C.hex(CRC32C.checksum(bytes)))
    }

    /// Runs the command; returns the result and the run id. A journal failure stops the sandbox (125).
    public func run() throws(AgentboxError) -> SandboxResult {
        let (id, writer) = try store.createRun()
        self.id = id
        let started = Clock.monotonic()
        var startedData: [(String, JSON)] = [
            ("id", .string(id)), ("name", .string(name)), ("kind", gateway == nil ? "exec" : "agent-command"),
            ("argv", .array(argv.map { .string($0) })),
            ("policy", policy.json),
            ("profile_digest", JournaledRun.digest(policy.profile.path.isEmpty ? nil : policy.profile.path)),
            ("seccomp_digest", JournaledRun.digest(policy.profile.seccomp)),
            ("host", JournaledRun.hostFacts()),
        ]
        if gateway != nil { startedData.append(("gateway", gatewayFacts)) }
        try writer.append(.runStarted, .object(startedData), critical: true)

        let box = Sandbox(id: id, policy: policy, argv: argv, captureOutput: true) { [warn] w in
            warn(w.message)
            _ = try? writer.append(.warning, .object([("message", .string(w.message))]), critical: false)
        }
        // Output goes to the run's raw files as it comes; records of up to 256 KiB point into them (a
        // chatty command writes thousands of small chunks a second), written at every tick (<= 200 ms),
        // well inside the journal's 1 s batching bound.
        let gather = OutputGatherer(writer: writer, dir: store.runsDir + "/" + id, cap: policy.limits.journalOutput)
        gather.onFirstDrop = { [self] reason throws(AgentboxError) in
            let summary = reason == .cap
                ? "command output past the journal's cap of \(Units.formatSize(policy.limits.journalOutput)) is shown but not stored"
                : "the journal's disk is almost full: command output is shown but no longer stored"
            warn(summary)
            try recordLimit(writer, kind: reason == .cap ? "journal_output" : "journal_disk", category: "limits", summary: summary)
        }
        let recorder = ServiceRecorder(store: store, run: id, name: name, writer: writer, warn: warn)
        let delegate = Delegate(writer: writer, gather: gather, policy: policy, recorder: recorder)
        if let gateway {
            box.apiHandler = gateway
            delegate.gateway = GatewayRecorder(gateway: gateway, writer: writer, recorder: recorder, grace: budgetGrace,
                                               bodyCap: policy.limits.journalOutput, box: box, warn: warn)
        }

        let result: SandboxResult
        do {
            result = try box.run(delegate: delegate)
            try gather.flush(final: true)
        } catch {
            // Setup failed or the journal could not be written: record it if the journal still works.
            _ = try? gather.flush(final: true)
            _ = try? writer.append(.runEnded, .object([
                ("state", "failed"), ("exit_code", .number(Double(error.exitCode))),
                ("reason", .string("\(error.stage): \(error.message)")),
            ]), critical: true)
            outputDelivered = box.deliverOutput()
            throw error
        }

        // Limit events, each with a confession on the sandbox's behalf.
        var events: [(String, String, String)] = []  // kind, category, summary
        if result.report.oomKills > 0 {
            events.append(("oom", "limits", "memory limit \(Units.formatSize(policy.limits.memory ?? 0)) reached: \(result.report.oomKills) process(es) OOM-killed"))
        }
        if result.report.pidsLimitHits > 0 {
            events.append(("pids", "limits", "pids limit \(policy.limits.pids ?? 0) reached \(result.report.pidsLimitHits) time(s): fork failed"))
        }
        if result.termination == .timedOut {
            events.append(("timeout", "limits", "timeout after \(Units.formatDuration(policy.limits.timeout ?? 0)): the sandbox was killed"))
        }
        for (kind, category, summary) in events { try recordLimit(writer, kind: kind, category: category, summary: summary) }
        if let reason = gather.dropReason {
            try writer.append(.outputDropped, .object([
                ("reason", .string(reason.rawValue)), ("cap", .number(Double(policy.limits.journalOutput))),
                ("stored", .number(Double(gather.stored))),
                ("stdout", .number(Double(gather.dropped[.stdout] ?? 0))), ("stderr", .number(Double(gather.dropped[.stderr] ?? 0))),
            ]), critical: false)
        }

        var exitData: [(String, JSON)] = [("code", .number(Double(result.exitCode)))]
        switch result.termination {
        case let .exited(code): exitData += [("status", "exited"), ("exit_status", .number(Double(code)))]
        case let .signaled(sig): exitData += [("status", "signaled"), ("signal", .number(Double(sig)))]
        case .timedOut: exitData += [("status", "timeout")]
        case let .notExecuted(_, reason): exitData += [("status", "not_executed"), ("reason", .string(reason))]
        }
        if result.oomKilled { exitData.append(("oom_killed", true)) }
        try writer.append(.exit, .object(exitData), critical: false)
        var usage: [(String, JSON)] = [
            ("wall_s", .number(((Clock.monotonic() - started) * 1000).rounded() / 1000)),
            ("cpu_s", result.report.cpuSeconds.map { .number($0) } ?? .null),
            ("peak_memory", result.report.peakMemory.map { .number(Double($0)) } ?? .null),
        ]
        if recorder.netUnrecorded > 0 { usage.append(("net_unrecorded", .number(Double(recorder.netUnrecorded)))) }
        if let gateway {
            let used = gateway.used
            usage += [("steps", .number(Double(used.calls))),
                      ("tokens", Usage(inputTokens: used.input, outputTokens: used.output).json),
                      ("cost", used.cost.map { .number($0) } ?? .null)]
        }
        try writer.append(.usage, .object(usage), critical: false)
        var state: String
        switch result.termination {
        case .exited(0): state = "exited"
        case .timedOut: state = "timeout"
        case .notExecuted: state = "failed"
        default: state = "exited"
        }
        var code = result.exitCode
        var ended: [(String, JSON)] = []
        if let gateway {
            // `run`'s codes come first: the command's own status is in the exit record.
            if result.termination == .timedOut {
                code = 124
            } else if let why = gateway.exhausted {
                (code, state) = (3, "budget")
                ended.append(("reason", .string(why)))
            } else if result.stopSignal != nil {
                (code, state) = (75, "stopped")
            } else if case .notExecuted = result.termination {
                state = "failed"
            } else {
                state = "finished"
            }
        }
        outcome = (code, state)
        try writer.append(.runEnded, .object([("state", .string(state)), ("exit_code", .number(Double(code)))] + ended),
                          critical: true)
        try writer.finish()
        outputDelivered = box.deliverOutput()
        return result
    }
}

extension JournaledRun {
    /// What the sandbox tells a journaled exec: its output and readiness go to the journal.
    final class Delegate: SandboxDelegate {
        let writer: JournalWriter
        let gather: OutputGatherer
        let policy: SandboxPolicy
        let recorder: ServiceRecorder
        var gateway: GatewayRecorder? = nil

        var wakeFD: Int32 { gateway?.gateway.wakeFD ?? -1 }

        func sandboxWake() throws(AgentboxError) { try gateway?.record() }

        init(writer: JournalWriter, gather: OutputGatherer, policy: SandboxPolicy, recorder: ServiceRecorder) {
            self.writer = writer
            self.gather = gather
            self.policy = policy
            self.recorder = recorder
        }

        func sandboxServiceEvents(_ events: [ServiceEvent]) throws(AgentboxError) { try recorder.record(events) }

        func sandboxOutput(_ stream: Sandbox.OutputStream, _ bytes: [UInt8]) throws(AgentboxError) {
            try gather.add(stream == .stdout ? .stdout : .stderr, bytes)
        }

        func sandboxTick() throws(AgentboxError) {
            gateway?.tick()
            try gather.flush(final: false)
            try writer.flushIfDue()
        }

        func sandboxReady(landlockABI: Int32, cgroup: String?) {
            _ = try? writer.append(.sandboxReady, JournaledRun.readyRecord(landlockABI: landlockABI, cgroup: cgroup, policy: policy), critical: false)
        }
    }

    /// The sandbox.ready record of every run.
    static func readyRecord(landlockABI: Int32, cgroup: String?, policy: SandboxPolicy) -> JSON {
        .object([
            ("landlock_abi", .number(Double(landlockABI))),
            ("cgroup", cgroup.map { .string($0) } ?? .null),
            ("seccomp", .bool(policy.profile.seccomp != nil)),
            ("namespaces", ["user", "pid", "mount", "net", "uts", "ipc", "cgroup"]),
            // The rules in force: what the proxy lets through (docs/network.md).
            ("network", .string(policy.network.description)),
            ("add_hosts", .array(policy.addHosts.map { .string("\($0.0):\($0.1)") })),
        ])
    }

    /// A limit event and the confession the supervisor files for it (journal and node feed).
    func recordLimit(_ writer: JournalWriter, kind: String, category: String, summary: String) throws(AgentboxError) {
        try writer.append(.limit, .object([("kind", .string(kind)), ("detail", .string(summary))]), critical: true)
        let seq = try writer.append(.confession, .object([
            ("severity", "warning"), ("category", .string(category)), ("summary", .string(summary)), ("by", "supervisor"),
        ]), critical: true)
        do {
            try ConfessionFeed.append(store: store, run: id, name: name, seq: seq, severity: "warning", category: category, summary: summary)
        } catch {
            warn("\(error.stage): \(error.message)")
        }
    }
}

/// Stores a journaled exec's output (docs/journal.md, "Output"): each chunk is appended to its
/// stream's raw file as it arrives (before agentbox passes it on), and `output` records name what was
/// appended: the span since the stream's last record, with its CRC-32C (computed as the bytes arrive).
/// A record is written when the other stream speaks (the interleaving stays recoverable), when a span
/// reaches `recordBytes`, and at every tick (at most every `interval`).
///
/// The files are on the host's disk, outside every cgroup: at most `cap` bytes of output are stored
/// (the raw bytes and the output records' own lines: a command alternating one-byte writes to stdout and
/// stderr makes a record per byte), and none once the disk's free space is under `DiskFloor` (what is
/// left must hold the run's last records, and the host needs its disk). Past either, output is still
/// passed through, and counted.
final class OutputGatherer {
    static let recordBytes: UInt64 = 256 << 10
    static let interval = 0.2
    let writer: JournalWriter
    let files: [CapturedStream: OutputFile]
    let cap: UInt64
    let dir: String
    /// Bytes stored since the last record: all of one stream (a switch of stream records them).
    var open: OutputSpan? = nil
    var lastFlush = Clock.monotonic()

    enum DropReason: String { case cap, disk }
    private(set) var stored: UInt64 = 0
    private(set) var dropped: [CapturedStream: UInt64] = [:]
    private(set) var dropReason: DropReason? = nil
    /// Called once, when output is first dropped.
    var onFirstDrop: ((DropReason) throws(AgentboxError) -> Void)? = nil

    /// Output files in `dir`; the writer syncs them before it writes records that point into them.
    init(writer: JournalWriter, dir: String, cap: UInt64 = .max) {
        self.writer = writer
        self.dir = dir
        self.cap = cap
        let files = Dictionary(uniqueKeysWithValues: CapturedStream.allCases.map { ($0, OutputFile(dir: dir, stream: $0)) })
        self.files = files
        writer.beforeWrite = { () throws(AgentboxError) in
            for stream in CapturedStream.allCases { try files[stream]?.sync() }
        }
    }

    /// Bytes that may still be stored before the disk's free space is looked at again (statvfs per
    /// chunk was a syscall for every few KiB of a chatty command).
    var diskCredit: UInt64 = 0

    /// How many of `count` bytes may be stored (all, some, or none), deciding when to stop.
    func admit(_ stream: CapturedStream, _ count: Int) throws(AgentboxError) -> Int {
        if dropReason == nil {
            let needed = UInt64(count + writer.pendingBytes + 4096)
            if needed > diskCredit {
                // Half of what is free above the floor, at most 8 MiB, until the next look: others
                // write to the disk too.
                diskCredit = min(DiskFloor.room(dir).map { $0 / 2 } ?? .max, 8 << 20)
            }
            if needed > diskCredit {
                dropReason = .disk
                try onFirstDrop?(.disk)
            } else {
                diskCredit -= UInt64(count)
                let keep = Int(min(UInt64(count), cap > stored ? cap - stored : 0))
                if keep == count { return count }
                dropReason = .cap
                dropped[stream, default: 0] += UInt64(count - keep)
                try onFirstDrop?(.cap)
                return keep
            }
        }
        dropped[stream, default: 0] += UInt64(count)
        return 0
    }

    func add(_ stream: CapturedStream, _ bytes: [UInt8]) throws(AgentboxError) {
        let keep = try admit(stream, bytes.count)
        guard keep > 0, let file = files[stream] else { return }
        if let span = open, span.stream != stream { try record() }
        let kept = bytes[..<keep]
        var span = open ?? OutputSpan(stream: stream, offset: file.size, length: 0, crc32c: 0)
        try file.append(kept)
        span.length += UInt64(keep)
        span.crc32c = CRC32C.checksum(kept, seed: span.crc32c)
        stored += UInt64(keep)
        open = span
        if span.length >= OutputGatherer.recordBytes { try record() }
    }

    /// Records what was stored since the last record: always when `final`, else at most every `interval`.
    func flush(final: Bool) throws(AgentboxError) {
        let now = Clock.monotonic()
        if !final && now - lastFlush < OutputGatherer.interval { return }
        lastFlush = now
        try record()
    }

    func record() throws(AgentboxError) {
        guard let span = open else { return }
        open = nil
        let before = writer.bytesAppended
        try writer.append(.output, span.json, critical: false)
        // The record's line is stored output too (the cap may be passed by this one line).
        let line = writer.bytesAppended - before
        stored += line
        diskCredit -= min(diskCredit, line)
    }
}

/// The free space under which a journal stops storing output: 5% of its filesystem, at most 512 MiB.
enum DiskFloor {
    static func bytes(total: UInt64) -> UInt64 { min(512 << 20, total / 20) }

    /// Bytes that can be written in `dir` before its free space falls under the floor (nil: unknown).
    static func room(_ dir: String) -> UInt64? {
        var st = statvfs()
        guard statvfs(dir, &st) == 0 else { return nil }
        let unit = UInt64(st.f_frsize)
        let free = UInt64(st.f_bavail) * unit, floor = bytes(total: UInt64(st.f_blocks) * unit)
        return free > floor ? free - floor : 0
    }

    /// Whether writing `adding` more bytes in `dir` would leave less than the floor free.
    static func reached(_ dir: String, adding: UInt64) -> Bool {
        guard let room = room(dir) else { return false }
        return adding > room
    }
}
