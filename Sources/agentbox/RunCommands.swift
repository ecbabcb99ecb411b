import AgentboxCore
import AgentboxJournal
import AgentboxSandbox
import AgentboxSupervisor
import ArgumentParser
import Glibc

/// Text agentbox did not write, made safe for a terminal (docs/security.md, "Terminal output").
func safe(_ text: String?) -> String { TerminalText.line(text ?? "") }

/// Colours for people, only on a terminal and never with NO_COLOR.
enum Style {
    static let on = isatty(1) == 1 && getenv("NO_COLOR") == nil
    static func dim(_ s: String) -> String { on ? "\u{1B}[2m\(s)\u{1B}[0m" : s }
    static func bold(_ s: String) -> String { on ? "\u{1B}[1m\(s)\u{1B}[0m" : s }
    static func state(_ s: String) -> String {
        guard on else { return s }
        switch s {
        case "running": return "\u{1B}[36m\(s)\u{1B}[0m"
        case "exited", "finished": return "\u{1B}[32m\(s)\u{1B}[0m"
        case "interrupted", "timeout", "damaged", "failed", "stopped", "aborted", "budget", "killed": return "\u{1B}[33m\(s)\u{1B}[0m"
        default: return s
        }
    }
}

func age(_ ts: String?) -> String {
    guard let ts, let t = Clock.parseRFC3339(ts) else { return "-" }
    let s = max(0, Clock.wall() - t)
    if s < 60 { return "\(Int(s))s" }
    if s < 3600 { return "\(Int(s / 60))m" }
    if s < 86400 { return "\(Int(s / 3600))h" }
    return "\(Int(s / 86400))d"
}

struct PS: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List journaled runs (running ones; --all for every run).")
    @Flag(help: "Show every run, not only running ones.") var all = false
    @Flag(help: "JSON output: one object per line.") var json = false
    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            var rows: [RunSummary] = []
            for id in store.ids() {
                guard let s = try? store.summary(id, full: false) else { continue }
                if all || s.state == "running" { rows.append(s) }
            }
            if json {
                for r in rows { Console.out(r.json.serialized) }
                return 0
            }
            Console.out(Style.bold("ID            NAME                  STATE         AGE   EXIT  WHAT"))
            for r in rows {
                let name = safe(r.name ?? "-").padding(20)
                let exit = (r.exitCode.map { String($0) } ?? "-").padding(5)
                let what = r.kind == "run" ? "run: " + (r.task ?? "") : r.argv.joined(separator: " ")
                let shown = safe(String((what.split(separator: "\n").first ?? "").prefix(50)))
                Console.out("\(safe(r.id).padding(12))  \(name)  \(Style.state(safe(r.state).padding(12)))  \(age(r.startedAt).padding(5)) \(exit) \(shown)")
            }
            if rows.isEmpty && !all { Console.note("no running runs (`agentbox ps --all` shows ended ones)") }
            return 0
        }
    }
}

/// A run moved between machines (docs/lifecycle.md, "Moving a run"): one tar file holding a manifest,
/// the journal and the workspace as it is (the run is not running: its last step's state).
enum RunArchive {
    static let root = "agentbox-export"

    /// Runs tar with `args`; throws its message.
    static func tar(_ args: [String]) throws(AgentboxError) {
        var pid: pid_t = 0
        let argv = ["tar"] + args
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var p: [Int32] = [-1, -1]
        guard pipe(&p) == 0 else { throw AgentboxError(stage: "tar", FileIO.errnoString()) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, p[1], 2)
        posix_spawn_file_actions_addclose(&actions, p[0])
        let rc = posix_spawnp(&pid, "tar", &actions, nil, &cArgs, environ)
        close(p[1])
        var err: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(p[0], &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if err.count < 4096 { err += buf[0..<n] }
        }
        close(p[0])
        guard rc == 0 else { throw AgentboxError(stage: "tar", "cannot run tar: \(FileIO.errnoString(rc))", hint: "install tar") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            throw AgentboxError(stage: "tar", "tar \(args.first ?? "") failed: \(String(decoding: err, as: UTF8.self).trimmingSpaces())")
        }
    }

