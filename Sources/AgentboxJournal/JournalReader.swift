import AgentboxCore
import Glibc

/// The result of reading a journal: the good records, a torn last line (a crash mid-write, recoverable),
/// and the first damage anywhere else (never skipped silently).
public struct JournalScan: Sendable {
    public var records: [JournalRecord] = []
    /// Byte offset just after the last good record: where the next record goes.
    public var validEnd = 0
    /// Bytes after the last newline: a record cut short by a crash.
    public var tornBytes = 0
    public var damage: Damage? = nil
    public var fileSize = 0
    /// Only the head and the tail were read (`records` is not every record).
    public var partial = false
    /// Records a superseded writer added after a newer epoch took the run over: not part of the run
    /// (docs/journal.md, "Fencing").
    public var fenced = 0
    /// The highest writer epoch seen.
    public var maxEpoch = 0

    public struct Damage: Sendable, CustomStringConvertible {
        /// The seq the damaged line should have had.
        public var seq: UInt64
        public var offset: Int
        public var reason: String
        public var description: String { "seq \(seq) at byte offset \(offset): \(reason)" }
    }

    public var intact: Bool { damage == nil && tornBytes == 0 }
    public var recoverable: Bool { damage == nil }
    public var lastSeq: UInt64 { records.last?.seq ?? 0 }
}

public enum JournalReader {
    /// Reads and verifies a whole journal (seq continuity from 1, every checksum).
    public static func scan(path: String) throws(AgentboxError) -> JournalScan {
        try scan(bytes: FileIO.read(path, limit: 1 << 40))
    }

    /// The first `head` bytes and the last `tail` bytes of a journal, each verified record by record
    /// (records in between are not read: `records` then holds the head's and the tail's). For listings.
    public static func headAndTail(path: String, head: Int = 64 << 10, tail: Int = 1 << 20) throws(AgentboxError) -> JournalScan {
        let file = try JournalFile(path)
        let size = file.size
        if size <= head + tail { return try scan(path: path) }
        func readAt(_ offset: Int, _ count: Int) -> [UInt8] { file.read(at: offset, count: count) }
        let headBytes = readAt(0, head)
        let headEnd = (headBytes.lastIndex(of: UInt8(ascii: "\n")) ?? -1) + 1
        var result = scan(bytes: Array(headBytes[0..<headEnd]))
        let tailStart = size - tail
        let tailBytes = readAt(tailStart, tail)
        guard let firstNL = tailBytes.firstIndex(of: UInt8(ascii: "\n")) else { return result }
        let body = Array(tailBytes[(firstNL + 1)...])
        // The tail's first record tells which seq to expect from there on.
        let firstLineEnd = body.firstIndex(of: UInt8(ascii: "\n")) ?? body.count
        guard case let .success(first) = JournalRecord.parse(line: body[0..<firstLineEnd]) else { return result }
        let tailScan = scan(bytes: body, startOffset: tailStart + firstNL + 1, expectedSeq: first.seq, minEpoch: result.maxEpoch)
        result.records += tailScan.records
        result.fenced += tailScan.fenced
        result.maxEpoch = max(result.maxEpoch, tailScan.maxEpoch)
        result.tornBytes = tailScan.tornBytes
        result.damage = result.damage ?? tailScan.damage
        result.validEnd = tailScan.validEnd
        result.fileSize = size
        result.partial = true
        return result
    }

    /// The verified records of a journal's first `bytes` (complete lines only): `run.started`, for
    /// finding runs by name without reading whole journals.
    public static func head(path: String, bytes: Int = 64 << 10) throws(AgentboxError) -> [JournalRecord] {
        let file = try JournalFile(path)
        let head = file.read(at: 0, count: min(bytes, file.size))
        let end = (head.lastIndex(of: UInt8(ascii: "\n")) ?? -1) + 1
        return scan(bytes: Array(head[0..<end])).records
    }

