import AgentboxCore
@testable import AgentboxJournal
import Foundation
import Testing

@Suite struct JournalTests {
    func tempDir() -> String {
        let dir = "/tmp/agentbox-journal-test-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func writeSample(_ dir: String, records: Int = 20) throws -> String {
        let w = try JournalWriter.create(dir: dir)
        for i in 0..<records {
            try w.append(i % 5 == 0 ? RecordType.warning : RecordType.output,
                         JSON.output(stream: "stdout", bytes: Array("line \(i) ü\n".utf8)), critical: i % 7 == 0)
        }
        try w.append(RecordType.runEnded, ["state": "exited", "exit_code": 0], critical: true)
        try w.finish()
        return dir + "/journal.jsonl"
    }

    @Test func aWriterDroppedWithoutFinishStillWritesWhatItWasGiven() throws {
        let dir = tempDir()
        do {
            let w = try JournalWriter.create(dir: dir)
            try w.append(RecordType.warning, ["message": "batched, never flushed by the caller"], critical: false)
        }
        let scan = try JournalReader.scan(path: dir + "/journal.jsonl")
        #expect(scan.intact && scan.records.map(\.kind) == [.journalOpened, .warning])
    }

    @Test func writesAndVerifiesSequenceAndChecksums() throws {
        let path = try writeSample(tempDir())
        let scan = try JournalReader.scan(path: path)
        #expect(scan.intact)
        #expect(scan.records.map(\.seq) == Array(1...22))
        #expect(scan.records.first?.kind == RecordType.journalOpened)
        #expect(scan.records.last?.kind == RecordType.runEnded)
        #expect(scan.records[3].data.outputBytes == Array("line 2 ü\n".utf8))
    }

    @Test func nonUTF8OutputIsLossless() throws {
        let bytes: [UInt8] = [0xff, 0xfe, 0x00, 0x41, 0xc3]
        let dir = tempDir()
        let w = try JournalWriter.create(dir: dir)
        try w.append(RecordType.output, JSON.output(stream: "stderr", bytes: bytes), critical: true)
        let scan = try JournalReader.scan(path: dir + "/journal.jsonl")
        #expect(scan.records.last?.data["b64"] != nil)
        #expect(scan.records.last?.data.outputBytes == bytes)
    }

    /// A record holding U+2028/U+2029/U+0085 stays one line for line-based readers, and its checksum
    /// (over the bytes as written) verifies; a journal written before they were escaped verifies too.
    @Test func lineSeparatorsStayInsideTheirRecord() throws {
        let text = "a\u{2028}b\u{2029}c\u{85}d\u{1B}]52;c;eA==\u{07}\r\n"
        let record = JournalRecord(seq: 1, epoch: 1, type: RecordType.output.rawValue, data: JSON.output(stream: "stdout", bytes: Array(text.utf8)))
        let line = record.line()
        let body = String(decoding: line.dropLast(), as: UTF8.self)
        #expect(line.last == 0x0A && !line.dropLast().contains(0x0A) && !line.contains(0x1B))
        #expect(body.split(whereSeparator: { $0 == "\u{2028}" || $0 == "\u{2029}" || $0 == "\u{85}" }).count == 1, "\(body)")
        let parsed = try JournalRecord.parse(line: line.dropLast()).get()
        #expect(parsed.data.outputBytes == Array(text.utf8))

        // An older writer put these characters in raw; its checksum covers them as stored.
        var old = Array("{\"v\":1,\"seq\":1,\"ts\":\"2026-01-01T00:00:00.000Z\",\"epoch\":1,\"type\":\"output\",\"data\":{\"stream\":\"stdout\",\"text\":\"a\u{2028}b\u{85}\"}}".utf8)
        old.removeLast()  // the closing brace comes after the checksum
        old += Array(",\"crc\":\"\(CRC32C.hex(CRC32C.checksum(old)))\"}".utf8)
        let legacy = try JournalRecord.parse(line: old[...]).get()
        #expect(legacy.data["text"]?.stringValue == "a\u{2028}b\u{85}")
        let scan = JournalReader.scan(bytes: old + [0x0A] + JournalRecord(seq: 2, epoch: 1, type: RecordType.warning.rawValue, data: ["message": "x\u{2028}"]).line())
        #expect(scan.intact && scan.records.count == 2)
    }

