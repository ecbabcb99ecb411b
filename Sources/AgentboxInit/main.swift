// agentbox-init: PID 1 of a sandbox. Started by the supervisor's clone trampoline in fresh namespaces
// with the control channel on fd 3 and idmapped mount fds on 4, 5, ... It is single-threaded: it builds
// the filesystem, confines itself (caps, no_new_privs, Landlock, seccomp last), starts the command,
// reaps every process, and reports the command's end over the channel. See docs/architecture.md.
import AgentboxCore
import CAgentboxShim
import CCap
import Glibc

let channel: Int32 = 3

func send(_ message: InitMessage, fds: [Int32] = []) {
    let bytes = message.encode()
    _ = bytes.withUnsafeBytes { buf in fds.withUnsafeBufferPointer { ab_send_with_fds(channel, buf.baseAddress!, buf.count, $0.baseAddress, Int32($0.count)) } }
}

/// The sockets the supervisor serves the sandbox on (the proxy, agentbox's own services), listening
/// on 127.0.0.1 in the sandbox's network namespace: made here, where only this init can make them,
/// and handed over with `ready`. Nothing inside can take the ports first: no process of the sandbox
/// exists yet.
func listen(_ ports: [UInt16]) throws(SetupFailure) -> [Int32] {
    var fds: [Int32] = []
    for port in ports {
        let fd = ab_listen_loopback(port)
        if fd < 0 {
            let e = errno
            for f in fds { close(f) }
            throw SetupFailure(stage: "listen on 127.0.0.1:\(port)", code: e, detail: "")
        }
        fds.append(fd)
    }
    return fds
}

/// AGENTBOX_TIMING: the init's own phases, each reported to the supervisor as it ends (it prints them
/// with its own). Off, a mark costs one branch.
struct PhaseClock {
    let enabled: Bool
    var last: Double

    init(enabled: Bool, since start: Double) {
        self.enabled = enabled
        last = start
    }

    mutating func mark(_ phase: String) {
        guard enabled else { return }
        let now = Clock.monotonic()
        send(.timing(phase: phase, micros: UInt32(clamping: Int(((now - last) * 1_000_000).rounded()))))
        last = now
    }
}

/// A setup step that failed: reported to the supervisor (which prints it), then exit 125.
struct SetupFailure: Error {
    let stage: String
    let code: Int32
    let detail: String
}

func check(_ result: Int32, _ stage: @autoclosure () -> String) throws(SetupFailure) {
    if result < 0 { throw SetupFailure(stage: stage(), code: errno, detail: "") }
}

func mkdirs(_ path: String, mode: mode_t = 0o755) throws(SetupFailure) {
    var current = ""
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, mode) < 0 && errno != EEXIST { throw SetupFailure(stage: "mkdir \(current)", code: errno, detail: "") }
    }
}

func touch(_ path: String) throws(SetupFailure) {
    let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
    if !parent.isEmpty { try mkdirs(parent) }
    // Read-only: the file may be a running executable (agentbox's own binary, protected read-only).
    let fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0o644)
    if fd < 0 && errno != EEXIST && errno != EISDIR { throw SetupFailure(stage: "create \(path)", code: errno, detail: "") }
    if fd >= 0 { close(fd) }
}

func setReadOnly(_ path: String, recursive: Bool) throws(SetupFailure) {
    let flags: UInt32 = recursive ? AB_AT_RECURSIVE : 0
    if ab_mount_setattr(AT_FDCWD, path, flags, AB_MOUNT_ATTR_RDONLY | AB_MOUNT_ATTR_NOSUID | AB_MOUNT_ATTR_NODEV, 0, 0, -1) == 0 {
        return
    }
    // Kernels before 5.12: remount the bind, keeping the flags the kernel locks in a user namespace.
    var st = statvfs()
    let locked = statvfs(path, &st) == 0 ? UInt(st.f_flag) & UInt(MS_NOEXEC | MS_NOSUID | MS_NODEV) : 0
    try check(mount("", path, nil, UInt(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV) | locked, nil),
              "make \(path) read-only")
}

