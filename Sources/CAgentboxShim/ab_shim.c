// See ab_shim.h. Functions used between clone() and execve() (ab_spawn's child side) call only
// async-signal-safe functions and raw system calls: no malloc, no locks, no stdio.
#define _GNU_SOURCE
#include "ab_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <grp.h>
#include <linux/securebits.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

// Kernel ABI structs and constants defined here so that older userspace headers suffice.
struct ab_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
struct ab_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
struct ab_landlock_ruleset_attr {
    uint64_t handled_access_fs, handled_access_net, scoped;
};
struct ab_landlock_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

const unsigned int AB_OPEN_TREE_CLONE = 1;
const unsigned int AB_OPEN_TREE_CLOEXEC = O_CLOEXEC;
const unsigned int AB_AT_RECURSIVE = 0x8000;
const unsigned int AB_AT_EMPTY_PATH = 0x1000;
const unsigned int AB_MOVE_MOUNT_F_EMPTY_PATH = 0x00000004;
const unsigned int AB_MOVE_MOUNT_T_EMPTY_PATH = 0x00000040;
const uint64_t AB_MOUNT_ATTR_RDONLY = 0x00000001;
const uint64_t AB_MOUNT_ATTR_NOSUID = 0x00000002;
const uint64_t AB_MOUNT_ATTR_NODEV = 0x00000004;
const uint64_t AB_MOUNT_ATTR_IDMAP = 0x00100000;
const uint64_t AB_LANDLOCK_SCOPE_ALL = (1ULL << 0) | (1ULL << 1);
const uint64_t AB_LANDLOCK_ACCESS_FS_IOCTL_DEV = 1ULL << 15;
const long AB_CGROUP2_SUPER_MAGIC = 0x63677270;
const long AB_TMPFS_MAGIC = 0x01021994;
const long AB_CGROUP_SUPER_MAGIC = 0x27e0eb;

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

// MARK: capabilities (raw syscalls: safe in the child of clone)

static int raw_capget(struct __user_cap_data_struct data[2]) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    return (int)syscall(SYS_capget, &hdr, data);
}

static int raw_capset(struct __user_cap_data_struct data[2]) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    return (int)syscall(SYS_capset, &hdr, data);
}

int ab_keep_caps_across_exec(void) {
    struct __user_cap_data_struct data[2];
    if (raw_capget(data) < 0) return -1;
    data[0].inheritable = data[0].permitted;
    data[1].inheritable = data[1].permitted;
    if (raw_capset(data) < 0) return -1;
    for (int cap = 0; cap < 64; cap++) {
        uint32_t word = cap < 32 ? data[0].permitted : data[1].permitted;
        if (!(word & (1U << (cap % 32)))) continue;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 && errno != EINVAL) return -1;
    }
    return 0;
}

int ab_cap_last(void) {
    int last = 0;
    // PR_CAPBSET_READ fails with EINVAL past the last capability the kernel knows.
    while (last < 63 && prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0) last++;
    return last;
}