    /// The workspace a run recorded (the latest import's, else the start's), and its starting directory.
    static func workspace(_ records: [JournalRecord]) -> (workspace: String, workdir: String)? {
        if let imported = records.last(where: { $0.kind == .runImported || $0.kind == .runForked })?.data,
           let ws = imported["workspace"]?.stringValue, let wd = imported["workdir"]?.stringValue { return (ws, wd) }
        guard let o = records.first(where: { $0.kind == .runStarted })?.data["options"],
              let ws = o["workspace"]?.stringValue, let wd = o["workdir"]?.stringValue else { return nil }
        return (ws, wd)
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a run that is not running to one file (journal, workspace, manifest), to import it on another machine.",
        discussion: "Afterwards the run is marked exported here: `resume` refuses it (it continues where it is imported) unless --force. docs/lifecycle.md.")
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @Option(name: .shortAndLong, parsing: .unconditional, help: ArgumentHelp("The file to write (a tar archive).", valueName: "FILE")) var output: String
    @Flag(name: .customLong("with-checkpoints"), help: "Also carry the run's stored workspace contents, so that the imported run can be forked at its earlier steps (the file grows by what the checkpoints stored).")
    var withCheckpoints = false

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            let id = try store.resolve(target)
            // The run's writer lock for the whole export: nothing changes the journal meanwhile.
            let (writer, records) = try JournalWriter.reopenScanned(dir: store.runsDir + "/" + id) { records throws(AgentboxError) in
                guard records.first(where: { $0.kind == .runStarted })?.data["kind"]?.stringValue == "run" else {
                    throw AgentboxError(stage: "export", "run \(id) is an `exec` run: only agent runs are exported")
                }
            }
            guard let (ws, wd) = RunArchive.workspace(records) else {
                throw AgentboxError(stage: "export", "run \(id) was recorded by an older agentbox, without its workspace")
            }
            guard FileIO.isDirectory(ws) else { throw AgentboxError(stage: "export", "the run's workspace \(ws) is gone") }
            let file = AgentboxPaths.absolute(output)
            let staging = store.runsDir + "/.export-" + id
            _ = try? FileIO.removeTree(staging)
            try FileIO.makeDirectories(staging + "/" + RunArchive.root)
            defer { _ = try? FileIO.removeTree(staging) }
            let manifest = JSON.object([("format", 1), ("id", .string(id)), ("name", store.name(of: id).map { .string($0) } ?? .null),
                                        ("workspace", .string(ws)), ("workdir", .string(wd)), ("exported_at", .string(Clock.rfc3339())),
                                        ("host", JournaledRun.hostFacts())])
            try FileIO.writeNew(staging + "/" + RunArchive.root + "/manifest.json", manifest.serializedBytes)
            try FileIO.writeNew(staging + "/" + RunArchive.root + "/journal.jsonl", try FileIO.read(store.journalPath(id), limit: 1 << 40))
            var contents = ["-C", staging, RunArchive.root]
            let objects = store.runsDir + "/" + id + "/objects"
            if withCheckpoints && FileIO.isDirectory(objects) {
                contents += ["-C", store.runsDir + "/" + id, "--transform", "s,^objects\\(/\\|$\\),\(RunArchive.root)/objects\\1,", "objects"]
            }
            try RunArchive.tar(["-cf", file] + contents + ["-C", ws,
                                "--transform", "s,^\\.\\(/\\|$\\),\(RunArchive.root)/workspace\\1,", "."])
            try writer.append(.runExported, .object([("file", .string(file)), ("host", JournaledRun.hostFacts())]), critical: true)
            try writer.finish()
            var st = stat()
            _ = stat(file, &st)
            Console.note("exported run \(id) to \(file) (\(Units.formatSize(UInt64(st.st_size)))); import it with: agentbox import \(file)")
            return 0
        }
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register a run exported from another machine (or AGENTBOX_HOME) and print its id; then `agentbox resume` it.",
        discussion: "The workspace is unpacked into --workspace (default: a new folder named after the run in the current directory), which must not exist or be empty.")
    @Argument(help: ArgumentHelp("A file written by `agentbox export`.", valueName: "FILE")) var file: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Where to unpack the workspace.", valueName: "DIR")) var workspace: String?

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            try FileIO.makeDirectories(store.runsDir)
            let staging = store.runsDir + "/.import-\(getpid())"
            _ = try? FileIO.removeTree(staging)
            try FileIO.makeDirectories(staging)
            defer { _ = try? FileIO.removeTree(staging) }
            let path = AgentboxPaths.absolute(file)
            try RunArchive.tar(["-xf", path, "-C", staging, "--no-same-owner", RunArchive.root + "/manifest.json", RunArchive.root + "/journal.jsonl"])
            // Both must be plain files (a symlink in the archive must not make agentbox read a host file).
            for member in ["manifest.json", "journal.jsonl"] {
                var st = stat()
                guard lstat(staging + "/" + RunArchive.root + "/" + member, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
                    throw AgentboxError(stage: "import", "\(path): \(member) is not a regular file in the archive")
                }
            }
            let manifest: JSON
            do { manifest = try JSON.parse(bytes: try FileIO.read(staging + "/" + RunArchive.root + "/manifest.json")) } catch {
                throw AgentboxError(stage: "import", "\(path) is not an agentbox export: \(error)")
            }
            guard manifest["format"]?.intValue == 1, let id = manifest["id"]?.stringValue, id.allSatisfy({ $0.isHexDigit }), id.count == 12,
                  let oldWS = manifest["workspace"]?.stringValue, let oldWD = manifest["workdir"]?.stringValue else {
                throw AgentboxError(stage: "import", "\(path): an export of another format or version")
            }
            let journal = try FileIO.read(staging + "/" + RunArchive.root + "/journal.jsonl", limit: 1 << 40)
            let scan = JournalReader.scan(bytes: journal)
            if let damage = scan.damage { throw AgentboxError(stage: "import", "the journal in \(path) is damaged at \(damage)") }
            guard scan.records.first(where: { $0.kind == .runStarted })?.data["id"]?.stringValue == id else {
                throw AgentboxError(stage: "import", "the journal in \(path) is not the journal of run \(id)")
            }
            guard !FileIO.exists(store.runsDir + "/" + id) else {
                throw AgentboxError(stage: "import", "run \(id) is already here (\(store.runsDir)/\(id))", hint: "agentbox rm \(id) first to replace it")
            }
            // The name is the archive's word: a folder name only if it is a plain one.
            let name = manifest["name"]?.stringValue.flatMap { n in
                n.isEmpty || n.utf8.count > 128 || n.contains("/") || n == "." || n == ".." || n.hasPrefix("-") ? nil : n
            }
            let ws = AgentboxPaths.absolute(workspace ?? (name ?? id))
            if FileIO.isDirectory(ws), let d = opendir(ws) {
                var entries = 0
                while let e = readdir(d) { entries += 1; _ = e }
                closedir(d)
                if entries > 2 { throw AgentboxError(stage: "import", "\(ws) is not empty", hint: "pass --workspace DIR with a new or empty folder") }
            }
            try FileIO.makeDirectories(ws)
            try RunArchive.tar(["-xf", path, "-C", ws, "--no-same-owner", "--strip-components=2", RunArchive.root + "/workspace"])
            // What a sandbox cannot leave behind, an archive cannot bring in (tar as root would restore it).
            let defanged = try FileIO.defang(ws)
            if !defanged.isEmpty {
                Console.warning("the archive's workspace held set-id files or device nodes; removed or cleared: " + defanged.prefix(5).joined(separator: ", ")
                                + (defanged.count > 5 ? " and \(defanged.count - 5) more" : ""))
            }
            let wd = oldWD == oldWS ? ws : (oldWD.hasPrefix(oldWS + "/") ? ws + oldWD.dropFirst(oldWS.count) : ws)
            // Made in a hidden folder and renamed into place complete, `run.imported` included: an import
            // killed half-way leaves no run that would resume with the old machine's paths.
            let dir = store.runsDir + "/" + id
            let made = store.runsDir + "/.new-" + RunStore.newID()
            do throws(AgentboxError) {
                guard mkdir(made, 0o700) == 0 else { throw AgentboxError(stage: "import", "cannot create \(made): \(FileIO.errnoString())") }
                // Stored contents, when the export has them (--with-checkpoints): checked when they are used
                // (every fork checks each content's SHA-256); what tar as root could make of them, cleared.
                do throws(AgentboxError) { try RunArchive.tar(["-xf", path, "-C", made, "--no-same-owner", "--strip-components=1", RunArchive.root + "/objects"]) } catch {
                    guard error.message.contains("Not found in archive") else { throw error }
                }
                if FileIO.isDirectory(made + "/objects") { _ = try FileIO.defang(made + "/objects") }
                let kept = Array(journal[0..<scan.validEnd])
                let imported = JSON.object([("from", .object([("host", manifest["host"] ?? .null), ("workspace", .string(oldWS)), ("file", .string(path))])),
                                            ("workspace", .string(ws)), ("workdir", .string(wd))])
                try FileIO.writeNew(made + "/journal.jsonl", kept + JournalWriter.continuation(of: kept, lastSeq: scan.lastSeq, maxEpoch: scan.maxEpoch,
                                                                                             [(.runImported, imported)]))
                guard rename(made, dir) == 0 else { throw AgentboxError(stage: "import", "cannot create \(dir): \(FileIO.errnoString())") }
                try? store.syncRuns()
            } catch {
                _ = try? FileIO.removeTree(made)  // a full disk leaves no half-registered run (the workspace stays, said below)
                throw AgentboxError(stage: error.stage, error.message, hint: "the workspace was unpacked into \(ws); remove it before trying again")
            }
            Console.note("imported run \(id)\(name.map { " (\($0))" } ?? "") with its workspace in \(ws); continue it with: agentbox resume \(id)")
            Console.out(id)
            return 0
        }
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Delete runs: their journals and everything agentbox kept for them (never a running run).",
        discussion: "Confession feed lines of a removed run stay in the node's feed (agentbox confessions). Exit code 1 when a run could not be removed.")
    @Argument(help: ArgumentHelp("Run ids, unique id prefixes, or names.", valueName: "RUN")) var runs: [String]
    @Flag(help: "JSON output: one object per run.") var json = false

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("name at least one run (agentbox ps --all lists them)") }
    }

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            var failed = false
            for ref in runs {
                do throws(AgentboxError) {
                    let id = try store.resolve(ref, minimumPrefix: 4)  // deleting: no one-letter guesses
                    let freed = try store.remove(id)
                    if json {
                        Console.out(JSON.object([("id", .string(id)), ("removed", true), ("bytes", .number(Double(freed)))]).serialized)
                    } else {
                        Console.out("removed \(id)" + (ref != id ? " (\(safe(ref)))" : "") + ", \(Units.formatSize(freed))")
                    }
                } catch {
                    failed = true
                    if json { Console.out(JSON.object([("run", .string(ref)), ("removed", false), ("error", .string(error.message))]).serialized) }
                    Console.error(error)
                }
            }
            return failed ? 1 : 0
        }
    }
}

struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune", abstract: "Delete every run that has ended (never a running run), or only the older ones.",
        discussion: "Example: agentbox prune --older-than 7d. Leftovers of an interrupted rm are removed too.")
    @Option(name: .customLong("older-than"), parsing: .unconditional, help: ArgumentHelp("Only runs that ended (or, if their end was never recorded, started) longer ago than this, e.g. 12h, 7d.", valueName: "DURATION"))
    var olderThan: String?
    @Flag(name: .customLong("dry-run"), help: "Show what would be removed; remove nothing.") var dryRun = false
    @Flag(help: "JSON output: one object per run.") var json = false

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            var minimumAge: Double? = nil
            if let text = olderThan {
                // 0 (any unit) means every ended run, like no --older-than.
                let zero = !text.isEmpty && text.allSatisfy { "0.smhd".contains($0) } && text.contains("0")
                guard let d = zero ? 0 : Units.parseDuration(text), d >= 0 else {
                    throw .usage("--older-than \(text): expected a duration such as 30m, 12h, 7d")
                }
                minimumAge = d
            }
            let store = RunStore()
            let now = Clock.wall()
            var removed = 0, freed: UInt64 = 0, failed = false
            for id in store.ids() {
                guard !store.isLive(id), let s = try? store.summary(id, full: false), s.state != "running" else { continue }
                if let minimumAge {
                    guard let when = (s.endedAt ?? s.startedAt).flatMap(Clock.parseRFC3339), now - when > minimumAge else { continue }
                }
                do throws(AgentboxError) {
                    let bytes = dryRun ? 0 : try store.remove(id)
                    removed += 1
                    freed += bytes
                    if json {
                        Console.out(JSON.object([("id", .string(id)), ("name", s.name.map { .string($0) } ?? .null), ("state", .string(s.state)),
                                                 ("removed", .bool(!dryRun)), ("bytes", .number(Double(bytes)))]).serialized)
                    } else if dryRun {
                        Console.out("would remove \(id)  \(safe(s.name ?? "-"))  \(safe(s.state))  \(age(s.endedAt ?? s.startedAt))")
                    }
                } catch {
                    failed = true
                    Console.error(error)
                }
            }
            if !dryRun {
                store.removeLeftovers()
                store.removeUnclaimedNames()
            }
            if !json {
                Console.note(dryRun ? "\(removed) run(s) would be removed" : "removed \(removed) run(s), \(Units.formatSize(freed)) freed")
            }
            return failed ? 1 : 0
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a run: state, exit, journal, workspace, timestamps, usage, isolation.")
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @Flag(help: "JSON output.") var json = false
    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            let s = try store.summary(try store.resolve(target))
            if json {
                Console.out(s.json.pretty)
            } else {
                for (k, v) in s.json.objectValue ?? [] {
                    let text = safe(v.stringValue ?? (v == .null ? "-" : v.serialized))
                    Console.out("\(k.padding(16)) \(k == "state" ? Style.state(text) : text)")
                }
            }
            return 0
        }
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a run's output and events from its journal.",
        discussion: """
            Output goes to stdout/stderr as the command wrote it, with control characters (escape sequences, \
            carriage returns) shown escaped; events (warnings, limits, exit) go to stderr. An agent run's model \
            text and tool results are indented with "  | ". --raw gives an exec run's output bytes unchanged; \
            --json prints the records as stored.
            """)
    @Argument(help: ArgumentHelp("Run id, unique id prefix, or name.", valueName: "RUN")) var target: String
    @Flag(name: [.short, .long], help: "Follow: show new records as they are written; end when the run ends.") var follow = false
    @Flag(help: "Print the journal records as stored, one per line.") var json = false
    @Flag(help: "Write the command's output bytes exactly as recorded, escape sequences included (for files and pipes).") var raw = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Start after this sequence number.", valueName: "SEQ")) var since: UInt64 = 0

    /// What the model and the tools wrote is indented with this: no line agentbox prints itself starts
    /// with it, so no line of theirs can pass for a record.
    static let gutter = "  | "

    /// `header` and `text` on one line when `text` is one line, else `text` indented below `header`.
    func headed(_ header: String, _ text: String) -> String {
        var body = text
        if body.hasSuffix("\n") { body.removeLast() }
        if !body.contains("\n") { return header + " " + safe(body) }
        return header + "\n" + TerminalText.prefixed(body, Logs.gutter)
    }

    func show(_ r: JournalRecord, _ output: OutputPrinter) {
        if json { Console.out(r.raw); return }
        let d = r.data
        func field(_ key: String) -> String { safe(d[key]?.stringValue) }
        switch r.kind {
        case .output?:
            switch output.reader.bytes(d) {
            case let .success(bytes): output.write(d["stream"]?.stringValue == "stderr" ? .stderr : .stdout, bytes)
            case let .failure(problem):
                Console.write("[\(r.seq)] output not shown: \(safe(problem.description)) (agentbox journal verify \(safe(target)))")
            }
        case .warning?: Console.write(Style.dim("[\(r.seq)] warning: \(field("message"))"))
        case .confession?:
            Console.write("[\(r.seq)] confession \(field("severity"))/\(field("category"))"
                          + (d["by"]?.stringValue == "supervisor" ? " (by agentbox)" : "") + ": \(field("summary"))")
        case .limit?:
            Console.write(Style.dim("[\(r.seq)] \(r.type): \(safe(d["detail"]?.stringValue ?? d["summary"]?.stringValue))"))
        case .exit?: Console.write(Style.dim("[\(r.seq)] exit \(d["code"]?.intValue.map(String.init) ?? "?") (\(field("status")))"))
        case .runEnded?:
            var text = "[\(r.seq)] run ended: \(field("state"))"
            if let status = d["status"]?.stringValue { text += " (\(safe(status)))" }
            if let summary = d["summary"]?.stringValue ?? d["reason"]?.stringValue { text += ": " + safe(summary) }
            Console.write(Style.dim(text))
        // Agent runs: the conversation and the tools, on stdout (it is the run's output).
        case .runStarted? where d["kind"]?.stringValue == "run":
            Console.out(headed(Style.bold("task:"), d["task"]?.stringValue ?? ""))
        // A bring-your-own-agent run: the gateway's calls, in short, on stderr (the command's output is the run's).
        case .modelResponse? where d["call"] != nil:
            let u = d["usage"] ?? .null
            var text = "[\(r.seq)] model call \(d["call"]?.intValue ?? 0): \(d["status"]?.intValue ?? 0), \(u["input_tokens"]?.intValue ?? 0) in / \(u["output_tokens"]?.intValue ?? 0) out tokens"
            if d["usage_estimated"]?.boolValue == true { text += " (estimated)" }
            if let c = d["cost"]?.numberValue { text += ", $\(c)" }
            Console.write(Style.dim(text + ", \(d["ms"]?.intValue ?? 0) ms"))
        case .modelRequest? where d["call"] != nil:
            Console.write(Style.dim("[\(r.seq)] model call \(d["call"]?.intValue ?? 0): \(field("provider")) \(field("model"))\(d["stream"]?.boolValue == true ? " (streamed)" : "")"))
        case .modelError? where d["call"] != nil:
            Console.write(Style.dim("[\(r.seq)] model call \(d["call"]?.intValue ?? 0) " + (d["refused"] != nil ? "refused: \(field("refused"))" : "failed: \(field("message"))")))
        case .netConnect?:
            var how = d["decision"]?.stringValue == "allowed" ? "allowed by \(field("rule"))" : "DENIED: \(field("reason"))"
            if d["error"] != nil { how += ", failed: \(field("error"))" }
            Console.write(Style.dim("[\(r.seq)] net \(field("method")) \(field("host")):\(d["port"]?.intValue ?? 0) \(how)"))
        case .modelResponse?:
            let turn = d["turn"] ?? .null
            Console.out(Style.bold("[\(r.seq)] step \(d["step"]?.intValue ?? 0)") + Style.dim(" (\(d["total_tokens"]?.intValue ?? 0) tokens so far)"))
            if let text = turn["text"]?.stringValue, !text.isEmpty { Console.out(TerminalText.prefixed(text, Logs.gutter)) }
        case .toolCall?:
            let args = d["arguments"] ?? .null
            let name = d["name"]?.stringValue ?? "?"
            if name == "shell" {
                Console.out(headed(Style.bold("[\(r.seq)]") + " $", args["command"]?.stringValue ?? ""))
            } else {
                Console.out(Style.bold("[\(r.seq)] ") + safe(name) + " " + safe(args.serialized))
            }
        case .toolDone?:
            let mark = d["is_error"]?.boolValue == true ? "error" : "result"
            Console.out(Style.dim("[\(r.seq)] \(mark) of \(field("name")):"))
            Console.out(TerminalText.prefixed(d["content"]?.stringValue ?? "", Logs.gutter))
        case .toolInterrupted?: Console.write(Style.dim("[\(r.seq)] tool call \(field("id")) interrupted: \(field("reason"))"))
        case .modelAttempt?, .modelError?:
            Console.write(Style.dim("[\(r.seq)] \(r.type): \(field("error"))"))
        case .budget?: Console.write(Style.dim("[\(r.seq)] budget: \(safe(d["detail"]?.stringValue ?? d["exceeded"]?.stringValue))"))
        case .journalRecovered?:
            Console.write(Style.dim("[\(r.seq)] journal recovered: a torn last record (\(d["truncated_bytes"]?.intValue ?? 0) bytes) was cut"))
        default: break
        }
    }

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            let id = try store.resolve(target)
            let follower = JournalFollower(path: store.journalPath(id))
            let output = OutputPrinter(reader: OutputReader(dir: store.runsDir + "/" + id), raw: raw)
            var ended = false
            func showNew() throws(AgentboxError) {
                for r in try follower.poll() {
                    if r.kind == .output { output.reader.track(r.data) }
                    if r.seq > since { show(r, output) }
                    if r.kind == .runEnded { ended = true }
                }
            }
            while true {
                try showNew()
                if !follow || ended { break }
                if !store.isLive(id) {
                    // The writer is gone: read what it left, then stop (the run was interrupted).
                    try showNew()
                    if !json { Console.write(Style.dim("run \(id) was interrupted (its supervisor is gone)")) }
                    break
                }
                usleep(50_000)
            }
            // Output a supervisor stored but died before recording (it was passed on after it was
            // stored): shown once no writer can still record it.
            if !json && (ended || !store.isLive(id)) {
                for stream in CapturedStream.allCases {
                    let count = output.reader.unrecordedCount(stream)
                    guard count > 0 else { continue }
                    Console.write(Style.dim("\(count) bytes of \(stream.rawValue) after the last record (the supervisor died before recording them):"))
                    output.reader.unrecorded(stream) { output.write(stream, $0) }
                }
            }
            output.finish()
            return 0
        }
    }
}

