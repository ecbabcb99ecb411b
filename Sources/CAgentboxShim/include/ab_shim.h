// The C boundary of agentbox: only what Swift cannot call well (clone with flags, variadic
// prctl/syscall, kernel structs and macros). Every function returns -1 and sets errno on failure.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if !__has_feature(nullability)
#define _Nonnull
#define _Nullable
#endif

// MARK: spawn

/// Arguments for ab_spawn. Everything the child touches is prepared by the caller before the call:
/// the child runs C only, makes only async-signal-safe calls, and never returns into Swift.
struct ab_spawn_args {
    /// CLONE_NEW* flags for the child.
    int clone_flags;
    /// Absolute path of the program the child execs (agentbox-init).
    const char *_Nonnull path;
    char *_Nullable const *_Nonnull argv;
    char *_Nullable const *_Nonnull envp;
    /// File descriptors placed at 3, 4, ... in the child, in this order. Every other fd >= 3 is closed.
    const int *_Nullable fds;
    int nfds;
    /// The child blocks reading one byte from this fd before it execs; EOF (the parent died or gave up)
    /// makes it exit 125. It is closed in the child before exec.
    int sync_fd;
    /// When nonzero, the child keeps its user-namespace capabilities across execve through the ambient
    /// set (needed when the sandbox user is not uid 0 inside, so that init can finish setup).
    int keep_caps;
    /// A cgroup v2 directory fd for CLONE_INTO_CGROUP, or -1.
    int cgroup_fd;
    /// After the maps are written the child becomes uid/gid (inside ids) and, when drop_groups is set,
    /// clears its supplementary groups (root-written gid maps only).
    uid_t uid;
    gid_t gid;
    int drop_groups;
    /// When >= 0, placed on fd 1 / fd 2 of the child (journaled runs capture output); -1 inherits.
    int stdout_fd;
    int stderr_fd;
    /// When not (uid_t)-1 and the caller is root: the user namespace is created with this effective uid
    /// (changed for the calling thread only, capabilities kept), so that what the host counts per user
    /// for the sandbox (inotify instances, pending signals, message queues...) is charged to this uid
    /// and not to root.
    uid_t owner_uid;
    /// When >= 0: agentbox-init opened (O_PATH) by the parent, executed through this descriptor
    /// (execveat AT_EMPTY_PATH), so that the sandbox user needs no search permission on the folders
    /// above it (a clone under /root or any 0700 folder). `path` is then only used in messages.
    int exec_fd;
    /// The parent's own ends (the sync pipe's write end, its end of the control channel), closed first
    /// in the child: while the child held copies, the parent's death could neither end its wait for
    /// "go" (EOF) nor hang up the channel, and a child cloned just before its parent died waited forever.
    const int *_Nullable parent_fds;
    int nparent_fds;
    /// cgroup v1 `tasks` files opened for writing by the parent (the permission is the opener's): the
    /// child writes "0" to each first thing, moving itself. A task that moves itself skips the global
    /// threadgroup lock whose RCU grace period made the parent's write of its pid take milliseconds.
    const int *_Nullable join_fds;
    int njoin_fds;
};

/// Clones a child into new namespaces (clone3, falling back to clone). Returns the child's pid and
/// stores a pidfd in *pidfd_out (or -1 when the kernel has none).
pid_t ab_spawn(const struct ab_spawn_args *_Nonnull args, int *_Nonnull pidfd_out);

/// Creates a user namespace with the given uid_map/gid_map lines ("inside outside count") held by no
/// process, and returns an O_RDONLY fd to it (for idmapped mounts). Needs CAP_SETUID/CAP_SETGID.
int ab_make_userns_fd(const char *_Nonnull uid_map, const char *_Nonnull gid_map);

// MARK: mount API (new-style, via syscall)

int ab_open_tree(int dfd, const char *_Nonnull path, unsigned int flags);
int ab_move_mount(int from_dfd, const char *_Nonnull from_path, int to_dfd, const char *_Nonnull to_path, unsigned int flags);
/// mount_setattr with attr_set/attr_clr/propagation and an optional user namespace fd (-1: none).
int ab_mount_setattr(int dfd, const char *_Nonnull path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr,
                     uint64_t propagation, int userns_fd);
int ab_pivot_root(const char *_Nonnull new_root, const char *_Nonnull put_old);
/// openat2(dfd, path, O_PATH | O_CLOEXEC, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): the object at
/// exactly this path, with no symlink anywhere on the way (ELOOP otherwise; ENOSYS before Linux 5.6).
int ab_open_path_nofollow(int dfd, const char *_Nonnull path);

extern const unsigned int AB_OPEN_TREE_CLONE;
extern const unsigned int AB_OPEN_TREE_CLOEXEC;
extern const unsigned int AB_AT_RECURSIVE;
extern const unsigned int AB_AT_EMPTY_PATH;
extern const unsigned int AB_MOVE_MOUNT_F_EMPTY_PATH;
extern const unsigned int AB_MOVE_MOUNT_T_EMPTY_PATH;
extern const uint64_t AB_MOUNT_ATTR_RDONLY;
extern const uint64_t AB_MOUNT_ATTR_NOSUID;
extern const uint64_t AB_MOUNT_ATTR_NODEV;
extern const uint64_t AB_MOUNT_ATTR_IDMAP;

// MARK: process

