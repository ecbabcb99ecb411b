import AgentboxCore
import AgentboxJournal
import Foundation
import Testing

/// Journaled runs (`exec --name`) and the commands that read them, end to end.
@Suite struct JournalIntegrationTests {
    func home() -> String {
        let dir = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func ab(_ args: [String], home: String, cwd: String = "/tmp") -> RunResult {
        run([TestEnv.agentbox] + args, cwd: cwd, env: ["AGENTBOX_HOME": home])
    }

    func journaledExec(_ name: String, _ script: String, home: String, options: [String] = []) -> RunResult {
        run([TestEnv.agentbox, "exec", "--name", name] + options + ["--", "/bin/sh", "-c", script], cwd: TestEnv.workspace(),
            env: ["AGENTBOX_HOME": home])
    }

    func jsonLines(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    @Test func recordsOutputExitAndEndAndLogsReplaysIt() throws {
        let h = home()
        let r = journaledExec("job", "echo out; echo err >&2; printf '\\377\\376x\\033[2J\\r\\n'; exit 3", home: h)
        #expect(r.code == 3, "\(r)")
        let expected = Array("out\n".utf8) + [0xff, 0xfe] + Array("x\u{1B}[2J\r\n".utf8)
        #expect(r.outBytes == expected && r.err == "err\n", "output is still passed through: \(r)")
        let raw = ab(["logs", "job", "--raw"], home: h)
        #expect(raw.outBytes == expected, "`logs --raw` gives back the exact bytes: \(raw)")
        let logs = ab(["logs", "job"], home: h)
        #expect(logs.out == "out\n\\xff\\xfex\\x1b[2J\\r\n", "`logs` shows control characters and invalid bytes escaped: \(logs)")
        #expect(logs.err.contains("err"))
        let records = jsonLines(ab(["logs", "job", "--json"], home: h).out)
        let types = records.compactMap { $0["type"] as? String }
        #expect(types.first == "journal.opened")
        #expect(types.contains("run.started") && types.contains("sandbox.ready") && types.contains("exit") && types.contains("usage"))
        #expect(types.last == "run.ended")
        #expect(records.map { $0["seq"] as? Int ?? 0 } == Array(1...records.count))
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "job", "--json"], home: h).out.utf8)) as? [String: Any]
        #expect(inspect?["state"] as? String == "exited")
        #expect(inspect?["exit_code"] as? Int == 3)
        #expect((inspect?["journal"] as? String)?.hasPrefix(h + "/runs/") == true)
        #expect(inspect?["workspace"] as? String != nil && inspect?["started_at"] as? String != nil && inspect?["usage"] != nil)
        let ps = jsonLines(ab(["ps", "--all", "--json"], home: h).out)
        #expect(ps.count == 1 && ps.first?["name"] as? String == "job")
        #expect(ab(["journal", "verify", "job"], home: h).code == 0)
        let sinceFive = jsonLines(ab(["logs", "job", "--json", "--since", "5"], home: h).out)
        #expect(sinceFive.first?["seq"] as? Int == 6)
    }

    func runDir(_ name: String, home: String) -> String {
        let inspect = try? JSONSerialization.jsonObject(with: Data(ab(["inspect", name, "--json"], home: home).out.utf8)) as? [String: Any]
        let journal = inspect?["journal"] as? String ?? "/nonexistent/journal.jsonl"
        return String(journal[..<(journal.lastIndex(of: "/") ?? journal.endIndex)])
    }

    /// stdout and stderr of `agentbox logs --raw`, byte for byte.
    func logsRaw(_ name: String, home: String) -> (out: [UInt8], err: [UInt8]) {
        let dir = TestEnv.workspace()
        let r = shell("AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' logs '\(name)' --raw > '\(dir)/out' 2> '\(dir)/err'")
        #expect(r.code == 0, "\(r)")
        let read = { (f: String) in [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))) ?? Data()) }
        return (read("out"), read("err"))
    }

    @Test func outputGoesToRawFilesAndLogsGivesItBackByteExact() throws {
        let h = home()
        // Both streams interleaved, binary and text, a character cut between two records (the tick
        // records the first half), and more than one record's worth of random bytes.
        let script = """
            for i in 1 2 3; do printf 'out %s \\377\\000\\n' $i; sleep 0.05; printf 'err %s\\n' $i >&2; sleep 0.05; done
            printf 'h\\303'; sleep 0.4; printf '\\251llo\\n'
            head -c 700000 /dev/urandom > rnd; cat rnd; echo end >&2
            """
        let ws = TestEnv.workspace()
        let dir = TestEnv.workspace()
        let r = shell("cd '\(ws)' && AGENTBOX_HOME='\(h)' '\(TestEnv.agentbox)' exec --name raw -- /bin/sh -c \"$(cat <<'EOF'\n\(script)\nEOF\n)\" > '\(dir)/out' 2> '\(dir)/err'")
        #expect(r.code == 0, "\(r)")
        let out = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/out")))
        let err = try String(contentsOfFile: dir + "/err", encoding: .utf8)
        let random = [UInt8](try Data(contentsOf: URL(fileURLWithPath: ws + "/rnd")))
        let text: [UInt8] = (1...3).flatMap { Array("out \($0) ".utf8) + [0xff, 0x00, 0x0a] } + Array("héllo\n".utf8)
        #expect(out == text + random, "passed through unchanged (\(out.count) bytes)")
        #expect(err == "err 1\nerr 2\nerr 3\nend\n", "\(err)")
        let logs = logsRaw("raw", home: h)
        #expect(logs.out == out, "`logs --raw` gives back stdout byte for byte (\(logs.out.count) of \(out.count))")
        #expect(String(decoding: logs.err, as: UTF8.self).hasPrefix("err 1\nerr 2\nerr 3\nend\n"), "\(String(decoding: logs.err, as: UTF8.self))")
        // The raw files hold exactly the output; records point into them, no output in the JSON.
        let run = runDir("raw", home: h)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: run + "/stdout"))) == out)
        let perms = try FileManager.default.attributesOfItem(atPath: run + "/stdout")[.posixPermissions] as? Int
        #expect(perms == 0o600)
        let outputs = jsonLines(ab(["logs", "raw", "--json"], home: h).out).filter { $0["type"] as? String == "output" }
            .compactMap { $0["data"] as? [String: Any] }
        #expect(outputs.allSatisfy { $0["text"] == nil && $0["b64"] == nil && ($0["crc32c"] as? String)?.count == 8 })
        let streams = outputs.compactMap { $0["stream"] as? String }
        #expect(Array(streams.prefix(6)) == ["stdout", "stderr", "stdout", "stderr", "stdout", "stderr"], "the interleaving is recorded: \(streams)")
        #expect(outputs.filter { $0["stream"] as? String == "stdout" }.count >= 5, "700 KB take several records")
        var end = ["stdout": 0, "stderr": 0]
        for o in outputs {
            let s = o["stream"] as? String ?? ""
            #expect(o["offset"] as? Int == end[s], "records of a stream follow each other: \(o)")
            end[s] = (o["offset"] as? Int ?? 0) + (o["length"] as? Int ?? 0)
        }
        #expect(end["stdout"] == out.count)
        // Text mode joins the character the records cut, and escapes the rest.
        let shown = ab(["logs", "raw"], home: h)
        #expect(shown.out.hasPrefix("out 1 \\xff\\x00\nout 2 \\xff\\x00\nout 3 \\xff\\x00\nhéllo\n"), "\(shown.out.prefix(80))")
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "raw", "--json"], home: h).out.utf8)) as? [String: Any]
        #expect((inspect?["output"] as? [String: Any])?["stdout"] as? Int == out.count, "\(String(describing: inspect?["output"]))")
        #expect(ab(["journal", "verify", "raw"], home: h).code == 0)
        // rm takes the raw files with the run.
        let rm = ab(["rm", "raw"], home: h)
        #expect(rm.code == 0 && !FileManager.default.fileExists(atPath: run), "\(rm)")
    }

    @Test func journalVerifyCatchesDamagedOrMissingRawOutput() throws {
        let h = home()
        _ = journaledExec("dmg", "head -c 600000 /dev/zero | tr '\\0' x; echo; echo bye >&2", home: h)
        #expect(ab(["journal", "verify", "dmg"], home: h).code == 0)
        let run = runDir("dmg", home: h)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: run + "/stdout")))
        bytes[400_000] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: run + "/stdout"))
        let damaged = ab(["journal", "verify", "dmg", "--json"], home: h)
        #expect(damaged.code == 1, "\(damaged)")
        let info = jsonLines(damaged.out).first?["damage"] as? [String: Any]
        let records = jsonLines(ab(["logs", "dmg", "--json"], home: h).out)
        let bad = records.first { $0["seq"] as? Int == info?["seq"] as? Int }
        let span = bad?["data"] as? [String: Any]
        #expect(bad?["type"] as? String == "output" && (span?["offset"] as? Int ?? .max) <= 400_000
                    && (span?["offset"] as? Int ?? 0) + (span?["length"] as? Int ?? 0) > 400_000, "the damage names the record of that byte: \(damaged.out)")
        #expect((info?["reason"] as? String)?.contains("crc32c") == true, "\(damaged.out)")
        let logs = ab(["logs", "dmg"], home: h)
        #expect(logs.err.contains("output not shown") && logs.err.contains("crc32c"), "logs says which output it cannot show: \(logs.err)")
        // A missing file is damage too, named clearly.
        try FileManager.default.removeItem(atPath: run + "/stderr")
        bytes[400_000] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: run + "/stdout"))
        let missing = ab(["journal", "verify", "dmg"], home: h)
        #expect(missing.code == 1 && missing.out.contains("stderr is missing"), "\(missing)")
    }

    @Test func journalsOfTheFormatBeforeRawFilesStillRead() throws {
        // Written by the journal writer as older versions did: the output inside the records.
        let h = home()
        let id = "0123456789ab"
        let dir = h + "/runs/" + id
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let w = try JournalWriter.create(dir: dir)
        try w.append(.runStarted, .object([("id", .string(id)), ("name", "old"), ("kind", "exec"), ("argv", ["sh"])]), critical: true)
        try w.append(.output, JSON.output(stream: "stdout", bytes: Array("text ü\n".utf8)), critical: false)
        try w.append(.output, JSON.output(stream: "stderr", bytes: Array("warn\n".utf8)), critical: false)
        try w.append(.output, JSON.output(stream: "stdout", bytes: [0xff, 0x00, 0x0a]), critical: false)
        try w.append(.exit, .object([("code", 0), ("status", "exited")]), critical: false)
        try w.append(.runEnded, .object([("state", "exited"), ("exit_code", 0)]), critical: true)
        try w.finish()
        let stored = ab(["logs", "old", "--json"], home: h).out
        #expect(stored.contains("\"text\":\"text ü\\n\"") && stored.contains("\"b64\":"), "\(stored)")
        let logs = logsRaw("old", home: h)
        #expect(logs.out == Array("text ü\n".utf8) + [0xff, 0x00, 0x0a])
        #expect(String(decoding: logs.err, as: UTF8.self).hasPrefix("warn\n"))
        #expect(ab(["logs", "old"], home: h).out == "text ü\n\\xff\\x00\n")
        let verify = ab(["journal", "verify", "old"], home: h)
        #expect(verify.code == 0 && verify.out.contains("intact"), "\(verify)")
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "old", "--json"], home: h).out.utf8)) as? [String: Any]
        #expect((inspect?["output"] as? [String: Any])?["stdout"] as? Int == 11, "\(String(describing: inspect))")
    }

    @Test func whatTheCallerSawIsInTheJournalAfterAKill9() throws {
        let h = home()
        for round in 0..<3 {
            // Numbered lines as fast as the shell prints them; the records are due only every 200 ms
            // (and written every second): most of what is passed on has no record when the kill comes.
            let marker = "abseen\(round)\(UUID().uuidString.prefix(6))"
            let pipe = Pipe()
            let p = try startAgentbox(["exec", "--name", "seen\(round)", "--", "/bin/sh", "-c",
                                       "i=0; while :; do echo \(marker) $i; i=$((i+1)); done"], env: ["AGENTBOX_HOME": h], stdout: pipe)
            var seen = Data()
            let reader = pipe.fileHandleForReading
            // The last round lets the journal write some records first: recorded and unrecorded output.
            let start = Date(), deadline = start.addingTimeInterval(20)
            while (seen.count < 200_000 * (round + 1) || (round == 2 && Date() < start.addingTimeInterval(1.5))) && Date() < deadline {
                seen.append(reader.availableData)
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            // What agentbox wrote before it died is the caller's too: what is still in the pipe.
            let fd = reader.fileDescriptor
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while case let n = read(fd, &buffer, buffer.count), n > 0 { seen.append(contentsOf: buffer[0..<n]) }
            #expect(seen.count >= 200_000 * (round + 1), "round \(round): the command's output never came")
            #expect(eventually(3) { !hostHasProcess(withMarker: marker) })
            let logs = logsRaw("seen\(round)", home: h)
            #expect(logs.out.count >= seen.count && Array(logs.out.prefix(seen.count)) == [UInt8](seen),
                    "round \(round): the \(seen.count) bytes the caller got are in the journal (\(logs.out.count) there)")
            let verify = ab(["journal", "verify", "seen\(round)"], home: h)
            #expect(verify.code == 0, "round \(round): \(verify)")
        }
    }

    @Test func runsAreFoundByIdPrefixOrName() throws {
        let h = home()
        _ = journaledExec("alpha", "true", home: h)
        let id = jsonLines(ab(["ps", "--all", "--json"], home: h).out).first?["id"] as? String ?? ""
        #expect(id.count == 12)
        #expect(ab(["inspect", String(id.prefix(5))], home: h).code == 0)
        let missing = ab(["inspect", "nope"], home: h)
        #expect(missing.code == 125 && missing.err.contains("no run \"nope\""), "\(missing)")
    }

    @Test func aSIGKILLedSupervisorLeavesAVerifiableJournalAndNoProcesses() throws {
        let h = home()
        for round in 0..<8 {
            let marker = "abjk\(round)\(UUID().uuidString.prefix(6))"
            let p = try startAgentbox(["exec", "--name", "k\(round)", "--", "/bin/sh", "-c", "i=0; while :; do echo \(marker) $i; i=$((i+1)); [ $((i % 200)) = 0 ] && sleep 0.01; done"], env: ["AGENTBOX_HOME": h])
            // Even rounds kill while the command runs; odd rounds at any moment, setup included.
            let running = round % 2 == 0
            if running {
                #expect(eventually(10) {
                    jsonLines(ab(["ps", "--json"], home: h).out).contains { $0["name"] as? String == "k\(round)" && $0["isolation"] is [String: Any] }
                }, "round \(round): the command never started")
            }
            usleep(UInt32.random(in: running ? 10_000...300_000 : 0...60_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            #expect(eventually(3) { !hostHasProcess(withMarker: marker) }, "round \(round): the sandbox outlived its supervisor")
            let runs = jsonLines(ab(["ps", "--all", "--json"], home: h).out).filter { $0["name"] as? String == "k\(round)" }
            if runs.isEmpty {
                #expect(!running, "round \(round): a run whose command was running has no journal")
                continue  // killed before the run's journal existed
            }
            let verify = ab(["journal", "verify", runs[0]["id"] as? String ?? "", "--json"], home: h)
            #expect(verify.code == 0, "round \(round): \(verify)")
            #expect(runs[0]["state"] as? String == "interrupted", "round \(round): \(runs[0])")
        }
    }

    @Test func logsFollowShowsRecordsAsTheyComeAndEndsWithTheRun() throws {
        let h = home()
        let writer = try startAgentbox(["exec", "--name", "tail", "--", "/bin/sh", "-c", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.2; done"], env: ["AGENTBOX_HOME": h])
        #expect(eventually { ab(["ps", "--json"], home: h).out.contains("\"tail\"") })
        let follow = ab(["logs", "-f", "tail"], home: h)  // returns when the run ends
        writer.waitUntilExit()
        #expect(follow.code == 0)
        #expect(follow.out == (1...6).map { "tick \($0)\n" }.joined(), "\(follow)")
    }

    @Test func limitEventsAreConfessedToTheNodeFeed() throws {
        let h = home()
        let r = journaledExec("late", "sleep 30", home: h, options: ["--timeout", "1s"])
        #expect(r.code == 124)
        let all = jsonLines(ab(["confessions", "--json"], home: h).out)
        #expect(all.count == 1 && all.first?["category"] as? String == "limits" && all.first?["name"] as? String == "late", "\(all)")
        #expect((all.first?["summary"] as? String)?.contains("timeout") == true)
        #expect(all.first?["seq"] as? Int != nil && all.first?["run"] as? String != nil)
        #expect(jsonLines(ab(["confessions", "late", "--json", "--severity", "blocker"], home: h).out).isEmpty)
        let records = jsonLines(ab(["logs", "late", "--json"], home: h).out)
        #expect(records.contains { $0["type"] as? String == "limit" } && records.contains { $0["type"] as? String == "confession" })
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "late", "--json"], home: h).out.utf8)) as? [String: Any]
        #expect(inspect?["state"] as? String == "timeout")
    }

    @Test func damagedJournalsAreNamedPreciselyAndTornOnesAreRecoverable() throws {
        let h = home()
        _ = journaledExec("d", "echo one; echo two", home: h)
        let path = (try JSONSerialization.jsonObject(with: Data(ab(["inspect", "d", "--json"], home: h).out.utf8)) as? [String: Any])?["journal"] as? String ?? ""
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let torn = Array(bytes.dropLast(7))
        try Data(torn).write(to: URL(fileURLWithPath: path))
        let recoverable = ab(["journal", "verify", path], home: h)
        #expect(recoverable.code == 0 && recoverable.out.contains("recoverable"), "\(recoverable)")
        bytes[bytes.count / 3] ^= 0x04
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let damaged = ab(["journal", "verify", path, "--json"], home: h)
        #expect(damaged.code == 1, "\(damaged)")
        let info = jsonLines(damaged.out).first?["damage"] as? [String: Any]
        #expect(info?["seq"] as? Int != nil && info?["offset"] as? Int != nil, "\(damaged)")
    }

    @Test(.enabled(if: TestEnv.isRoot)) func aTinyDiskStopsStoringOutputAndTheRunEndsCleanly() throws {
        let h = home()
        #expect(shell("mount -t tmpfs -o size=256k agentbox-full '\(h)'").code == 0)
        defer { shell("umount -l '\(h)'") }
        let r = journaledExec("full", "yes 0123456789012345678901234567890123456789 | head -c 2000000; echo end", home: h)
        #expect(r.code == 0, "\(r.code) \(r.err)")
        #expect(r.out.utf8.count == 2_000_004 && r.out.hasSuffix("end\n"), "all output is passed through")
        #expect(r.err.contains("almost full"), "\(r.err)")
        let verify = ab(["journal", "verify", "full"], home: h)
        #expect(verify.code == 0, "the journal is intact: \(verify)")
        let logs = ab(["logs", "full", "--json"], home: h)
        #expect(logs.out.contains("\"type\":\"output.dropped\"") && logs.out.contains("\"reason\":\"disk\""), "\(logs.out.suffix(800))")
        #expect(logs.out.contains("\"type\":\"run.ended\""))
    }

    @Test func sigtermToAJournaledRunIsRecorded() throws {
        let h = home()
        let p = try startAgentbox(["exec", "--name", "term", "--", "/bin/sleep", "300"], env: ["AGENTBOX_HOME": h], stdout: nil)
        #expect(eventually { ab(["logs", "term", "--json"], home: h).out.contains("sandbox.ready") })
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationStatus == 143)
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "term", "--json"], home: h).out.utf8)) as? [String: Any]
        #expect(inspect?["exit_code"] as? Int == 143, "\(String(describing: inspect))")
        #expect(inspect?["state"] as? String == "exited")
    }

    @Test func anUnwritableHomeIsAClearErrorBeforeAnythingRuns() {
        let marker = "abnohome\(UUID().uuidString.prefix(6))"
        let r = run([TestEnv.agentbox, "exec", "--name", "x", "--", "/bin/sh", "-c", "echo \(marker) > made"],
                    cwd: TestEnv.workspace(), env: ["AGENTBOX_HOME": "/proc/agentbox-nope"])
        #expect(r.code == 125, "\(r)")
        #expect(r.err.contains("journal") && r.err.contains("/proc/agentbox-nope"), "\(r)")
    }

    @Test func confessionsFollowShowsNewOnes() throws {
        let h = home()
        let pipe = Pipe()
        let follower = try startAgentbox(["confessions", "-f", "--json"], env: ["AGENTBOX_HOME": h], stdout: pipe)
        _ = journaledExec("conf", "sleep 30", home: h, options: ["--timeout", "1s"])
        usleep(400_000)
        follower.terminate()  // SIGTERM works even though the test runner hands it down blocked
        follower.waitUntilExit()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(out.contains("\"conf\"") && out.contains("timeout"), "\(out)")
    }

    @Test func anIdleSandboxCostsNoCPU() throws {
        let h = home()
        _ = journaledExec("idle", "sleep 1", home: h)
        let inspect = try JSONSerialization.jsonObject(with: Data(ab(["inspect", "idle", "--json"], home: h).out.utf8)) as? [String: Any]
        let cpu = (inspect?["usage"] as? [String: Any])?["cpu_s"] as? Double ?? 99
        #expect(cpu < 0.3, "a sleeping command must not cost CPU (init busy-looping?): \(cpu) s")
    }
}