    @Test func aTornLastLineAtEveryOffsetIsRecoverableAndRecovered() throws {
        let dir = tempDir()
        let path = try writeSample(dir, records: 3)
        let original = try FileIO.read(path)
        let lastStart = original.dropLast().lastIndex(of: UInt8(ascii: "\n"))! + 1
        for cut in lastStart..<original.count {
            let bytes = Array(original[0..<cut])
            let scan = JournalReader.scan(bytes: bytes)
            #expect(scan.recoverable, "cut at \(cut)")
            #expect(scan.records.count == 4, "cut at \(cut): \(scan.records.count) records")
            #expect(scan.tornBytes == cut - lastStart)
        }
        // The next writer of the run cuts the torn tail and says so.
        try Data(original[0..<(original.count - 5)]).write(to: URL(fileURLWithPath: path))
        let w = try JournalWriter.reopen(dir: dir)
        try w.append(RecordType.runEnded, ["state": "interrupted"], critical: true)
        let scan = try JournalReader.scan(path: path)
        #expect(scan.intact)
        #expect(scan.records.contains { $0.kind == RecordType.journalRecovered })
        #expect(scan.records.last?.epoch == 2, "a reopened journal has a new epoch")
    }

    @Test func damageInTheMiddleIsReportedWithSeqAndOffsetNeverSkipped() throws {
        let dir = tempDir()
        let path = try writeSample(dir)
        let original = try FileIO.read(path)
        let lines = original.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        // Flip a byte in each of several records (not the last): each must be found.
        for target in [1, 4, 10, 20] {
            var offset = 0
            for l in lines[0..<target] { offset += l.count + 1 }
            for delta in [0, 5, lines[target].count / 2, lines[target].count - 1] {
                var bytes = original
                bytes[offset + delta] ^= 0x20
                let scan = JournalReader.scan(bytes: bytes)
                #expect(scan.damage?.seq == UInt64(target + 1), "flip in record \(target + 1) at +\(delta): \(String(describing: scan.damage))")
                #expect(scan.damage?.offset == offset)
                #expect(!scan.recoverable)
            }
        }
        var bytes = original
        bytes[original.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(throws: AgentboxError.self) { try JournalWriter.reopen(dir: dir) }
    }

    @Test func headAndTailOfALargeJournalMatchTheFullScan() throws {
        let dir = tempDir()
        let w = try JournalWriter.create(dir: dir)
        try w.append(RecordType.runStarted, ["name": "big"], critical: true)
        for i in 0..<3000 {
            try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: Array("line \(i) \(String(repeating: "x", count: 500))\n".utf8)), critical: false)
        }
        try w.append(RecordType.runEnded, ["state": "exited"], critical: true)
        try w.finish()
        let full = try JournalReader.scan(path: w.path)
        let quick = try JournalReader.headAndTail(path: w.path, head: 4096, tail: 65536)
        #expect(quick.partial && !full.partial)
        #expect(quick.records.first?.seq == 1 && quick.records[1].kind == RecordType.runStarted)
        #expect(quick.records.last?.seq == full.records.last?.seq)
        #expect(quick.records.last?.kind == RecordType.runEnded)
        #expect(quick.damage == nil && quick.tornBytes == 0)
    }

    /// A writer whose claim is gone (its run's folder removed or moved away) writes nothing more: it
    /// could otherwise go on with a run that was taken over and then removed.
    @Test func aWriterWhoseClaimIsGoneStops() throws {
        let parent = tempDir()
        let dir = parent + "/run"
        mkdir(dir, 0o700)
        let writer = try JournalWriter.create(dir: dir)
        try writer.append(.warning, ["message": "before"], critical: true)
        #expect(rename(dir, parent + "/.removing-run") == 0)
        #expect(throws: AgentboxError.self) { try writer.append(.toolCall, ["id": "c1"], critical: true) }
    }

    @Test func aRunHasExactlyOneWriter() throws {
        let dir = tempDir()
        let first = try JournalWriter.create(dir: dir)
        do {
            _ = try JournalWriter.reopen(dir: dir)
            Issue.record("a second writer was allowed")
        } catch {
            #expect(error.message.contains("already has a writer"))
        }
        _ = first
    }

    /// docs/journal.md, "Fencing": what a superseded writer appends after a newer epoch's takeover
    /// point, before or after the new epoch's first record, is not part of the run; seq continuity is
    /// checked over the run's own records.
    @Test func recordsOfASupersededWriterAfterTheTakeoverPointAreIgnored() throws {
        func rec(_ seq: UInt64, _ epoch: Int, _ type: RecordType, _ data: JSON = .object([])) -> [UInt8] {
            JournalRecord(seq: seq, epoch: epoch, type: type.rawValue, data: data).line()
        }
        var bytes = rec(1, 1, .journalOpened) + rec(2, 1, .runStarted) + rec(3, 1, .toolCall)
        let takeover = bytes.count
        bytes += rec(4, 1, .toolDone)  // the old writer, after the new one scanned the journal
        bytes += rec(4, 2, .journalOpened, .object([("epoch", 2), ("from_offset", .number(Double(takeover))), ("after_seq", 3)]))
        bytes += rec(5, 1, .toolCall)  // the old writer again, later
        bytes += rec(5, 2, .toolDone) + rec(6, 2, .runEnded)
        let scan = JournalReader.scan(bytes: bytes)
        #expect(scan.damage == nil)
        #expect(scan.fenced == 2)
        #expect(scan.records.map(\.seq) == [1, 2, 3, 4, 5, 6])
        #expect(scan.records.map(\.epoch) == [1, 1, 1, 2, 2, 2])
        #expect(scan.validEnd == bytes.count)
        // A gap among the run's own records is still damage.
        // A follower that already passed on the superseded writer's record reads on without damage.
        let dir = tempDir()
        let path = dir + "/journal.jsonl"
        FileManager.default.createFile(atPath: path, contents: Data(bytes[..<(takeover + rec(4, 1, .toolDone).count)]))
        let follower = JournalFollower(path: path)
        #expect(try follower.poll().map(\.seq) == [1, 2, 3, 4])
        let h = FileHandle(forWritingAtPath: path)!
        h.seekToEndOfFile()
        h.write(Data(bytes[(takeover + rec(4, 1, .toolDone).count)...]))
        h.closeFile()
        #expect(try follower.poll().map(\.seq) == [4, 5, 6])
        let head = rec(1, 1, .journalOpened) + rec(2, 1, .runStarted)
        let gap = head + rec(4, 2, .journalOpened, .object([("from_offset", .number(Double(head.count)))]))
        #expect(JournalReader.scan(bytes: gap).damage?.seq == 3)
    }

    @Test func outputIsBatchedAndCriticalRecordsAreDurable() throws {
        let dir = tempDir()
        let w = try JournalWriter.create(dir: dir)
        try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: [65]), critical: false)
        #expect(try JournalReader.scan(path: w.path).records.count == 1, "batched output is not written at once")
        #expect(w.flushDeadline != nil)
        try w.flushIfDue(now: Clock.monotonic() + JournalWriter.batchSeconds + 0.01)
        #expect(try JournalReader.scan(path: w.path).records.count == 2, "the batch is written within the batch interval")
        try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: [66]), critical: false)
        try w.append(RecordType.limit, ["kind": "oom"], critical: true)
        #expect(try JournalReader.scan(path: w.path).records.count == 4, "a critical record commits the pending batch with it")
    }

    @Test(.enabled(if: getuid() == 0)) func aFullDiskStopsTheWriterWithoutCorruptingTheJournal() throws {
        let dir = tempDir()
        #expect(shellStatus("mount -t tmpfs -o size=64k agentbox-test '\(dir)'") == 0)
        defer { _ = shellStatus("umount '\(dir)'") }
        let w = try JournalWriter.create(dir: dir)
        var failure: AgentboxError? = nil
        for i in 0..<10_000 {
            do { try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: Array("chunk \(i) ".utf8) + [UInt8](repeating: 120, count: 900)), critical: i % 3 == 0) }
            catch { failure = error; break }
        }
        #expect(failure?.message.contains("No space left on device") == true, "\(String(describing: failure))")
        let scan = try JournalReader.scan(path: dir + "/journal.jsonl")
        #expect(scan.intact, "a full disk must leave only complete records: \(String(describing: scan.damage)) torn \(scan.tornBytes)")
        #expect(scan.records.count > 10)
        #expect(throws: AgentboxError.self) { try w.append(RecordType.warning, ["message": "x"], critical: true) }
    }

    @Test func rfc3339RoundTrips() {
        let t = 1_795_000_000.25
        #expect(Clock.rfc3339(t) == "2026-11-18T11:06:40.250Z")
        #expect(abs((Clock.parseRFC3339(Clock.rfc3339(t)) ?? 0) - t) < 0.001)
    }

    @Test func hardwareAndSoftwareCRCAgree() {
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099] {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let hw = CRC32C.checksum(bytes)
            let sw = bytes.withUnsafeBytes { CRC32C.software($0) }
            #expect(hw == sw, "length \(n)")
        }
    }

    @Test func crc32cKnownValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(Base64.encode(Array("foob".utf8)) == "Zm9vYg==")
        #expect(Base64.decode("Zm9vYmE=") == Array("fooba".utf8))
    }
}

