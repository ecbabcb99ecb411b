import AgentboxCore
import Glibc

/// Runs on this node: `$AGENTBOX_HOME/runs/<id>/journal.jsonl` and the node-wide confession feed
/// `$AGENTBOX_HOME/confessions.jsonl`.
public struct RunStore: Sendable {
    public let home: String
    public var runsDir: String { home + "/runs" }
    public var confessionsPath: String { home + "/confessions.jsonl" }

    public init(home: String = RunStore.defaultHome()) { self.home = home }

    /// `AGENTBOX_HOME`, else `$XDG_STATE_HOME/agentbox`, else `~/.local/state/agentbox` (root: `/var/lib/agentbox`).
    public static func defaultHome() -> String { AgentboxPaths.home() }

    /// Creates missing directories; the ones agentbox creates are private (0700): journals hold
    /// everything a command printed.
    func mkdirs(_ path: String) throws(AgentboxError) {
        do { try FileIO.makeDirectories(path) } catch {
            throw AgentboxError(stage: "journal", "cannot \(error.stage): \(error.message)", hint: "set AGENTBOX_HOME to a writable directory")
        }
    }

    /// Creates the directory of a new run (fsynced, with its parent) and its journal writer.
    public func createRun() throws(AgentboxError) -> (id: String, writer: JournalWriter) {
        let id = try createDirectory()
        return (id, try JournalWriter.create(dir: runsDir + "/" + id))
    }

    /// Creates the (empty, fsynced) directory of a new run and returns its id.
    public func createDirectory() throws(AgentboxError) -> String {
        try mkdirs(runsDir)
        for _ in 0..<8 {
            let id = RunStore.newID()
            let dir = runsDir + "/" + id
            if mkdir(dir, 0o700) < 0 {
                if errno == EEXIST { continue }
                throw AgentboxError(stage: "journal", "cannot create \(dir): \(FileIO.errnoString())")
            }
            try Durability.syncDirectory(runsDir)
            return id
        }
        throw AgentboxError(stage: "journal", "could not pick an unused run id")
    }

    /// fsyncs `runs/` (a run folder renamed into it survives a crash).
    public func syncRuns() throws(AgentboxError) { try Durability.syncDirectory(runsDir) }

    public static func newID() -> String {
        var bytes = [UInt8](repeating: 0, count: 6)
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = read(fd, &bytes, 6); close(fd) }
        return bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    public func journalPath(_ id: String) -> String { runsDir + "/" + id + "/journal.jsonl" }

