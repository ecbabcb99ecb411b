import AgentboxCore
import AgentboxJournal
import CAgentboxCurl
import Glibc

/// Workspace checkpoints (docs/lifecycle.md, "Workspace checkpoints"): after every step the supervisor
/// compares the workspace with what it recorded (kind, mode, size, owner, mtime, ctime, inode of every
/// entry), stores the content of files that changed under their SHA-256 in `runs/<id>/objects/`, and
/// journals the difference as a `checkpoint` record. The records replayed up to step k give the
/// workspace of step k; `fork` materializes it.
///
/// The workspace is the agent's: it is read without following a symlink (every open is relative to
/// an open directory, with O_NOFOLLOW), only regular files are read (opened O_NONBLOCK: a FIFO does not
/// block the supervisor), and nothing it names is trusted when written back (`materialize`).
public final class WorkspaceCheckpoints {
    public enum Kind: String, Sendable { case file = "f", directory = "d", link = "l" }

    public struct Entry: Equatable, Sendable {
        public var kind: Kind
        public var mode: UInt32
        public var size: Int64
        public var uid: UInt32
        public var gid: UInt32
        /// Microseconds (exact in a JSON number).
        public var mtime: Int64
        /// Microseconds; -1: read it again at the next scan (it changed while it was read, or too close
        /// to the scan for its timestamps to tell a later change: file times are as coarse as the
        /// kernel's clock tick).
        public var ctime: Int64
        public var inode: UInt64
        /// SHA-256 of a file's content (hex), a link's target.
        public var hash: String = ""
        public var target: String = ""

        /// Same entry as far as a scan can tell without reading it.
        func sameAttributes(_ o: Entry) -> Bool {
            kind == o.kind && mode == o.mode && size == o.size && uid == o.uid && gid == o.gid && mtime == o.mtime
                && ctime == o.ctime && inode == o.inode
        }
    }

    /// Folders deeper than this are not recorded (and said so): the walk holds one descriptor per level.
    public static let maxDepth = 128
    /// Entries a run's checkpoints follow at most: the index lives in the supervisor, outside every
    /// cgroup, and the agent decides how many files there are (about 300 bytes each: 75 MB here).
    /// Past it checkpoints stop for the run, with a warning; --checkpoint-exclude keeps big trees out.
    public static let maxEntries = 250_000
    var maxEntries = WorkspaceCheckpoints.maxEntries

    public let root: String
    public let objects: String
    /// Names (any folder or file with this name) and workspace-relative paths left out.
    public let exclude: [String]
    public internal(set) var index: [String: Entry] = [:]
    var madeDirs = Set<String>()
    /// The read buffer of `digest`, for the length of one checkpoint (allocating and zeroing it per
    /// file cost more than reading a small file; keeping it between checkpoints would cost every idle
    /// run its size).
    var buffer: [UInt8] = []
    var racy: Int64 = 0
    /// Bytes this checkpoint may still read (nil: the run's first checkpoint, which reads everything).
    var readBudget: Int64? = nil
    /// Bytes stored since the run's first checkpoint, and the most it may store (nil before it).
    public internal(set) var storedTotal: Int64 = 0
    var quota: Int64? = nil
    /// Paths of files with more than one link, by inode: a write through one name changes the others.
    var linked: [UInt64: Set<String>] = [:]
    var followingLinks = false

    public init(workspace: String, runDir: String, exclude: [String]) {
        root = workspace
        objects = runDir + "/objects"
        // agentbox's own folder (AGENTBOX_HOME) inside the workspace is not workspace content: the
        // stored contents would be stored again at every step.
        var exclude = exclude
        func real(_ p: String) -> String? {
            guard let r = realpath(p, nil) else { return nil }
            defer { free(r) }
            return String(cString: r)
        }
        if let ws = real(workspace), let home = real(runDir + "/../.."), home.hasPrefix(ws + "/") {
            exclude.append(String(home.dropFirst(ws.count + 1)))
        }
        self.exclude = exclude
    }

    /// Why checkpoints cannot be taken on this machine, or nil.
    public static var unavailable: String? { ab_sha256_unavailable().map { String(cString: $0) } }

    // MARK: Records

    /// Applies one `checkpoint` record to `index`.
    public static func apply(_ data: JSON, to index: inout [String: Entry]) {
        for p in data["removed"]?.arrayValue ?? [] {
            if let path = decodePath(p) { index[path] = nil }
        }
        for e in data["changed"]?.arrayValue ?? [] {
            guard let path = decodePath(e["p"] ?? .null), let entry = Entry(json: e) else { continue }
            index[path] = entry
        }
    }