func shellStatus(_ command: String) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    try? p.run()
    p.waitUntilExit()
    return p.terminationStatus
}

@Suite struct OutputBatchTests {
    @Test func batchedOutputIsSyncedWithinTheBatchInterval() throws {
        let dir = "/tmp/agentbox-sync-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let w = try JournalWriter.create(dir: dir)
        try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: [UInt8](repeating: 0x61, count: JournalWriter.batchBytes + 10)), critical: false)
        #expect(w.pending.isEmpty, "a full batch is written at once")
        #expect(w.flushDeadline != nil, "and still owes an fdatasync within the batch interval")
        try w.flushIfDue(now: Clock.monotonic() + JournalWriter.batchSeconds + 0.01)
        #expect(w.flushDeadline == nil)
    }
}

/// Output kept in raw files next to the journal, records pointing at spans of them (docs/journal.md, "Output").
@Suite struct OutputFileTests {
    func tempDir() -> String {
        let dir = "/tmp/agentbox-output-test-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Appends `pieces` to the stream's file, one record per piece, as the gatherer does.
    func write(_ pieces: [[UInt8]], to file: OutputFile, stream: CapturedStream) throws -> [JSON] {
        try pieces.map { piece in
            let offset = file.size
            try file.append(piece[...])
            return OutputSpan(stream: stream, offset: offset, length: UInt64(piece.count), crc32c: CRC32C.checksum(piece)).json
        }
    }

    @Test func spansReadBackExactlyAndDamageIsNamed() throws {
        let dir = tempDir()
        let file = OutputFile(dir: dir, stream: .stdout)
        let pieces: [[UInt8]] = [Array("hello ".utf8), [0xff, 0x00, 0xc3], [0xa9] + Array("\n".utf8)]
        let records = try write(pieces, to: file, stream: .stdout)
        try file.sync()
        var mode = stat()
        #expect(stat(dir + "/stdout", &mode) == 0 && mode.st_mode & 0o777 == 0o600, "the raw file is private")
        let reader = OutputReader(dir: dir)
        for (record, piece) in zip(records, pieces) {
            #expect(try reader.bytes(record).get() == piece)
            #expect(reader.check(record) == nil)
        }
        #expect(reader.unrecordedCount(.stdout) == 0 && reader.unrecordedCount(.stderr) == 0)
        // A record whose span does not follow the previous one.
        #expect(OutputReader(dir: dir).check(records[1])?.description.contains("previous record ended at 0") == true)
        // A flipped byte, then a short file, then none.
        let fd = open(dir + "/stdout", O_RDWR)
        var b: UInt8 = 0x01
        #expect(pwrite(fd, &b, 1, 7) == 1)
        let flipped = OutputReader(dir: dir).bytes(records[1])
        #expect(flipped.problem?.contains("do not match the record's crc32c") == true, "\(flipped)")
        #expect(ftruncate(fd, 8) == 0)
        close(fd)
        #expect(OutputReader(dir: dir).bytes(records[2]).problem?.contains("holds 8 bytes") == true)
        unlink(dir + "/stdout")
        #expect(OutputReader(dir: dir).bytes(records[0]).problem?.contains("missing") == true)
        // A file someone else put there (a symlink too) is never written to.
        #expect(symlink("/tmp/agentbox-elsewhere", dir + "/stderr") == 0)
        #expect(throws: AgentboxError.self) { try OutputFile(dir: dir, stream: .stderr).append([1][...]) }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/agentbox-elsewhere"))
    }

    @Test func bytesAfterTheLastRecordAreFoundAsUnrecorded() throws {
        let dir = tempDir()
        let file = OutputFile(dir: dir, stream: .stderr)
        let records = try write([Array("recorded".utf8)], to: file, stream: .stderr)
        try file.append(Array(" not yet".utf8)[...])
        let reader = OutputReader(dir: dir)
        for r in records { reader.track(r) }
        #expect(reader.unrecordedCount(.stderr) == 8)
        var seen: [UInt8] = []
        reader.unrecorded(.stderr) { seen += $0 }
        #expect(seen == Array(" not yet".utf8))
    }

    @Test func recordsReachTheFileOnlyAfterTheBytesTheyNameAreSynced() throws {
        let dir = tempDir()
        let w = try JournalWriter.create(dir: dir)
        let file = OutputFile(dir: dir, stream: .stdout)
        var calls = 0
        w.beforeWrite = { () throws(AgentboxError) in
            calls += 1
            // The record is not in the file yet when the bytes it names are synced.
            let records = (try? JournalReader.scan(path: dir + "/journal.jsonl").records) ?? []
            #expect(!records.contains { $0.kind == .output })
            try file.sync()
        }
        let records = try write([Array("abc".utf8)], to: file, stream: .stdout)
        #expect(file.unsynced)
        try w.append(RecordType.output, records[0], critical: false)
        #expect(calls == 0, "batched: nothing written yet")
        try w.append(RecordType.limit, ["kind": "oom"], critical: true)
        #expect(calls == 1 && !file.unsynced)
        #expect(try JournalReader.scan(path: w.path).records.contains { $0.kind == .output })
    }

    @Test func recordsOfTheFormatBeforeRawFilesStillRead() throws {
        // A text record and a base64 record, as older versions wrote them.
        let line = JournalRecord(seq: 7, epoch: 1, type: "output", data: .object([("stream", "stdout"), ("text", "hello\n")])).line()
        #expect(String(decoding: line, as: UTF8.self).contains(#""data":{"stream":"stdout","text":"hello\n"},"crc":""#))
        let record = try JournalRecord.parse(line: line.dropLast()).get()
        let reader = OutputReader(dir: "/nonexistent")
        #expect(try reader.bytes(record.data).get() == Array("hello\n".utf8))
        #expect(reader.check(record.data) == nil)
        #expect(try reader.bytes(JSON.output(stream: "stderr", bytes: [0xff, 0x00])).get() == [0xff, 0x00])
        #expect(reader.bytes(.object([("stream", "stdout")])).problem != nil)
        // A span no file can hold is a problem, not a trap.
        let huge = JSON.object([("stream", "stdout"), ("offset", .uint(UInt64.max)), ("length", 1), ("crc32c", "00000000")])
        #expect(OutputSpan(huge) == nil && reader.bytes(huge).problem != nil)
    }
}

extension Result where Failure == RecordProblem {
    var problem: String? { if case let .failure(p) = self { return p.description }; return nil }
}
