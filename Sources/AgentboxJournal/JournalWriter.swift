import AgentboxCore
import Glibc

/// The one writer of a run's journal. Appends only. Durability by record class:
/// - critical records (`append(..., critical: true)`) are written together with everything pending and
///   fdatasync'ed before `append` returns: callers write them before the action they guard;
/// - other records (output, warnings) are batched in memory and written with group commit when
///   `flushDue` says so (64 KiB pending or 1 s since the oldest pending record), or with the next
///   critical record.
/// A failed write (full disk, I/O error) truncates the file back to the last complete record and stops
/// the writer: earlier records are never corrupted.
public final class JournalWriter {
    public static let batchBytes = 256 << 10
    public static let batchSeconds = 1.0

    public let path: String
    public private(set) var seq: UInt64
    public let epoch: Int
    let fd: Int32
    let lockFd: Int32
    var committed: Int
    var pending: [UInt8] = []
    /// Bytes appended but not yet written to the file.
    public var pendingBytes: Int { pending.count }
    /// Bytes of every record appended by this writer (lines as stored).
    public private(set) var bytesAppended: UInt64 = 0
    var pendingSince: Double? = nil
    /// Written but not yet fdatasync'ed since then (a size-triggered batch write).
    var unsyncedSince: Double? = nil
    var failure: AgentboxError? = nil
    /// This writer's claim on the run (nil for a journal written without one: tests, benchmarks).
    let lease: Lease?
    var fenceCheckedAt = Clock.monotonic()

    init(path: String, fd: Int32, lockFd: Int32, lease: Lease?, seq: UInt64, epoch: Int, committed: Int) {
        self.path = path
        self.fd = fd
        self.lockFd = lockFd
        self.lease = lease
        self.seq = seq
        self.epoch = epoch
        self.committed = committed
    }

    deinit {
        // A writer dropped without `finish()` (an error path) still leaves what it was given on disk.
        if failure == nil && (!pending.isEmpty || unsyncedSince != nil) { try? flush(sync: true) }
        lease?.stop(release: true)
        close(fd)
        close(lockFd)
    }

    /// Takes the run's writer lock or fails naming its owner. The run's current claim (`Lease`) decides
    /// whether a writer lives: on this node its process is alive, elsewhere its lease is renewed. The
    /// lock (flock) keeps two processes of this node apart besides. Only when the claim is another
    /// node's and has lapsed may a writer go on while the lock is held (nodes simulated on one kernel,
    /// or an NFS lock of a paused owner): the lease, not the lock, decides between nodes, and the
    /// superseded owner is fenced. The descriptor is then not locked.
    static func lock(_ dir: String, takeover: Bool = true) throws(AgentboxError) -> Int32 {
        let lockPath = dir + "/lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentboxError(stage: "journal", "cannot open \(lockPath): \(FileIO.errnoString())") }
        let claim = Lease.current(dir)
        if flock(fd, LOCK_EX | LOCK_NB) < 0 {
            if takeover, let claim, claim.node != Lease.node(), !claim.isLive() { return fd }
            let holder = FileIO.readSmall(lockPath)?.trimmingSpaces() ?? "?"
            close(fd)
            throw AgentboxError(stage: "journal", "\(dir) already has a writer (pid \(holder))",
                                hint: "a run has exactly one writer; wait for it to end or stop it")
        }
        if let claim, claim.isLive() {
            close(fd)
            throw AgentboxError(stage: "journal", "\(dir) already has a writer (\(claim.description))",
                                hint: "a run has exactly one writer; one on another node can be taken over once its lease expires (AGENTBOX_LEASE_S)")
        }
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        return fd
    }

