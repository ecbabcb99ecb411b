import Foundation
import Testing

/// `agentbox exec` end to end: real namespaces, mounts, cgroups, seccomp. These tests try to break out.
@Suite struct ExitCodeTests {
    @Test func passesTheCommandsStatusThrough() {
        #expect(exec([], ["/bin/true"]).code == 0)
        #expect(exec([], ["/bin/false"]).code == 1)
        #expect(sh("exit 42").code == 42)
    }

    @Test func stdioIsPassedThrough() {
        let r = exec([], ["/bin/sh", "-c", "read x; echo \"got $x\"; echo oops >&2"], stdin: "hello\n")
        #expect(r.code == 0)
        #expect(r.out == "got hello\n")
        #expect(r.err.contains("oops"))
    }


    @Test func timingNamesTheSupervisorsAndTheInitsPhasesOnlyWhenAsked() {
        func phases(_ err: String) -> [String] {
            err.split(separator: "\n").filter { $0.hasPrefix("agentbox: timing: ") && $0.hasSuffix(" us") }
                .map { String($0.dropFirst("agentbox: timing: ".count).dropLast(3)).split(separator: " ").dropLast().joined(separator: " ") }
        }
        let timed = exec([], ["/bin/sh", "-c", "echo out; echo err >&2"], env: ["AGENTBOX_TIMING": "1"])
        #expect(timed.code == 0 && timed.out == "out\n", "\(timed)")
        let names = phases(timed.err)
        for phase in ["policy", "clone", "init: read the setup", "init: mounts: binds", "init: seccomp", "init setup", "command run", "teardown"] {
            #expect(names.contains(phase), "\(phase) missing from \(names)")
        }
        // The init's phases come before the end of its setup, which they are part of.
        #expect(names.firstIndex(of: "init: seccomp")! < names.firstIndex(of: "init setup")!)
        let quiet = exec([], ["/bin/sh", "-c", "echo err >&2"])
        #expect(quiet.err == "err\n", "\(quiet)")
    }
    @Test func notFoundIs127AndNotExecutableIs126() {
        let nf = exec([], ["no-such-command-xyz"])
        #expect(nf.code == 127, "\(nf)")
        #expect(nf.err.contains("no-such-command-xyz: command not found"))
        let ws = TestEnv.workspace()
        _ = FileManager.default.createFile(atPath: ws + "/script.sh", contents: Data("#!/bin/sh\necho hi\n".utf8))
        let ne = exec([], ["./script.sh"], in: ws)
        #expect(ne.code == 126, "\(ne)")
    }

    @Test func signalsAre128PlusN() {
        #expect(sh("kill -TERM $$").code == 143)
        #expect(sh("kill -KILL $$").code == 137)
    }

    @Test func timeoutIs124AndKillsTheTree() {
        let marker = "abtimeout\(UUID().uuidString.prefix(8))"
        let r = sh("(sleep 300; echo \(marker)) & sleep 300", ["--timeout", "1s"])
        #expect(r.code == 124, "\(r)")
        #expect(r.err.contains("timeout"))
        #expect(!hostHasProcess(withMarker: marker))
    }

    @Test func usageAndProfileErrorsAre125NamingTheProblem() {
        let noCmd = run([TestEnv.agentbox, "exec"], cwd: TestEnv.workspace())
        #expect(noCmd.code == 125)
        #expect(noCmd.err.contains("no command given"))
        let badFlag = run([TestEnv.agentbox, "exec", "--memroy", "1G", "--", "true"], cwd: TestEnv.workspace())
        #expect(badFlag.code == 125)
        #expect(badFlag.err.contains("memroy"))
        let badSize = exec(["--memory", "lots"], ["true"])
        #expect(badSize.code == 125 && badSize.err.contains("--memory lots"), "\(badSize)")
        let badProfile = exec(["--profile", "no-such-profile"], ["true"])
        #expect(badProfile.code == 125 && badProfile.err.contains("no profile named"), "\(badProfile)")
        let badNet = exec(["--network", "host"], ["true"])
        #expect(badNet.code == 125 && badNet.err.contains("--network host"), "\(badNet)")
    }