    /// Every run id, newest first.
    public func ids() -> [String] {
        guard let d = opendir(runsDir) else { return [] }
        defer { closedir(d) }
        var out: [(String, Int)] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(".") { continue }
            var st = stat()
            if stat(runsDir + "/" + name + "/journal.jsonl", &st) == 0 { out.append((name, Int(st.st_ctim.tv_sec))) }
        }
        return out.sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 > $1.0 }.map(\.0)
    }

    /// Resolves RUN: an id, a unique id prefix, or a name (the newest run with that name).
    /// The run `ref` names: an id, a name, or a unique id prefix. Several runs may share a name over
    /// time: the newest is meant, or with `running` the one that is running (an error lists them when
    /// several are).
    public func resolve(_ ref: String, running: Bool = false, minimumPrefix: Int = 1) throws(AgentboxError) -> String {
        guard !ref.isEmpty else { throw AgentboxError(stage: "run", "an empty run id or name", hint: "`agentbox ps --all` lists runs", exitCode: 125) }
        let all = ids()
        if all.contains(ref) { return ref }
        let named = all.filter { name(of: $0) == ref }
        if !named.isEmpty {
            let live = running ? named.filter(isLive) : []
            if live.count > 1 {
                throw AgentboxError(stage: "run", "\"\(ref)\" names \(live.count) running runs: \(live.prefix(5).joined(separator: ", "))",
                                    hint: "give the id of the one you mean")
            }
            return live.first ?? named[0]
        }
        let matches = all.filter { $0.hasPrefix(ref) }
        if matches.count == 1 && ref.count < minimumPrefix {
            throw AgentboxError(stage: "run", "\"\(ref)\" is too short a prefix here", hint: "give at least \(minimumPrefix) characters of the id (\(matches[0])?), or the name")
        }
        if matches.count == 1 { return matches[0] }
        if matches.count > 1 {
            throw AgentboxError(stage: "run", "\"\(ref)\" matches \(matches.count) runs: \(matches.prefix(5).joined(separator: ", "))",
                                hint: "give more characters of the id")
        }
        throw AgentboxError(stage: "run", "no run \"\(ref)\" in \(runsDir)", hint: "`agentbox ps --all` lists runs")
    }

    /// Deletes a run that is not running, journal and all; returns the bytes freed. The run's writer
    /// lock is taken first (a run that starts or resumes meanwhile is refused, and this is refused while
    /// it runs), and the folder leaves `runs/` by one rename before its files are deleted, so a run is
    /// never seen half-removed.
    @discardableResult
    public func remove(_ id: String) throws(AgentboxError) -> UInt64 {
        let dir = runsDir + "/" + id
        let lock: Int32
        // Not while any process here holds the lock, even a superseded owner: removing the folder would
        // remove the claim that fences it off.
        do { lock = try JournalWriter.lock(dir, takeover: false) } catch {
            throw AgentboxError(stage: "rm", "run \(id) is running (or still delivering its output to a slow reader)",
                                hint: "stop it first (agentbox stop \(id)), or kill it", exitCode: 1)
        }
        defer { close(lock) }
        let trash = runsDir + "/.removing-" + id
        guard rename(dir, trash) == 0 else { throw AgentboxError(stage: "rm", "cannot move \(dir): \(FileIO.errnoString())") }
        try Durability.syncDirectory(runsDir)
        return try FileIO.removeTree(trash)
    }

    /// Removes what an interrupted `remove` left (`runs/.removing-*`).
    public func removeLeftovers() {
        guard let d = opendir(runsDir) else { return }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(".removing-") { names.append(name) }
            // A run being made (fork, import) is a .new- folder for seconds, an import or export unpacks or
            // packs in .import-/.export-; one an hour old was left by one that was killed.
            var st = stat()
            let staging = name.hasPrefix(".new-") || name.hasPrefix(".import-") || name.hasPrefix(".export-")
            if staging, lstat(runsDir + "/" + name, &st) == 0, Double(st.st_mtim.tv_sec) < Clock.wall() - 3600 { names.append(name) }
        }
        closedir(d)
        for name in names { _ = try? FileIO.removeTree(runsDir + "/" + name) }
    }

    /// The runs named `name` with their kind and when each began (a fork: when it was made), newest
    /// first. `ids()` orders by the journal's last change, which any record (an export, a kill) moves.
    public func runs(named name: String) -> [(id: String, kind: String, began: String)] {
        var out: [(id: String, kind: String, began: String)] = []
        for id in ids() {
            guard let started = (try? JournalReader.head(path: journalPath(id)))?.first(where: { $0.kind == .runStarted }),
                  started.data["name"]?.stringValue == name else { continue }
            out.append((id, started.data["kind"]?.stringValue ?? "exec", started.data["forked_from"]?["at"]?.stringValue ?? started.ts))
        }
        return out.sorted { $0.began != $1.began ? $0.began > $1.began : $0.id > $1.id }
    }

    /// A run's name, from the head of its journal (`run.started`).
    public func name(of id: String) -> String? {
        (try? JournalReader.head(path: journalPath(id)))?.first { $0.kind == .runStarted }?.data["name"]?.stringValue
    }

    /// Claims `name` for a run that is about to start: refused while a running run has it. The claim
    /// (a lock on a file under names/) lasts as long as the returned descriptor is open: keep it for the
    /// whole run. Two runs started at once with one name cannot both get it.
    public func claimName(_ name: String) throws(AgentboxError) -> Descriptor {
        let dir = home + "/names"
        try mkdirs(dir)
        // The name in hex (any bytes are safe in a file name then); a long name by its start, length
        // and checksum, within NAME_MAX.
        let utf8 = Array(name.utf8)
        func hex(_ bytes: [UInt8]) -> String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
        let file = utf8.count <= 100 ? hex(utf8) : hex(Array(utf8.prefix(64))) + "-\(utf8.count)-" + CRC32C.hex(CRC32C.checksum(utf8))
        let path = dir + "/" + file
        let holder = ids().first { isLive($0) && self.name(of: $0) == name }
        func refused() -> AgentboxError {
            AgentboxError(stage: "run", "the name \"\(name)\" belongs to a running run\(holder.map { " (\($0))" } ?? "")",
                          hint: "pick another --name, stop that run (agentbox stop \(holder ?? name)), or pass --allow-duplicate-name")
        }
        if holder != nil { throw refused() }
        // `prune` deletes name files nobody holds (locking them first): a lock taken on a file that was
        // deleted meanwhile guards nothing, so the claim checks it still holds the file at `path`.
        for _ in 0..<8 {
            let fd = Descriptor(open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600))
            guard fd.isValid else { throw AgentboxError(stage: "run", "cannot open \(path): \(FileIO.errnoString())") }
            if flock(fd.raw, LOCK_EX | LOCK_NB) < 0 { throw refused() }
            var held = stat(), named = stat()
            if fstat(fd.raw, &held) == 0, stat(path, &named) == 0, held.st_dev == named.st_dev, held.st_ino == named.st_ino { return fd }
        }
        throw AgentboxError(stage: "run", "could not claim the name \"\(name)\": \(path) keeps changing", hint: "try again")
    }

    /// Deletes the name files (`names/`) that no running run holds.
    public func removeUnclaimedNames() {
        let dir = home + "/names"
        guard let d = opendir(dir) else { return }
        var files: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { files.append(name) }
        }
        closedir(d)
        for file in files {
            let fd = Descriptor(open(dir + "/" + file, O_RDWR | O_CLOEXEC))
            guard fd.isValid, flock(fd.raw, LOCK_EX | LOCK_NB) == 0 else { continue }
            unlink(dir + "/" + file)  // while locked: a claimer that opened it sees it gone and retries
        }
    }

    /// Whether the run has a live writer: its current claim's (docs/lifecycle.md, "Owners, leases and
    /// fencing"), or a process of this node holding its lock, unless the claim is another node's and
    /// lapsed (then the holder is an owner that was superseded).
    public func isLive(_ id: String) -> Bool {
        let claim = Lease.current(runsDir + "/" + id)
        if claim?.isLive() == true { return true }
        if let claim, claim.node != Lease.node() { return false }
        let fd = open(runsDir + "/" + id + "/lock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) < 0 { return errno == EWOULDBLOCK }
        flock(fd, LOCK_UN)
        return false
    }

    /// The run's current claim when another node made it (nil: this node's, or none).
    public func foreignOwner(_ id: String) -> Lease.Claim? {
        guard let claim = Lease.current(runsDir + "/" + id), claim.node != Lease.node() else { return nil }
        return claim
    }

    /// What `ps` and `inspect` show, derived from the journal. `full` verifies every record (inspect);
    /// otherwise only the head and the last MiB are read (ps over many large journals).
    public func summary(_ id: String, full: Bool = true) throws(AgentboxError) -> RunSummary {
        let path = journalPath(id)
        if full { return RunSummary(id: id, journal: path, scan: try JournalReader.scan(path: path), live: isLive(id)) }
        return RunSummary(id: id, journal: path, scan: try JournalReader.headAndTail(path: path), live: isLive(id))
    }
}

