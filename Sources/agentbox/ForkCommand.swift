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
        if FileIO.isDirectory(ws), let d = opendir(ws) {
            var entries = 0
            while readdir(d) != nil { entries += 1 }
            closedir(d)
            if entries > 2 { throw .usage("\(ws) is not empty", hint: "pass --workspace DIR with a new or empty folder") }
        } else if FileIO.exists(ws) {
            throw .usage("\(ws) exists and is not a folder", hint: "pass --workspace DIR with a new or empty folder")
        }
        let createdWS = !FileIO.exists(ws)
        let id = try store.createDirectory()
        let dir = store.runsDir + "/" + id
        do {
            try WorkspaceCheckpoints.materialize(index, objects: store.runsDir + "/" + parent + "/objects", into: ws)
            try linkObjects(index, from: store.runsDir + "/" + parent + "/objects", to: dir + "/objects")
            try FileIO.writeNew(dir + "/journal.jsonl", journal(prefix, id: id, parent: parent, step: step))
            let writer = try JournalWriter.reopen(dir: dir)
            let wd = parentWD == parentWS ? ws : (parentWD.hasPrefix(parentWS + "/") ? ws + parentWD.dropFirst(parentWS.count) : ws)
            try writer.append(.runForked, .object([
                ("from", .object([("run", .string(parent)), ("name", started.data["name"] ?? .null), ("step", .number(Double(step))),
                                  ("seq", .number(Double(cut.seq))), ("workspace", .string(parentWS))])),
                ("workspace", .string(ws)), ("workdir", .string(wd)),
            ]), critical: true)
            try writer.finish()
        } catch {
            _ = try? FileIO.removeTree(dir)
            if createdWS { _ = try? FileIO.removeTree(ws) }
            throw error
        }
        Console.note("forked run \(parent) at step \(step) as \(id)\(name.map { " (\($0))" } ?? ""), workspace \(ws)")
        return id
    }

    /// The new journal: the parent's records through the cut, as they are, except `run.started` (the new
    /// run's id and name, and where it came from) and each continuing writer's `from_offset` (offsets in
    /// this file: records a superseded writer added are not copied).
    func journal(_ prefix: [JournalRecord], id: String, parent: String, step: Int) -> [UInt8] {
        var out: [UInt8] = []
        var epochStart: [Int: Int] = [:]
        for r in prefix {
            if epochStart[r.epoch] == nil { epochStart[r.epoch] = out.count }
            switch r.kind {
            case .runStarted?:
                var fields = (r.data.objectValue ?? []).filter { $0.0 != "id" && $0.0 != "name" && $0.0 != "forked_from" }
                fields.insert(("name", name.map { .string($0) } ?? .null), at: 0)
                fields.insert(("id", .string(id)), at: 0)
                fields.append(("forked_from", .object([("run", .string(parent)), ("step", .number(Double(step)))])))
                out += JournalRecord(seq: r.seq, ts: r.ts, epoch: r.epoch, type: r.type, data: .object(fields)).line()
            case .journalOpened? where r.data["from_offset"] != nil:
                let fields = (r.data.objectValue ?? []).map { $0.0 == "from_offset" ? ($0.0, JSON.number(Double(epochStart[r.epoch]!))) : $0 }
                out += JournalRecord(seq: r.seq, ts: r.ts, epoch: r.epoch, type: r.type, data: .object(fields)).line()
            default:
                out += Array(r.raw.utf8) + [0x0A]
            }
        }
        return out
    }

    /// Hard links to the parent's stored contents the new run's checkpoints refer to (a copy across
    /// filesystems): the new run and its own forks do not depend on the parent staying.
    func linkObjects(_ index: [String: WorkspaceCheckpoints.Entry], from: String, to: String) throws(AgentboxError) {
        var made = Set<String>()
        for e in index.values where e.kind == .file && e.hash.count == 64 {
            let rel = e.hash.prefix(2) + "/" + e.hash.dropFirst(2)
            let sub = to + "/" + e.hash.prefix(2)
            if !made.contains(sub) {
                try FileIO.makeDirectories(sub)
                made.insert(sub)
            }
            if link(from + "/" + rel, to + "/" + rel) == 0 || errno == EEXIST { continue }
            try FileIO.writeNew(to + "/" + rel, try FileIO.read(from + "/" + rel, limit: 1 << 40))
        }
    }
}