    @Test func bothOptionSpellingsBuildTheSameSandbox() {
        // `--opt value` takes agentbox's fast path, `--opt=value` ArgumentParser's: same result.
        let script = "echo $K; ulimit -u; hostname"
        let fast = exec(["--env", "K=v1", "--profile", "read-only", "--tmp-size", "1M"], ["/bin/sh", "-c", script])
        let full = exec(["--env=K=v1", "--profile=read-only", "--tmp-size=1M"], ["/bin/sh", "-c", script])
        #expect(fast.code == 0 && fast.out == full.out && fast.out.hasPrefix("v1\n"), "\(fast)\n\(full)")
        let repeated = exec(["--memory", "64M", "--memory", "lots"], ["/bin/true"])
        #expect(repeated.code == 125 && repeated.err.contains("--memory lots"), "a repeated option goes the full way: \(repeated)")
    }

    @Test func malformedProfileFileIsRejectedWithFileAndKey() throws {
        let ws = TestEnv.workspace()
        let file = ws + "/p.json"
        try #"{"extends": "workspace-write", "limits": {"memroy": "1G"}}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let r = exec(["--profile", file], ["true"], in: ws)
        #expect(r.code == 125)
        #expect(r.err.contains(file) && r.err.contains("limits.memroy") && r.err.contains("unknown key"), "\(r)")
    }
}

@Suite struct FilesystemTests {
    @Test func workspaceIsWritableAndTheStartingDirectory() throws {
        let ws = TestEnv.workspace()
        let r = sh("pwd; echo data > out.txt; cat out.txt", in: ws)
        #expect(r.code == 0, "\(r)")
        #expect(r.out == "\(ws)\ndata\n")
        #expect(try String(contentsOfFile: ws + "/out.txt", encoding: .utf8) == "data\n")
    }