    /// The workspace as the checkpoints in `records` left it (through the record with seq `through`).
    public static func index(from records: [JournalRecord], through seq: UInt64 = .max) -> [String: Entry] {
        var index: [String: Entry] = [:]
        for r in records where r.kind == .checkpoint && r.seq <= seq { apply(r.data, to: &index) }
        return index
    }

    /// Continues from the journal's checkpoints (resume): the next checkpoint walks the whole workspace
    /// and records what changed since (what an interrupted call did, say).
    public func restore(from records: [JournalRecord]) {
        index = WorkspaceCheckpoints.index(from: records)
        tracker = nil
        // Each clamped (an imported journal's numbers are not trusted to add up without overflow).
        let stored = records.filter { $0.kind == .checkpoint }.map { r -> Int64 in
            min(max(0, Int64(r.data["stored_bytes"]?.intValue ?? 0)), WorkspaceCheckpoints.maxReadBytes)
        }
        if let first = stored.first {
            quota = max(WorkspaceCheckpoints.minQuotaBytes, 2 * first)
            storedTotal = stored.dropFirst().reduce(0, +)
        }
    }

    static func encodePath(_ path: String) -> JSON { .string(path) }

    static func decodePath(_ json: JSON) -> String? {
        guard let p = json.stringValue, valid(p) else { return nil }
        return p
    }

    /// A relative path of plain names: what a checkpoint may name (a record from an imported journal
    /// is not trusted to stay inside the folder it is written into).
    public static func valid(_ path: String) -> Bool {
        !path.isEmpty && !path.hasPrefix("/") && !path.utf8.contains(0)
            && path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
    }

    // MARK: Taking a checkpoint

    public struct Taken {
        public var record: JSON
        public var changed: Int
        public var storedBytes: Int64
        public var skipped: [String]
    }

    /// What one checkpoint found.
    struct Scan {
        var changed: [String: Entry] = [:]
        var removed: Set<String> = []
        var skipped: [String] = []
        var stored: Int64 = 0
        /// Paths a full walk saw (entries under a walked folder that it did not see are gone).
        var seen: Set<String> = []
    }

    /// A full scan every this many steps, whatever the change tracker says: a write through a shared
    /// memory mapping makes no inotify event.
    public static let fullScanEvery = 64
    var tracker: ChangeTracker? = nil
    var scans = 0