int ab_set_pdeathsig(int sig);
int ab_set_no_new_privs(void);
int ab_set_dumpable(int on);
int ab_set_child_subreaper(void);
int ab_close_from(int lowfd);
/// sync_file_range(SYNC_FILE_RANGE_WRITE): starts writeback of a range without waiting for it.
int ab_start_writeback(int fd, int64_t offset, int64_t count);
int ab_pidfd_open(pid_t pid);
int ab_pidfd_send_signal(int pidfd, int sig);
/// Raises ambient capabilities 0..last so that they survive execve for a non-root uid.
int ab_keep_caps_across_exec(void);
/// Drops every capability from the bounding set, clears ambient and sets effective/permitted/inheritable to empty.
int ab_drop_all_caps(void);
/// The highest capability number the kernel knows (CAP_LAST_CAP at run time).
int ab_cap_last(void);
/// Returns the capability sets of the calling process as bit masks.
int ab_cap_get(uint64_t *_Nonnull effective, uint64_t *_Nonnull permitted, uint64_t *_Nonnull inheritable);
int ab_set_rlimit(int resource, uint64_t soft, uint64_t hard);

/// Brings the loopback interface of the current network namespace up.
int ab_loopback_up(void);
/// A TCP socket listening on 127.0.0.1:port (close-on-exec, SO_REUSEADDR, backlog 128); -1 and errno.
int ab_listen_loopback(unsigned short port);
/// accept4 with SOCK_CLOEXEC | SOCK_NONBLOCK, EINTR retried; -1 and errno (EAGAIN: none waiting).
int ab_accept(int fd);
/// splice(2) of up to `len` bytes between a pipe and a socket, SPLICE_F_MOVE | SPLICE_F_NONBLOCK,
/// EINTR retried; -1 and errno (EAGAIN: nothing to move now).
long ab_splice(int in_fd, int out_fd, size_t len);
/// A non-blocking, close-on-exec pipe of `size` bytes (as large as the system allows); -1 and errno.
int ab_pipe_nonblock(int fds[_Nonnull 2], int size);
/// Sends one packet with up to 8 descriptors attached (SCM_RIGHTS, MSG_NOSIGNAL); -1 and errno.
long ab_send_with_fds(int sock, const void *_Nonnull buf, size_t len, const int *_Nullable fds, int nfds);
/// Receives one packet (flags: MSG_DONTWAIT or 0) and up to `max` descriptors attached to it, made
/// close-on-exec; `*nfds` is how many came (any beyond `max` are closed). -1 and errno.
long ab_recv_with_fds(int sock, void *_Nonnull buf, size_t len, int *_Nonnull fds, int max, int *_Nonnull nfds, int flags);

// MARK: seccomp

/// Loads a classic BPF program (an array of struct sock_filter, len bytes) as a seccomp filter.
int ab_seccomp_load(const void *_Nonnull program, size_t len);
/// 1 when the kernel supports seccomp filters, 0 when not.
int ab_seccomp_available(void);

// MARK: Landlock

/// The Landlock ABI version of the kernel, or -1 (errno) when Landlock is unavailable.
int ab_landlock_abi(void);
/// All filesystem access rights defined up to the given ABI.
uint64_t ab_landlock_fs_rights(int abi);
/// Read-only rights (execute, read file, read dir) within the given ABI.
uint64_t ab_landlock_fs_read_rights(void);
/// Creates a ruleset handling the given filesystem rights and scopes (signal/abstract unix; ABI >= 6).
int ab_landlock_create_ruleset(uint64_t handled_fs, uint64_t scoped);
int ab_landlock_add_path(int ruleset_fd, int path_fd, uint64_t allowed);
int ab_landlock_restrict_self(int ruleset_fd);
extern const uint64_t AB_LANDLOCK_SCOPE_ALL;
extern const uint64_t AB_LANDLOCK_ACCESS_FS_IOCTL_DEV;

// MARK: misc (GNU extensions Swift's Glibc module does not show)

#include <signal.h>
extern const int AB_CLONE_NEWUSER, AB_CLONE_NEWPID, AB_CLONE_NEWNS, AB_CLONE_NEWNET, AB_CLONE_NEWUTS, AB_CLONE_NEWIPC,
    AB_CLONE_NEWCGROUP;
int ab_pipe2_cloexec(int fds[_Nonnull 2]);
/// A non-blocking, close-on-exec signalfd for the given set.
int ab_signalfd(const sigset_t *_Nonnull mask);
/// Reads one signal number from a signalfd; 0 when none is pending.
int ab_signalfd_read(int fd);
int ab_memfd(const char *_Nonnull name);
int ab_getrandom(void *_Nonnull buf, size_t len);
int ab_unshare(int flags);
/// Starts `file` (searched in PATH) in a new session with an empty signal mask (posix_spawnp with
/// POSIX_SPAWN_SETSID: vfork-fast, and exec errors are returned, not lost). Returns 0 or an errno.
int ab_spawn_command(const char *_Nonnull file, char *_Nullable const *_Nonnull argv, pid_t *_Nonnull pid);
/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
int ab_eventfd(void);
/// Like ab_spawn_command, for a tool call: stdin from /dev/null, stdout and stderr to out_fd.
int ab_spawn_tool(const char *_Nonnull file, char *_Nullable const *_Nonnull argv, int out_fd, pid_t *_Nonnull pid);
int ab_setresuid(uid_t uid);
int ab_setresgid(gid_t gid);
extern const int AB_O_PATH;

/// The statfs f_type of a path (for cgroup mode detection), or -1.
long ab_statfs_type(const char *_Nonnull path);
extern const long AB_CGROUP2_SUPER_MAGIC;
extern const long AB_TMPFS_MAGIC;
extern const long AB_CGROUP_SUPER_MAGIC;

// MARK: checksums

/// CRC-32C with the CPU's instruction (SSE 4.2 crc32 / ARMv8 CRC); returns 0 in *ok when the CPU has
/// none (the caller then uses its software table).
uint32_t ab_crc32c_hw(uint32_t crc, const void *_Nonnull data, size_t len, int *_Nonnull ok);

#ifdef __cplusplus
}
#endif