    @Test func everythingElseIsReadOnly() {
        for path in ["/usr/agentbox-x", "/etc/agentbox-x", "/agentbox-x", "/bin/agentbox-x", "/dev/agentbox-x"] {
            let r = sh("echo x > \(path)")
            #expect(r.code != 0, "writing \(path) succeeded")
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func hostPrivateDirectoriesAreAbsent() {
        let r = sh("for d in /home /root /sys /var /mnt /media /srv /boot; do [ -e $d ] && echo present:$d; done; ls -A /run; ls -A /run/agentbox")
        #expect(r.code == 0)
        #expect(!r.out.contains("present:"), "\(r)")
        // /run is the sandbox's own: only agentbox's tool folder is there, not the host's /run.
        #expect(r.out == "agentbox\nbin\n", "\(r)")
    }

    @Test func tmpIsPrivateWritableAndCapped() throws {
        let marker = "/tmp/agentbox-host-only-\(UUID().uuidString.prefix(6))"
        _ = FileManager.default.createFile(atPath: marker, contents: Data("x".utf8))
        defer { try? FileManager.default.removeItem(atPath: marker) }
        let r = sh("[ -e \(marker) ] && echo leaked; echo ok > /tmp/f && cat /tmp/f; head -c 3000000 /dev/zero > /tmp/big; echo rc=$?",
                   ["--tmp-size", "1M"])
        #expect(!r.out.contains("leaked"))
        #expect(r.out.contains("ok\n"))
        #expect(r.out.contains("rc=1"), "writing past --tmp-size must fail: \(r)")
    }

    @Test func devIsMinimal() {
        let r = sh("ls /dev | sort | tr '\\n' ' '; echo; echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c")
        #expect(r.code == 0, "\(r)")
        let entries = Set(r.out.split(separator: "\n").first!.split(separator: " ").map(String.init))
        #expect(entries == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"])
        #expect(r.out.contains("null-ok"))
        #expect(r.out.contains("4\n"))
        #expect(sh("ls /dev/sda /dev/vda /dev/mem /dev/kmsg 2>/dev/null").out.isEmpty)
    }

    @Test func roRwAndHideOptions() throws {
        let ws = TestEnv.workspace()
        let extraRO = TestEnv.workspace(), extraRW = TestEnv.workspace()
        try "secret".write(toFile: ws + "/.env", atomically: true, encoding: .utf8)
        try "ro".write(toFile: extraRO + "/f", atomically: true, encoding: .utf8)
        let r = sh("cat \(extraRO)/f; echo x > \(extraRO)/g || echo ro-denied; echo rw > \(extraRW)/h && echo rw-ok; cat .env; echo; echo y > .env || echo hide-denied",
                   ["--ro", extraRO, "--rw", extraRW, "--hide", ".env"], in: ws)
        #expect(r.out.contains("ro\n") || r.out.hasPrefix("ro"), "\(r)")
        #expect(r.out.contains("ro-denied"))
        #expect(r.out.contains("rw-ok"))
        #expect(!r.out.contains("secret"))
        #expect(r.out.contains("hide-denied"))
        #expect(try String(contentsOfFile: ws + "/.env", encoding: .utf8) == "secret")
        #expect(FileManager.default.fileExists(atPath: extraRW + "/h"))
    }

    @Test func landlockRequiredProfileRuns() throws {
        let ws = TestEnv.workspace()
        try #"{"extends": "workspace-write", "landlock": "required"}"#.write(toFile: ws + "/ll.json", atomically: true, encoding: .utf8)
        let r = sh("echo ok > f && cat f", ["--profile", ws + "/ll.json"], in: ws)
        #expect(r.code == 0 && r.out == "ok\n", "\(r)")
    }

    @Test func readOnlyProfileKeepsTheWorkspaceReadOnly() {
        let ws = TestEnv.workspace()
        let r = sh("echo x > f || echo denied", ["--profile", "read-only"], in: ws)
        #expect(r.out.contains("denied"), "\(r)")
        #expect(!FileManager.default.fileExists(atPath: ws + "/f"))
    }

    @Test(.enabled(if: TestEnv.isRoot)) func filesCreatedByRootRunsBelongToTheWorkspaceOwner() throws {
        guard let user = TestUser.shared else { Issue.record("could not create the test user"); return }
        let ws = TestEnv.workspace(owner: user)
        let r = sh("echo hi > made.txt && mkdir dir && id -u", in: ws)
        #expect(r.code == 0, "\(r)")
        let attrs = try FileManager.default.attributesOfItem(atPath: ws + "/made.txt")
        #expect((attrs[.ownerAccountID] as? NSNumber)?.uint32Value == user.uid)
        let dirAttrs = try FileManager.default.attributesOfItem(atPath: ws + "/dir")
        #expect((dirAttrs[.ownerAccountID] as? NSNumber)?.uint32Value == user.uid)
    }

    @Test(.enabled(if: TestEnv.isRoot)) func workspaceUnderAPrivateParentWorks() throws {
        let parent = TestEnv.workspace()
        chmod(parent, 0o700)
        let ws = parent + "/project"
        try FileManager.default.createDirectory(atPath: ws, withIntermediateDirectories: false)
        let r = run([TestEnv.agentbox, "exec", "--workspace", ws, "--", "/bin/sh", "-c", "pwd; echo ok > f"], cwd: parent)
        #expect(r.code == 0, "\(r)")
        #expect(r.out == ws + "\n")
        #expect(FileManager.default.fileExists(atPath: ws + "/f"))
    }

    @Test(.enabled(if: TestEnv.isRoot)) func rootInvokedSandboxIsNotHostRoot() {
        let r = sh("cat /proc/self/uid_map; cat /etc/shadow >/dev/null 2>&1 && echo shadow-readable")
        let fields = r.out.split(separator: "\n").first?.split(separator: " ").map(String.init) ?? []
        #expect(fields.count == 3 && fields[1] != "0", "sandbox uid 0 must map to an unprivileged host uid: \(r)")
        #expect(!r.out.contains("shadow-readable"))
    }

    @Test func symlinkInTheWorkspaceCannotReachHostFiles() throws {
        let ws = TestEnv.workspace()
        let secret = "/root/agentbox-secret-\(UUID().uuidString.prefix(6))"
        _ = FileManager.default.createFile(atPath: secret, contents: Data("topsecret".utf8))
        defer { try? FileManager.default.removeItem(atPath: secret) }
        try FileManager.default.createSymbolicLink(atPath: ws + "/link", withDestinationPath: secret)
        let r = sh("cat link", in: ws)
        #expect(!r.out.contains("topsecret"))
    }
}

@Suite struct IsolationTests {
    @Test func noCapabilitiesNoNewPrivsAndSeccomp() {
        let r = sh("grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status")
        #expect(r.code == 0)
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(r.out.contains("\(cap):\t0000000000000000"), "\(cap) not empty: \(r.out)")
        }
        #expect(r.out.contains("NoNewPrivs:\t1"))
        #expect(r.out.contains("Seccomp:\t2"))
    }

    @Test func ownNamespacesHostnameAndPidOne() {
        let r = sh("hostname; echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'")
        let lines = r.out.split(separator: "\n").map(String.init)
        #expect(lines.first == "agentbox")
        #expect(lines.count == 4)
        #expect(lines[2] == "agentbox-init")
        #expect(Int(lines[3]) ?? 99 <= 4, "only the sandbox's processes are visible: \(r.out)")
    }

    @Test func networkHasOnlyLoopbackAndItIsUp() {
        let r = exec([], ["/bin/bash", "-c", """
            cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '
            (: > /dev/tcp/127.0.0.1/9) 2>&1 | grep -o 'Connection refused' | head -1
            (: > /dev/tcp/1.1.1.1/80) 2>&1 | grep -o 'Network is unreachable' | head -1
            """])
        #expect(r.out == "lo\nConnection refused\nNetwork is unreachable\n", "\(r)")
    }

    @Test func hostEnvironmentAndFileDescriptorsAreNotInherited() {
        let r = run(["/bin/sh", "-c", "exec 7</etc/hostname; '\(TestEnv.agentbox)' exec --env GIVEN=yes -- /bin/sh -c 'echo \"[$HOST_SECRET][$GIVEN]\"; ls /proc/self/fd | tr \"\\n\" \" \"'"],
                    cwd: TestEnv.workspace(), env: ["HOST_SECRET": "s3cr3t"])
        #expect(r.out.hasPrefix("[][yes]\n"), "\(r)")
        let fds = Set(r.out.split(separator: "\n").last!.split(separator: " ").map(String.init))
        #expect(fds == ["0", "1", "2", "3"], "only stdio (and ls's own directory fd): \(fds)")
    }

    @Test func dangerousSyscallsAreDenied() {
        let ws = TestEnv.workspace()
        let probe = TestEnv.probe
        let r = exec(["--ro", probe], [probe], in: ws)
        #expect(r.code == 0, "\(r)")
        var results: [String: String] = [:]
        for line in r.out.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 { results[String(parts[0])] = String(parts[1]) }
        }
        let eperm = ["mount", "umount", "pivot_root", "chroot", "unshare_user", "unshare_mount", "unshare_net",
                     "clone_newuser", "setns", "io_uring_setup", "userfaultfd", "perf_event_open", "bpf", "keyctl",
                     "add_key", "request_key", "open_tree", "fsopen", "move_mount", "mount_setattr", "process_vm_readv",
                     "kexec_load", "init_module", "reboot", "ioctl_tiocsti", "sethostname", "ptrace_pid1"]
        for name in eperm {
            #expect(results[name] == "EPERM", "\(name): \(results[name] ?? "missing")")
        }
        #expect(results["clone3"] == "ENOSYS", "clone3 must fail with ENOSYS so glibc falls back to clone")
        #expect(results["fork"] == "OK")
        #expect(results["socket"] == "OK")
    }

