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

    public let root: String
    public let objects: String
    /// Names (any folder or file with this name) and workspace-relative paths left out.
    public let exclude: [String]
    public private(set) var index: [String: Entry] = [:]
    var madeDirs = Set<String>()
    var racy: Int64 = 0

    public init(workspace: String, runDir: String, exclude: [String]) {
        root = workspace
        objects = runDir + "/objects"
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

    public func restore(from records: [JournalRecord]) { index = WorkspaceCheckpoints.index(from: records) }

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

    /// Scans the workspace, stores what changed, and returns the `checkpoint` record for `step`.
    public func take(step: Int) throws(AgentboxError) -> Taken {
        let started = Clock.monotonic()
        // Entries changed within 50 ms of the scan are read again next time: a change in the same clock
        // tick would leave their times as they are.
        racy = Int64((Clock.wall() - 0.05) * 1_000_000)
        var now: [String: Entry] = [:]
        now.reserveCapacity(index.count + 16)
        var changed: [(String, Entry)] = []
        var skipped: [String] = []
        var stored: Int64 = 0
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "checkpoint", "cannot open the workspace \(root): \(FileIO.errnoString())") }
        defer { close(fd) }
        try walk(fd, prefix: "", depth: 0, now: &now, changed: &changed, skipped: &skipped, stored: &stored)
        let removed = index.keys.filter { now[$0] == nil }.sorted()
        index = now
        changed.sort { $0.0 < $1.0 }
        var fields: [(String, JSON)] = [("step", .number(Double(step))), ("files", .number(Double(now.count)))]
        if !changed.isEmpty { fields.append(("changed", .array(changed.map { $0.1.json(path: $0.0) }))) }
        if !removed.isEmpty { fields.append(("removed", .array(removed.map { WorkspaceCheckpoints.encodePath($0) }))) }
        if stored > 0 { fields.append(("stored_bytes", .number(Double(stored)))) }
        if !skipped.isEmpty { fields.append(("skipped", .array(skipped.map { .string($0) }))) }
        fields.append(("ms", .number(((Clock.monotonic() - started) * 10000).rounded() / 10)))
        return Taken(record: .object(fields), changed: changed.count + removed.count, storedBytes: stored, skipped: skipped)
    }

    func excluded(_ name: String, _ path: String) -> Bool {
        exclude.contains { $0 == name || $0 == path }
    }

    func walk(_ dirFd: Int32, prefix: String, depth: Int, now: inout [String: Entry], changed: inout [(String, Entry)],
              skipped: inout [String], stored: inout Int64) throws(AgentboxError) {
        let listFd = dup(dirFd)
        guard listFd >= 0, let d = fdopendir(listFd) else {
            if listFd >= 0 { close(listFd) }
            skipped.append(prefix.isEmpty ? "." : prefix)
            return
        }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let path = prefix.isEmpty ? name : prefix + "/" + name
            // A name that is not UTF-8 would not come back the same from a JSON string.
            let raw = withUnsafeBytes(of: e.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if Array(name.utf8) != raw || name.contains("\n") { skipped.append(path); continue }
            if excluded(name, path) { continue }
            var st = stat()
            guard fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }  // gone meanwhile
            let kind: Kind
            switch st.st_mode & S_IFMT {
            case S_IFREG: kind = .file
            case S_IFDIR: kind = .directory
            case S_IFLNK: kind = .link
            default: continue  // FIFOs, sockets, devices: not workspace content
            }
            var entry = Entry(kind: kind, mode: UInt32(st.st_mode & 0o7777), size: Int64(st.st_size), uid: st.st_uid, gid: st.st_gid,
                              mtime: Int64(st.st_mtim.tv_sec) * 1_000_000 + Int64(st.st_mtim.tv_nsec / 1000),
                              ctime: Int64(st.st_ctim.tv_sec) * 1_000_000 + Int64(st.st_ctim.tv_nsec / 1000), inode: UInt64(st.st_ino))
            if kind == .directory { entry.size = 0 }
            if let old = index[path], old.sameAttributes(entry) {
                entry.hash = old.hash
                entry.target = old.target
                now[path] = entry
            } else {
                switch kind {
                case .directory: break
                case .link:
                    var buf = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
                    let n = readlinkat(dirFd, name, &buf, buf.count - 1)
                    guard n >= 0, let target = String(validating: buf[0..<n], as: UTF8.self) else { skipped.append(path); continue }
                    entry.target = target
                case .file:
                    guard let (hash, stable, new) = try store(dirFd, name, entry) else { skipped.append(path); continue }
                    entry.hash = hash
                    if new { stored += entry.size }
                    // Changed while it was read: recorded as read, and read again next time.
                    if !stable { entry.ctime = -1 }
                }
                if entry.ctime >= racy { entry.ctime = -1 }
                now[path] = entry
                // Read again but the same (a racy entry, a chown to the same owner): nothing to record.
                let same = index[path].map { old in
                    old.kind == entry.kind && old.mode == entry.mode && old.size == entry.size && old.uid == entry.uid
                        && old.gid == entry.gid && old.mtime == entry.mtime && old.hash == entry.hash && old.target == entry.target
                } ?? false
                if !same { changed.append((path, entry)) }
            }
            if kind == .directory {
                if depth + 1 >= WorkspaceCheckpoints.maxDepth { skipped.append(path + "/"); continue }
                let sub = openat(dirFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard sub >= 0 else { skipped.append(path + "/"); continue }
                defer { close(sub) }
                try walk(sub, prefix: path, depth: depth + 1, now: &now, changed: &changed, skipped: &skipped, stored: &stored)
            }
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
    /// it could not be read as that regular file, or the journal's disk has no room for it.
    func store(_ dirFd: Int32, _ name: String, _ entry: Entry) throws(AgentboxError) -> (String, Bool, Bool)? {
        let fd = openat(dirFd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_ino) == entry.inode else { return nil }
        if DiskFloor.reached(objects.isEmpty ? "/" : (FileIO.isDirectory(objects) ? objects : root), adding: UInt64(max(0, st.st_size))) { return nil }
        if madeDirs.isEmpty { try makeDir(objects) }
        guard let ctx = ab_sha256_new() else {
            throw AgentboxError(stage: "checkpoint", "SHA-256 is not available: \(WorkspaceCheckpoints.unavailable ?? "?")")
        }
        let tmp = objects + "/.tmp-\(getpid())"
        unlink(tmp)
        let out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else {
            ab_sha256_free(ctx)
            throw AgentboxError(stage: "checkpoint", "cannot create \(tmp): \(FileIO.errnoString())")
        }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var failed: Int32 = 0
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { failed = errno; break }
            if n == 0 { break }
            _ = buf.withUnsafeBytes { ab_sha256_update(ctx, $0.baseAddress!, n) }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(out, $0.baseAddress! + off, n - off) }
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { failed = w < 0 ? errno : EIO; break }
                off += w
            }
            if failed != 0 { break }
        }
        close(out)
        var digest = [UInt8](repeating: 0, count: 32)
        let ok = ab_sha256_final(ctx, &digest) == 0
        guard failed == 0, ok else {
            unlink(tmp)
            if failed == ENOSPC { return nil }
            throw AgentboxError(stage: "checkpoint", "storing \(root)/... \(name) failed: \(FileIO.errnoString(failed == 0 ? EIO : failed))")
        }
        let hash = WorkspaceCheckpoints.hex(digest)
        let path = objectPath(hash)
        let sub = String(path[..<path.lastIndex(of: "/")!])
        if !madeDirs.contains(sub) { try makeDir(sub) }
        var new = false
        if FileIO.exists(path) { unlink(tmp) } else if rename(tmp, path) == 0 { new = true } else {
            let e = FileIO.errnoString()
            unlink(tmp)
            throw AgentboxError(stage: "checkpoint", "cannot store \(path): \(e)")
        }
        var after = stat()
        let stable = fstat(fd, &after) == 0 && after.st_size == st.st_size && after.st_mtim.tv_sec == st.st_mtim.tv_sec
            && after.st_mtim.tv_nsec == st.st_mtim.tv_nsec && after.st_ctim.tv_nsec == st.st_ctim.tv_nsec
        return (hash, stable, new)
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
        func finish(_ fd: Int32, _ name: String, _ e: Entry, link: Bool = false) {
            if root { fchownat(fd, name, e.uid, e.gid, AT_SYMLINK_NOFOLLOW) }
            if !link { fchmodat(fd, name, mode_t(e.mode & 0o1777), 0) }
            let t = timespec(tv_sec: Int(e.mtime / 1_000_000), tv_nsec: Int(e.mtime % 1_000_000) * 1000)
            var times = [t, t]
            utimensat(fd, name, &times, AT_SYMLINK_NOFOLLOW)
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
            try copyVerified(source, hash: e.hash, to: fd, name, display: dir + "/" + path)
            finish(fd, name, e)
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

    static func copyVerified(_ source: String, hash: String, to dirFd: Int32, _ name: String, display: String) throws(AgentboxError) {
        let input = open(source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw AgentboxError(stage: "fork", "the stored content of \(display) is missing (\(source)): \(FileIO.errnoString())") }
        defer { close(input) }
        let out = openat(dirFd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw AgentboxError(stage: "fork", "cannot create \(display): \(FileIO.errnoString())") }
        defer { close(out) }
        guard let ctx = ab_sha256_new() else { throw AgentboxError(stage: "fork", "SHA-256 is not available: \(unavailable ?? "?")") }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
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
            throw AgentboxError(stage: "fork", "the stored content of \(display) does not match its checkpoint (\(source) is damaged)")
        }
    }
}

extension WorkspaceCheckpoints.Entry {
    init?(json e: JSON) {
        guard let k = e["t"]?.stringValue.flatMap(WorkspaceCheckpoints.Kind.init(rawValue:)) else { return nil }
        func n(_ key: String) -> Int64 { e[key]?.numberValue.map { Int64($0) } ?? 0 }
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