/// A run as its journal tells it.
public struct RunSummary: Sendable {
    public var id: String
    public var journal: String
    public var name: String?
    public var kind = "exec"
    public var state: String
    public var exitCode: Int?
    public var reason: String?
    public var startedAt: String?
    public var endedAt: String?
    public var workspace: String?
    public var argv: [String] = []
    /// An agent run's task.
    public var task: String?
    /// Seconds a stopped agent run lets its current tool finish (`AGENTBOX_GRACE` when it started).
    public var grace: Double?
    public var usage: JSON = .null
    /// Bytes of output recorded per stream (an exec run read in full; nil otherwise).
    public var output: [CapturedStream: UInt64]? = nil
    public var isolation: JSON = .null
    public var records: Int?
    public var damage: String?
    public var tornBytes: Int

    public init(id: String, journal: String, scan: JournalScan, live: Bool) {
        self.id = id
        self.journal = journal
        records = scan.partial ? nil : scan.records.count
        tornBytes = scan.tornBytes
        damage = scan.damage?.description
        var ended: JournalRecord? = nil
        var output: [CapturedStream: UInt64] = [:]
        for r in scan.records {
            switch r.kind {
            case .runStarted?:
                name = r.data["name"]?.stringValue
                kind = r.data["kind"]?.stringValue ?? "exec"
                startedAt = r.ts
                workspace = r.data["forked_from"]?["workspace"]?.stringValue ?? r.data["policy"]?["workspace"]?.stringValue
                // A fork's records start with its parent's: it began when it was made.
                if let at = r.data["forked_from"]?["at"]?.stringValue { startedAt = at }
                argv = r.data["argv"]?.arrayValue?.compactMap(\.stringValue) ?? []
                task = r.data["task"]?.stringValue
                grace = r.data["grace_s"]?.numberValue
            case .sandboxReady?: isolation = r.data
            case .usage?: usage = r.data
            case .exit?: exitCode = r.data["code"]?.intValue
            case .output?:
                let stream: CapturedStream = r.data["stream"]?.stringValue == "stderr" ? .stderr : .stdout
                let count = OutputSpan(r.data)?.length ?? UInt64(r.data.outputBytes.count)
                output[stream, default: 0] += count
            case .runEnded?: ended = r
            case .runResumed?: ended = nil  // continued: an earlier end is not the run's end
            case .runForked?, .runImported?: workspace = r.data["workspace"]?.stringValue ?? workspace
            default: break
            }
        }
        if let ended {
            state = ended.data["state"]?.stringValue ?? "exited"
            reason = ended.data["reason"]?.stringValue
            endedAt = ended.ts
            exitCode = ended.data["exit_code"]?.intValue ?? exitCode
        } else if live {
            state = "running"
        } else {
            // No end record and no writer: the supervisor died (killed, crashed, power loss).
            state = "interrupted"
            endedAt = scan.records.last?.ts
        }
        if damage != nil { state = "damaged" }
        if !scan.partial && kind == "exec" { self.output = output }
    }

