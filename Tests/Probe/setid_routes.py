# Tries every route by which a sandboxed process could leave a file or directory with S_ISUID or S_ISGID
# (or file capabilities) in its workspace, and prints "route RESULT" per line (OK or the errno name).
# The integration tests then check the files from the host: no route may leave a set-id bit behind.
# Usage (inside a sandbox, in the workspace): python3 setid_routes.py SUID_SOURCE
import ctypes, errno, io, os, platform, subprocess, sys, tarfile

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
X86 = platform.machine() == "x86_64"
AT_FDCWD = -100


def report(route, fn):
    try:
        fn()
        print(route, "OK", flush=True)
    except OSError as e:
        print(route, errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    except Exit as e:
        print(route, e, flush=True)


def raw(nr, *args):
    def call():
        rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
        if rc < 0:
            raise OSError(ctypes.get_errno(), "syscall %d" % nr)
        if nr in (2, 85, 257):  # open, creat, openat return a descriptor
            os.close(rc)
    return call


class Exit(Exception):
    pass


def command(*argv):
    def call():
        rc = subprocess.run(list(argv), stderr=subprocess.DEVNULL).returncode
        if rc != 0:
            raise Exit("EXIT%d" % rc)
    return call


def plain(name):
    with open(name, "w") as f:
        f.write("#!/bin/sh\nid\n")
    os.chmod(name, 0o755)
    return name


for bits, tag in ((0o4755, "suid"), (0o2755, "sgid")):
    report("chmod-%s" % tag, lambda: os.chmod(plain("chmod-%s" % tag), bits))
    report("fchmod-%s" % tag, lambda: os.fchmod(os.open(plain("fchmod-%s" % tag), os.O_RDONLY), bits))
    report("fchmodat-%s" % tag, lambda: raw(268 if X86 else 53, AT_FDCWD, plain("fchmodat-%s" % tag).encode(), bits)())
    report("fchmodat2-%s" % tag, lambda: raw(452, AT_FDCWD, plain("fchmodat2-%s" % tag).encode(), bits, 0)())
    report("open-creat-%s" % tag, lambda: os.close(os.open("open-creat-%s" % tag, os.O_CREAT | os.O_WRONLY, bits)))
    if X86:
        report("open-raw-%s" % tag, raw(2, b"open-raw-" + tag.encode(), os.O_CREAT | os.O_WRONLY, bits))
        report("creat-%s" % tag, raw(85, b"creat-" + tag.encode(), bits))
    report("openat-%s" % tag, raw(257 if X86 else 56, AT_FDCWD, b"openat-" + tag.encode(), os.O_CREAT | os.O_WRONLY, bits))
    # O_TMPFILE, then linked into the workspace.
    def tmpfile():
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, bits)
        os.link("/proc/self/fd/%d" % fd, "tmpfile-%s" % tag, follow_symlinks=True)
    report("o_tmpfile-%s" % tag, tmpfile)
    report("mknod-%s" % tag, lambda: os.mknod("mknod-%s" % tag, 0o100000 | bits))
    report("mkdir-%s" % tag, lambda: os.mkdir("mkdir-%s" % tag, bits))
    report("install-%s" % tag, command("install", "-m", oct(bits)[2:], "/bin/true", "install-%s" % tag))
# openat2 takes its mode in a struct the filter cannot read: it must be unavailable (libc falls back).
how = (ctypes.c_uint64 * 3)(os.O_CREAT | os.O_WRONLY, 0o4755, 0)
report("openat2", raw(437, AT_FDCWD, b"openat2-suid", ctypes.byref(how), ctypes.c_size_t(24)))
# io_uring operations bypass seccomp: the rings must be unavailable.
params = (ctypes.c_uint8 * 120)()
report("io_uring_setup", raw(425, 4, ctypes.byref(params)))
# cp -p of a set-id file, tar -xp of an archive whose member is set-id.
if len(sys.argv) > 1:
    report("cp-p", command("cp", "-p", sys.argv[1], "cp-p"))
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for name, mode in (("tar-suid", 0o4755), ("tar-sgid", 0o2755)):
        info = tarfile.TarInfo(name)
        data = b"#!/bin/sh\nid\n"
        info.size, info.mode = len(data), mode
        t.addfile(info, io.BytesIO(data))
with open("/tmp/setid.tar", "wb") as f:
    f.write(buf.getvalue())
report("tar-xp", command("tar", "-xpf", "/tmp/setid.tar"))
# File capabilities (a v2 security.capability granting cap_setuid): refused without CAP_SETFCAP.
caps = bytes([0, 0, 0, 2, 0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
report("setxattr-caps", lambda: os.setxattr(plain("filecaps"), "security.capability", caps))
