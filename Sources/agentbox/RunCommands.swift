import AgentboxCore
import AgentboxJournal
import AgentboxSandbox
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

    func show(_ r: JournalRecord) {
        if json { Console.out(r.raw); return }
        let d = r.data
        func field(_ key: String) -> String { safe(d[key]?.stringValue) }
        switch r.kind {
        case .output?:
            let bytes = d.outputBytes
            let fd: Int32 = d["stream"]?.stringValue == "stderr" ? 2 : 1
            Sandbox.writeAll(fd, raw ? bytes : Array(TerminalText.block(bytes: bytes).utf8))
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
        case .budget?: Console.write(Style.dim("[\(r.seq)] budget: \(field("detail"))"))
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
            var ended = false
            while true {
                for r in try follower.poll() where r.seq > since {
                    show(r)
                    if r.kind == .runEnded { ended = true }
                }
                if !follow || ended { break }
                if !store.isLive(id) {
                    // The writer is gone: read what it left, then stop (the run was interrupted).
                    for r in try follower.poll() where r.seq > since { show(r) }
                    if !json { Console.write(Style.dim("run \(id) was interrupted (its supervisor is gone)")) }
                    break
                }
                usleep(50_000)
            }
            return 0
        }
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
            abstract: "Verify a journal: seq continuity and every checksum.",
            discussion: "Exit 0 when intact, or when the only damage is a torn last line (a crash mid-write: recoverable). Exit 1 for damage anywhere else, naming the first bad seq and byte offset.")
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
                let scan = try JournalReader.scan(path: path)
                let status = scan.damage != nil ? "damaged" : (scan.tornBytes > 0 ? "recoverable" : "intact")
                if json {
                    Console.out(JSON.object([
                        ("path", .string(path)), ("status", .string(status)), ("records", .number(Double(scan.records.count))),
                        ("last_seq", .number(Double(scan.lastSeq))), ("bytes", .number(Double(scan.fileSize))),
                        ("torn_tail_bytes", .number(Double(scan.tornBytes))),
                        ("damage", scan.damage.map { .object([("seq", .number(Double($0.seq))), ("offset", .number(Double($0.offset))), ("reason", .string($0.reason))]) } ?? .null),
                    ]).serialized)
                } else {
                    let path = safe(path)
                    switch status {
                    case "intact": Console.out("\(path): intact, \(scan.records.count) records (seq 1-\(scan.lastSeq)), \(scan.fileSize) bytes")
                    case "recoverable": Console.out("\(path): recoverable: \(scan.records.count) good records, then a torn last line of \(scan.tornBytes) bytes at offset \(scan.validEnd) (a crash mid-write); the next writer cuts it")
                    default: Console.out("\(path): DAMAGED at \(safe(scan.damage?.description)); \(scan.records.count) good records before it")
                    }
                }
                return scan.damage == nil ? 0 : 1
            }
        }
    }
}