    /// Creates the journal of a new run in `dir` (which must exist and be empty of a journal).
    public static func create(dir: String) throws(AgentboxError) -> JournalWriter {
        let lockFd = try lock(dir)
        let lease: Lease
        do { lease = try Lease.claim(runDir: dir, epoch: 1) } catch {
            close(lockFd)
            throw error
        }
        let path = dir + "/journal.jsonl"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            lease.stop(release: true)
            close(lockFd)
            throw AgentboxError(stage: "journal", "cannot create \(path): \(FileIO.errnoString())")
        }
        try? Durability.syncDirectory(dir)
        let writer = JournalWriter(path: path, fd: fd, lockFd: lockFd, lease: lease, seq: 0, epoch: 1, committed: 0)
        try writer.append(RecordType.journalOpened, .object([("epoch", 1), ("pid", .number(Double(getpid()))), ("node", .string(lease.node))]),
                          critical: true)
        return writer
    }

    /// Opens an existing journal to continue it (resume): verifies it, truncates a torn last line and
    /// records that it did, and takes a new epoch so records of an older writer can be told apart.
    public static func reopen(dir: String) throws(AgentboxError) -> JournalWriter { try reopenScanned(dir: dir).writer }

    /// `reopen`, with the records it verified (what was there before this epoch): `resume` continues
    /// from them without reading the journal again.
    /// `check` sees the records under the lock, before anything is written: a refusal leaves the
    /// journal untouched.
    /// `known`: the journal as the caller read it before taking the lock; when the file has the same
    /// size (an append-only file in a private folder: nothing was added or cut) its records are used
    /// instead of reading it again.
    public static func reopenScanned(dir: String, known: JournalScan? = nil, check: ([JournalRecord]) throws(AgentboxError) -> Void = { _ in })
        throws(AgentboxError) -> (writer: JournalWriter, records: [JournalRecord]) {
        let lockFd = try lock(dir)
        // The claim comes first: it is the takeover point. A superseded writer stops at its next write,
        // and what it wrote before the scan below is history; after it, readers drop it (from_offset).
        var lease: Lease
        do { lease = try Lease.claim(runDir: dir, epoch: (Lease.current(dir)?.epoch ?? 0) + 1) } catch {
            close(lockFd)
            throw error
        }
        func fail(_ error: AgentboxError, _ fd: Int32 = -1) -> AgentboxError {
            lease.stop(release: true)
            if fd >= 0 { close(fd) }
            close(lockFd)
            return error
        }
        let path = dir + "/journal.jsonl"
        var scan: JournalScan
        var st = stat()
        if let known, !known.partial, known.tornBytes == 0, stat(path, &st) == 0, Int(st.st_size) == known.fileSize {
            scan = known
        } else {
            do { scan = try JournalReader.scan(path: path) } catch { throw fail(error) }
        }
        if let damage = scan.damage {
            throw fail(AgentboxError(stage: "journal", "\(path) is damaged at \(damage)",
                                     hint: "`agentbox journal verify \(path)` shows the damage; a damaged journal is never continued"))
        }
        // A journal from before claims has epochs without claim files: the writer's epoch is above both.
        if scan.maxEpoch >= lease.epoch {
            lease.stop(release: true)
            do { lease = try Lease.claim(runDir: dir, epoch: scan.maxEpoch + 1) } catch {
                close(lockFd)
                throw error
            }
        }
        do { try check(scan.records) } catch { throw fail(error) }
        let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw fail(AgentboxError(stage: "journal", "cannot open \(path): \(FileIO.errnoString())")) }
        if scan.tornBytes > 0 {
            guard ftruncate(fd, off_t(scan.validEnd)) == 0, fdatasync(fd) == 0 else {
                throw fail(AgentboxError(stage: "journal", "cannot truncate the torn tail of \(path): \(FileIO.errnoString())"), fd)
            }
        }
        let epoch = lease.epoch
        let writer = JournalWriter(path: path, fd: fd, lockFd: lockFd, lease: lease, seq: scan.lastSeq, epoch: epoch, committed: scan.validEnd)
        if scan.tornBytes > 0 {
            try writer.append(RecordType.journalRecovered,
                              .object([("truncated_bytes", .number(Double(scan.tornBytes))), ("offset", .number(Double(scan.validEnd)))]),
                              critical: true)
        }
        try writer.append(RecordType.journalOpened, .object([
            ("epoch", .number(Double(epoch))), ("pid", .number(Double(getpid()))), ("node", .string(lease.node)),
            ("from_offset", .number(Double(scan.validEnd))), ("after_seq", .number(Double(scan.lastSeq))),
        ]), critical: true)
        return (writer, scan.records)
    }

    /// The records a new writer epoch would add after `journal` (whose last record has `lastSeq` and
    /// whose highest epoch is `maxEpoch`): its `journal.opened`, then `records`. For a journal put
    /// together before it becomes a run's (`fork`, `import`): the whole file appears at once, by a
    /// rename, with its last records in it.
    public static func continuation(of journal: [UInt8], lastSeq: UInt64, maxEpoch: Int, _ records: [(RecordType, JSON)]) -> [UInt8] {
        let epoch = maxEpoch + 1
        var out = JournalRecord(seq: lastSeq + 1, epoch: epoch, type: RecordType.journalOpened.rawValue, data: .object([
            ("epoch", .number(Double(epoch))), ("pid", .number(Double(getpid()))), ("node", .string(Lease.node())),
            ("from_offset", .number(Double(journal.count))), ("after_seq", .number(Double(lastSeq))),
        ])).line()
        for (i, (type, data)) in records.enumerated() {
            out += JournalRecord(seq: lastSeq + 2 + UInt64(i), epoch: epoch, type: type.rawValue, data: data).line()
        }
        return out
    }

    /// Sees every record line (with its newline) as it is appended: `run --json` streams them.
    public var observer: (([UInt8]) -> Void)? = nil

    /// Runs before batched records are written to the file: what they point at outside the journal (a
    /// journaled exec's raw output files) is synced here first, so that no record reaches the disk
    /// before the bytes it names. An error leaves the records pending and is thrown by the flush.
    public var beforeWrite: (() throws(AgentboxError) -> Void)? = nil

    /// Appends a record; returns its seq. Critical records are on disk when this returns.
    @discardableResult
    public func append(_ type: RecordType, _ data: JSON, critical: Bool) throws(AgentboxError) -> UInt64 {
        if let failure { throw failure }
        seq += 1
        let record = JournalRecord(seq: seq, epoch: epoch, type: type.rawValue, data: data)
        let line = record.line()
        bytesAppended += UInt64(line.count)
        pending += line
        observer?(line)
        if pendingSince == nil { pendingSince = Clock.monotonic() }
        if critical || pending.count >= JournalWriter.batchBytes {
            try flush(sync: critical)
        }
        return seq
    }

    /// When batched records must be on disk, or nil when everything is.
    public var flushDeadline: Double? {
        [pendingSince, unsyncedSince].compactMap { $0 }.min().map { $0 + JournalWriter.batchSeconds }
    }

    /// Writes and syncs batched records when they are due (group commit): at most about a second after
    /// they were appended.
    public func flushIfDue(now: Double = Clock.monotonic()) throws(AgentboxError) {
        if lease != nil && now - fenceCheckedAt >= 1 { try checkFence(now: now) }
        if let d = flushDeadline, now >= d { try flush(sync: true) }
    }

    /// Stops this writer for good once a newer epoch has claimed the run: it must not add to it. Its
    /// claim is not released and nothing is cut from the file (the new owner writes there).
    public func checkFence(now: Double = Clock.monotonic()) throws(AgentboxError) {
        fenceCheckedAt = now
        guard let lease, lease.superseded else { return }
        let owner = Lease.current(lease.runDir)
        let error = AgentboxError(stage: "lease", "the run was taken over by another supervisor (epoch \(lease.epoch + 1)\(owner.map { ": \($0.description)" } ?? "")): this one stops without writing or running anything more",
                                  hint: "nothing is lost: the new owner continues the run from its journal")
        failure = error
        pending.removeAll()
        pendingSince = nil
        unsyncedSince = nil
        throw error
    }

    /// Writes everything pending; with `sync`, fdatasync too.
    public func flush(sync: Bool) throws(AgentboxError) {
        if let failure { throw failure }
        if !pending.isEmpty {
            if lease != nil { try checkFence() }
            try beforeWrite?()
            var written = 0
            while written < pending.count {
                let n = pending[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { try fail(n < 0 ? errno : EIO) }
                written += n
            }
            committed += pending.count
            pending.removeAll(keepingCapacity: true)
            pendingSince = nil
            if !sync && unsyncedSince == nil { unsyncedSince = Clock.monotonic() }
        }
        if sync {
            if fdatasync(fd) < 0 { try fail(errno) }
            unsyncedSince = nil
        }
    }

    func fail(_ code: Int32) throws(AgentboxError) -> Never {
        // Cut back to the last complete record so the file stays a valid journal.
        _ = ftruncate(fd, off_t(committed))
        _ = fdatasync(fd)
        let error = AgentboxError(stage: "journal", "writing \(path) failed: \(FileIO.errnoString(code))",
                                  hint: code == ENOSPC ? "the disk is full: free space, then look at the run with `agentbox logs`" : "")
        failure = error
        throw error
    }

    /// Flushes and syncs; the writer lock is released when the writer is deallocated.
    public func finish() throws(AgentboxError) {
        try flush(sync: true)
    }
}

enum Durability {
    /// fsync a directory so that a file created in it survives a crash.
    static func syncDirectory(_ dir: String) throws(AgentboxError) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "journal", "cannot open \(dir): \(FileIO.errnoString())") }
        defer { close(fd) }
        if fsync(fd) < 0 { throw AgentboxError(stage: "journal", "fsync \(dir): \(FileIO.errnoString())") }
    }
}
