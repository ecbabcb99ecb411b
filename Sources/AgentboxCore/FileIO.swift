#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Minimal file helpers without Foundation (used by the init too).
public enum FileIO {
    /// Reads a whole file; throws with the path and the OS reason.
    public static func read(_ path: String, limit: Int = 64 << 20) throws(AgentboxError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw AgentboxError(stage: "read \(path)", errnoString()) }
        defer { close(fd) }
        var st = stat()
        var out: [UInt8] = []
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0 {
            // A regular file: one buffer of its size, filled by as few reads as the kernel allows.
            let size = Int(st.st_size)
            if size > limit { throw AgentboxError(stage: "read \(path)", "file is larger than \(limit) bytes") }
            var filled = 0
            var readError: Int32 = 0
            out = [UInt8](unsafeUninitializedCapacity: size) { buf, count in
                while filled < size {
                    let n = Glibc.read(fd, buf.baseAddress! + filled, size - filled)
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 { readError = errno }
                    if n <= 0 { break }
                    filled += n
                }
                count = filled
            }
            if readError != 0 { throw AgentboxError(stage: "read \(path)", errnoString(readError)) }
            if filled < size { return out }  // the file shrank while we read it
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AgentboxError(stage: "read \(path)", errnoString())
            }
            if n == 0 { break }
            out.append(contentsOf: buffer[0..<n])
            if out.count > limit { throw AgentboxError(stage: "read \(path)", "file is larger than \(limit) bytes") }
        }
        return out
    }

    /// `mkdir -p` with private (0700) folders for what it creates. Throws naming the folder it could not create.
    public static func makeDirectories(_ path: String) throws(AgentboxError) {
        if isDirectory(path) { return }
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) < 0 && errno != EEXIST {
                throw AgentboxError(stage: "create \(current)", errnoString())
            }
        }
    }

    /// `rm -r` of a folder agentbox made, never following a symlink (a link is removed, not its
    /// target). Returns the bytes freed (regular files' sizes).
    @discardableResult
    public static func removeTree(_ path: String) throws(AgentboxError) -> UInt64 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "remove \(path)", errnoString()) }
        let freed = try removeContents(fd, path)
        guard rmdir(path) == 0 else { throw AgentboxError(stage: "remove \(path)", errnoString()) }
        return freed
    }

    /// Empties a folder (not following symlinks), keeping the folder.
    public static func removeContents(of path: String) throws(AgentboxError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "remove \(path)", errnoString()) }
        _ = try removeContents(fd, path)
    }

    /// Removes everything in the open folder `fd` (closed here).
    static func removeContents(_ fd: Int32, _ path: String) throws(AgentboxError) -> UInt64 {
        guard let dir = fdopendir(fd) else {
            close(fd)
            throw AgentboxError(stage: "remove \(path)", errnoString())
        }
        defer { closedir(dir) }
        var freed: UInt64 = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw AgentboxError(stage: "remove \(path)/\(name)", errnoString()) }
            if st.st_mode & S_IFMT == S_IFDIR {
                let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard sub >= 0 else { throw AgentboxError(stage: "remove \(path)/\(name)", errnoString()) }
                freed += try removeContents(sub, path + "/" + name)
                guard unlinkat(fd, name, AT_REMOVEDIR) == 0 else { throw AgentboxError(stage: "remove \(path)/\(name)", errnoString()) }
            } else {
                // A file with other names (a fork's stored contents are hard links) frees nothing yet.
                if st.st_mode & S_IFMT == S_IFREG && st.st_nlink == 1 { freed += UInt64(st.st_size) }
                guard unlinkat(fd, name, 0) == 0 else { throw AgentboxError(stage: "remove \(path)/\(name)", errnoString()) }
            }
        }
        return freed
    }

    /// Makes a tree unpacked from a file someone else wrote as harmless as a sandbox could leave it: no
    /// set-id bits, no device nodes (tar run by root restores both). Symlinks are not followed.
    /// Returns what it changed, as paths relative to `path`.
    @discardableResult
    public static func defang(_ path: String) throws(AgentboxError) -> [String] {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw AgentboxError(stage: "check \(path)", errnoString()) }
        var changed: [String] = []
        try defang(fd, "", &changed)
        return changed
    }

    static func defang(_ fd: Int32, _ prefix: String, _ changed: inout [String]) throws(AgentboxError) {
        guard let dir = fdopendir(fd) else {
            close(fd)
            throw AgentboxError(stage: "check \(prefix)", errnoString())
        }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw AgentboxError(stage: "check \(prefix)\(name)", errnoString()) }
            switch st.st_mode & S_IFMT {
            case S_IFCHR, S_IFBLK:
                guard unlinkat(fd, name, 0) == 0 else { throw AgentboxError(stage: "remove \(prefix)\(name)", errnoString()) }
                changed.append(prefix + name)
            case S_IFREG, S_IFDIR:
                if st.st_mode & (S_ISUID | S_ISGID) != 0 {
                    guard fchmodat(fd, name, st.st_mode & 0o1777, 0) == 0 else { throw AgentboxError(stage: "chmod \(prefix)\(name)", errnoString()) }
                    changed.append(prefix + name)
                }
                if st.st_mode & S_IFMT == S_IFDIR {
                    let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    guard sub >= 0 else { throw AgentboxError(stage: "check \(prefix)\(name)", errnoString()) }
                    try defang(sub, prefix + name + "/", &changed)
                }
            default: break
            }
        }
    }

    public static func readString(_ path: String) throws(AgentboxError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Reads a small file (procfs, sysfs, cgroupfs) or returns nil.
    public static func readSmall(_ path: String) -> String? {
        guard let bytes = try? read(path, limit: 1 << 20) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes a string to an existing file (procfs, cgroupfs) in one write.
    public static func write(_ path: String, _ text: String) throws(AgentboxError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw AgentboxError(stage: "write \(path)", errnoString()) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n == bytes.count { return }
            if n < 0 && errno == EINTR { continue }
            throw AgentboxError(stage: "write \(path)", n < 0 ? errnoString() : "short write")
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Creates `path` (which must not exist, mode 0600) with `bytes`, fsync'ed.
    public static func writeNew(_ path: String, _ bytes: [UInt8]) throws(AgentboxError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentboxError(stage: "create \(path)", errnoString()) }
        defer { close(fd) }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw AgentboxError(stage: "write \(path)", errnoString()) }
            off += n
        }
        guard fsync(fd) == 0 else { throw AgentboxError(stage: "fsync \(path)", errnoString()) }
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func errnoString(_ code: Int32 = errno) -> String {
        "\(String(cString: strerror(code))) (\(errnoName(code)))"
    }

    /// The symbolic name of common errno values, for messages like `mount /proc: EPERM`.
    public static func errnoName(_ code: Int32) -> String {
        switch code {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case EACCES: return "EACCES"
        case EEXIST: return "EEXIST"
        case EINVAL: return "EINVAL"
        case ENOSYS: return "ENOSYS"
        case ENOSPC: return "ENOSPC"
        case EBUSY: return "EBUSY"
        case ENOTDIR: return "ENOTDIR"
        case EROFS: return "EROFS"
        case ENOMEM: return "ENOMEM"
        case EAGAIN: return "EAGAIN"
        case ENOEXEC: return "ENOEXEC"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case ELOOP: return "ELOOP"
        case ENAMETOOLONG: return "ENAMETOOLONG"
        case EIO: return "EIO"
        case EBADF: return "EBADF"
        case ESRCH: return "ESRCH"
        default: return "errno \(code)"
        }
    }
}