    /// Verifies records from `startOffset`. Fencing: once a record of epoch E is seen, records of older
    /// epochs are a superseded writer's and are skipped; E's `journal.opened` says where E took over
    /// (`from_offset`), and older epochs' records from there on are dropped too.
    public static func scan(bytes: [UInt8], startOffset: Int = 0, expectedSeq: UInt64 = 1, minEpoch: Int = 0) -> JournalScan {
        var scan = JournalScan()
        scan.fileSize = startOffset + bytes.count
        scan.validEnd = startOffset
        scan.maxEpoch = minEpoch
        var expected = expectedSeq
        var lineStart = 0
        bytes.withUnsafeBufferPointer { buf in
            var i = 0
            while i < buf.count {
                guard let nl = buf[i...].firstIndex(of: UInt8(ascii: "\n")) else { break }
                let line = bytes[lineStart..<nl]
                switch JournalRecord.parse(line: line) {
                case var .success(record):
                    record.offset = startOffset + lineStart
                    if record.epoch < scan.maxEpoch {
                        scan.fenced += 1
                    } else {
                        // A part of a journal (a follower, the tail of a listing) may have passed on
                        // records that a newer epoch's takeover point drops: they are not here to drop.
                        // The new epoch's first record goes back to where it continues.
                        if startOffset > 0, record.epoch > scan.maxEpoch, scan.maxEpoch > 0, record.seq < expected {
                            expected = record.seq
                        }
                        scan.maxEpoch = record.epoch
                        if record.kind == .journalOpened, let from = record.data["from_offset"]?.intValue {
                            let before = scan.records.count
                            scan.records.removeAll { $0.offset >= from && $0.epoch < record.epoch }
                            if scan.records.count < before {
                                scan.fenced += before - scan.records.count
                                expected = (scan.records.last?.seq ?? expectedSeq - 1) + 1
                            }
                        }
                        if record.seq != expected {
                            scan.damage = .init(seq: expected, offset: startOffset + lineStart,
                                                reason: "sequence gap: found seq \(record.seq)")
                            return
                        }
                        scan.records.append(record)
                        expected += 1
                    }
                    scan.validEnd = startOffset + nl + 1
                case let .failure(reason):
                    scan.damage = .init(seq: expected, offset: startOffset + lineStart, reason: reason.description)
                    return
                }
                i = nl + 1
                lineStart = i
            }
            if lineStart < buf.count { scan.tornBytes = buf.count - lineStart }
        }
        return scan
    }
}

/// Follows a journal as it grows (`logs -f`): polls every `interval` seconds and returns new records.
public final class JournalFollower {
    let path: String
    var offset = 0
    var nextSeq: UInt64 = 1
    var epoch = 0

    public init(path: String) { self.path = path }

    /// New complete records since the last call. A torn tail is left for the next call (the writer
    /// may still be writing it); damage is an error.
    public func poll() throws(AgentboxError) -> [JournalRecord] {
        let file = try JournalFile(path)
        guard file.size > offset else { return [] }
        let bytes = file.read(at: offset, count: file.size - offset)
        guard !bytes.isEmpty else { return [] }
        let scan = JournalReader.scan(bytes: bytes, startOffset: offset, expectedSeq: nextSeq, minEpoch: epoch)
        if let damage = scan.damage {
            throw AgentboxError(stage: "journal", "\(path) is damaged at \(damage)", hint: "run `agentbox journal verify \(path)`")
        }
        offset = scan.validEnd
        nextSeq = scan.lastSeq == 0 ? nextSeq : scan.lastSeq + 1
        epoch = scan.maxEpoch
        return scan.records
    }
}

/// An open journal file: its size when opened, and reads at an offset.
final class JournalFile {
    let fd: Int32
    let size: Int

    init(_ path: String) throws(AgentboxError) {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "journal", "cannot open \(path): \(FileIO.errnoString())") }
        var st = stat()
        fstat(fd, &st)
        size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Up to `count` bytes at `offset` (fewer at the end of the file).
    func read(at offset: Int, count: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        return Array(b.prefix(max(0, n)))
    }
}