int ab_drop_all_caps(void) {
    int last = ab_cap_last();
    for (int cap = 0; cap <= last; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return raw_capset(data);
}

int ab_cap_get(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable) {
    struct __user_cap_data_struct data[2];
    if (raw_capget(data) < 0) return -1;
    *effective = (uint64_t)data[0].effective | ((uint64_t)data[1].effective << 32);
    *permitted = (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
    *inheritable = (uint64_t)data[0].inheritable | ((uint64_t)data[1].inheritable << 32);
    return 0;
}

// MARK: spawn

/// The name and meaning of the errnos a spawn can meet (strerror is not async-signal-safe).
static const char *errno_words(int e) {
    switch (e) {
    case EACCES: return "EACCES: permission denied";
    case ENOENT: return "ENOENT: no such file";
    case ENOEXEC: return "ENOEXEC: not an executable for this machine";
    case EPERM: return "EPERM: operation not permitted";
    case ENOMEM: return "ENOMEM: out of memory";
    case EINVAL: return "EINVAL: invalid argument";
    case ETXTBSY: return "ETXTBSY: the file is being written";
    default: return 0;
    }
}

static void child_fail(const char *what) {
    // Async-signal-safe report: the stage and the errno (name and words when known, else the number).
    int err = errno;
    char buf[512];
    size_t n = 0;
    const char *prefix = "agentbox: sandbox child: ";
    for (const char *p = prefix; *p && n < sizeof buf - 32; p++) buf[n++] = *p;
    for (const char *p = what; *p && n < sizeof buf - 32; p++) buf[n++] = *p;
    const char *words = errno_words(err);
    const char *mid = words ? " failed: " : " failed: errno ";
    for (const char *p = mid; *p; p++) buf[n++] = *p;
    if (words) {
        for (const char *p = words; *p && n < sizeof buf - 2; p++) buf[n++] = *p;
    } else {
        char digits[12];
        int d = 0;
        do { digits[d++] = (char)('0' + err % 10); err /= 10; } while (err && d < 11);
        while (d) buf[n++] = digits[--d];
    }
    buf[n++] = '\n';
    (void)!write(2, buf, n);
    _exit(125);
}

static void child_main(const struct ab_spawn_args *a, const sigset_t *mask) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) child_fail("prctl(PR_SET_PDEATHSIG)");
    // Only the parent holds its ends now: if it died before the line above (no signal then), the read
    // of "go" below sees EOF, and a later death hangs up the channel.
    for (int i = 0; i < a->nparent_fds; i++) close(a->parent_fds[i]);
    // Join the v1 cgroups before anything runs here (everything the sandbox starts is born inside).
    for (int i = 0; i < a->njoin_fds; i++) {
        ssize_t w;
        do { w = write(a->join_fds[i], "0", 1); } while (w < 0 && errno == EINTR);
        if (w != 1) child_fail("joining the sandbox's cgroup (writing 0 to its tasks file)");
    }
    // SIGPIPE is ignored by the supervisor (a closed stdout must not kill a run); not by the sandbox.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    if (sigaction(SIGPIPE, &dfl, NULL) < 0) child_fail("sigaction(SIGPIPE)");
    // The securebit that kept the parent thread's capabilities across its euid change is not the sandbox's.
    if (a->owner_uid != (uid_t)-1 && prctl(PR_SET_SECUREBITS, 0, 0, 0, 0) < 0) child_fail("prctl(PR_SET_SECUREBITS)");
    // Wait for the parent: it writes the uid/gid maps and places us in the cgroup first.
    char go = 0;
    ssize_t r;
    do { r = read(a->sync_fd, &go, 1); } while (r < 0 && errno == EINTR);
    if (r != 1) _exit(125);  // the parent gave up or died; it reports why
    // Become the sandbox user inside the new user namespace (the maps are written now). Raw system
    // calls: glibc's wrappers signal every thread of the process to change their ids too, and after a
    // clone of a multithreaded process only this thread exists (its locks may be held by no one).
    if (a->drop_groups && syscall(SYS_setgroups, 0, NULL) < 0) child_fail("setgroups");
    if (syscall(SYS_setresgid, a->gid, a->gid, a->gid) < 0) child_fail("setresgid");
    if (syscall(SYS_setresuid, a->uid, a->uid, a->uid) < 0) child_fail("setresuid");
    // Changing credentials cleared the parent-death signal: arm it again, then make sure the parent did
    // not die in between (its end of the control channel would have hung up).
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) child_fail("prctl(PR_SET_PDEATHSIG)");
    if (a->nfds > 0) {
        struct pollfd pfd = {.fd = a->fds[0], .events = 0, .revents = 0};
        if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR))) _exit(125);
    }
    if (a->stdout_fd >= 0 && dup2(a->stdout_fd, 1) < 0) child_fail("dup2 stdout");
    if (a->stderr_fd >= 0 && dup2(a->stderr_fd, 2) < 0) child_fail("dup2 stderr");
    // Move the fds we hand over out of the way of their targets, then into place at 3, 4, ...
    int high = 3 + a->nfds + 64 + 1;
    int moved[64];
    if (a->nfds > 64) { errno = EINVAL; child_fail("fd handover"); }
    for (int i = 0; i < a->nfds; i++) {
        moved[i] = fcntl(a->fds[i], F_DUPFD_CLOEXEC, high);
        if (moved[i] < 0) child_fail("fcntl(F_DUPFD)");
    }
    int exec_fd = -1;
    if (a->exec_fd >= 0) {
        exec_fd = fcntl(a->exec_fd, F_DUPFD_CLOEXEC, high + 64);
        if (exec_fd < 0) child_fail("fcntl(F_DUPFD) of agentbox-init");
    }
    for (int i = 0; i < a->nfds; i++) {
        if (dup2(moved[i], 3 + i) < 0) child_fail("dup2");
    }
    // Keep the init's descriptor just after the handed-over ones (close-on-exec: gone after the exec).
    int keep = 3 + a->nfds;
    if (exec_fd >= 0) {
        if (dup3(exec_fd, keep, O_CLOEXEC) < 0) child_fail("dup3 of agentbox-init");
        exec_fd = keep++;
    }
    if (syscall(SYS_close_range, keep, ~0U, 0) < 0) {
        for (int fd = keep; fd < 65536; fd++) close(fd);
    }
    if (a->keep_caps && ab_keep_caps_across_exec() < 0) child_fail("keeping capabilities across exec");
    // Every signal was blocked across the clone (a handler of the parent's, running here, could touch
    // state of threads that do not exist here). Handlers go back to default, then the mask is the
    // caller's again, as the exec would see it from a plain fork.
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction old;
        if (sigaction(sig, NULL, &old) == 0 && old.sa_handler != SIG_IGN && old.sa_handler != SIG_DFL) {
            struct sigaction reset;
            memset(&reset, 0, sizeof reset);
            reset.sa_handler = SIG_DFL;
            sigaction(sig, &reset, NULL);
        }
    }
    sigprocmask(SIG_SETMASK, mask, NULL);
    if (exec_fd >= 0) syscall(SYS_execveat, exec_fd, "", a->argv, a->envp, AT_EMPTY_PATH);
    // ENOENT from execveat: a script (AGENTBOX_INIT pointing at a wrapper) whose interpreter cannot
    // open the close-on-exec descriptor; it is run by path instead.
    if (exec_fd < 0 || errno == ENOENT) execve(a->path, a->argv, a->envp);
    // Name the file: "execve of /usr/local/libexec/agentbox/agentbox-init failed: EACCES: ...".
    char what[320];
    const char *prefix = "execve of ";
    size_t n = 0;
    for (const char *p = prefix; *p; p++) what[n++] = *p;
    for (const char *p = a->path; *p && n < sizeof what - 1; p++) what[n++] = *p;
    what[n] = 0;
    child_fail(what);
}