    @Test func kernelInterfacesCannotBeWritten() {
        let r = sh("echo b > /proc/sysrq-trigger || echo denied1; echo x > /proc/sys/kernel/hostname || echo denied2")
        #expect(r.out.contains("denied1") && r.out.contains("denied2"), "\(r)")
    }
}

@Suite struct LimitTests {
    @Test(.enabled(if: TestEnv.isRoot)) func memoryLimitOOMKillsWith137AndSaysSo() {
        let r = exec(["--memory", "48M"], ["/bin/sh", "-c", "head -c 400m /dev/zero | tail > /dev/null"])
        #expect(r.code == 137, "\(r)")
        let direct = exec(["--memory", "48M"], ["/usr/bin/tail", "/dev/zero"])
        #expect(direct.code == 137, "\(direct)")
        #expect(r.err.contains("OOM"), "\(r)")
    }

    @Test(.enabled(if: TestEnv.isRoot)) func pidsLimitStopsForkBombs() {
        let r = sh("i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done; echo started", ["--pids", "16", "--timeout", "20s"])
        #expect(r.err.contains("pids limit (16) was hit"), "\(r)")
    }

    @Test(.enabled(if: TestEnv.isRoot)) func cpuLimitIsEnforced() {
        // Two seconds of busy wall time at 0.1 CPU should consume far less than one second of CPU.
        let r = exec(["--cpus", "0.1"], ["/bin/bash", "-c", "while [ $SECONDS -lt 2 ]; do :; done; times"])
        #expect(r.code == 0, "\(r)")
        let first = r.out.split(separator: "\n").last.map(String.init) ?? ""
        let user = first.split(separator: " ").first.map(String.init) ?? ""
        let secondsText = user.split(separator: "m").last.map { $0.dropLast() } ?? ""
        let minutes = Double(user.split(separator: "m").first ?? "9") ?? 9
        let seconds = minutes * 60 + (Double(secondsText) ?? 9)
        #expect(seconds < 1.0, "CPU time with --cpus 0.1 was \(seconds)s: \(r.out)")
    }

