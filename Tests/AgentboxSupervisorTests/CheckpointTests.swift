import AgentboxCore
import AgentboxJournal
@testable import AgentboxSupervisor
import Foundation
import Testing

/// Workspace checkpoints (docs/lifecycle.md): what a scan records, and that writing a checkpoint back
/// stays inside its folder whatever the records say.
@Suite struct CheckpointTests {
    func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ab-cp-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
    func write(_ path: String, _ text: String) { FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) }

    @Test func aScanRecordsWhatChangedAndNothingElse() throws {
        let ws = tempDir(), run = tempDir(), outside = tempDir()
        write(ws + "/a.txt", "one")
        try FileManager.default.createDirectory(atPath: ws + "/node_modules/x", withIntermediateDirectories: true)
        write(ws + "/node_modules/x/big", "excluded")
        write(outside + "/secret", "host file")
        symlink(outside + "/secret", ws + "/escape")  // recorded as a link, never read through
        mkfifo(ws + "/fifo", 0o600)  // not content: skipped, and never opened (it would block)
        let c = WorkspaceCheckpoints(workspace: ws, runDir: run, exclude: ["node_modules"])
        let first = try c.take(step: 0)
        let changed = first.record["changed"]?.arrayValue?.compactMap { $0["p"]?.stringValue } ?? []
        #expect(Set(changed) == ["a.txt", "escape"])
        #expect(c.index["escape"]?.kind == .link && c.index["escape"]?.target == outside + "/secret")
        #expect(first.storedBytes == 3)

        usleep(60_000)  // past the racy window: unchanged entries are not read again
        let same = try c.take(step: 1)
        #expect(same.changed == 0 && same.record["changed"] == nil)

        write(ws + "/b.txt", "one")  // same content: stored once
        unlink(ws + "/a.txt")
        let next = try c.take(step: 2)
        #expect(next.record["removed"]?.arrayValue?.compactMap(\.stringValue) == ["a.txt"])
        #expect(next.storedBytes == 0, "content already stored is not stored again")

        // Replaying the records gives the index the scans built.
        var replayed: [String: WorkspaceCheckpoints.Entry] = [:]
        for r in [first, same, next] { WorkspaceCheckpoints.apply(r.record, to: &replayed) }
        #expect(Set(replayed.keys) == Set(c.index.keys))
        #expect(replayed["b.txt"]?.hash == c.index["b.txt"]?.hash)
    }

    /// The change tracker's checkpoints (inotify events) see what a full walk sees: random creates,
    /// appends, removals, folder renames and replacements, links and mode changes, seeded and printed.
    @Test func checkpointsFromEventsAgreeWithAFullWalk() throws {
        let ws = tempDir(), run = tempDir()
        var state = UInt64.random(in: 1...UInt64(UInt32.max))
        print("CheckpointTests seed \(state)")
        func next(_ n: Int) -> Int {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Int(state % UInt64(n))
        }
        let c = WorkspaceCheckpoints(workspace: ws, runDir: run, exclude: [])
        _ = try c.take(step: 0)
        let fm = FileManager.default
        for round in 1...30 {
            for _ in 0..<(1 + next(6)) {
                let dirs = ["", "a", "a/b", "c", "c/d/e"]
                let dir = ws + "/" + dirs[next(dirs.count)]
                let f = dir + "/f\(next(4))"
                switch next(14) {
                case 12: link(ws + "/f\(next(4))", ws + "/hard\(round)")  // a second name for a file recorded with one
                case 13: if let h = FileHandle(forWritingAtPath: ws + "/hard\(round - 1)") { h.seekToEndOfFile(); h.write(Data("y".utf8)); h.closeFile() }
                case 9: try? fm.removeItem(atPath: ws + "/c/d"); try? fm.createDirectory(atPath: ws + "/c/d", withIntermediateDirectories: true)
                    write(ws + "/c/d/again", "r\(round)")  // a folder made again (its inode may come back)
                case 10: try? fm.createDirectory(atPath: ws + "/a", withIntermediateDirectories: true)
                    write(ws + "/a/orig", "o"); link(ws + "/a/orig", ws + "/hard")  // two names, one file
                case 11: if let h = FileHandle(forWritingAtPath: ws + "/hard") { h.seekToEndOfFile(); h.write(Data("via the other name".utf8)); h.closeFile() }
                case 0, 1: try? fm.createDirectory(atPath: dir, withIntermediateDirectories: true); write(f, "r\(round)-\(next(1000))")
                case 2: if let h = FileHandle(forWritingAtPath: f) { h.seekToEndOfFile(); h.write(Data("+".utf8)); h.closeFile() }
                case 3: try? fm.removeItem(atPath: f)
                case 4: try? fm.moveItem(atPath: ws + "/a", toPath: ws + "/moved\(round)")
                case 5: try? fm.removeItem(atPath: ws + "/c"); if next(2) == 0 { write(ws + "/c", "now a file") }
                case 6: try? fm.createDirectory(atPath: dir, withIntermediateDirectories: true); symlink("f0", dir + "/l\(next(3))")
                case 7: chmod(f, next(2) == 0 ? 0o600 : 0o755)
                default: try? fm.moveItem(atPath: ws + "/moved\(round - 1)", toPath: ws + "/a")
                }
            }
            let taken = try c.take(step: round)
            #expect(taken.record["scan"]?.stringValue == "events" || round % WorkspaceCheckpoints.fullScanEvery == 0)
            let fresh = WorkspaceCheckpoints(workspace: ws, runDir: tempDir(), exclude: [])
            _ = try fresh.take(step: 0)
            func summary(_ i: [String: WorkspaceCheckpoints.Entry]) -> [String] {
                i.map { "\($0.key) \($0.value.kind) \($0.value.mode) \($0.value.hash) \($0.value.target)" }.sorted()
            }
            #expect(summary(c.index) == summary(fresh.index), "round \(round): the tracked index differs from a full walk")
            if summary(c.index) != summary(fresh.index) { break }
        }
    }

    /// What the agent leaves cannot make the supervisor read for hours or store without bound: a
    /// sparse file of 2 TB is left out (listed as skipped), at once.
    @Test func aHugeSparseFileIsLeftOutNotRead() throws {
        let ws = tempDir(), run = tempDir()
        write(ws + "/small", "x")
        let c = WorkspaceCheckpoints(workspace: ws, runDir: run, exclude: [])
        _ = try c.take(step: 0)
        let fd = open(ws + "/huge", O_WRONLY | O_CREAT, 0o600)
        ftruncate(fd, 2 << 40)
        close(fd)
        let started = Date()
        let taken = try c.take(step: 1)
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(taken.skipped == ["huge"] && c.index["huge"] == nil)
        // Nor make it hold an index without bound: past its entries, a checkpoint fails (the run turns
        // checkpoints off and says so).
        for i in 0..<12 { write(ws + "/many\(i)", "") }
        let few = WorkspaceCheckpoints(workspace: ws, runDir: tempDir(), exclude: [])
        few.maxEntries = 5
        #expect(throws: AgentboxError.self) { try few.take(step: 0) }
        // A record from an imported journal with numbers out of range is taken as zeros, not a crash.
        var index: [String: WorkspaceCheckpoints.Entry] = [:]
        WorkspaceCheckpoints.apply(["changed": [["p": "f", "t": "f", "m": 420, "s": 1e30, "mt": -1e300, "h": "00"]]], to: &index)
        #expect(index["f"]?.size == 0)
    }

    @Test func writingACheckpointBackNeverLeavesItsFolder() throws {
        let ws = tempDir(), run = tempDir(), outside = tempDir()
        write(ws + "/f", "content")
        let c = WorkspaceCheckpoints(workspace: ws, runDir: run, exclude: [])
        _ = try c.take(step: 0)
        let file = c.index["f"]!
        var link = file
        link.kind = .link
        link.target = outside
        // A record (from an imported journal) naming a path out of the folder is ignored; one that puts
        // a file under a link fails before anything is written through the link.
        let target = tempDir() + "/fork"
        WorkspaceCheckpoints.materializeIgnoringErrors(["../escaped": file, "ok": file], objects: run + "/objects", into: target)
        #expect(FileManager.default.fileExists(atPath: target + "/ok"))
        #expect(!FileManager.default.fileExists(atPath: target + "/../escaped"))
        let second = tempDir() + "/fork"
        #expect(throws: AgentboxError.self) {
            try WorkspaceCheckpoints.materialize(["l": link, "l/planted": file], objects: run + "/objects", into: second)
        }
        #expect(!FileManager.default.fileExists(atPath: outside + "/planted"))
        // Damaged stored content is refused, not copied.
        let object = run + "/objects/" + file.hash.prefix(2) + "/" + file.hash.dropFirst(2)
        write(object, "tampered")
        #expect(throws: AgentboxError.self) {
            try WorkspaceCheckpoints.materialize(["f": file], objects: run + "/objects", into: tempDir() + "/fork")
        }
    }
}

extension WorkspaceCheckpoints {
    static func materializeIgnoringErrors(_ index: [String: Entry], objects: String, into dir: String) {
        _ = try? materialize(index, objects: objects, into: dir)
    }
}