    /// Stores what changed in the workspace since the last checkpoint and returns the `checkpoint`
    /// record for `step`. The first checkpoint, every `fullScanEvery`-th and any after the change
    /// tracker lost events walk the whole workspace; the others look only at the paths inotify named.
    public func take(step: Int) throws(AgentboxError) -> Taken {
        let started = Clock.monotonic()
        // Entries changed within 50 ms of the scan are read again next time: a change in the same clock
        // tick would leave their times as they are.
        racy = Int64((Clock.wall() - 0.05) * 1_000_000)
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "checkpoint", "cannot open the workspace \(root): \(FileIO.errnoString())") }
        defer { close(fd) }
        var scan = Scan()
        buffer = [UInt8](repeating: 0, count: 256 << 10)
        defer { buffer = [] }
        let baseline = index.isEmpty && quota == nil
        readBudget = baseline ? nil : WorkspaceCheckpoints.maxReadBytes
        if scans == 0 { removeLeftovers() }
        var dirty = tracker?.drain() ?? []
        let full = tracker == nil || tracker!.lost || scans % WorkspaceCheckpoints.fullScanEvery == 0
        scans += 1
        if full {
            tracker = ChangeTracker()
            try walk(fd, prefix: "", depth: 0, &scan)
            for path in index.keys where !scan.seen.contains(path) { scan.removed.insert(path) }
            for path in scan.removed { index[path] = nil }
            dirty = []
        }
        // Shorter paths first: a folder walked again covers what is under it.
        var walked: [String] = []
        for path in dirty.sorted(by: { $0.utf8.count < $1.utf8.count }) {
            if walked.contains(where: { path.hasPrefix($0 + "/") }) { continue }
            if try update(fd, path, &scan) { walked.append(path) }
        }
        if quota == nil { quota = max(WorkspaceCheckpoints.minQuotaBytes, 2 * scan.stored) }
        if baseline { storedTotal = 0 }
        let changed = scan.changed.keys.sorted()
        let removed = scan.removed.filter { index[$0] == nil }.sorted()
        var fields: [(String, JSON)] = [("step", .number(Double(step))), ("files", .number(Double(index.count))),
                                        ("scan", .string(full ? "full" : "events"))]
        if !changed.isEmpty { fields.append(("changed", .array(changed.map { scan.changed[$0]!.json(path: $0) }))) }
        if !removed.isEmpty { fields.append(("removed", .array(removed.map { WorkspaceCheckpoints.encodePath($0) }))) }
        if scan.stored > 0 { fields.append(("stored_bytes", .number(Double(scan.stored)))) }
        if !scan.skipped.isEmpty { fields.append(("skipped", .array(scan.skipped.map { .string($0) }))) }
        fields.append(("ms", .number(((Clock.monotonic() - started) * 10000).rounded() / 10)))
        return Taken(record: .object(fields), changed: changed.count + removed.count, storedBytes: scan.stored, skipped: scan.skipped)
    }

    func excluded(_ name: Substring, _ path: Substring) -> Bool {
        exclude.contains { $0 == name || $0 == path }
    }

    /// Brings one path an event named up to date; true when it was a folder walked again as a whole.
    func update(_ rootFd: Int32, _ path: String, _ scan: inout Scan) throws(AgentboxError) -> Bool {
        let parts = path.split(separator: "/")
        guard WorkspaceCheckpoints.valid(path), !path.contains("\n") else { scan.skipped.append(path); return false }
        var prefix = Substring("")
        for (i, part) in parts.enumerated() {
            prefix = i == 0 ? part : path[path.startIndex..<part.endIndex]
            if excluded(part, prefix) { return false }
        }
        // The parent, opened one folder at a time without following a symlink.
        var fd = dup(rootFd)
        for part in parts.dropLast() {
            let next = openat(fd, String(part), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            close(fd)
            fd = next
            if fd < 0 { break }
        }
        guard fd >= 0 else { removeTree(path, &scan); return false }
        defer { close(fd) }
        let name = String(parts.last!)
        var st = stat()
        let kind = fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? WorkspaceCheckpoints.kind(st.st_mode) : nil
        let old = index[path]
        guard let kind else { removeTree(path, &scan); return false }
        // The same folder, still watched: its entries have their own events. A folder with the inode of
        // one that was removed (`rm -r d; mkdir d`: inodes are reused) has no watch: walked again.
        if kind == .directory, let old, old.kind == .directory, old.inode == UInt64(st.st_ino), tracker?.watches[path] != nil {
            try visit(fd, name, path, parts.count - 1, st, &scan, descend: false)
            return false
        }
        // A folder replaced (or gone from under a file of the same name): what was under it is not.
        if let old, old.kind == .directory { removeTree(path, &scan) }
        try visit(fd, name, path, parts.count - 1, st, &scan, descend: true)
        // A write through one name of a file with several names: inotify names only that one.
        if kind == .file && st.st_nlink > 1 && !followingLinks {
            followingLinks = true
            defer { followingLinks = false }
            // Every recorded name of the inode: one made before the link (`ln a b`: the event names b only)
            // was recorded with one link.
            let inode = UInt64(st.st_ino)
            let names = (linked[inode] ?? []).union(index.filter { $0.value.kind == .file && $0.value.inode == inode }.keys)
            for other in names where other != path { _ = try update(rootFd, other, &scan) }
        }
        return kind == .directory
    }

    /// Forgets `path` and everything under it (removed, or replaced by something else).
    func removeTree(_ path: String, _ scan: inout Scan) {
        guard let old = index[path] else { return }
        var doomed = [path]
        if old.kind == .directory {
            let under = path + "/"
            doomed += index.keys.filter { $0.hasPrefix(under) }
            tracker?.unwatch(under: path)
        }
        for p in doomed {
            index[p] = nil
            scan.changed[p] = nil
            scan.removed.insert(p)
        }
    }

    /// A path whose content could not be recorded: it leaves the index (a fork does not get an older
    /// content of it back), and the record lists it.
    func skip(_ path: String, _ scan: inout Scan) {
        scan.skipped.append(path)
        scan.seen.remove(path)
        scan.changed[path] = nil
        if index.removeValue(forKey: path) != nil { scan.removed.insert(path) }
    }

    static func kind(_ mode: mode_t) -> Kind? {
        switch mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK: return .link
        default: return nil  // FIFOs, sockets, devices: not workspace content
        }
    }

    func walk(_ dirFd: Int32, prefix: String, depth: Int, _ scan: inout Scan) throws(AgentboxError) {
        tracker?.watch(dirFd, prefix)
        let listFd = dup(dirFd)
        guard listFd >= 0, let d = fdopendir(listFd) else {
            if listFd >= 0 { close(listFd) }
            scan.skipped.append(prefix.isEmpty ? "." : prefix)
            return
        }
        defer { closedir(d) }
        while let e = readdir(d) {
            let (name, plain) = withUnsafeBytes(of: e.pointee.d_name) { raw -> (String, Bool) in
                let bytes = UnsafeRawBufferPointer(rebasing: raw.prefix { $0 != 0 }).bindMemory(to: UInt8.self)
                // A name that is not UTF-8 would not come back the same from a JSON string.
                if let valid = String(validating: bytes, as: UTF8.self) { return (valid, !bytes.contains(0x0A)) }
                return (String(decoding: bytes, as: UTF8.self), false)
            }
            if name == "." || name == ".." { continue }
            let path = prefix.isEmpty ? name : prefix + "/" + name
            if !plain { scan.skipped.append(path); continue }
            if excluded(name[...], path[...]) { continue }
            var st = stat()
            guard fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }  // gone meanwhile
            try visit(dirFd, name, path, depth, st, &scan, descend: true)
        }
    }

    /// Records one entry (stat `st`, in the folder `dirFd`), storing a file's content when it changed,
    /// and walks a folder's content when `descend`.
    func visit(_ dirFd: Int32, _ name: String, _ path: String, _ depth: Int, _ st: stat, _ scan: inout Scan,
               descend: Bool) throws(AgentboxError) {
        guard let kind = WorkspaceCheckpoints.kind(st.st_mode) else { return }
        var entry = Entry(kind: kind, mode: UInt32(st.st_mode & 0o7777), size: kind == .directory ? 0 : Int64(st.st_size),
                          uid: st.st_uid, gid: st.st_gid,
                          mtime: Int64(st.st_mtim.tv_sec) * 1_000_000 + Int64(st.st_mtim.tv_nsec / 1000),
                          ctime: Int64(st.st_ctim.tv_sec) * 1_000_000 + Int64(st.st_ctim.tv_nsec / 1000), inode: UInt64(st.st_ino))
        if index[path] == nil && index.count >= maxEntries {
            throw AgentboxError(stage: "checkpoint", "the workspace has more than \(maxEntries) files and folders to follow",
                                hint: "leave big trees out with --checkpoint-exclude NAME (node_modules, build outputs), or --no-checkpoints")
        }
        scan.seen.insert(path)
        if kind == .file && st.st_nlink > 1 { linked[UInt64(st.st_ino), default: []].insert(path) }
        let old = index[path]
        if let old, old.sameAttributes(entry) {
            // Unchanged: nothing to read or record.
        } else {
            switch kind {
            case .directory: break
            case .link:
                var buf = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(dirFd, name, &buf, buf.count - 1)
                guard n >= 0, let target = String(validating: buf[0..<n], as: UTF8.self) else { skip(path, &scan); return }
                entry.target = target
            case .file:
                guard let (hash, stable, new) = try store(dirFd, name, entry, &scan) else { skip(path, &scan); return }
                entry.hash = hash
                if new { scan.stored += entry.size }
                // Changed while it was read: recorded as read, and read again next time.
                if !stable { entry.ctime = -1 }
            }
            if entry.ctime >= racy { entry.ctime = -1 }
            index[path] = entry
            // Read again but the same (a racy entry, a chown to the same owner): nothing to record.
            let same = old.map { old in
                old.kind == entry.kind && old.mode == entry.mode && old.size == entry.size && old.uid == entry.uid
                    && old.gid == entry.gid && old.mtime == entry.mtime && old.hash == entry.hash && old.target == entry.target
            } ?? false
            if !same { scan.changed[path] = entry }
        }
        if kind == .directory && descend {
            if depth + 1 >= WorkspaceCheckpoints.maxDepth { scan.skipped.append(path + "/"); return }
            let sub = openat(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard sub >= 0 else { scan.skipped.append(path + "/"); return }
            defer { close(sub) }
            try walk(sub, prefix: path, depth: depth + 1, &scan)
        }
    }

    static func hex(_ digest: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in digest { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    func objectPath(_ hash: String) -> String { objects + "/" + hash.prefix(2) + "/" + hash.dropFirst(2) }

    /// Reads a file the scan found changed, storing its content under its hash: the hash, whether the
    /// file stayed the same while it was read, and whether its content was new to the store. Nil when
    /// it could not be read as that regular file, or does not fit the limits below.
    ///
    /// The file is read (up to the size it had when opened: a file growing meanwhile is not followed)
    /// and hashed first; content already stored (a file touched, a revert, a copy) is not written
    /// again. A file up to `keepBytes` is kept in memory for the write; a larger one is read a second
    /// time, and hashed again while it is copied: the stored object is named by what was written.
    ///
    /// Limits, because the agent decides what the workspace holds and the supervisor reads it outside
    /// every cgroup: a file over `maxFileBytes` (a sparse file of terabytes) is not read; a checkpoint
    /// after the first reads at most `maxReadBytes`; what a run stores after its first checkpoint is at
    /// most the larger of `minQuotaBytes` and twice that checkpoint; and the disk floor is kept.
    static let keepBytes = 8 << 20
    public static let maxFileBytes: Int64 = 1 << 30
    public static let maxReadBytes: Int64 = 4 << 30
    public static let minQuotaBytes: Int64 = 4 << 30

    func store(_ dirFd: Int32, _ name: String, _ entry: Entry, _ scan: inout Scan) throws(AgentboxError) -> (String, Bool, Bool)? {
        let fd = openat(dirFd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_ino) == entry.inode else { return nil }
        let size = Int64(st.st_size)
        guard size <= WorkspaceCheckpoints.maxFileBytes else { return nil }
        if let budget = readBudget {
            guard size <= budget else { return nil }
            readBudget = budget - size
        }
        let small = size <= WorkspaceCheckpoints.keepBytes
        guard let first = try digest(fd, limit: size, keep: small) else { return nil }
        var hash = first.hash
        var stable = first.complete
        var path = objectPath(hash)
        if FileIO.exists(path) { return (hash, stable && sameFile(fd, st), false) }
        if let quota, storedTotal + size > quota { return nil }
        if DiskFloor.reached(FileIO.isDirectory(objects) ? objects : root, adding: UInt64(size)) { return nil }
        if madeDirs.isEmpty { try makeDir(objects) }
        let tmp = objects + "/.tmp-\(getpid())-" + RunStore.newID()
        let out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw AgentboxError(stage: "checkpoint", "cannot create \(tmp): \(FileIO.errnoString())") }
        var failed: Int32 = 0
        if small {
            failed = WorkspaceCheckpoints.writeAll(out, first.bytes[...])
        } else {
            // Read again, hashing what is written.
            guard lseek(fd, 0, SEEK_SET) == 0, let second = try digest(fd, limit: size, keep: false, copyTo: out) else {
                close(out)
                unlink(tmp)
                return nil
            }
            failed = second.failed
            if second.hash != hash || !second.complete { stable = false; hash = second.hash; path = objectPath(hash) }
        }
        close(out)
        guard failed == 0 else {
            unlink(tmp)
            if failed == ENOSPC { return nil }
            throw AgentboxError(stage: "checkpoint", "storing \(root)/... \(name) failed: \(FileIO.errnoString(failed))")
        }
        let sub = String(path[..<path.lastIndex(of: "/")!])
        if !madeDirs.contains(sub) { try makeDir(sub) }
        var new = false
        if FileIO.exists(path) { unlink(tmp) } else if rename(tmp, path) == 0 { new = true } else {
            let e = FileIO.errnoString()
            unlink(tmp)
            throw AgentboxError(stage: "checkpoint", "cannot store \(path): \(e)")
        }
        if new { storedTotal += size }
        return (hash, stable && sameFile(fd, st), new)
    }

    /// Temporary files a supervisor killed while storing left in `objects/` (this process holds the
    /// run's writer lock: no other writer's are there).
    func removeLeftovers() {
        guard let d = opendir(objects) else { return }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(".tmp-") { names.append(name) }
        }
        closedir(d)
        for name in names { unlink(objects + "/" + name) }
    }

    /// Whether the open file still has the size and times it had (it did not change while it was read).
    func sameFile(_ fd: Int32, _ st: stat) -> Bool {
        var after = stat()
        return fstat(fd, &after) == 0 && after.st_size == st.st_size && after.st_mtim.tv_sec == st.st_mtim.tv_sec
            && after.st_mtim.tv_nsec == st.st_mtim.tv_nsec && after.st_ctim.tv_nsec == st.st_ctim.tv_nsec
    }

    /// SHA-256 of the next `limit` bytes of `fd` (hex), with the bytes when `keep`, or writing them to
    /// `copyTo` (the errno of a failed write in `failed`); `complete` is false when the file did not
    /// have exactly `limit` bytes (it changed while it was read). Nil when the file cannot be read.
    func digest(_ fd: Int32, limit: Int64, keep: Bool, copyTo: Int32 = -1) throws(AgentboxError)
        -> (hash: String, bytes: [UInt8], failed: Int32, complete: Bool)? {
        guard let ctx = ab_sha256_new() else {
            throw AgentboxError(stage: "checkpoint", "SHA-256 is not available: \(WorkspaceCheckpoints.unavailable ?? "?")")
        }
        var kept: [UInt8] = []
        if keep { kept.reserveCapacity(Int(limit)) }
        var failed: Int32 = 0
        var left = limit
        while left > 0 {
            let want = Int(min(left, Int64(buffer.count)))
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { ab_sha256_free(ctx); return nil }
            if n == 0 { break }
            left -= Int64(n)
            _ = buffer.withUnsafeBytes { ab_sha256_update(ctx, $0.baseAddress!, n) }
            if keep { kept.append(contentsOf: buffer[0..<n]) }
            if copyTo >= 0 && failed == 0 { failed = WorkspaceCheckpoints.writeAll(copyTo, buffer[0..<n]) }
        }
        var one: UInt8 = 0
        let complete = left == 0 && read(fd, &one, 1) == 0
        var out = [UInt8](repeating: 0, count: 32)
        guard ab_sha256_final(ctx, &out) == 0 else { return nil }
        return (WorkspaceCheckpoints.hex(out), kept, failed, complete)
    }

    /// write(2) until all is written; 0 or the errno.
    static func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Int32 {
        var off = bytes.startIndex
        while off < bytes.endIndex {
            let w = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if w < 0 && errno == EINTR { continue }
            if w <= 0 { return w < 0 ? errno : EIO }
            off += w
        }
        return 0
    }

    func makeDir(_ dir: String) throws(AgentboxError) {
        if mkdir(dir, 0o700) < 0 && errno != EEXIST {
            throw AgentboxError(stage: "checkpoint", "cannot create \(dir): \(FileIO.errnoString())")
        }
        madeDirs.insert(dir)
    }

    // MARK: Writing a checkpoint back

    /// Writes the workspace `index` describes into `dir` (new or empty) from the objects in `objects`,
    /// checking every file's content against its hash. Set-id bits are not restored; folders first,
    /// then files, then symlinks, each created relative to its parent folder opened without following
    /// a symlink: a link the index names can never redirect another entry out of `dir`.
    public static func materialize(_ index: [String: Entry], objects: String, into dir: String) throws(AgentboxError) {
        try FileIO.makeDirectories(dir)
        let rootFd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFd >= 0 else { throw AgentboxError(stage: "fork", "cannot open \(dir): \(FileIO.errnoString())") }
        defer { close(rootFd) }
        let paths = index.keys.filter(valid).sorted()
        let root = getuid() == 0
        func parent(_ path: String) throws(AgentboxError) -> (Int32, String) {
            var parts = path.split(separator: "/").map(String.init)
            let name = parts.removeLast()
            var fd = dup(rootFd)
            for p in parts {
                let next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                close(fd)
                guard next >= 0 else { throw AgentboxError(stage: "fork", "cannot open \(dir)/\(path)'s folder: \(FileIO.errnoString())") }
                fd = next
            }
            return (fd, name)
        }
        // Owner, mode and times go through a descriptor of the entry itself (never a path that a
        // process sharing the folder could have turned into a symlink meanwhile); links' own owner and
        // times by name, without following them.
        func finish(_ fd: Int32, _ name: String, _ e: Entry, link: Bool = false) {
            let t = timespec(tv_sec: Int(e.mtime / 1_000_000), tv_nsec: Int(e.mtime % 1_000_000) * 1000)
            var times = [t, t]
            if link {
                if root { fchownat(fd, name, e.uid, e.gid, AT_SYMLINK_NOFOLLOW) }
                utimensat(fd, name, &times, AT_SYMLINK_NOFOLLOW)
                return
            }
            let own = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | (e.kind == .directory ? O_DIRECTORY : 0))
            guard own >= 0 else { return }
            defer { close(own) }
            WorkspaceCheckpoints.finish(own, e, root: root)
        }
        for path in paths where index[path]!.kind == .directory {
            let (fd, name) = try parent(path)
            defer { close(fd) }
            if mkdirat(fd, name, 0o700) < 0 && errno != EEXIST {
                throw AgentboxError(stage: "fork", "cannot create \(dir)/\(path): \(FileIO.errnoString())")
            }
        }
        for path in paths where index[path]!.kind == .file {
            let e = index[path]!
            guard e.hash.count == 64, e.hash.allSatisfy(\.isHexDigit) else { throw AgentboxError(stage: "fork", "the checkpoint of \(path) has no content hash") }
            let source = objects + "/" + e.hash.prefix(2) + "/" + e.hash.dropFirst(2)
            let (fd, name) = try parent(path)
            defer { close(fd) }
            try copyVerified(source, hash: e.hash, to: fd, name, display: dir + "/" + path, entry: e, root: root)
        }
        for path in paths where index[path]!.kind == .link {
            let e = index[path]!
            let (fd, name) = try parent(path)
            defer { close(fd) }
            guard symlinkat(e.target, fd, name) == 0 else { throw AgentboxError(stage: "fork", "cannot create the link \(dir)/\(path): \(FileIO.errnoString())") }
            finish(fd, name, e, link: true)
        }
        // Folders last: their modes (a read-only folder) and times (changed by filling them).
        for path in paths.reversed() where index[path]!.kind == .directory {
            let (fd, name) = try parent(path)
            defer { close(fd) }
            finish(fd, name, index[path]!)
        }
    }

    /// Owner (as root), mode without set-id bits, and times of an entry written back, by descriptor.
    static func finish(_ fd: Int32, _ e: Entry, root: Bool) {
        if root { fchown(fd, e.uid, e.gid) }
        fchmod(fd, mode_t(e.mode & 0o1777))
        let t = timespec(tv_sec: Int(e.mtime / 1_000_000), tv_nsec: Int(e.mtime % 1_000_000) * 1000)
        var times = [t, t]
        futimens(fd, &times)
    }

    /// Copies stored content to `name` in `dirFd` (created, never replaced), checking its SHA-256; with
    /// `entry`, gives it the entry's owner, mode and times.
    public static func copyVerified(_ source: String, hash: String, to dirFd: Int32, _ name: String, display: String,
                             entry: Entry? = nil, root: Bool = false) throws(AgentboxError) {
        let input = open(source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw AgentboxError(stage: "fork", "the stored content of \(display) is missing (\(source)): \(FileIO.errnoString())") }
        defer { close(input) }
        let out = openat(dirFd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw AgentboxError(stage: "fork", "cannot create \(display): \(FileIO.errnoString())") }
        defer { close(out) }
        guard let ctx = ab_sha256_new() else { throw AgentboxError(stage: "fork", "SHA-256 is not available: \(unavailable ?? "?")") }
        var st = stat()
        let size = fstat(input, &st) == 0 ? Int(st.st_size) : 0
        var buf = [UInt8](repeating: 0, count: max(4096, min(1 << 20, size + 1)))  // not 1 MiB zeroed per small file
        while true {
            let n = buf.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { ab_sha256_free(ctx); throw AgentboxError(stage: "fork", "reading \(source): \(FileIO.errnoString())") }
            if n == 0 { break }
            _ = buf.withUnsafeBytes { ab_sha256_update(ctx, $0.baseAddress!, n) }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(out, $0.baseAddress! + off, n - off) }
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else { ab_sha256_free(ctx); throw AgentboxError(stage: "fork", "writing \(display): \(FileIO.errnoString())") }
                off += w
            }
        }
        var digest = [UInt8](repeating: 0, count: 32)
        guard ab_sha256_final(ctx, &digest) == 0, hex(digest) == hash else {
            unlinkat(dirFd, name, 0)
            throw AgentboxError(stage: "fork", "the stored content of \(display) does not match its checkpoint (\(source) is damaged)")
        }
        if let entry { finish(out, entry, root: root) }
    }
}