    @Test func daemonizedProcessesDoNotOutliveTheSandbox() {
        let marker = "abdaemon\(UUID().uuidString.prefix(8))"
        let r = sh("setsid sh -c 'sleep 300; echo \(marker)' > /dev/null 2>&1 & echo started")
        #expect(r.code == 0 && r.out.contains("started"))
        #expect(eventually(2) { !hostHasProcess(withMarker: marker) })
    }

    @Test func sigtermIsForwardedAndNothingIsLeft() throws {
        let marker = "absigterm\(UUID().uuidString.prefix(8))"
        let p = try startAgentbox(["exec", "--", "/bin/sh", "-c", "sleep 300 # \(marker)"], stdout: nil, stderr: FileHandle.nullDevice)
        #expect(eventually { hostHasProcess(withMarker: "sleep 300") })
        usleep(200_000)
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationStatus == 143, "exit \(p.terminationStatus)")
        #expect(eventually(2) { !hostHasProcess(withMarker: marker) })
    }

    @Test func killingTheSupervisorKillsTheSandbox() throws {
        let marker = "abkill9\(UUID().uuidString.prefix(8))"
        let p = try startAgentbox(["exec", "--", "/bin/sh", "-c", "sleep 300; echo \(marker)"], stdout: nil)
        #expect(eventually { hostHasProcess(withMarker: marker) })
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(eventually(3) { !hostHasProcess(withMarker: marker) }, "the sandbox outlived a SIGKILLed supervisor")
    }

    @Test(.enabled(if: TestEnv.isRoot)) func cgroupsOfAKilledSupervisorAreCleanedUpLater() throws {
        let p = try startAgentbox(["exec", "--pids", "100", "--", "/bin/sleep", "300"], stdout: nil)
        let pattern = "ab-\(p.processIdentifier)-*"
        let find = "find /sys/fs/cgroup -maxdepth 8 -type d -name '\(pattern)' 2>/dev/null"
        #expect(eventually { !shell(find).out.isEmpty }, "the sandbox's cgroup was not created")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        // A SIGKILLed supervisor cannot clean up; the next run (any run: tests run concurrently) must.
        #expect(eventually(3) { exec(["--pids", "100"], ["/bin/true"]).code == 0 && shell(find).out.isEmpty })
    }

    @Test func fiftyConcurrentExecsDoNotInterfere() async {
        let results = await withTaskGroup(of: (Int, RunResult).self) { group in
            for i in 0..<50 {
                group.addTask { (i, sh("echo run-\(i) > mine && cat mine")) }
            }
            var all: [(Int, RunResult)] = []
            for await r in group { all.append(r) }
            return all
        }
        #expect(results.count == 50)
        for (i, r) in results {
            #expect(r.code == 0 && r.out == "run-\(i)\n", "run \(i): \(r)")
        }
    }
}

