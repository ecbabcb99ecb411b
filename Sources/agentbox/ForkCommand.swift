import AgentboxCore
import AgentboxJournal
import AgentboxSupervisor
import ArgumentParser
import Glibc

/// `agentbox fork RUN`: a new run with RUN's history up to a step and a copy of the workspace as it was
/// then, which goes on independently (docs/lifecycle.md, "Fork").
struct Fork: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a new run from another run's history up to a step, with a copy of its workspace as it was then.",
        discussion: """
            The new run shares RUN's conversation up to step --at (default: RUN's last checkpoint) and starts from \
            that step's workspace checkpoint, copied into --workspace; then it goes on like `agentbox resume`, \
            independently of RUN (which may still be running). For best-of-N, evaluations and rollouts. \
            Exit codes as `run`; 125 when RUN cannot be forked (no checkpoint at that step, an exec run).
            """)
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @Option(parsing: .unconditional, help: ArgumentHelp("The step to fork at (0: before the first model call; default: the last one checkpointed).", valueName: "STEP"))
    var at: Int?
    @Option(parsing: .unconditional, help: ArgumentHelp("A name for the new run.", valueName: "NAME")) var name: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Where the copy of the workspace goes (new or empty; default: a folder named after the new run in the current directory).", valueName: "DIR"))
    var workspace: String?
    @OptionGroup var options: ContinueOptions

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let id = try makeFork()
            if options.detach { return try Detach.start(json: options.json, arguments: ["resume", id] + options.arguments) }
            let resume: Resume
            do { resume = try Resume.parse([id] + options.arguments) } catch { throw AgentboxError(stage: "fork", "\(error)") }
            return try resume.go()
        }
    }

    /// Creates the new run (journal prefix, workspace, objects) and returns its id; nothing is left of
    /// it when this fails.
    func makeFork() throws(AgentboxError) -> String {
        let store = RunStore()
        let parent = try store.resolve(target)
        let scan = try JournalReader.scan(path: store.journalPath(parent))
        if let damage = scan.damage { throw AgentboxError(stage: "fork", "the journal of run \(parent) is damaged at \(damage)", hint: "agentbox journal verify \(parent)") }
        let records = scan.records
        guard let started = records.first(where: { $0.kind == .runStarted }), started.data["kind"]?.stringValue == "run" else {
            throw .usage("run \(parent) is an `exec` run: only agent runs are forked")
        }
        let checkpoints = records.filter { $0.kind == .checkpoint }
        guard let last = checkpoints.last else {
            throw AgentboxError(stage: "fork", "run \(parent) has no workspace checkpoints (started with --no-checkpoints, or by an older agentbox): it cannot be forked")
        }
        let steps = checkpoints.compactMap { $0.data["step"]?.intValue }
        var cut = last
        if let at {
            guard let found = checkpoints.last(where: { $0.data["step"]?.intValue == at }) else {
                throw .usage("--at \(at): run \(parent) has checkpoints of steps \(steps.min() ?? 0) to \(steps.max() ?? 0)")
            }
            cut = found
        }
        let step = cut.data["step"]?.intValue ?? 0
        let prefix = records.filter { $0.seq <= cut.seq }
        guard let (parentWS, parentWD) = RunArchive.workspace(prefix) else {
            throw AgentboxError(stage: "fork", "run \(parent) was recorded without its workspace")
        }
        if let name { try checkRunName(name) }
        if let name { _ = try store.claimName(name) }  // refused while a running run has it; the run claims it again
        let index = WorkspaceCheckpoints.index(from: prefix)
        let ws = AgentboxPaths.absolute(workspace ?? name ?? "fork-of-\(parent)-\(step)")
        var st = stat()
        if lstat(ws, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR else { throw .usage("\(ws) exists and is not a folder", hint: "pass --workspace DIR with a new or empty folder") }
            // Root writes the files with their recorded owners and modes: not into a folder someone else
            // can change meanwhile.
            guard st.st_uid == getuid() else { throw .usage("\(ws) belongs to another user", hint: "pass --workspace DIR with a new folder, or an empty one of yours") }
            guard let d = opendir(ws) else { throw .usage("cannot read \(ws): \(FileIO.errnoString())") }
            var entries = 0
            while readdir(d) != nil { entries += 1 }
            closedir(d)
            if entries > 2 { throw .usage("\(ws) is not empty", hint: "pass --workspace DIR with a new or empty folder") }
        }
        let createdWS = !FileIO.exists(ws)
        // The new run is made in a hidden folder (runs/.new-ID: not a run yet) and appears by one
        // rename when it is complete: a fork killed half-way leaves no run that would resume elsewhere.
        let id = RunStore.newID()
        let staging = store.runsDir + "/.new-" + id
        let dir = store.runsDir + "/" + id
        do throws(AgentboxError) {
            guard mkdir(staging, 0o700) == 0 else { throw AgentboxError(stage: "fork", "cannot create \(staging): \(FileIO.errnoString())") }
            try WorkspaceCheckpoints.materialize(index, objects: store.runsDir + "/" + parent + "/objects", into: ws)
            try linkObjects(prefix, from: store.runsDir + "/" + parent + "/objects", to: staging + "/objects")
            let wd = parentWD == parentWS ? ws : (parentWD.hasPrefix(parentWS + "/") ? ws + parentWD.dropFirst(parentWS.count) : ws)
            let forked = JSON.object([
                ("from", .object([("run", .string(parent)), ("name", started.data["name"] ?? .null), ("step", .number(Double(step))),
                                  ("seq", .number(Double(cut.seq))), ("workspace", .string(parentWS))])),
                ("workspace", .string(ws)), ("workdir", .string(wd)),
            ])
            try FileIO.writeNew(staging + "/journal.jsonl", journal(prefix, id: id, parent: parent, step: step, forked: forked))
            guard rename(staging, dir) == 0 else { throw AgentboxError(stage: "fork", "cannot create \(dir): \(FileIO.errnoString())") }
            try? store.syncRuns()
        } catch {
            _ = try? FileIO.removeTree(staging)
            if createdWS { _ = try? FileIO.removeTree(ws) } else { try? FileIO.removeContents(of: ws) }
            throw error
        }
        Console.note("forked run \(parent) at step \(step) as \(id)\(name.map { " (\($0))" } ?? ""), workspace \(ws)")
        let skipped = prefix.filter { $0.kind == .checkpoint }.reduce(0) { $0 + ($1.data["skipped"]?.arrayValue?.count ?? 0) }
        if skipped > 0 {
            Console.warning("\(skipped) path(s) were left out of run \(parent)'s checkpoints (see their `skipped`): the fork's workspace does not have them")
        }
        return id
    }

    /// The new journal: the parent's records through the cut, as they are, except `run.started` (the new
    /// run's id and name, and where it came from) and each continuing writer's `from_offset` (offsets in
    /// this file: records a superseded writer added are not copied); then `journal.opened` and
    /// `run.forked` of this process's epoch (its claim is made when the run is resumed).
    func journal(_ prefix: [JournalRecord], id: String, parent: String, step: Int, forked: JSON) -> [UInt8] {
        var out: [UInt8] = []
        var epochStart: [Int: Int] = [:]
        for r in prefix {
            if epochStart[r.epoch] == nil { epochStart[r.epoch] = out.count }
            switch r.kind {
            case .runStarted?:
                var fields = (r.data.objectValue ?? []).filter { $0.0 != "id" && $0.0 != "name" && $0.0 != "forked_from" }
                fields.insert(("name", name.map { .string($0) } ?? .null), at: 0)
                fields.insert(("id", .string(id)), at: 0)
                fields.append(("forked_from", .object([("run", .string(parent)), ("step", .number(Double(step))),
                                                       ("at", .string(Clock.rfc3339())), ("workspace", forked["workspace"] ?? .null)])))
                out += JournalRecord(seq: r.seq, ts: r.ts, epoch: r.epoch, type: r.type, data: .object(fields)).line()
            case .journalOpened? where r.data["from_offset"] != nil:
                let fields = (r.data.objectValue ?? []).map { $0.0 == "from_offset" ? ($0.0, JSON.number(Double(epochStart[r.epoch]!))) : $0 }
                out += JournalRecord(seq: r.seq, ts: r.ts, epoch: r.epoch, type: r.type, data: .object(fields)).line()
            default:
                out += Array(r.raw.utf8) + [0x0A]
            }
        }
        out += JournalWriter.continuation(of: out, lastSeq: prefix.last?.seq ?? 0, maxEpoch: prefix.map(\.epoch).max() ?? 0, [(.runForked, forked)])
        return out
    }

    /// Hard links to the parent's stored contents that the copied checkpoints refer to (a copy across
    /// filesystems): the new run, and forks of it at any of these steps, do not depend on the parent.
    func linkObjects(_ prefix: [JournalRecord], from: String, to: String) throws(AgentboxError) {
        var hashes = Set<String>()
        for r in prefix where r.kind == .checkpoint {
            for e in r.data["changed"]?.arrayValue ?? [] where e["t"]?.stringValue == "f" {
                if let h = e["h"]?.stringValue, h.count == 64, h.allSatisfy(\.isHexDigit) { hashes.insert(h) }
            }
        }
        var made = Set<String>()
        for hash in hashes {
            let rel = hash.prefix(2) + "/" + hash.dropFirst(2)
            let sub = to + "/" + hash.prefix(2)
            if !made.contains(sub) {
                try FileIO.makeDirectories(sub)
                made.insert(sub)
            }
            guard FileIO.exists(from + "/" + rel) else { continue }  // a step the parent could not store
            if link(from + "/" + rel, to + "/" + rel) == 0 || errno == EEXIST { continue }
            let fd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw AgentboxError(stage: "fork", "cannot open \(sub): \(FileIO.errnoString())") }
            defer { close(fd) }
            try WorkspaceCheckpoints.copyVerified(from + "/" + rel, hash: hash, to: fd, String(hash.dropFirst(2)), display: from + "/" + rel)
        }
    }
}
