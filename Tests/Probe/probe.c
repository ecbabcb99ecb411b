// Tries dangerous system calls from inside a sandbox and prints "name RESULT" per line, where RESULT is
// OK or the errno name. Built by the integration tests with the toolchain's C compiler.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case ESRCH: return "ESRCH";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case ENOTTY: return "ENOTTY";
    default: { static char buf[32]; snprintf(buf, sizeof buf, "errno%d", e); return buf; }
    }
}

static void report(const char *what, long rc) { printf("%s %s\n", what, name(rc < 0 ? errno : 0)); }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("umount", umount2("/proc", MNT_DETACH));
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
    report("chroot", chroot("/tmp"));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_mount", unshare(CLONE_NEWNS));
    report("unshare_net", unshare(CLONE_NEWNET));
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    report("clone_newuser", pid);
    struct { unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; } ca = {0};
    ca.exit_signal = SIGCHLD;
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    report("clone3", pid);
    int nsfd = open("/proc/self/ns/net", O_RDONLY);
    report("setns", syscall(SYS_setns, nsfd, 0));
    char params[120] = {0};
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    report("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    union bpf_attr battr;
    memset(&battr, 0, sizeof battr);
    report("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &battr, sizeof battr));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
    report("request_key", syscall(SYS_request_key, "user", "k", NULL, 0));
    report("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/tmp", 1));
    report("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    report("move_mount", syscall(SYS_move_mount, -1, "", AT_FDCWD, "/tmp", 4));
    report("mount_setattr", syscall(SYS_mount_setattr, AT_FDCWD, "/", 0, NULL, 0));
    report("ptrace_pid1", ptrace(PTRACE_ATTACH, 1, NULL, NULL));
    char buf[8];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    report("process_vm_readv", syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0, NULL));
    char c = 'x';
    report("ioctl_tiocsti", ioctl(0, TIOCSTI, &c));
    report("sethostname", sethostname("x", 1));
    // Sanity: ordinary things still work.
    pid = fork();
    if (pid == 0) _exit(0);
    int status = 0;
    report("fork", pid < 0 ? -1 : waitpid((pid_t)pid, &status, 0));
    report("socket", socket(AF_INET, SOCK_STREAM, 0));
    return 0;
}