/// The rootless path, for real: an unprivileged user created by the tests runs agentbox.
@Suite(.enabled(if: TestEnv.isRoot && TestUser.shared != nil)) struct RootlessTests {
    let user = TestUser.shared!

    @Test func runsAsTheUserWithItsOwnFiles() throws {
        let ws = TestEnv.workspace(owner: user)
        let r = sh("id -u; echo hi > mine.txt; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status", in: ws, user: user)
        #expect(r.code == 0, "\(r)")
        #expect(r.out.hasPrefix("\(user.uid)\n"))
        #expect(r.out.contains("CapEff:\t0000000000000000"))
        let attrs = try FileManager.default.attributesOfItem(atPath: ws + "/mine.txt")
        #expect((attrs[.ownerAccountID] as? NSNumber)?.uint32Value == user.uid)
    }

    @Test func isolationHoldsWithoutRoot() {
        let ws = TestEnv.workspace(owner: user)
        let r = exec(["--ro", TestEnv.probe], [TestEnv.probe], in: ws, user: user)
        #expect(r.out.contains("mount EPERM") && r.out.contains("unshare_user EPERM") && r.out.contains("clone3 ENOSYS"), "\(r)")
        let fs = sh("echo x > /etc/x || echo ro; ls /home 2>&1 | head -1", in: ws, user: user)
        #expect(fs.out.contains("ro"))
    }

    @Test func limitsFallBackLoudlyOrFailUnderStrict() {
        let ws = TestEnv.workspace(owner: user)
        let degraded = exec(["--memory", "64M", "--pids", "32"], ["/bin/true"], in: ws, user: user)
        #expect(degraded.code == 0, "\(degraded)")
        #expect(degraded.err.contains("limits degraded") && degraded.err.contains("RLIMIT"), "\(degraded)")
        let strict = exec(["--memory", "64M", "--strict-limits"], ["/bin/true"], in: ws, user: user)
        #expect(strict.code == 125, "\(strict)")
        #expect(strict.err.contains("cannot be enforced"))
    }

    @Test func pidsFallbackIsEnforcedByRlimit() {
        let ws = TestEnv.workspace(owner: user)
        let r = sh("i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done 2>&1; echo done", ["--pids", "10", "--timeout", "20s"],
                   in: ws, user: user)
        #expect((r.out + r.err).contains("Cannot fork"), "RLIMIT_NPROC must stop the 11th process: \(r)")
    }

    @Test func journaledRunsWorkWithoutRootAndRecordTheDegradedMode() throws {
        let ws = TestEnv.workspace(owner: user)
        let home = ws + "/.home"
        let r = run([TestEnv.agentbox, "exec", "--name", "rl", "--pids", "50", "--", "/bin/sh", "-c", "echo journaled"], cwd: ws,
                    user: user, env: ["AGENTBOX_HOME": home])
        #expect(r.code == 0 && r.out == "journaled\n", "\(r)")
        let logs = run([TestEnv.agentbox, "logs", "rl", "--json"], cwd: ws, user: user, env: ["AGENTBOX_HOME": home])
        #expect(logs.out.contains("\"type\":\"warning\"") && logs.out.contains("limits degraded"), "\(logs)")
        #expect(logs.out.contains("\"type\":\"run.ended\""))
    }

    @Test func timeoutAndCleanupWithoutRoot() {
        let marker = "abrootless\(UUID().uuidString.prefix(8))"
        let ws = TestEnv.workspace(owner: user)
        let r = sh("(sleep 300; echo \(marker)) & sleep 300", ["--timeout", "1s"], in: ws, user: user)
        #expect(r.code == 124)
        #expect(!hostHasProcess(withMarker: marker))
    }
}