/// Writes a run's output to stdout and stderr: the bytes as recorded (`--raw`), or escaped for a
/// terminal. Records split the output anywhere (a character may start in one and end in the next), so a
/// character cut at the end of one piece waits for the rest of its stream before it is escaped.
final class OutputPrinter {
    let reader: OutputReader
    let raw: Bool
    var held: [CapturedStream: [UInt8]] = [:]

    init(reader: OutputReader, raw: Bool) {
        self.reader = reader
        self.raw = raw
    }

    func write(_ stream: CapturedStream, _ bytes: [UInt8]) {
        let fd: Int32 = stream == .stdout ? 1 : 2
        if raw {
            Sandbox.writeAll(fd, bytes)
            return
        }
        var text = held.removeValue(forKey: stream) ?? []
        text += bytes
        let cut = OutputPrinter.incompleteTail(text)
        if cut > 0 {
            held[stream] = Array(text.suffix(cut))
            text.removeLast(cut)
        }
        Sandbox.writeAll(fd, Array(TerminalText.block(bytes: text).utf8))
    }

    /// Writes what is still held (a character that never got its end: shown escaped).
    func finish() {
        for (stream, bytes) in held { Sandbox.writeAll(stream == .stdout ? 1 : 2, Array(TerminalText.block(bytes: bytes).utf8)) }
        held = [:]
    }