/// Writable binds: nosuid and nodev on the bind and every mount below it (what the host had there may
/// lack them). The file-mode guard keeps setuid bits from being written at all; this keeps any that are
/// already there from working inside.
func setNoSuidNoDev(_ path: String) throws(SetupFailure) {
    if ab_mount_setattr(AT_FDCWD, path, AB_AT_RECURSIVE, AB_MOUNT_ATTR_NOSUID | AB_MOUNT_ATTR_NODEV, 0, 0, -1) == 0 { return }
    var st = statvfs()
    let locked = statvfs(path, &st) == 0 ? UInt(st.f_flag) & UInt(MS_NOEXEC | MS_RDONLY) : 0
    try check(mount("", path, nil, UInt(MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV) | locked, nil), "make \(path) nosuid,nodev")
}

/// `path` opened (O_PATH) with no symlink anywhere on the way (plain O_PATH before Linux 5.6); -1 and errno.
func openNoSymlinks(_ path: String) -> Int32 {
    let fd = ab_open_path_nofollow(AT_FDCWD, path)
    return fd < 0 && errno == ENOSYS ? open(path, AB_O_PATH | O_CLOEXEC) : fd
}

/// Opens the mount point `path` under `root` one component at a time, with no symlink on the way.
/// What is missing is created there (a folder, or an empty file for a file bind), but only in the
/// sandbox's own filesystems (`ours`): a missing component inside a host bind means the host changed
/// under us (the supervisor saw it exist), and creating it would write where a swap points.
func mountPoint(root: String, _ path: String, file: Bool, ours: Set<UInt64>) throws(SetupFailure) -> Int32 {
    var fd = openNoSymlinks(root)
    try check(fd, "open the new root")
    let parts = path.split(separator: "/")
    for (i, part) in parts.enumerated() {
        let name = String(part)
        var next = openComponent(fd, name)
        if next < 0 && errno == ENOENT {
            let parentDevice = identity(fd).device
            guard ours.contains(parentDevice) else {
                close(fd)
                throw SetupFailure(stage: "mount \(path)", code: ENOENT, detail: "it vanished while the sandbox was being built (renamed?); try again")
            }
            let last = i == parts.count - 1
            let rc: Int32
            if last && file {
                let created = openat(fd, name, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
                rc = created
                if created >= 0 { close(created) }
            } else {
                rc = mkdirat(fd, name, 0o755)
            }
            if rc < 0 && errno != EEXIST { let e = errno; close(fd); throw SetupFailure(stage: "create \(path)", code: e, detail: "") }
            next = openComponent(fd, name)
        }
        let e = errno
        close(fd)
        if next < 0 { throw SetupFailure(stage: "open the mount point \(path)", code: e, detail: e == ELOOP ? "a symlink on the way" : "") }
        fd = next
    }
    return fd
}

/// One path component under `dir`, not a symlink (before Linux 5.6: O_NOFOLLOW, then checked).
func openComponent(_ dir: Int32, _ name: String) -> Int32 {
    let fd = ab_open_path_nofollow(dir, name)
    guard fd < 0 && errno == ENOSYS else { return fd }
    let plain = openat(dir, name, AB_O_PATH | O_NOFOLLOW | O_CLOEXEC)
    var st = stat()
    if plain >= 0 && fstat(plain, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
        close(plain)
        errno = ELOOP
        return -1
    }
    return plain
}

func identity(_ fd: Int32) -> FileIdentity {
    var st = stat()
    guard fstat(fd, &st) == 0 else { return FileIdentity(device: 0, inode: 0) }
    return FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
}

/// Builds the new root. Like bubblewrap: a staging tmpfs on /tmp becomes the root first, with the host's
/// root at /oldroot (so any host path, /tmp's included, can be a bind source) and the final root at
/// /newroot; after the binds the host is detached and /newroot becomes /.
func buildFilesystem(_ spec: SetupSpec, _ clock: inout PhaseClock) throws(SetupFailure) {
    try check(mount("", "/", nil, UInt(MS_REC | MS_PRIVATE), nil), "make mounts private")
    try check(mount("agentbox-staging", "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755,size=64k"), "mount the staging tmpfs")
    try mkdirs("/tmp/oldroot")
    try mkdirs("/tmp/newroot")
    try check(mount("agentbox-root", "/tmp/newroot", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755,size=8m"), "mount the new root (tmpfs)")
    try check(chdir("/tmp"), "chdir to the staging root")
    try check(ab_pivot_root(".", "oldroot"), "pivot_root to the staging root")
    try check(chdir("/"), "chdir /")
    let host = "/oldroot"
    let root = "/newroot"

    // /proc: a fresh instance for this PID namespace.
    try mkdirs(root + "/proc")
    try check(mount("proc", root + "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil), "mount /proc")

    // /dev: a small tmpfs with the host's harmless device nodes bound in, its own devpts and shm.
    try mkdirs(root + "/dev")
    try check(mount("agentbox-dev", root + "/dev", "tmpfs", UInt(MS_NOSUID | MS_NOEXEC), "mode=0755,size=64k"), "mount /dev")
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        try touch(root + "/dev/" + node)
        try check(mount(host + "/dev/" + node, root + "/dev/" + node, nil, UInt(MS_BIND), nil), "bind /dev/\(node)")
    }
    try mkdirs(root + "/dev/pts")
    try check(mount("devpts", root + "/dev/pts", "devpts", UInt(MS_NOSUID | MS_NOEXEC), "newinstance,ptmxmode=0666,mode=0620,max=\(SharedResourceBounds.ptys)"),
              "mount /dev/pts")
    try check(symlink("pts/ptmx", root + "/dev/ptmx"), "create /dev/ptmx")
    try mkdirs(root + "/dev/shm")
    try check(mount("agentbox-shm", root + "/dev/shm", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777,size=\(spec.tmpSize),nr_inodes=\(SharedResourceBounds.inodes(spec.tmpSize))"),
              "mount /dev/shm")
    for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                           ("stderr", "/proc/self/fd/2")] {
        try check(symlink(target, root + "/dev/" + name), "create /dev/\(name)")
    }

    clock.mark("mounts: /proc, /dev")
    // /tmp: private and size-capped.
    try mkdirs(root + "/tmp")
    try check(mount("agentbox-tmp", root + "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777,size=\(spec.tmpSize),nr_inodes=\(SharedResourceBounds.inodes(spec.tmpSize))"),
              "mount /tmp")

    // The profile's binds, parents first. Every source and target is opened with no symlink on the way
    // and checked against what the supervisor resolved (FileIdentity), and mounts are attached to those
    // descriptors, never to a path looked up again: a folder swapped meanwhile (another sandbox renaming
    // folders in a shared workspace) fails the setup instead of moving a bind or a hide elsewhere.
    let empty = "/empty"  // in the staging tmpfs: never visible inside
    try touch(empty)
    let ours = Set([root, root + "/tmp", root + "/dev", root + "/dev/shm"].compactMap { path -> UInt64? in
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_dev) : nil
    })
    for (i, m) in spec.mounts.enumerated() {
        let target = root + m.target
        let expected = i < spec.mountIdentities.count ? spec.mountIdentities[i] : FileIdentity(device: 0, inode: 0)
        if m.kind == .symlink {
            let parent = String(target[..<(target.lastIndex(of: "/") ?? target.startIndex)])
            try mkdirs(parent)
            try check(symlink(m.source, target), "symlink \(m.target) -> \(m.source)")
            continue
        }
        // The target: in one of the sandbox's own filesystems (created here), or the host's object.
        let file = m.kind == .hideFile || ((m.kind == .bindRO || m.kind == .bindRW) && !m.directory)
        let tgt = try mountPoint(root: root, m.target, file: file, ours: ours)
        defer { close(tgt) }
        let found = identity(tgt)
        if !ours.contains(found.device) && expected.device != 0 && found != expected {
            throw SetupFailure(stage: "mount \(m.target)", code: 0, detail: "it changed while the sandbox was being built (renamed?); try again")
        }
        if m.kind == .hideDir {
            try check(mount("agentbox-hidden", root + "/proc/self/fd/\(tgt)", "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY),
                            "mode=0555,size=4k"), "hide \(m.target)")
            continue
        }
        // A detached tree: the idmapped one the supervisor made, a clone of the source, of /empty, or
        // of the target itself (a pin); its flags are set before it is attached.
        let fdIndex = i < spec.mountFds.count ? spec.mountFds[i] : -1
        var tree: Int32
        switch m.kind {
        case .bindRO, .bindRW:
            guard fdIndex < 0 else {
                tree = dup(channel + 1 + fdIndex)
                break
            }
            let src = openNoSymlinks(host + m.source)
            try check(src, "open the bind source \(m.source)")
            defer { close(src) }
            if expected.device != 0 && identity(src) != expected {
                throw SetupFailure(stage: "bind \(m.source)", code: 0, detail: "it changed while the sandbox was being built (renamed?); try again")
            }
            tree = ab_open_tree(src, "", AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC | AB_AT_RECURSIVE | AB_AT_EMPTY_PATH)
        case .hideFile:
            tree = ab_open_tree(AT_FDCWD, empty, AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC)
        default:  // .pin
            tree = ab_open_tree(tgt, "", AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC | AB_AT_RECURSIVE | AB_AT_EMPTY_PATH)
        }
        try check(tree, "clone the mount for \(m.target)")
        defer { close(tree) }
        let readOnly = m.kind == .bindRO || m.kind == .hideFile
        let attrs = AB_MOUNT_ATTR_NOSUID | AB_MOUNT_ATTR_NODEV | (readOnly ? AB_MOUNT_ATTR_RDONLY : 0)
        let what = "make \(m.target) \(readOnly ? "read-only" : "nosuid,nodev")"
        let setattr = ab_mount_setattr(tree, "", AB_AT_EMPTY_PATH | AB_AT_RECURSIVE, attrs, 0, 0, -1)
        if setattr < 0 && errno != ENOSYS { try check(setattr, what) }
        try check(ab_move_mount(tree, "", tgt, "", AB_MOVE_MOUNT_F_EMPTY_PATH | AB_MOVE_MOUNT_T_EMPTY_PATH), "attach \(m.target)")
        if setattr < 0 {
            // Before Linux 5.12: remount the attached mount through its descriptor (not recursive).
            let path = root + "/proc/self/fd/\(tree)"
            var st = statvfs()
            let locked = statvfs(path, &st) == 0 ? UInt(st.f_flag) & UInt(MS_NOEXEC | MS_NOSUID | MS_NODEV | MS_RDONLY) : 0
            try check(mount("", path, nil, UInt(MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (readOnly ? MS_RDONLY : 0)) | locked, nil), what)
        }
    }
    clock.mark("mounts: binds")
    // The idmapped mount fds (4, 5, ...) are attached now; nothing else is open above the channel but
    // the signalfd, which must stay.
    for fd in spec.mountFds where fd >= 0 { close(channel + 1 + fd) }

    // Detach the host, then make the new root the root; the staging tmpfs goes with the old one.
    try check(umount2(host, Int32(MNT_DETACH)), "detach the host's root")
    try check(chdir(root), "chdir to the new root")
    try check(ab_pivot_root(".", "."), "pivot_root")
    try check(umount2(".", Int32(MNT_DETACH)), "detach the old root")
    try check(chdir("/"), "chdir /")
    // Everything outside the workspace, /tmp and /dev/shm is read-only, the root itself included.
    try setReadOnly("/dev", recursive: false)
    try setReadOnly("/", recursive: false)
    try check(chdir(spec.workdir), "chdir \(spec.workdir)")
    clock.mark("mounts: pivot")
}

/// Landlock: read and execute everywhere, writes only where the policy says. Returns the ABI in force
/// (0 when off or unavailable and not required).
func applyLandlock(_ spec: SetupSpec) throws(SetupFailure) -> Int32 {
    if spec.landlockMode == 0 { return 0 }
    let abi = ab_landlock_abi()
    if abi < 1 {
        if spec.landlockMode == 2 { throw SetupFailure(stage: "landlock", code: errno, detail: "the profile requires Landlock") }
        return 0
    }
    let all = ab_landlock_fs_rights(abi)
    let read = ab_landlock_fs_read_rights()
    let ruleset = ab_landlock_create_ruleset(all, abi >= 6 ? AB_LANDLOCK_SCOPE_ALL : 0)
    try check(ruleset, "landlock: create ruleset")
    defer { close(ruleset) }
    func allow(_ path: String, _ rights: UInt64) throws(SetupFailure) {
        let fd = open(path, AB_O_PATH | O_CLOEXEC)
        if fd < 0 { return }  // nothing there: nothing to allow
        defer { close(fd) }
        // A file (`--rw FILE`) takes only the rights of files: execute, write, read, truncate, ioctl.
        var st = stat()
        let fileRights: UInt64 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 14 | AB_LANDLOCK_ACCESS_FS_IOCTL_DEV
        let mask = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) != S_IFDIR ? all & fileRights : all
        try check(ab_landlock_add_path(ruleset, fd, rights & mask), "landlock: rule for \(path)")
    }
    try allow("/", read)
    // Devices: read/write the nodes (null, tty, pts), no creation.
    try allow("/dev", read | UInt64(1 << 1) | AB_LANDLOCK_ACCESS_FS_IOCTL_DEV | UInt64(1 << 14))
    try allow("/proc", read | UInt64(1 << 1))
    for path in spec.writablePaths { try allow(path, all) }
    try check(ab_landlock_restrict_self(ruleset), "landlock: restrict")
    return abi
}

/// Kernel resources that no cgroup counts: per-user counts (charged to the user who created the
/// sandbox's user namespace on the host, root included, as well as inside) and per-IPC-namespace
/// tables. Each gets a bound in this sandbox's own namespaces, so one sandbox cannot starve the host's
/// user or other sandboxes (docs/security.md, "Kernel resources outside cgroups"). Written while the
/// init is still root of its user namespace, into the fresh /proc of its own namespaces.
func boundSharedResources() throws(SetupFailure) {
    for (file, value) in SharedResourceBounds.sysctls {
        let fd = open("/proc/sys/" + file, O_WRONLY | O_CLOEXEC)
        if fd < 0 && errno == ENOENT { continue }  // an older kernel without this count
        // IPC tables belong to the IPC namespace's root, which a rootless sandbox does not map (their
        // memory is what bounds them, as every other allocation of a rootless sandbox).
        if fd < 0 && errno == EACCES && file.hasPrefix("kernel/") { continue }
        if fd < 0 { throw SetupFailure(stage: "bound /proc/sys/\(file)", code: errno, detail: "") }
        let text = Array("\(value)\n".utf8)
        let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let err = errno
        close(fd)
        if n != text.count { throw SetupFailure(stage: "bound /proc/sys/\(file)", code: n < 0 ? err : EIO, detail: "") }
    }
    // Per-user rlimits no cgroup replaces: never above what the host gave agentbox.
    for (resource, value) in SharedResourceBounds.rlimits {
        var current = rlimit()
        guard getrlimit(__rlimit_resource_t(UInt32(resource)), &current) == 0 else { continue }
        let bound = min(UInt64(current.rlim_max), value)
        try check(ab_set_rlimit(resource, bound, bound), "setrlimit \(resource)")
    }
}

func confine(_ spec: SetupSpec, _ clock: inout PhaseClock) throws(SetupFailure) -> Int32 {
    for (resource, value) in spec.rlimits {
        try check(ab_set_rlimit(resource, value, value), "setrlimit \(resource)")
    }
    if spec.dropGroups { try check(setgroups(0, nil), "setgroups") }
    try check(ab_setresgid(spec.gid), "setresgid")
    try check(ab_setresuid(spec.uid), "setresuid")
    try check(ab_drop_all_caps(), "drop capabilities")
    // Verify with libcap that nothing is left: a drop that silently failed must stop the sandbox.
    if let current = cap_get_proc(), let none = cap_init() {
        let differs = cap_compare(current, none)
        cap_free(UnsafeMutableRawPointer(current))
        cap_free(UnsafeMutableRawPointer(none))
        if differs != 0 { throw SetupFailure(stage: "drop capabilities", code: 0, detail: "capabilities remain after the drop") }
    }
    try check(ab_set_no_new_privs(), "no_new_privs")
    clock.mark("credentials")
    let abi = try applyLandlock(spec)
    clock.mark("landlock")
    for (i, program) in spec.seccompPrograms.enumerated() where !program.isEmpty {
        let rc = program.withUnsafeBytes { ab_seccomp_load($0.baseAddress!, $0.count) }
        try check(rc, i == 0 ? "load the file-mode guard (seccomp)" : "load the seccomp filter")
    }
    // Not dumpable: the command (same uid) cannot ptrace PID 1 or read its memory.
    _ = ab_set_dumpable(0)
    // A credential change clears the parent-death signal: arm it again (the supervisor's death must
    // kill the sandbox), then check that the supervisor is still there.
    try check(ab_set_pdeathsig(SIGKILL), "arm the parent-death signal")
    var pfd = pollfd(fd: channel, events: 0, revents: 0)
    if poll(&pfd, 1, 0) == 1 && pfd.revents & Int16(POLLHUP | POLLERR) != 0 { exit(125) }
    clock.mark("seccomp")
    return abi
}

/// Starts the command in a new session (no controlling terminal to inject keystrokes into); returns
/// its pid, or reports why it could not be executed.
func startCommand(_ spec: SetupSpec) -> pid_t? {
    var cArgs: [UnsafeMutablePointer<CChar>?] = spec.argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    var pid: pid_t = 0
    let rc = ab_spawn_command(cArgs[0]!, &cArgs, &pid)
    if rc != 0 {
        send(.execFailed(errno: rc, path: spec.argv[0]))
        return nil
    }
    send(.started(pid: pid))
    return pid
}

func main() -> Int32 {
    let mainStarted = Clock.monotonic()
    // The channel must never reach the command: it could forge reports to the supervisor.
    _ = fcntl(channel, F_SETFD, FD_CLOEXEC)
    // SOCK_SEQPACKET: peek with MSG_TRUNC for the packet's size, then read it whole.
    var probe: UInt8 = 0
    var size: Int
    repeat { size = recv(channel, &probe, 1, Int32(MSG_PEEK | MSG_TRUNC)) } while size < 0 && errno == EINTR
    guard size > 0, size <= 16 << 20 else { return 125 }  // the supervisor went away before sending the spec
    var buffer = [UInt8](repeating: 0, count: size)
    let n = buffer.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, 0) }
    guard n == size else { return 125 }
    let spec: SetupSpec
    do { spec = try SetupSpec.decode(Array(buffer[0..<n])) } catch {
        send(.failed(stage: "read the setup", errno: 0, detail: error.description))
        return 125
    }
    buffer = []
    var clock = PhaseClock(enabled: spec.timing, since: mainStarted)
    clock.mark("read the setup")
    // SIGCHLD and the like are read from a signalfd; nothing else reaches PID 1 but SIGKILL.
    var mask = sigset_t()
    sigemptyset(&mask)
    sigaddset(&mask, SIGCHLD)
    sigprocmask(SIG_BLOCK, &mask, nil)
    let sigfd = ab_signalfd(&mask)
    let landlockABI: Int32
    do {
        try check(sigfd, "signalfd")
        try check(ab_unshare(AB_CLONE_NEWCGROUP), "enter a cgroup namespace")
        try buildFilesystem(spec, &clock)
        try check(sethostname(spec.hostname, spec.hostname.utf8.count), "sethostname")
        try check(ab_loopback_up(), "bring loopback up")
        let listeners = try listen(spec.listenPorts)
        if !listeners.isEmpty {
            send(.listening(count: Int32(listeners.count)), fds: listeners)
            for fd in listeners { close(fd) }
        }
        clock.mark("network")
        try boundSharedResources()
        clock.mark("kernel bounds")
        landlockABI = try confine(spec, &clock)
    } catch {
        send(.failed(stage: error.stage, errno: error.code, detail: error.detail))
        return 125
    }
    send(.ready(landlockABI: landlockABI))
    if spec.agent {
        let code = AgentLoop(spec: spec, sigfd: sigfd).run()
        send(.exited(status: code << 8))
        return code
    }
    guard let child = startCommand(spec) else { return 127 }

    // Reap everything; forward signals the supervisor asks for to the command's process group.
    var fds = [pollfd(fd: channel, events: Int16(POLLIN), revents: 0), pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0)]
    var message = [UInt8](repeating: 0, count: 256)
    while true {
        let rc = poll(&fds, 2, -1)
        if rc < 0 { if errno == EINTR { continue }; return 125 }
        if fds[1].revents & Int16(POLLNVAL | POLLERR) != 0 {
            send(.failed(stage: "signalfd", errno: EBADF, detail: "the init lost its signal fd"))
            return 125
        }
        if fds[1].revents != 0 {
            while ab_signalfd_read(sigfd) > 0 {}
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, WNOHANG)
                if pid <= 0 { break }
                if pid == child {
                    send(.exited(status: status))
                    // Leaving kills every other process of this PID namespace.
                    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
                }
            }
        }
        if fds[0].revents & Int16(POLLHUP | POLLERR) != 0 { return 125 }  // the supervisor is gone
        if fds[0].revents & Int16(POLLIN) != 0 {
            let m = message.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, 0) }
            if m <= 0 { return 125 }
            if var r = try? WireReader(Array(message[0..<m])), r.tag == .signal, let sig = try? r.i32() {
                if kill(-child, sig) < 0 { kill(child, sig) }
            }
        }
    }
}

// The init's start is on every sandbox's path: argv[0]'s last component is compared as C bytes (the
// Swift array of CommandLine.arguments cost ~0.3 ms of type metadata set-up in this static binary).
exit(Client.invoked(argv0: CommandLine.unsafeArgv[0]) ? Client.run(Array(CommandLine.arguments.dropFirst())) : main())
