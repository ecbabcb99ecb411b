/// Bounds on kernel resources that cgroups do not count, applied by the init in every sandbox's own
/// namespaces (docs/security.md, "Kernel resources outside cgroups"). Counted per user, they would
/// otherwise be charged to the host user who started the sandbox (root included) up to the host's
/// limit; counted per machine, one sandbox could take them from every other process.
public enum SharedResourceBounds {
    /// /proc/sys entries of the sandbox's user and IPC namespaces (relative to /proc/sys).
    public static let sysctls: [(String, Int)] = [
        ("user/max_inotify_instances", 32),  // host default 128 per user: systemd and friends need theirs
        ("user/max_inotify_watches", 16384),
        ("user/max_fanotify_groups", 0),  // fanotify_init is refused by seccomp as well
        ("user/max_fanotify_marks", 0),
        // No new namespaces of any kind (seccomp refuses them too).
        ("user/max_user_namespaces", 0), ("user/max_mnt_namespaces", 0), ("user/max_pid_namespaces", 0),
        ("user/max_net_namespaces", 0), ("user/max_ipc_namespaces", 0), ("user/max_uts_namespaces", 0),
        ("user/max_cgroup_namespaces", 0), ("user/max_time_namespaces", 0),
        // SysV IPC tables of the sandbox's IPC namespace (their memory is charged to its cgroup).
        ("kernel/msgmni", 256), ("kernel/shmmni", 256),
    ]
    /// (resource, limit): pending signals and POSIX message-queue bytes are counted per user.
    public static let rlimits: [(Int32, UInt64)] = [
        (11 /* RLIMIT_SIGPENDING */, 4096),
        (12 /* RLIMIT_MSGQUEUE */, 256 << 10),
    ]
    /// Pseudo-terminals of the sandbox's devpts (the host has kernel.pty.max, 4096 by default, for all).
    public static let ptys = 256
    /// Inodes of a size-capped tmpfs (/tmp, /dev/shm): one per 4 KiB, at least 16384 (an inode costs
    /// kernel memory whatever the file's size).
    public static func inodes(_ size: UInt64) -> UInt64 { max(16384, size / 4096) }
}