    /// How many bytes at the end of `bytes` are the start of a UTF-8 sequence still missing its
    /// continuation bytes (0-3).
    static func incompleteTail(_ bytes: [UInt8]) -> Int {
        var i = bytes.count - 1
        while i >= 0 && bytes.count - i <= 3 && bytes[i] & 0xC0 == 0x80 { i -= 1 }
        guard i >= 0 else { return 0 }
        let lead = bytes[i]
        let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        return need > 1 && bytes.count - i < need ? bytes.count - i : 0
    }
}

struct Confessions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show confessions: problems agents (and the supervisor on their behalf) reported to the node's operators.")
    @Argument(help: ArgumentHelp("Only this run (id, prefix or name).", valueName: "RUN")) var target: String?
    @Flag(name: [.short, .long], help: "Follow the node-wide feed.") var follow = false
    @Flag(help: "JSON lines as stored in the feed.") var json = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Minimum severity: info, warning or blocker.", valueName: "LEVEL")) var severity: String?

    func run() throws {
        guarded { () throws(AgentboxError) -> Int32 in
            let store = RunStore()
            let levels = ["info": 0, "warning": 1, "blocker": 2]
            var minimum = 0
            if let severity {
                guard let level = levels[severity] else { throw .usage("--severity \(severity): use info, warning or blocker") }
                minimum = level
            }
            let runID: String? = target == nil ? nil : try store.resolve(target!)
            var shown = 0
            while true {
                let (entries, _) = ConfessionFeed.read(store: store)
                for e in entries.dropFirst(shown) {
                    if let runID, e["run"]?.stringValue != runID { continue }
                    if levels[e["severity"]?.stringValue ?? "info"] ?? 0 < minimum { continue }
                    if json { Console.out(e.serialized); continue }
                    // One confession, one line: every field escaped (a summary cannot print a second one).
                    let name = safe(e["name"]?.stringValue ?? "-")
                    Console.out("\(safe(e["ts"]?.stringValue))  \(safe(e["run"]?.stringValue)) \(name)  \(Style.bold(safe(e["severity"]?.stringValue)))  \(safe(e["category"]?.stringValue)): \(safe(e["summary"]?.stringValue))")
                }
                shown = entries.count
                if !follow { break }
                usleep(100_000)
            }
            return 0
        }
    }
}

struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "journal", abstract: "Check run journals.", subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a journal: seq continuity and every checksum, and the output its records point at.",
            discussion: "Exit 0 when intact, or when the only damage is a torn last line (a crash mid-write: recoverable). Exit 1 for damage anywhere else, naming the first bad seq and byte offset: a record's, or the output record whose bytes in the raw output file are missing or do not match its checksum.")
        @Argument(help: ArgumentHelp("Run id, prefix, name, or a path to a journal.jsonl.", valueName: "RUN|PATH")) var target: String
        @Flag(help: "JSON output.") var json = false
        func run() throws {
            guarded { () throws(AgentboxError) -> Int32 in
                let path: String
                if target.contains("/") || target.hasSuffix(".jsonl") {
                    path = target
                } else {
                    let store = RunStore()
                    path = store.journalPath(try store.resolve(target))
                }
                var scan = try JournalReader.scan(path: path)
                // The output the records point at, in the raw files next to the journal.
                let output = OutputReader(dir: path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ".")
                var goodRecords = scan.records.count
                if scan.damage == nil, let damage = output.verify(scan.records) {
                    scan.damage = damage
                    goodRecords = scan.records.firstIndex { $0.seq == damage.seq } ?? goodRecords
                }
                let unrecorded = scan.damage == nil ? CapturedStream.allCases.map { ($0, output.unrecordedCount($0)) } : []
                let status = scan.damage != nil ? "damaged" : (scan.tornBytes > 0 ? "recoverable" : "intact")
                if json {
                    Console.out(JSON.object([
                        ("path", .string(path)), ("status", .string(status)), ("records", .number(Double(scan.records.count))),
                        ("last_seq", .number(Double(scan.lastSeq))), ("bytes", .number(Double(scan.fileSize))),
                        ("torn_tail_bytes", .number(Double(scan.tornBytes))), ("fenced_records", .number(Double(scan.fenced))),
                        ("damage", scan.damage.map { .object([("seq", .number(Double($0.seq))), ("offset", .number(Double($0.offset))), ("reason", .string($0.reason))]) } ?? .null),
                        ("unrecorded_output", .object(unrecorded.map { ($0.rawValue, .number(Double($1))) })),
                    ]).serialized)
                } else {
                    let path = safe(path)
                    switch status {
                    case "intact": Console.out("\(path): intact, \(scan.records.count) records (seq 1-\(scan.lastSeq)), \(scan.fileSize) bytes")
                    case "recoverable": Console.out("\(path): recoverable: \(scan.records.count) good records, then a torn last line of \(scan.tornBytes) bytes at offset \(scan.validEnd) (a crash mid-write); the next writer cuts it")
                    default: Console.out("\(path): DAMAGED at \(safe(scan.damage?.description)); \(goodRecords) good records before it")
                    }
                    for (stream, count) in unrecorded where count > 0 {
                        Console.out("\(path): \(count) bytes of \(stream.rawValue) after the last record (the supervisor died before recording them; `agentbox logs` shows them)")
                    }
                    if scan.fenced > 0 {
                        Console.out("\(path): \(scan.fenced) record(s) written by a superseded writer after the run was taken over are not part of it")
                    }
                }
                return scan.damage == nil ? 0 : 1
            }
        }
    }
}