    public var json: JSON {
        func str(_ v: String?) -> JSON { v.map { JSON.string($0) } ?? .null }
        func num(_ v: Int?) -> JSON { v.map { JSON.number(Double($0)) } ?? .null }
        var fields: [(String, JSON)] = []
        fields.append(("id", .string(id)))
        fields.append(("name", str(name)))
        fields.append(("kind", .string(kind)))
        fields.append(("state", .string(state)))
        fields.append(("exit_code", num(exitCode)))
        fields.append(("reason", str(reason)))
        fields.append(("journal", .string(journal)))
        fields.append(("workspace", str(workspace)))
        fields.append(("argv", .array(argv.map { JSON.string($0) })))
        if kind == "run" { fields.append(("task", str(task))) }
        fields.append(("started_at", str(startedAt)))
        fields.append(("ended_at", str(endedAt)))
        fields.append(("usage", usage))
        if let output {
            fields.append(("output", .object(CapturedStream.allCases.map { ($0.rawValue, .number(Double(output[$0] ?? 0))) })))
        }
        fields.append(("isolation", isolation))
        fields.append(("records", num(records)))
        fields.append(("torn_tail_bytes", num(tornBytes)))
        fields.append(("damage", str(damage)))
        return .object(fields)
    }
}

/// The node-wide confession feed: one line per confession, append-only, each line checksummed like a
/// journal record so a torn or damaged line is detected.
public enum ConfessionFeed {
    public static func append(store: RunStore, run: String, name: String?, seq: UInt64, severity: String, category: String,
                              summary: String) throws(AgentboxError) {
        try store.mkdirs(store.home)
        var prefix = "{\"ts\":"
        JSON.quote(Clock.rfc3339(), into: &prefix)
        prefix += ",\"run\":"
        JSON.quote(run, into: &prefix)
        prefix += ",\"name\":" + (name.map { JSON.string($0).serialized } ?? "null")
        prefix += ",\"seq\":\(seq),\"severity\":"
        JSON.quote(severity, into: &prefix)
        prefix += ",\"category\":"
        JSON.quote(category, into: &prefix)
        prefix += ",\"summary\":"
        JSON.quote(summary, into: &prefix)
        var bytes = Array(prefix.utf8)
        bytes += Array(",\"crc\":\"\(CRC32C.hex(CRC32C.checksum(bytes)))\"}\n".utf8)
        let fd = open(store.confessionsPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentboxError(stage: "confessions", "cannot open \(store.confessionsPath): \(FileIO.errnoString())") }
        defer { close(fd) }
        // One write per line: O_APPEND keeps concurrent runs' lines whole.
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n != bytes.count || fdatasync(fd) < 0 {
            throw AgentboxError(stage: "confessions", "writing \(store.confessionsPath) failed: \(FileIO.errnoString())")
        }
    }

    /// Every intact line of the feed (a torn or damaged line is skipped and counted).
    public static func read(store: RunStore) -> (entries: [JSON], bad: Int) {
        guard let bytes = try? FileIO.read(store.confessionsPath, limit: 1 << 34) else { return ([], 0) }
        var out: [JSON] = []
        var bad = 0
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            if case .success = JournalRecord.verifyChecksum(line), let json = try? JSON.parse(bytes: Array(line)) {
                out.append(json)
            } else {
                bad += 1
            }
        }
        return (out, bad)
    }
}

extension JournalRecord {
    /// Checks only the trailing checksum of a line.
    static func verifyChecksum(_ line: ArraySlice<UInt8>) -> Result<Void, RecordProblem> {
        guard line.count > 18 else { return .failure("short") }
        let suffixStart = line.endIndex - 18
        let hex = String(decoding: line[(suffixStart + 8)..<(line.endIndex - 2)], as: UTF8.self)
        guard let stored = UInt32(hex, radix: 16), stored == CRC32C.checksum(line[line.startIndex..<suffixStart]) else {
            return .failure("checksum")
        }
        return .success(())
    }
}