@Suite struct CommandTests {
    @Test func doctorJSONDescribesTheHost() throws {
        let r = run([TestEnv.agentbox, "doctor", "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        #expect(json?["user_namespaces"] as? Bool == true, "\(r)")
        #expect(["unified", "hybrid", "legacy", "unavailable"].contains(json?["cgroup_mode"] as? String ?? ""))
        #expect((json?["guarantees"] as? [String: Any])?["seccomp"] != nil)
        #expect(json?["sandbox_works"] as? Bool == true, "\(r)")
        let human = run([TestEnv.agentbox, "doctor"])
        #expect(human.code == 0)
        #expect(human.out.contains("namespaces") && human.out.contains("limits"))
        // A host (here: an install) where sandboxes cannot be built is named, and doctor fails.
        let broken = run([TestEnv.agentbox, "doctor"], env: ["AGENTBOX_INIT": "/bin/false"])
        #expect(broken.code == 1, "\(broken)")
        #expect(broken.out.contains("WEAK sandbox"), "\(broken)")
    }

    @Test func profileListShowAndCheck() throws {
        let list = run([TestEnv.agentbox, "profile", "list"])
        #expect(list.out.contains("workspace-write") && list.out.contains("read-only"), "\(list)")
        let show = run([TestEnv.agentbox, "profile", "show", "read-only"], cwd: TestEnv.workspace())
        let policy = try JSONSerialization.jsonObject(with: Data(show.out.utf8)) as? [String: Any]
        #expect(policy?["profile"] as? String == "read-only", "\(show)")
        let ok = run([TestEnv.agentbox, "profile", "check", TestEnv.installDir + "/sandbox-profiles/workspace-write.json"])
        #expect(ok.code == 0, "\(ok)")
        let ws = TestEnv.workspace()
        try #"{"filesystem": {"workspace": "rw", "rox": []}}"#.write(toFile: ws + "/bad.json", atomically: true, encoding: .utf8)
        let bad = run([TestEnv.agentbox, "profile", "check", ws + "/bad.json"])
        #expect(bad.code == 1)
        #expect(bad.err.contains("bad.json") && bad.err.contains("filesystem.rox"), "\(bad)")
        try #"{"seccomp": "sec.json"}"#.write(toFile: ws + "/p2.json", atomically: true, encoding: .utf8)
        try #"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOPE"}]}"#
            .write(toFile: ws + "/sec.json", atomically: true, encoding: .utf8)
        let badSeccomp = run([TestEnv.agentbox, "profile", "check", ws + "/p2.json"])
        #expect(badSeccomp.code == 1 && badSeccomp.err.contains("syscalls[0].action"), "\(badSeccomp)")
    }

    @Test func helpIsCompleteAndExitsZero() {
        let r = run([TestEnv.agentbox, "exec", "--help"])
        #expect(r.code == 0)
        for flag in ["--profile", "--workspace", "--ro", "--rw", "--hide", "--network", "--memory", "--pids", "--cpus",
                     "--timeout", "--tmp-size", "--env", "--strict-limits"] {
            #expect(r.out.contains(flag), "--help lacks \(flag)")
        }
        #expect(run([TestEnv.agentbox, "version"]).out.hasPrefix("agentbox "))
    }
}