pid_t ab_spawn(const struct ab_spawn_args *a, int *pidfd_out) {
    int pidfd = -1;
    struct ab_clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = (uint64_t)(unsigned int)a->clone_flags | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    if (a->cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)a->cgroup_fd;
    }
    // The new user namespace belongs to the effective uid of the thread that creates it. Root changes it
    // for this thread only (raw syscall: glibc would change every thread), keeping its capabilities
    // (SECBIT_NO_SETUID_FIXUP) for CLONE_INTO_CGROUP; both are restored right after the clone.
    int owner = a->owner_uid != (uid_t)-1 && geteuid() == 0;
    int bits = 0;
    if (owner) {
        bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
        if (bits < 0 || prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) < 0) return -1;
        if (syscall(SYS_setresuid, -1, a->owner_uid, -1) < 0) {
            int e = errno;
            prctl(PR_SET_SECUREBITS, bits, 0, 0, 0);
            errno = e;
            return -1;
        }
    }
    sigset_t all, mask;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &mask);
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0 && errno == ENOSYS && a->cgroup_fd < 0) {
        pid = syscall(SYS_clone, (unsigned long)a->clone_flags | CLONE_PIDFD | SIGCHLD, NULL, &pidfd, NULL, 0);
    }
    if (pid == 0) {
        child_main(a, &mask);
        _exit(125);
    }
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    errno = clone_errno;
    if (owner) {
        int e = errno;
        // Back to root; a failure here would leave this thread unprivileged: stop rather than go on.
        if (syscall(SYS_setresuid, -1, 0, -1) < 0) abort();
        prctl(PR_SET_SECUREBITS, bits, 0, 0, 0);
        // The euid change made the process non-dumpable; it stays so (restoring it measured 2.5 ms per
        // sandbox here): a root supervisor needs no core dumps.
        errno = e;
    }
    if (pid < 0) return -1;
    *pidfd_out = pidfd;
    return (pid_t)pid;
}

static int write_file(const char *path, const char *data) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = strlen(data);
    ssize_t w = write(fd, data, len);
    int err = errno;
    close(fd);
    if (w != (ssize_t)len) { errno = w < 0 ? err : EIO; return -1; }
    return 0;
}

/// The helper of ab_make_userns_fd: it only holds its user namespace until the parent has opened it
/// (the pipe's end of file), then returns (glibc's clone ends the process). It shares the parent's
/// memory and its thread's TLS, so it makes raw system calls only: glibc's close and read are
/// cancellation points that update the calling thread's control block, which is the parent's here.
/// Neither call can fail (valid descriptors, every signal blocked), so errno is not written either.
static int userns_holder(void *arg) {
    const int *pipefd = arg;
    char c;
    syscall(SYS_close, pipefd[1]);  // the parent's end: its close is the end of file read here
    syscall(SYS_read, pipefd[0], &c, 1);
    return 0;
}

