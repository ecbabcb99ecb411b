import AgentboxCore
import CAgentboxShim
import Glibc

/// The two streams a journaled command's output comes on; each has its own raw file in the run's
/// folder, named after it (`runs/<id>/stdout`, `runs/<id>/stderr`).
public enum CapturedStream: String, CaseIterable, Sendable {
    case stdout, stderr
}

/// One stream's raw output file (docs/journal.md, "Output"). The bytes a command prints are appended
/// here as they arrive, before anyone else sees them; `output` records point at spans of it. The file
/// is created by the supervisor on the first byte (`O_EXCL`: never a file someone else put there) and
/// only ever appended to.
public final class OutputFile {
    public let path: String
    let dir: String
    var fd: Int32 = -1
    /// Bytes in the file: the offset the next byte goes to.
    public private(set) var size: UInt64 = 0
    /// Appended since the last `sync`.
    var unsynced = false
    /// Where the bytes not yet handed to writeback start (see `append`).
    var writebackFrom: UInt64 = 0
    static let writebackBytes: UInt64 = 4 << 20
    /// The folder was fsynced after the file was created (its name survives a crash).
    var named = false
    var failure: AgentboxError? = nil

    public init(dir: String, stream: CapturedStream) {
        self.dir = dir
        path = dir + "/" + stream.rawValue
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Appends `bytes` with write(2): in the page cache when this returns, so a supervisor killed right
    /// after still leaves them in the file. A failed write stops the file (every later call throws).
    public func append(_ bytes: ArraySlice<UInt8>) throws(AgentboxError) {
        if let failure { throw failure }
        if fd < 0 {
            fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { try fail("cannot create \(path): \(FileIO.errnoString())") }
        }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                size += UInt64(done)
                try fail("writing \(path) failed: \(FileIO.errnoString(n < 0 ? errno : EIO))", enospc: n < 0 && errno == ENOSPC)
            }
            done += n
        }
        size += UInt64(bytes.count)
        unsynced = true
        // Start writing each few MiB to the disk now (SYNC_FILE_RANGE_WRITE: no waiting), so that the
        // fdatasync at the next sync point finds most of it written instead of all of it.
        if size - writebackFrom >= OutputFile.writebackBytes {
            _ = ab_start_writeback(fd, Int64(writebackFrom), Int64(size - writebackFrom))
            writebackFrom = size
        }
    }

    /// fdatasync of what was appended since the last call (nothing to do otherwise); the first time, the
    /// folder too, so that the file's name is as durable as its bytes.
    public func sync() throws(AgentboxError) {
        if let failure { throw failure }
        guard unsynced else { return }
        if fdatasync(fd) < 0 { try fail("fdatasync \(path): \(FileIO.errnoString())") }
        if !named {
            do { try Durability.syncDirectory(dir) } catch { try fail(error.message) }
            named = true
        }
        unsynced = false
    }

    func fail(_ message: String, enospc: Bool = false) throws(AgentboxError) -> Never {
        let error = AgentboxError(stage: "journal", message,
                                  hint: enospc ? "the disk is full: free space, then look at the run with `agentbox logs`" : "")
        failure = error
        throw error
    }
}

/// Where an output record's bytes are: `length` bytes at `offset` of `stream`'s file, whose CRC-32C is
/// `crc32c`.
public struct OutputSpan: Equatable, Sendable {
    public var stream: CapturedStream
    public var offset: UInt64
    public var length: UInt64
    public var crc32c: UInt32

    public init(stream: CapturedStream, offset: UInt64, length: UInt64, crc32c: UInt32) {
        self.stream = stream
        self.offset = offset
        self.length = length
        self.crc32c = crc32c
    }

    /// The span an output record's data names; nil for records that hold their bytes themselves
    /// (`text`/`b64`, journals written before the raw files) and for malformed ones.
    public init?(_ data: JSON) {
        guard let stream = data["stream"]?.stringValue.flatMap(CapturedStream.init(rawValue:)),
              let offset = data["offset"]?.uint64Value, let length = data["length"]?.uint64Value,
              offset < 1 << 62, length < 1 << 62,  // sums and file offsets stay in range
              let hex = data["crc32c"]?.stringValue, hex.utf8.count == 8, let crc = UInt32(hex, radix: 16) else { return nil }
        self.init(stream: stream, offset: offset, length: length, crc32c: crc)
    }

    /// The record's data: `{"stream":"stdout","offset":N,"length":L,"crc32c":"xxxxxxxx"}`.
    public var json: JSON {
        .object([("stream", .string(stream.rawValue)), ("offset", .number(Double(offset))), ("length", .number(Double(length))),
                 ("crc32c", .string(CRC32C.hex(crc32c)))])
    }
}

/// Reads the output a run's records point at, from the run's folder: the spans of the raw files (each
/// checked against its CRC-32C) or, for older journals, the bytes in the record itself.
public final class OutputReader {
    /// The most a reader takes of one record at once (the writer makes them a few hundred KiB).
    public static let maxRecordBytes: UInt64 = 64 << 20

    public let dir: String
    var fds: [CapturedStream: Int32] = [:]
    /// Where each stream's recorded bytes end, after the records given to `track` so far.
    public private(set) var recordedEnd: [CapturedStream: UInt64] = [:]