extension WorkspaceCheckpoints.Entry {
    init?(json e: JSON) {
        guard let k = e["t"]?.stringValue.flatMap(WorkspaceCheckpoints.Kind.init(rawValue:)) else { return nil }
        // A record from an imported journal is not trusted to hold numbers that fit.
        func n(_ key: String) -> Int64 {
            guard let d = e[key]?.numberValue, d.isFinite, abs(d) < 9e18 else { return 0 }
            return Int64(d)
        }
        self.init(kind: k, mode: UInt32(truncatingIfNeeded: n("m")), size: n("s"), uid: UInt32(truncatingIfNeeded: n("u")),
                  gid: UInt32(truncatingIfNeeded: n("g")), mtime: n("mt"), ctime: n("ct"), inode: UInt64(truncatingIfNeeded: n("i")),
                  hash: e["h"]?.stringValue ?? "", target: e["l"]?.stringValue ?? "")
    }

    func json(path: String) -> JSON {
        var f: [(String, JSON)] = [("p", WorkspaceCheckpoints.encodePath(path)), ("t", .string(kind.rawValue)), ("m", .number(Double(mode)))]
        switch kind {
        case .file: f += [("s", .number(Double(size))), ("h", .string(hash))]
        case .link: f.append(("l", .string(target)))
        case .directory: break
        }
        f += [("u", .number(Double(uid))), ("g", .number(Double(gid))), ("mt", .number(Double(mtime))), ("ct", .number(Double(ctime))),
              ("i", .number(Double(inode)))]
        return .object(f)
    }
}