int ab_make_userns_fd(const char *uid_map, const char *gid_map) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return -1;
    // CLONE_VM: a fork of the supervisor would copy its page tables and tear them down again (~0.5 ms
    // each time); the helper needs nothing of them. Its stack is its own; every signal stays blocked in
    // it, so no handler of the supervisor ever runs on it (glibc keeps its two internal signals open,
    // whose handlers ignore any sender but the process itself).
    size_t stack_size = 64 << 10;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) { int e = errno; close(pipefd[0]); close(pipefd[1]); errno = e; return -1; }
    sigset_t all, mask;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &mask);
    long pid = clone(userns_holder, (char *)stack + stack_size, CLONE_VM | CLONE_NEWUSER | SIGCHLD, pipefd);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (pid < 0) { close(pipefd[0]); close(pipefd[1]); munmap(stack, stack_size); errno = clone_errno; return -1; }
    close(pipefd[0]);
    char path[64];
    int result = -1, err = 0;
    snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
    if (write_file(path, uid_map) < 0) { err = errno; goto done; }
    // Unprivileged writers must deny setgroups before writing a gid map; harmless for root.
    snprintf(path, sizeof path, "/proc/%ld/setgroups", pid);
    if (write_file(path, "deny") < 0 && errno != ENOENT) { err = errno; goto done; }
    snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
    if (write_file(path, gid_map) < 0) { err = errno; goto done; }
    snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
    result = open(path, O_RDONLY | O_CLOEXEC);
    if (result < 0) err = errno;
done:
    close(pipefd[1]);
    while (waitpid((pid_t)pid, NULL, 0) < 0 && errno == EINTR) {}
    // The helper is gone (reaped): its stack is free.
    munmap(stack, stack_size);
    if (result < 0) errno = err;
    return result;
}

// MARK: mount API

int ab_open_tree(int dfd, const char *path, unsigned int flags) {
    return (int)syscall(SYS_open_tree, dfd, path, flags);
}

int ab_open_path_nofollow(int dfd, const char *path) {
    struct { uint64_t flags, mode, resolve; } how = {O_PATH | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */ | 0x02 /* NO_MAGICLINKS */};
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
    return (int)syscall(SYS_openat2, dfd, path, &how, sizeof how);
}

int ab_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags) {
    return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}

int ab_mount_setattr(int dfd, const char *path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr,
                     uint64_t propagation, int userns_fd) {
    struct ab_mount_attr attr = {attr_set, attr_clr, propagation, userns_fd >= 0 ? (uint64_t)userns_fd : 0};
    return (int)syscall(SYS_mount_setattr, dfd, path, flags, &attr, sizeof attr);
}

int ab_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

// MARK: process

int ab_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
int ab_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
int ab_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, on, 0, 0, 0); }
int ab_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int ab_close_from(int lowfd) {
    if (syscall(SYS_close_range, lowfd, ~0U, 0) == 0) return 0;
    for (int fd = lowfd; fd < 65536; fd++) close(fd);
    return 0;
}

int ab_start_writeback(int fd, int64_t offset, int64_t count) {
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE);
}

int ab_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int ab_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

int ab_set_rlimit(int resource, uint64_t soft, uint64_t hard) {
    struct rlimit rl = {(rlim_t)soft, (rlim_t)hard};
    return setrlimit(resource, &rl);
}

int ab_loopback_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

int ab_listen_loopback(unsigned short port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0
        || listen(fd, 128) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

int ab_accept(int fd) {
    int c;
    do { c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); } while (c < 0 && errno == EINTR);
    // Answers go out as written (a head, then a stream's events): no Nagle delay behind the peer's ACKs.
    int one = 1;
    if (c >= 0) (void)setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

long ab_splice(int in_fd, int out_fd, size_t len) {
    long n;
    do { n = splice(in_fd, NULL, out_fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK); } while (n < 0 && errno == EINTR);
    return n;
}

int ab_pipe_nonblock(int fds[2], int size) {
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
    (void)fcntl(fds[1], F_SETPIPE_SZ, size);
    return 0;
}

long ab_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > 8) { errno = EINVAL; return -1; }
    struct iovec iov = {(void *)buf, len};
    union { struct cmsghdr align; char bytes[CMSG_SPACE(8 * sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0 && fds) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    long n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

long ab_recv_with_fds(int sock, void *buf, size_t len, int *fds, int max, int *nfds, int flags) {
    struct iovec iov = {buf, len};
    union { struct cmsghdr align; char bytes[CMSG_SPACE(16 * sizeof(int))]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    *nfds = 0;
    long n;
    do { n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *got = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < max) fds[(*nfds)++] = got[i];
            else close(got[i]);
        }
    }
    return n;
}

// MARK: seccomp

int ab_seccomp_load(const void *program, size_t len) {
    if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > 0xffff) {
        errno = EINVAL;
        return -1;
    }
    struct sock_fprog prog = {(unsigned short)(len / sizeof(struct sock_filter)), (struct sock_filter *)program};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

int ab_seccomp_available(void) {
    // PR_GET_SECCOMP works everywhere; SECCOMP_GET_ACTION_AVAIL tells whether filters are compiled in.
    uint32_t action = SECCOMP_RET_ERRNO;
    return syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) == 0 ? 1 : 0;
}

