import AgentboxCore
import AgentboxJournal
import AgentboxSandbox
import Glibc

/// A journaled `exec` (`agentbox exec --name NAME`): the sandbox with its journal. The supervisor is
/// the only writer; the sandbox cannot touch the record (it is outside its filesystem).
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
        try writer.append(.runStarted, .object([
            ("id", .string(id)), ("name", .string(name)), ("kind", "exec"),
            ("argv", .array(argv.map { .string($0) })),
            ("policy", policy.json),
            ("profile_digest", JournaledRun.digest(policy.profile.path.isEmpty ? nil : policy.profile.path)),
            ("seccomp_digest", JournaledRun.digest(policy.profile.seccomp)),
            ("host", JournaledRun.hostFacts()),
        ]), critical: true)

        let box = Sandbox(id: id, policy: policy, argv: argv, captureOutput: true) { [warn] w in
            warn(w.message)
            _ = try? writer.append(.warning, .object([("message", .string(w.message))]), critical: false)
        }
        // Output chunks are gathered per stream into records of up to 256 KiB (a chatty command writes
        // thousands of small chunks a second); what is gathered is recorded at every tick (<= 200 ms),
        // well inside the journal's 1 s batching bound.
        let gather = OutputGatherer(writer: writer, cap: policy.limits.journalOutput, dir: store.runsDir + "/" + id)
        gather.onFirstDrop = { [self] reason throws(AgentboxError) in
            let summary = reason == .cap
                ? "command output past the journal's cap of \(Units.formatSize(policy.limits.journalOutput)) is shown but not stored"
                : "the journal's disk is almost full: command output is shown but no longer stored"
            warn(summary)
            try recordLimit(writer, kind: reason == .cap ? "journal_output" : "journal_disk", category: "limits", summary: summary)
        }
        let delegate = Delegate(writer: writer, gather: gather, seccomp: policy.profile.seccomp != nil)

        let result: SandboxResult
        do {
            result = try box.run(delegate: delegate)
            try gather.flush(final: true)
        } catch {
            // Setup failed or the journal could not be written: record it if the journal still works.
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
                ("stdout", .number(Double(gather.dropped["stdout"] ?? 0))), ("stderr", .number(Double(gather.dropped["stderr"] ?? 0))),
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
        try writer.append(.usage, .object([
            ("wall_s", .number(((Clock.monotonic() - started) * 1000).rounded() / 1000)),
            ("cpu_s", result.report.cpuSeconds.map { .number($0) } ?? .null),
            ("peak_memory", result.report.peakMemory.map { .number(Double($0)) } ?? .null),
        ]), critical: false)
        let state: String
        switch result.termination {
        case .exited(0): state = "exited"
        case .timedOut: state = "timeout"
        case .notExecuted: state = "failed"
        default: state = "exited"
        }
        try writer.append(.runEnded, .object([("state", .string(state)), ("exit_code", .number(Double(result.exitCode)))]),
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
        let seccomp: Bool

        init(writer: JournalWriter, gather: OutputGatherer, seccomp: Bool) {
            self.writer = writer
            self.gather = gather
            self.seccomp = seccomp
        }

        func sandboxOutput(_ stream: Sandbox.OutputStream, _ bytes: [UInt8]) throws(AgentboxError) {
            try gather.add(stream.rawValue, bytes)
        }

        func sandboxTick() throws(AgentboxError) {
            try gather.flush(final: false)
            try writer.flushIfDue()
        }

        func sandboxReady(landlockABI: Int32, cgroup: String?) {
            _ = try? writer.append(.sandboxReady, JournaledRun.readyRecord(landlockABI: landlockABI, cgroup: cgroup, seccomp: seccomp), critical: false)
        }
    }

    /// The sandbox.ready record of every run.
    static func readyRecord(landlockABI: Int32, cgroup: String?, seccomp: Bool) -> JSON {
        .object([
            ("landlock_abi", .number(Double(landlockABI))),
            ("cgroup", cgroup.map { .string($0) } ?? .null),
            ("seccomp", .bool(seccomp)),
            ("namespaces", ["user", "pid", "mount", "net", "uts", "ipc", "cgroup"]),
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

/// Gathers output chunks into larger records, keeping a UTF-8 character that a chunk boundary split
/// for the next record (so text stays text).
///
/// The journal is on the host's disk, outside every cgroup: at most `cap` bytes of output are stored,
/// and none once the disk's free space is under `DiskFloor` (what is left must hold the run's last
/// records, and the host needs its disk). Past either, output is still passed through, and counted.
final class OutputGatherer {
    static let recordBytes = 256 << 10
    /// What an output record takes besides its text: `{"v":1,"seq":...,"crc":"..."}` and the stream name.
    static let recordOverhead: UInt64 = 160
    let writer: JournalWriter
    let cap: UInt64
    let dir: String
    var buffers: [String: [UInt8]] = ["stdout": [], "stderr": []]
    var order: [String] = []

    enum DropReason: String { case cap, disk }
    private(set) var stored: UInt64 = 0
    private(set) var dropped: [String: UInt64] = [:]
    private(set) var dropReason: DropReason? = nil
    /// Called once, when output is first dropped.
    var onFirstDrop: ((DropReason) throws(AgentboxError) -> Void)? = nil

    init(writer: JournalWriter, cap: UInt64 = .max, dir: String = "") {
        self.writer = writer
        self.cap = cap
        self.dir = dir
    }

    /// The longest prefix of `bytes` whose journal encoding fits `budget`, and that encoding's size: JSON
    /// escaping when the bytes are UTF-8 (controls cost 6 or 2, quotes and backslashes 2, C1 controls
    /// counted as 6 by their two bytes, conservatively), else base64 (4 per 3).
    static func fit(_ bytes: [UInt8], budget: UInt64) -> (count: Int, cost: UInt64) {
        let utf8 = bytes.withUnsafeBufferPointer { JSON.isValidUTF8($0) }
        if !utf8 {
            let n = min(bytes.count, Int(min(budget, UInt64(Int.max / 4)) / 4 * 3))
            return (n, UInt64((n + 2) / 3 * 4))
        }
        var cost: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            let c: UInt64
            switch b {
            case 0x0A, 0x0D, 0x09, 0x22, 0x5C: c = 2
            case 0..<0x20: c = 6
            case 0x80...0x9F, 0xC2: c = 3  // C1 controls: \u0085 for two bytes
            case 0xE2: c = 4  // U+2028/U+2029: \u2028 for three bytes
            default: c = 1
            }
            if cost + c > budget {
                // Stop at a character's start: half a character is not UTF-8 and would be stored as
                // base64, a third larger than what was charged.
                var start = i
                while start > 0 && bytes[start] & 0xC0 == 0x80 { start -= 1 }
                return start == i ? (i, cost) : fit(Array(bytes[..<start]), budget: budget)
            }
            cost += c
        }
        return (bytes.count, cost)
    }

    /// The part of `bytes` that may be stored (all, a prefix, or nothing), deciding when to stop.
    func admit(_ stream: String, _ bytes: [UInt8]) throws(AgentboxError) -> ArraySlice<UInt8> {
        if dropReason == nil {
            // What this chunk can take on disk: JSON escaping makes a control byte 6 (\u0000), plus
            // what the writer holds but has not written yet.
            if !dir.isEmpty && DiskFloor.reached(dir, adding: UInt64(bytes.count * 6 + writer.pendingBytes + 4096)) {
                dropReason = .disk
            } else {
                // The cap counts what the journal stores: escaped text (a NUL byte is six), or base64,
                // and each record's own fields (a command alternating one-byte writes to stdout and
                // stderr makes one record per byte).
                // `stored` is counted exactly after each append (emit); the encoding is estimated only
                // when even the worst case (every byte escaped as six) might not fit.
                let overhead = OutputGatherer.recordOverhead
                let left = cap > stored ? cap - stored : 0
                if UInt64(bytes.count) * 6 + overhead <= left { return bytes[...] }
                let (keep, _) = OutputGatherer.fit(bytes, budget: left > overhead ? left - overhead : 0)
                if keep == bytes.count { return bytes[...] }
                dropReason = .cap
                dropped[stream, default: 0] += UInt64(bytes.count - keep)
                try onFirstDrop?(.cap)
                return bytes[..<keep]
            }
            try onFirstDrop?(.disk)
        }
        dropped[stream, default: 0] += UInt64(bytes.count)
        return []
    }

    func add(_ stream: String, _ bytes: [UInt8]) throws(AgentboxError) {
        // Keep the streams' interleaving: switching stream records what the other one gathered.
        if let last = order.last, last != stream { try emit(last, final: true) }
        if order.last != stream { order.append(stream) }
        buffers[stream, default: []].append(contentsOf: bytes)
        if buffers[stream]!.count >= OutputGatherer.recordBytes { try emit(stream, final: false) }
    }

    static let interval = 0.2
    var lastFlush = Clock.monotonic()

    /// Records what was gathered: always when `final`, else at most every `interval` seconds.
    func flush(final: Bool) throws(AgentboxError) {
        let now = Clock.monotonic()
        if !final && now - lastFlush < OutputGatherer.interval { return }
        lastFlush = now
        for stream in order { try emit(stream, final: final) }
        order.removeAll()
    }

    func emit(_ stream: String, final: Bool) throws(AgentboxError) {
        // Take the buffer out of the dictionary so it is not copied on write.
        guard var bytes = buffers.removeValue(forKey: stream), !bytes.isEmpty else { return }
        var keep = 0
        if !final {
            // An incomplete UTF-8 sequence at the end waits for its continuation bytes.
            var i = bytes.count - 1
            var back = 0
            while i >= 0 && back < 3 && bytes[i] & 0xC0 == 0x80 { i -= 1; back += 1 }
            if i >= 0 {
                let lead = bytes[i]
                let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
                if need > 1 && bytes.count - i < need { keep = bytes.count - i }
            }
        }
        let rest = Array(bytes[(bytes.count - keep)...])
        bytes.removeLast(keep)
        if !bytes.isEmpty {
            let admitted = try admit(stream, bytes)
            if !admitted.isEmpty {
                let before = writer.bytesAppended
                try writer.appendOutput(stream: stream, bytes: Array(admitted))
                stored += writer.bytesAppended - before
            }
        }
        buffers[stream] = rest
    }
}

/// The free space under which a journal stops storing output: 5% of its filesystem, at most 512 MiB.
enum DiskFloor {
    static func bytes(total: UInt64) -> UInt64 { min(512 << 20, total / 20) }

    /// Whether writing `adding` more bytes in `dir` would leave less than the floor free.
    static func reached(_ dir: String, adding: UInt64) -> Bool {
        var st = statvfs()
        guard statvfs(dir, &st) == 0 else { return false }
        let unit = UInt64(st.f_frsize)
        let free = UInt64(st.f_bavail) * unit
        return free < adding || free - adding < bytes(total: UInt64(st.f_blocks) * unit)
    }
}