/// The paths inotify names between two checkpoints: a watch on every folder of the workspace (added
/// through /proc/self/fd of the folder the walk opened without following a symlink). inotify works on
/// inodes, so it sees the sandbox's writes through its bind mount. Events are hints: each named path is
/// looked at again with the same care as in a walk. When the queue overflows or a watch cannot be added
/// (the user's watch limit), `lost` says the next checkpoint must walk everything.
final class ChangeTracker {
    static let mask: UInt32 = UInt32(IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF) | UInt32(IN_ONLYDIR) | UInt32(IN_EXCL_UNLINK)
    let fd: Int32
    var paths: [Int32: String] = [:]
    var watches: [String: Int32] = [:]
    private(set) var lost = false

    init?() {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    /// Watches one run may hold: a tenth of the user's limit (every root process shares it), at most
    /// 16384; past it, checkpoints walk the whole workspace.
    static let maxWatches: Int = {
        let limit = Int(FileIO.readSmall("/proc/sys/fs/inotify/max_user_watches")?.trimmingSpaces() ?? "") ?? 8192
        return max(64, min(16384, limit / 10))
    }()

    func watch(_ dirFd: Int32, _ path: String) {
        if watches[path] == nil && watches.count >= ChangeTracker.maxWatches { lost = true; return }
        let wd = inotify_add_watch(fd, "/proc/self/fd/\(dirFd)", ChangeTracker.mask)
        guard wd >= 0 else { lost = true; return }
        if let old = paths[wd], old != path { watches[old] = nil }  // the same folder under a new name
        paths[wd] = path
        watches[path] = wd
    }

    func unwatch(under prefix: String) {
        for (path, wd) in watches where path == prefix || path.hasPrefix(prefix + "/") {
            inotify_rm_watch(fd, wd)
            watches[path] = nil
            paths[wd] = nil
        }
    }

    /// The paths named since the last call (a folder's own events name the folder).
    func drain() -> Set<String> {
        var dirty: Set<String> = []
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            var off = 0
            buf.withUnsafeBytes { raw in
                while off + 16 <= n {
                    let wd = raw.loadUnaligned(fromByteOffset: off, as: Int32.self)
                    let mask = raw.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self)
                    let len = Int(raw.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self))
                    let nameBytes = UnsafeRawBufferPointer(rebasing: raw[(off + 16)..<min(n, off + 16 + len)])
                    off += 16 + len
                    if mask & UInt32(IN_Q_OVERFLOW) != 0 { lost = true; continue }
                    if mask & UInt32(IN_IGNORED) != 0 {
                        if let p = paths.removeValue(forKey: wd), watches[p] == wd { watches[p] = nil }
                        continue
                    }
                    guard let base = paths[wd] else { continue }
                    let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                    if name.isEmpty {
                        if !base.isEmpty { dirty.insert(base) }
                    } else {
                        dirty.insert(base.isEmpty ? name : base + "/" + name)
                    }
                }
            }
        }
        return dirty
    }
}