// MARK: Landlock

int ab_landlock_abi(void) {
    return (int)syscall(SYS_landlock_create_ruleset, NULL, 0, 1U /* LANDLOCK_CREATE_RULESET_VERSION */);
}

uint64_t ab_landlock_fs_rights(int abi) {
    if (abi < 1) return 0;
    uint64_t rights = (1ULL << 13) - 1;           // ABI 1: EXECUTE .. MAKE_SYM
    if (abi >= 2) rights |= 1ULL << 13;           // REFER
    if (abi >= 3) rights |= 1ULL << 14;           // TRUNCATE
    if (abi >= 5) rights |= 1ULL << 15;           // IOCTL_DEV
    return rights;
}

uint64_t ab_landlock_fs_read_rights(void) {
    return (1ULL << 0) | (1ULL << 2) | (1ULL << 3);  // EXECUTE, READ_FILE, READ_DIR
}

int ab_landlock_create_ruleset(uint64_t handled_fs, uint64_t scoped) {
    struct ab_landlock_ruleset_attr attr = {handled_fs, 0, scoped};
    size_t size = scoped ? sizeof attr : sizeof(uint64_t);
    return (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
}

int ab_landlock_add_path(int ruleset_fd, int path_fd, uint64_t allowed) {
    struct ab_landlock_path_beneath_attr attr = {allowed, path_fd};
    return (int)syscall(SYS_landlock_add_rule, ruleset_fd, 1 /* LANDLOCK_RULE_PATH_BENEATH */, &attr, 0);
}

int ab_landlock_restrict_self(int ruleset_fd) {
    return (int)syscall(SYS_landlock_restrict_self, ruleset_fd, 0);
}

// MARK: misc

long ab_statfs_type(const char *path) {
    struct statfs st;
    if (statfs(path, &st) < 0) return -1;
    return (long)st.f_type;
}

const int AB_CLONE_NEWUSER = CLONE_NEWUSER, AB_CLONE_NEWPID = CLONE_NEWPID, AB_CLONE_NEWNS = CLONE_NEWNS,
          AB_CLONE_NEWNET = CLONE_NEWNET, AB_CLONE_NEWUTS = CLONE_NEWUTS, AB_CLONE_NEWIPC = CLONE_NEWIPC,
          AB_CLONE_NEWCGROUP = CLONE_NEWCGROUP;

int ab_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int ab_signalfd(const sigset_t *mask) { return signalfd(-1, mask, SFD_CLOEXEC | SFD_NONBLOCK); }

int ab_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

int ab_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int ab_getrandom(void *buf, size_t len) { return (int)getrandom(buf, len, 0); }

int ab_unshare(int flags) { return unshare(flags); }

int ab_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }
int ab_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
const int AB_O_PATH = O_PATH;

extern char **environ;

int ab_spawn_command(const char *file, char *const *argv, pid_t *pid) {
    posix_spawnattr_t attr;
    int rc = posix_spawnattr_init(&attr);
    if (rc != 0) return rc;
    sigset_t empty;
    sigemptyset(&empty);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    rc = posix_spawnp(pid, file, NULL, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    return rc;
}

int ab_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int ab_spawn_tool(const char *file, char *const *argv, int out_fd, pid_t *pid) {
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t actions;
    int rc = posix_spawnattr_init(&attr);
    if (rc != 0) return rc;
    rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) { posix_spawnattr_destroy(&attr); return rc; }
    sigset_t empty;
    sigemptyset(&empty);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
    posix_spawn_file_actions_adddup2(&actions, out_fd, 2);
    rc = posix_spawnp(pid, file, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc;
}

// MARK: checksums

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t ab_crc32c_hw(uint32_t crc, const void *data, size_t len, int *ok) {
#if defined(__x86_64__)
    static int have = -1;
    if (have < 0) { __builtin_cpu_init(); have = __builtin_cpu_supports("sse4.2") ? 1 : 0; }
    if (have) {
        *ok = 1;
        return ~crc32c_sse42(~crc, (const unsigned char *)data, len);
    }
#endif
    (void)crc; (void)data; (void)len;
    *ok = 0;
    return 0;
}