    public init(dir: String) { self.dir = dir }

    deinit { for fd in fds.values { close(fd) } }

    /// The stream's file, opened on first use; -1 while there is none (it may appear later: `logs -f`).
    func fd(_ stream: CapturedStream) -> Int32 {
        if let fd = fds[stream] { return fd }
        // A regular file only (a FIFO planted in a folder `journal verify PATH` is pointed at must not
        // hang it: O_NONBLOCK).
        let fd = open(dir + "/" + stream.rawValue, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { close(fd); return -1 }
        fds[stream] = fd
        return fd
    }

    /// The size of a stream's file now (0 when there is none).
    public func fileSize(_ stream: CapturedStream) -> UInt64 {
        var st = stat()
        let fd = fd(stream)
        guard fd >= 0, fstat(fd, &st) == 0 else { return 0 }
        return UInt64(st.st_size)
    }

    /// The bytes of an output record: its span of the stream's file, checked against its `crc32c`, or
    /// its own `text`/`b64`. The problem says what is wrong (a missing or short file, a checksum).
    public func bytes(_ data: JSON) -> Result<[UInt8], RecordProblem> {
        guard let span = OutputSpan(data) else {
            if data["text"] != nil || data["b64"] != nil { return .success(data.outputBytes) }
            return .failure("an output record without text, b64 or a valid offset, length and crc32c")
        }
        return bytes(span)
    }

    public func bytes(_ span: OutputSpan) -> Result<[UInt8], RecordProblem> {
        let name = span.stream.rawValue
        guard span.length <= OutputReader.maxRecordBytes else {
            return .failure(RecordProblem("a \(name) record of \(span.length) bytes, more than a record holds"))
        }
        let fd = fd(span.stream)
        guard fd >= 0 else { return .failure(RecordProblem("\(dir)/\(name) is missing or unreadable; the record needs \(span.length) bytes at offset \(span.offset)")) }
        let count = Int(span.length)
        var got = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buf, n in
            while got < count {
                let r = pread(fd, buf.baseAddress! + got, count - got, off_t(span.offset) + off_t(got))
                if r < 0 && errno == EINTR { continue }
                if r <= 0 { break }
                got += r
            }
            n = got
        }
        guard got == count else {
            return .failure(RecordProblem("\(dir)/\(name) holds \(fileSize(span.stream)) bytes; the record needs \(span.length) at offset \(span.offset)"))
        }
        let crc = CRC32C.checksum(bytes)
        guard crc == span.crc32c else {
            return .failure(RecordProblem("\(name) bytes \(span.offset)-\(span.offset + span.length) do not match the record's crc32c (stored \(CRC32C.hex(span.crc32c)), computed \(CRC32C.hex(crc)))"))
        }
        return .success(bytes)
    }

    /// Notes an output record's span (for `unrecorded`), without reading it.
    public func track(_ data: JSON) {
        guard let span = OutputSpan(data) else { return }
        recordedEnd[span.stream] = max(recordedEnd[span.stream] ?? 0, span.offset + span.length)
    }

    /// What `journal verify` checks of an output record: its span starts where the stream's previous
    /// one ended (the records of a stream cover its file without gap or overlap) and its bytes are
    /// there and match its checksum. Tracks the span.
    public func check(_ data: JSON) -> RecordProblem? {
        if let span = OutputSpan(data), span.offset != recordedEnd[span.stream] ?? 0 {
            return RecordProblem("a \(span.stream.rawValue) record at offset \(span.offset); the stream's previous record ended at \(recordedEnd[span.stream] ?? 0)")
        }
        track(data)
        if case let .failure(problem) = bytes(data) { return problem }
        return nil
    }

    /// Bytes of `stream`'s file after its last tracked record: written (and passed on) by a supervisor
    /// that died before it recorded them.
    public func unrecordedCount(_ stream: CapturedStream) -> UInt64 {
        let size = fileSize(stream), end = recordedEnd[stream] ?? 0
        return size > end ? size - end : 0
    }

    /// Those bytes, in pieces of at most 1 MiB.
    public func unrecorded(_ stream: CapturedStream, _ body: ([UInt8]) -> Void) {
        var offset = recordedEnd[stream] ?? 0
        var left = unrecordedCount(stream)
        let fd = fd(stream)
        while left > 0 && fd >= 0 {
            let count = Int(min(left, 1 << 20))
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { buf, n in
                let r = pread(fd, buf.baseAddress, count, off_t(offset))
                n = max(0, r)
            }
            if bytes.isEmpty { return }
            body(bytes)
            offset += UInt64(bytes.count)
            left -= UInt64(bytes.count)
        }
    }
}

extension OutputReader {
    /// `journal verify`'s check of the output: the first output record whose span does not follow the
    /// stream's previous one or whose bytes are missing or damaged, as damage at that record.
    public func verify(_ records: [JournalRecord]) -> JournalScan.Damage? {
        for r in records where r.kind == .output {
            if let problem = check(r.data) { return .init(seq: r.seq, offset: r.offset, reason: "output: \(problem)") }
        }
        return nil
    }
}
