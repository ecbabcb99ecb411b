import AgentboxCore
import Foundation
import Testing

/// Issue 9: a hostile command must not be able to leave privilege behind on the host, nor reach
/// agentbox's own state. Every test here tries the attack for real and checks the host afterwards.
@Suite struct FileModeGuardTests {
    /// A set-id file outside the workspace (cp -p copies its mode), bound read-only into the sandbox.
    static let setidSource: String = {
        let path = TestEnv.installDir + "/setid-source"
        _ = shell("cp /bin/true '\(path)' && chmod 4755 '\(path)'")
        return path
    }()

    /// Runs Tests/Probe/setid_routes.py in `ws` and checks the results inside and the files on the host.
    func tryEveryRoute(in ws: String, user: TestUser? = nil, extra: [String] = []) {
        let script = TestEnv.installDir + "/setid_routes.py"
        _ = shell("cp '\(TestEnv.repoRoot)/Tests/Probe/setid_routes.py' '\(script)' && chmod a+r '\(script)'")
        let r = exec(["--ro", script, "--ro", Self.setidSource] + extra, ["/usr/bin/python3", script, Self.setidSource], in: ws, user: user)
        #expect(r.code == 0, "\(r)")
        var results: [String: String] = [:]
        for line in r.out.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 { results[String(parts[0])] = String(parts[1]) }
        }
        #expect(results.count >= 25, "every route reported: \(r)")
        // mkdir: the kernel keeps only the permission bits. cp -p and tar -xp: as a user, GNU tools drop
        // set-id bits themselves when they cannot keep the owner; the host check below is what counts.
        for (route, result) in results where !route.hasPrefix("mkdir-") && route != "cp-p" && route != "tar-xp" {
            #expect(result != "OK", "\(route) succeeded inside the sandbox")
        }
        #expect(results["openat2"] == "ENOSYS", "openat2 must be unavailable so libc falls back: \(results["openat2"] ?? "missing")")
        #expect(results["chmod-suid"] == "EPERM" && results["open-creat-suid"] == "EPERM" && results["mknod-sgid"] == "EPERM")
        // What matters is the host: nothing in the workspace is set-id or carries file capabilities.
        let found = shell("find '\(ws)' -perm /6000 -printf '%m %p\\n'")
        #expect(found.out.isEmpty, "set-id files left on the host: \(found.out)")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: ws)) ?? []
        #expect(names.contains("chmod-suid") && names.contains("mkdir-suid"), "the probe ran in the workspace: \(names)")
        let caps = shell("""
            python3 -c 'import os,sys; [print(n) for n in os.listdir(sys.argv[1]) if "security.capability" in os.listxattr(os.path.join(sys.argv[1], n))]' '\(ws)'
            """)
        #expect(caps.code == 0 && caps.out.isEmpty, "files with capabilities: \(caps)")
    }

    @Test func noSetIDBitsReachTheHostFromARootOwnedWorkspace() {
        tryEveryRoute(in: TestEnv.workspace())
    }

    @Test(.enabled(if: TestEnv.isRoot && TestUser.shared != nil))
    func noSetIDBitsReachTheHostFromAUsersWorkspaceRunByRoot() {
        tryEveryRoute(in: TestEnv.workspace(owner: TestUser.shared!))
    }

    @Test(.enabled(if: TestEnv.isRoot && TestUser.shared != nil))
    func noSetIDBitsReachTheHostRootless() {
        let user = TestUser.shared!
        tryEveryRoute(in: TestEnv.workspace(owner: user), user: user)
    }

    @Test func theGuardHoldsWhateverTheProfileSays() throws {
        // A profile without any seccomp policy (and Docker-style profiles that allow chmod) still gets it.
        let dir = TestEnv.workspace()
        let profile = dir + "/no-seccomp.json"
        try #"{"extends": "workspace-write", "seccomp": null}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        let ws = TestEnv.workspace()
        let r = sh("cp /bin/true t && chmod 4755 t; chmod 2755 t; echo done", ["--profile", profile], in: ws)
        #expect(r.out == "done\n", "\(r)")
        #expect(shell("find '\(ws)' -perm /6000").out.isEmpty)
    }

    @Test func writableBindsAreNosuidAndNodev() {
        let ws = TestEnv.workspace()
        let extra = TestEnv.workspace()
        let r = sh("grep -E ' (\(ws)|\(extra)) ' /proc/self/mountinfo", ["--rw", extra], in: ws)
        let lines = r.out.split(separator: "\n")
        #expect(lines.count == 2, "\(r)")
        for line in lines {
            let options = line.split(separator: " ")[5].split(separator: ",")
            #expect(options.contains("nosuid") && options.contains("nodev") && options.contains("rw"), "\(line)")
        }
    }

    @Test(.enabled(if: TestEnv.isRoot && TestUser.shared != nil))
    func writableBindsAreNosuidAndNodevRootless() {
        let user = TestUser.shared!
        let ws = TestEnv.workspace(owner: user)
        let r = sh("grep -E ' \(ws) ' /proc/self/mountinfo", in: ws, user: user)
        let options = r.out.split(separator: " ").dropFirst(5).first?.split(separator: ",") ?? []
        #expect(options.contains("nosuid") && options.contains("nodev"), "\(r)")
    }
}

/// agentbox's state, configuration and binaries inside a workspace (`--workspace ~`) are out of reach:
/// a run cannot rewrite another run's journal, forge confessions, plant the next run's profile or
/// prices, or replace agentbox, not even by renaming the folders around them.
@Suite struct OwnFilesTests {
    static let attack = """
        for j in .local/state/agentbox/runs/*/journal.jsonl; do echo forged >> "$j"; done
        echo forged >> .local/state/agentbox/confessions.jsonl
        rm -rf .local/state/agentbox/runs
        mv .local .local.old; mv .local/state .local/state.old; mv .local/state/agentbox .local/state/gone
        mv .config .config.old; mv .config/agentbox .config/old
        mkdir -p .config/agentbox/profiles
        printf '{"filesystem": {"rw": ["/etc"]}, "seccomp": null}' > .config/agentbox/profiles/workspace-write.json
        printf '{"models": {}}' > .config/agentbox/prices.json
        echo attacked
        """

    func stateIsOutOfReach(user: TestUser?) throws {
        let home = TestEnv.workspace(owner: user)
        var env = ["HOME": home]
        if user == nil { env["AGENTBOX_HOME"] = home + "/.local/state/agentbox" }  // root's default is /var/lib/agentbox
        let victim = run([TestEnv.agentbox, "exec", "--name", "victim", "--", "/bin/echo", "original"], cwd: home, user: user, env: env)
        #expect(victim.code == 0, "\(victim)")
        let journals = shell("ls '\(home)'/.local/state/agentbox/runs/*/journal.jsonl").out.split(separator: "\n").map(String.init)
        #expect(journals.count == 1)
        let before = try journals.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }

        let r = run([TestEnv.agentbox, "exec", "--", "/bin/sh", "-c", Self.attack], cwd: home, user: user, env: env)
        #expect(r.code == 0 && r.out == "attacked\n", "\(r)")
        #expect(r.err.contains("hiding \(home)/.local/state/agentbox inside the sandbox"), "said on stderr: \(r.err)")
        #expect(r.err.contains("hiding \(home)/.config/agentbox inside the sandbox"), "\(r.err)")

        let after = try journals.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        #expect(after == before, "the victim's journal is unchanged")
        let verify = run([TestEnv.agentbox, "journal", "verify", "victim"], cwd: home, user: user, env: env)
        #expect(verify.code == 0, "\(verify)")
        let feed = (try? String(contentsOfFile: home + "/.local/state/agentbox/confessions.jsonl", encoding: .utf8)) ?? ""
        #expect(!feed.contains("forged"))
        let fm = FileManager.default
        for moved in [".local.old", ".config.old", ".local/state.old", ".config/agentbox/profiles/workspace-write.json",
                      ".config/agentbox/prices.json"] {
            #expect(!fm.fileExists(atPath: home + "/" + moved), "\(moved) was created or moved on the host")
        }
        // The next run still loads the real profile (its seccomp policy is in force).
        let next = run([TestEnv.agentbox, "exec", "--", "/bin/sh", "-c", "grep Seccomp: /proc/self/status; echo x > /etc/x || echo ro"],
                       cwd: home, user: user, env: env)
        #expect(next.out.contains("Seccomp:\t2") && next.out.contains("ro"), "\(next)")
    }

    @Test func stateAndConfigurationInsideTheWorkspaceAreOutOfReach() throws {
        try stateIsOutOfReach(user: nil)
    }

    @Test(.enabled(if: TestEnv.isRoot && TestUser.shared != nil))
    func stateAndConfigurationInsideTheWorkspaceAreOutOfReachRootless() throws {
        try stateIsOutOfReach(user: TestUser.shared!)
    }

    @Test func agentboxsBinariesAndProfilesInsideTheWorkspaceAreReadOnly() throws {
        let ws = TestEnv.workspace()
        _ = shell("cp -r '\(TestEnv.installDir)' '\(ws)/tools' && rm -f '\(ws)/tools/probe'")
        let files = ["tools/agentbox", "tools/agentbox-init", "tools/sandbox-profiles/workspace-write.json"]
        let before = files.map { FileManager.default.contents(atPath: ws + "/" + $0) }
        let namesBefore = Set((try? FileManager.default.contentsOfDirectory(atPath: ws + "/tools")) ?? [])
        let r = run([ws + "/tools/agentbox", "exec", "--", "/bin/sh", "-c", """
            echo x > tools/agentbox-init; echo x >> tools/sandbox-profiles/workspace-write.json; cp /bin/true tools/agentbox
            cp /bin/true tools/libseccomp.so.2; cp /bin/true tools/libcurl.so.4  # found through $ORIGIN
            mv tools/sandbox-profiles tools/p2; mv tools tools2; echo done
            """], cwd: ws)
        #expect(r.code == 0 && r.out == "done\n", "\(r)")
        #expect(files.map { FileManager.default.contents(atPath: ws + "/" + $0) } == before, "agentbox's files are unchanged")
        #expect(!FileManager.default.fileExists(atPath: ws + "/tools2"))
        let names = Set((try? FileManager.default.contentsOfDirectory(atPath: ws + "/tools")) ?? [])
        #expect(names == namesBefore, "nothing can be planted next to the binary (libraries, another init)")
    }

    @Test func aSymlinkOnTheWayToAgentboxsFilesInsideTheWorkspaceIsRefused() throws {
        let home = TestEnv.workspace()
        try FileManager.default.createDirectory(atPath: home + "/dotfiles/config/agentbox", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: home + "/.config", withDestinationPath: "dotfiles/config")
        let r = run([TestEnv.agentbox, "exec", "--", "/bin/sh", "-c", "rm .config; mkdir -p .config/agentbox/profiles"], cwd: home,
                    env: ["HOME": home, "AGENTBOX_HOME": home + "/state"])
        #expect(r.code == 125 && r.err.contains("\(home)/.config is a symlink inside the writable bind"), "\(r)")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: home + "/.config")) == "dotfiles/config")
    }

    @Test func bindsInsideAgentboxsStateAreRefused() {
        let home = TestEnv.workspace()
        let state = home + "/state"
        let env = ["AGENTBOX_HOME": state]
        _ = run([TestEnv.agentbox, "exec", "--name", "x", "--", "/bin/true"], cwd: home, env: env)
        for options in [["--rw", state + "/runs"], ["--workspace", state], ["--ro", state]] {
            let r = run([TestEnv.agentbox, "exec"] + options + ["--", "/bin/true"], cwd: home, env: env)
            #expect(r.code == 125 && r.err.contains("agentbox's state"), "\(options): \(r)")
        }
    }

    @Test func theRecordSaysWhatWasProtected() throws {
        let home = TestEnv.workspace()
        let env = ["AGENTBOX_HOME": home + "/state"]
        let r = run([TestEnv.agentbox, "exec", "--name", "rec", "--", "/bin/true"], cwd: home, env: env)
        #expect(r.code == 0, "\(r)")
        let logs = run([TestEnv.agentbox, "logs", "rec", "--json"], cwd: home, env: env)
        #expect(logs.out.contains("\"protected\":[{\"path\":\"\(home)/state\""), "\(logs.out.prefix(2000))")
    }
}

/// Kernel resources no cgroup counts: a sandbox gets a bound on each, so it cannot take them from the
/// host user who started it (root included) or from other sandboxes.
@Suite(.serialized) struct SharedResourceTests {
    static let exhaust = """
        import ctypes, os, sys
        libc = ctypes.CDLL(None)
        n = 0
        while libc.inotify_init() >= 0: n += 1
        ptys = []
        try:
            while True: ptys.append(os.open("/dev/ptmx", os.O_RDWR))
        except OSError: pass
        print("inotify", n, "ptys", len(ptys), flush=True)
        open("held", "w").write("held")
        import time; time.sleep(float(sys.argv[1]))
        """

    func bounded(user: TestUser?) {
        let ws = TestEnv.workspace(owner: user)
        let r = exec([], ["/usr/bin/python3", "-c", Self.exhaust, "0"], in: ws, user: user)
        #expect(r.out == "inotify 32 ptys 256\n", "\(r)")
        let limits = sh("cat /proc/sys/user/max_user_namespaces /proc/sys/kernel/msgmni; grep -E 'pending|msgqueue' /proc/self/limits",
                        in: ws, user: user)
        let lines = limits.out.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.count == 4, "\(limits)")
        #expect(lines.first == ["0"], "\(limits)")
        if user == nil { #expect(lines.dropFirst().first == ["256"], "root maps the IPC namespace's root: \(limits)") }
        for line in lines.dropFirst(2) {
            #expect(Int(line[line.count - 2]) ?? .max <= 4096 * 64, "\(line)")
        }
    }

    @Test func inotifyPtysAndIPCAreBoundedPerSandbox() { bounded(user: nil) }

    @Test(.enabled(if: TestEnv.isRoot && TestUser.shared != nil))
    func inotifyPtysAndIPCAreBoundedPerSandboxRootless() { bounded(user: TestUser.shared!) }

    @Test(.enabled(if: TestEnv.isRoot)) func sandboxesHoldingAllTheyCanLeaveInotifyToRoot() throws {
        // Five sandboxes at once, each holding its 32: 160, more than root's 128 on the host. Each
        // sandbox's user namespace is owned by its own mapped uid, so none of it is charged to root.
        var sandboxes: [(Process, String)] = []
        for _ in 0..<5 {
            let ws = TestEnv.workspace()
            sandboxes.append((try startAgentbox(["exec", "--", "/usr/bin/python3", "-c", Self.exhaust, "20"], cwd: ws), ws))
        }
        defer { for (p, _) in sandboxes { p.terminate(); p.waitUntilExit() } }
        for (_, ws) in sandboxes {
            #expect(eventually(20) { FileManager.default.fileExists(atPath: ws + "/held") })
        }
        let host = shell("python3 -c 'import ctypes; l=ctypes.CDLL(None); print(sum(1 for _ in range(40) if l.inotify_init() >= 0))'")
        #expect(host.out == "40\n", "root could not create inotify instances while sandboxes held theirs: \(host)")
    }
}

/// The journal is on the host's disk, outside every cgroup: what a command prints is stored up to a cap,
/// and never past the disk's floor; the rest is shown and counted.
@Suite struct JournalBoundTests {
    func records(_ run: String, home: String) -> [[String: Any]] {
        let logs = shell("AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' logs '\(run)' --json")
        return logs.out.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    @Test func outputPastTheCapIsShownCountedAndConfessedButNotStored() throws {
        let home = TestEnv.workspace()
        let ws = TestEnv.workspace()
        let r = shell("cd '\(ws)' && AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' exec --name chatty --journal-output 1M -- sh -c 'yes 0123456789abcdef | head -c 3000000; echo done >&2' | wc -c")
        #expect(r.out.trimmingCharacters(in: .whitespacesAndNewlines) == "3000000", "all output is passed through: \(r)")
        let recs = records("chatty", home: home)
        let stored = recs.filter { $0["type"] as? String == "output" }
            .reduce(0) { $0 + ((($1["data"] as? [String: Any])?["length"] as? Int) ?? 0) }
        let dropped = recs.first { $0["type"] as? String == "output.dropped" }?["data"] as? [String: Any]
        // The cap counts what is stored: the raw bytes and the output records' lines (a few hundred bytes here).
        let recorded = dropped?["stored"] as? Int ?? 0
        #expect(recorded <= (1 << 20) + 256 && stored < recorded && stored > (1 << 20) - 8192, "\(stored) \(String(describing: dropped))")
        let files = try FileManager.default.contentsOfDirectory(atPath: home + "/runs").filter { !$0.hasPrefix(".") }
        let size = (try? FileManager.default.attributesOfItem(atPath: home + "/runs/" + (files.first ?? "") + "/stdout"))?[.size] as? Int
        #expect(files.count == 1 && size == stored, "the raw file holds what the records say: \(String(describing: size))")
        #expect(dropped?["reason"] as? String == "cap" && (dropped?["stdout"] as? Int).map { $0 + stored } == 3_000_000
                    && dropped?["stderr"] as? Int == 5, "every byte is stored or counted: \(String(describing: dropped))")
        #expect(recs.contains { $0["type"] as? String == "confession" })
        let feed = try String(contentsOfFile: home + "/confessions.jsonl", encoding: .utf8)
        #expect(feed.contains("journal's cap"))
    }

    @Test(.enabled(if: TestEnv.isRoot)) func aNearlyFullDiskStopsStoringOutputNotTheRun() throws {
        let home = TestEnv.workspace()
        #expect(shell("mount -t tmpfs -o size=32m agentbox-test-home '\(home)'").code == 0)
        defer { _ = shell("umount -l '\(home)'") }
        let ws = TestEnv.workspace()
        let r = shell("cd '\(ws)' && AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' exec --name flood --journal-output 1G -- sh -c 'head -c 40000000 /dev/zero; echo done' | wc -c")
        #expect(r.out.trimmingCharacters(in: .whitespacesAndNewlines) == "40000005", "the run went on and showed everything: \(r)")
        let recs = records("flood", home: home)
        let dropped = recs.first { $0["type"] as? String == "output.dropped" }?["data"] as? [String: Any]
        #expect(dropped?["reason"] as? String == "disk", "\(String(describing: dropped))")
        #expect(recs.last?["type"] as? String == "run.ended", "the run's last records fit")
        let verify = shell("AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' journal verify flood")
        #expect(verify.code == 0, "\(verify)")
        let free = shell("df -B1 --output=avail '\(home)' | tail -1").out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect((Int(free) ?? 0) > 1 << 20, "the disk was not filled: \(free) bytes free")
    }
}

/// What a model controls is bounded: the size of an answer (streamed or not), the tool calls of a turn
/// and of a run. The supervisor is outside every cgroup: its memory must not follow the server's bytes.
@Suite(.serialized) struct ModelBoundTests {
    static let server = try! FakeModelServer()
    var env: [String: String] { ["OPENAI_API_KEY": FakeModelServer.key, "AGENTBOX_MODEL_IDLE_TIMEOUT": "5"] }

    /// `model check` against a scenario, under a wrapper that reports the peak RSS (KiB) of agentbox.
    func checkWithPeak(_ scenario: String) -> (RunResult, Int) {
        let script = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            + "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        let r = run(["/usr/bin/python3", "-c", script, TestEnv.agentbox, "model", "check", "--model", "openai:m",
                     "--base-url", Self.server.base(scenario)], env: env)
        let fields = r.out.split(separator: " ").map { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 }
        return (RunResult(code: Int32(fields.first ?? -1), out: "", err: r.err), fields.count == 2 ? fields[1] : -1)
    }

    @Test(arguments: ["flood", "floodline", "floodjson"])
    func a64MiBAnswerFailsAtTheCapWithBoundedMemory(scenario: String) {
        let (r, peakKiB) = checkWithPeak(scenario)
        #expect(r.code == 1, "\(r)")
        #expect(r.err.contains("passed 16 MiB") && r.err.contains("not retried"), "the message names the cap: \(r.err)")
        #expect(peakKiB > 0 && peakKiB < 100 * 1024, "peak RSS \(peakKiB) KiB while the server sent 64 MiB")
    }

    func agentRun(_ script: String, home: String, extra: [String] = []) -> RunResult {
        run([TestEnv.agentbox, "run", "--model", "openai:gpt-4o", "--base-url", Self.server.agent(script), "--task", "t"] + extra,
            cwd: TestEnv.workspace(), env: env.merging(["AGENTBOX_HOME": home]) { $1 })
    }

    @Test func aTurnRunsAtMost32ToolCallsAndAnswersTheRestWithErrors() {
        let home = TestEnv.workspace()
        let r = agentRun("many", home: home)
        #expect(r.code == 0, "\(r)")
        #expect(Self.server.violationLog.isEmpty, "\(Self.server.violationLog)")
    }

    @Test func toolCallsCountInTheBudget() {
        let home = TestEnv.workspace()
        let r = agentRun("spin", home: home, extra: ["--name", "spinner", "--max-tool-calls", "3"])
        #expect(r.code == 3, "\(r)")
        let logs = run([TestEnv.agentbox, "logs", "spinner", "--json"], env: ["AGENTBOX_HOME": home]).out
        #expect(logs.contains("\"type\":\"budget\",\"data\":{\"kind\":\"tool_calls\""), "\(logs.suffix(1500))")
        #expect(logs.components(separatedBy: "\"type\":\"tool.call\"").count - 1 == 3, "exactly 3 tool calls ran")
    }
}

/// The init is inside the sandbox: a malformed message from it ends the run as a protocol error, on
/// record, never silently. (A stand-in init speaks garbage on the control channel.)
@Suite struct ChannelTests {
    static let fakeInit: String = {
        let path = TestEnv.installDir + "/garbage-init"
        let script = """
            #!/usr/bin/python3
            import socket
            s = socket.socket(fileno=3)
            s.recv(1 << 24)
            s.send(bytes([0xEE]) + b"not a message")
            import time; time.sleep(2)
            """
        _ = FileManager.default.createFile(atPath: path, contents: Data(script.utf8))
        chmod(path, 0o755)
        return path
    }()

    @Test func aMalformedMessageFromTheInitEndsTheRunOnRecord() throws {
        let home = TestEnv.workspace()
        let r = run([TestEnv.agentbox, "exec", "--name", "garbled", "--", "/bin/true"], cwd: TestEnv.workspace(),
                    env: ["AGENTBOX_HOME": home, "AGENTBOX_INIT": Self.fakeInit])
        #expect(r.code == 125 && r.err.contains("sandbox protocol") && r.err.contains("malformed"), "\(r)")
        let logs = run([TestEnv.agentbox, "logs", "garbled", "--json"], env: ["AGENTBOX_HOME": home]).out
        #expect(logs.contains("\"state\":\"failed\"") && logs.contains("sandbox protocol"), "\(logs.suffix(800))")
    }
}

/// Every parser of untrusted bytes survives mutated input (a short run of `make fuzz`; the seed is
/// printed, and a failing input is left in fuzz-crash-TARGET.bin in the working directory).
@Suite struct FuzzTests {
    @Test func parsersSurviveMutatedInput() {
        let fuzzer = TestEnv.repoRoot + "/.build/debug/agentbox-fuzz"
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        let dir = TestEnv.workspace()
        let r = run([fuzzer, "--seconds", "10", "--seed", String(seed)], cwd: dir)
        #expect(r.code == 0, "seed \(seed): \(r)")
        #expect(r.out.components(separatedBy: "no crash").count - 1 == 10, "every target ran: \(r.out)")
    }
}

extension OwnFilesTests {
    @Test func aProfileKeptInTheWorkspaceAndItsParentCannotBeRewrittenForTheNextRun() throws {
        let ws = TestEnv.workspace()
        try #"{"extends": "workspace-write", "env": {"FROM": "base"}}"#.write(toFile: ws + "/base.json", atomically: true, encoding: .utf8)
        try #"{"extends": "./base.json", "description": "mine"}"#.write(toFile: ws + "/mine.json", atomically: true, encoding: .utf8)
        let before = ["base.json", "mine.json"].map { FileManager.default.contents(atPath: ws + "/" + $0) }
        let r = run([TestEnv.agentbox, "exec", "--profile", "./mine.json", "--", "/bin/sh", "-c", """
            echo "[$FROM]"; printf '{"seccomp": null}' > base.json; printf '{}' > mine.json; rm -f base.json mine.json; echo done
            """], cwd: ws)
        #expect(r.out == "[base]\ndone\n", "\(r)")
        #expect(["base.json", "mine.json"].map { FileManager.default.contents(atPath: ws + "/" + $0) } == before)
    }

    @Test func aRelativeProfileFolderThatASandboxCouldCreateIsRefused() {
        let ws = TestEnv.workspace()
        let r = run([TestEnv.agentbox, "exec", "--", "/bin/true"], cwd: ws, env: ["AGENTBOX_PROFILES": "my-profiles"])
        #expect(r.code == 125 && r.err.contains("\(ws)/my-profiles does not exist"), "\(r)")
        _ = shell("mkdir '\(ws)/my-profiles'")
        let ok = run([TestEnv.agentbox, "exec", "--", "/bin/sh", "-c", "touch my-profiles/workspace-write.json || echo ro"], cwd: ws,
                     env: ["AGENTBOX_PROFILES": "my-profiles"])
        #expect(ok.code == 0 && ok.out.contains("ro"), "\(ok)")
        #expect(!FileManager.default.fileExists(atPath: ws + "/my-profiles/workspace-write.json"))
    }
}

extension ModelBoundTests {
    @Test func anAgentsConfessionIsClippedForTheFeed() throws {
        let home = TestEnv.workspace()
        let r = agentRun("bigconfess", home: home, extra: ["--name", "loud"])
        #expect(r.code == 0, "\(r)")
        let feed = try String(contentsOfFile: home + "/confessions.jsonl", encoding: .utf8)
        let line = feed.split(separator: "\n").first.map(String.init) ?? ""
        #expect(line.utf8.count < 2000 && line.contains("bytes cut by agentbox"), "\(line.prefix(300))")
        let logs = run([TestEnv.agentbox, "logs", "loud", "--json"], env: ["AGENTBOX_HOME": home]).out
        let confession = logs.split(separator: "\n").first { $0.contains("\"type\":\"confession\"") } ?? ""
        #expect(confession.utf8.count < 20_000, "the journal's record is clipped too: \(confession.utf8.count) bytes")
    }

    @Test(.enabled(if: TestEnv.isRoot)) func aRunStopsBeforeItsJournalFillsTheDisk() throws {
        let home = TestEnv.workspace()
        #expect(shell("mount -t tmpfs -o size=48m agentbox-test-run-home '\(home)'").code == 0)
        defer { _ = shell("umount -l '\(home)'") }
        let r = agentRun("spin", home: home, extra: ["--name", "tight"])
        #expect(r.code == 1 && r.err.contains("disk is almost full"), "\(r)")
        let logs = run([TestEnv.agentbox, "logs", "tight", "--json"], env: ["AGENTBOX_HOME": home]).out
        #expect(logs.contains("\"kind\":\"journal_disk\"") && logs.contains("\"type\":\"run.ended\""), "\(logs.suffix(600))")
    }
}

extension OwnFilesTests {
    /// Another sandbox of the same user swaps folders of a shared workspace while this one is built:
    /// every bind and cover lands on what the supervisor checked, or the setup fails.
    @Test func swappingFoldersWhileASandboxIsBuiltNeverExposesAgentboxsFiles() throws {
        let home = TestEnv.workspace()
        try FileManager.default.createDirectory(atPath: home + "/proj", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: home + "/projlink", withDestinationPath: ".")
        let env = ["HOME": home, "AGENTBOX_HOME": home + "/.local/state/agentbox"]
        let swapper = """
            import ctypes, time
            libc = ctypes.CDLL(None, use_errno=True)
            end = time.time() + float(12)
            open("swapping", "w").close()
            while time.time() < end:
                libc.syscall(316, -100, b"proj", -100, b"projlink", 2)  # renameat2(RENAME_EXCHANGE)
            """
        let a = Process()
        a.executableURL = URL(fileURLWithPath: TestEnv.agentbox)
        a.arguments = ["exec", "--", "/usr/bin/python3", "-c", swapper]
        a.currentDirectoryURL = URL(fileURLWithPath: home)
        a.environment = env.merging(["PATH": "/usr/bin:/bin"]) { $1 }
        a.standardOutput = FileHandle.nullDevice
        a.standardError = FileHandle.nullDevice
        try a.run()
        defer { a.terminate(); a.waitUntilExit() }
        #expect(eventually(10) { FileManager.default.fileExists(atPath: home + "/swapping") })
        // Relative to the workspace: the swap would make it the whole home.
        let plant = "mkdir -p .config/agentbox/profiles && touch .config/agentbox/profiles/PLANTED"
        for _ in 0..<25 {
            _ = run([TestEnv.agentbox, "exec", "--workspace", home + "/proj", "--", "/bin/sh", "-c", plant], cwd: "/", env: env)
        }
        #expect(!FileManager.default.fileExists(atPath: home + "/.config/agentbox/profiles/PLANTED"),
                "a sandbox built during the swaps reached agentbox's configuration")
    }
}

extension JournalBoundTests {
    @Test func theCapCountsRawBytesAndTheJournalStaysSmall() throws {
        let home = TestEnv.workspace()
        let ws = TestEnv.workspace()
        // NUL bytes (six bytes each when output was escaped into the journal) are stored as they are.
        let r = shell("cd '\(ws)' && AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' exec --name zeros --journal-output 1M -- head -c 3000000 /dev/zero | wc -c")
        #expect(r.out.trimmingCharacters(in: .whitespacesAndNewlines) == "3000000", "\(r)")
        let stdout = shell("du -b '\(home)'/runs/*/stdout | cut -f1").out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect((Int(stdout) ?? 0) > (1 << 20) - 8192 && (Int(stdout) ?? .max) <= 1 << 20, "a 1M cap stores about 1 MiB of output: \(stdout)")
        let journal = shell("du -b '\(home)'/runs/*/journal.jsonl | cut -f1").out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect((Int(journal) ?? .max) < 16 << 10, "the journal only points at the output: \(journal) bytes")
    }

    @Test func aCommandAlternatingTinyWritesCannotGrowTheJournalPastTheCap() throws {
        let home = TestEnv.workspace()
        let ws = TestEnv.workspace()
        // One byte to stdout, one to stderr, ...: a record for (nearly) every byte, each ~130 bytes of JSON.
        try "import os\nfor i in range(100000): os.write(1 + i % 2, b'x')\n".write(toFile: ws + "/alt.py", atomically: true, encoding: .utf8)
        let r = shell("cd '\(ws)' && AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' exec --name alt --journal-output 64K -- python3 alt.py > /dev/null 2>&1")
        #expect(r.code == 0, "\(r)")
        let total = shell("cat '\(home)'/runs/*/journal.jsonl '\(home)'/runs/*/stdout '\(home)'/runs/*/stderr | wc -c").out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect((Int(total) ?? .max) < (64 << 10) + (16 << 10), "a 64K cap bounds what the run stores, records included: \(total) bytes")
        let verify = shell("AGENTBOX_HOME='\(home)' '\(TestEnv.agentbox)' journal verify alt")
        #expect(verify.code == 0, "\(verify)")
    }
}

extension OwnFilesTests {
    @Test func relativeSettingsNameTheSamePathsThatAreProtected() throws {
        let ws = TestEnv.workspace()
        try "{}".write(toFile: ws + "/prices.json", atomically: true, encoding: .utf8)
        try "not a CA".write(toFile: ws + "/ca.pem", atomically: true, encoding: .utf8)
        let env = ["AGENTBOX_HOME": ".abhome", "AGENTBOX_PRICES": "prices.json", "AGENTBOX_CA_BUNDLE": "ca.pem", "XDG_CACHE_HOME": ".xc"]
        let first = run([TestEnv.agentbox, "exec", "--name", "first", "--", "/bin/echo", "output"], cwd: ws, env: env)
        #expect(first.code == 0, "\(first)")
        let r = run([TestEnv.agentbox, "exec", "--", "/bin/sh", "-c", """
            for f in .abhome/runs/*/journal.jsonl .abhome/runs/*/stdout .abhome/confessions.jsonl prices.json ca.pem; do echo forged >> "$f"; done; \
            mkdir -p .xc/agentbox && echo forged > .xc/agentbox/x; echo done
            """], cwd: ws, env: env)
        #expect(r.code == 0 && r.out == "done\n", "\(r)")
        #expect(r.err.contains("hiding \(ws)/.abhome"), "\(r.err)")
        let verify = run([TestEnv.agentbox, "journal", "verify", "first"], cwd: ws, env: env)
        #expect(verify.code == 0, "\(verify)")
        #expect(try String(contentsOfFile: ws + "/prices.json", encoding: .utf8) == "{}")
        #expect(try String(contentsOfFile: ws + "/ca.pem", encoding: .utf8) == "not a CA")
    }
}


@Suite struct BindShapesTests {
    @Test func aWritableFileBindWorksWithLandlock() throws {
        let file = TestEnv.workspace() + "/notes.txt"
        try "x\n".write(toFile: file, atomically: true, encoding: .utf8)
        let r = sh("echo y >> '\(file)' && cat '\(file)'", ["--rw", file])
        #expect(r.code == 0 && r.out == "x\ny\n", "\(r)")
    }

    @Test func aBindInsideAHiddenFolderIsAClearError() throws {
        let ws = TestEnv.workspace()
        try FileManager.default.createDirectory(atPath: ws + "/d/in", withIntermediateDirectories: true)
        let r = sh("true", ["--hide", "d", "--ro", "d/in"], in: ws)
        #expect(r.code == 125 && r.err.contains("\(ws)/d/in is inside \(ws)/d, which is hidden"), "\(r)")
    }
}

/// Issue 10, first part: runs survive their surroundings.
@Suite struct SurroundingsTests {
    @Test(.enabled(if: TestEnv.isRoot)) func theInitRunsFromUnderAPrivateFolder() throws {
        // The build directory itself (a clone under /root or a mkdtemp folder is 0700), and a copy
        // under a 0700 folder: the sandbox's uid cannot search either.
        let parent = TestEnv.workspace()
        chmod(parent, 0o700)
        _ = shell("mkdir '\(parent)/ab' && cp -r '\(TestEnv.installDir)'/agentbox '\(TestEnv.installDir)'/agentbox-init '\(TestEnv.installDir)'/sandbox-profiles '\(parent)/ab/'")
        for binary in [parent + "/ab/agentbox", TestEnv.repoRoot + "/.build/debug/agentbox"] {
            let r = run([binary, "exec", "--", "/bin/sh", "-c", "echo inside"], cwd: TestEnv.workspace())
            #expect(r.code == 0 && r.out == "inside\n", "\(binary): \(r)")
        }
    }

    @Test func aReaderThatGoesAwayDoesNotStopARun() throws {
        let home = TestEnv.workspace()
        let ws = TestEnv.workspace()
        let replay = ws + "/session.json"
        try #"{"turns": [{"text": "done", "tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "ok"}}]}]}"#
            .write(toFile: replay, atomically: true, encoding: .utf8)
        let r = run(["/bin/bash", "-c", "'\(TestEnv.agentbox)' run --name piped --model replay:\(replay) --task t --json | head -1 > /dev/null; echo ${PIPESTATUS[0]}"],
                    cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(r.out == "0\n", "the run's own exit code, not 141: \(r)")
        let logs = run([TestEnv.agentbox, "logs", "piped", "--json"], env: ["AGENTBOX_HOME": home]).out
        #expect(logs.contains("\"type\":\"run.ended\",\"data\":{\"state\":\"finished\""), "\(logs.suffix(400))")
    }

    @Test func theSandboxStillGetsSIGPIPE() {
        // `yes | head -1` ends because yes dies of SIGPIPE: the supervisor ignores it, the sandbox must not.
        let r = sh("yes | head -1; echo done")
        #expect(r.code == 0 && r.out == "y\ndone\n", "\(r)")
    }
}

extension SurroundingsTests {
    @Test func aFollowingViewEndsWhenItsReaderGoesAway() throws {
        let home = TestEnv.workspace()
        // More than a pipe holds, so a write meets the closed pipe. Feed lines carry a CRC-32C.
        let body = Array(#"{"ts":"2026-11-30T00:00:00Z","run":"abc","name":null,"seq":1,"severity":"warning","category":"c","summary":"s""#.utf8)
        let line = String(decoding: body, as: UTF8.self) + ",\"crc\":\"\(CRC32C.hex(CRC32C.checksum(body)))\"}"
        try (Array(repeating: line, count: 3000).joined(separator: "\n") + "\n").write(toFile: home + "/confessions.jsonl", atomically: true, encoding: .utf8)
        let r = run(["/bin/bash", "-c", "timeout 10 '\(TestEnv.agentbox)' confessions -f | head -1 > /dev/null; echo ${PIPESTATUS[0]}"],
                    env: ["AGENTBOX_HOME": home])
        #expect(r.out == "141\n", "ends like any pipeline stage whose reader left (124 would be the timeout): \(r)")
    }
}

extension SurroundingsTests {
    /// Runs `command` (an agentbox command line) with stdout into a FIFO whose reader never reads; after
    /// `wait` seconds returns what `inspect NAME` says, then SIGTERMs agentbox and returns its exit
    /// code and how long it took to go.
    func stalled(_ command: String, name: String, home: String, cwd: String, wait: Int, redirect: String = "> fifo") -> (inspect: String, code: String, seconds: String) {
        let script = """
        mkfifo fifo; sleep 120 < fifo > /dev/null 2>&1 & R=$!
        \(command) \(redirect) & P=$!
        sleep \(wait)
        '\(TestEnv.agentbox)' inspect \(name) --json > inspect.json
        T0=$(date +%s%N); kill -TERM $P; wait $P; C=$?; T1=$(date +%s%N); kill -KILL $R
        echo "$C $(( (T1 - T0) / 1000000 ))"
        """
        let r = run(["/bin/bash", "-c", script], cwd: cwd, env: ["AGENTBOX_HOME": home])
        let parts = r.out.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        return ((try? String(contentsOfFile: cwd + "/inspect.json", encoding: .utf8)) ?? "", parts.first ?? "", parts.count > 1 ? parts[1] : "")
    }

    @Test func aStalledReaderDoesNotStallAJournaledExec() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let r = stalled("'\(TestEnv.agentbox)' exec --name stall --timeout 2 -- sh -c 'yes'", name: "stall", home: home, cwd: ws, wait: 5)
        // The timeout was acted on and journaled while stdout was full; the stop signal ends the wait
        // for the reader; the exit code is the command's (124: timeout).
        #expect(r.inspect.contains("\"state\": \"timeout\""), "\(r)")
        #expect(r.code == "124" && (Int(r.seconds) ?? 9999) < 3000, "\(r)")
    }

    @Test func aStalledReaderOfBothStreamsDoesNotStallAJournaledExecThatWarns() throws {
        // stderr on the same stalled pipe, and a warning of agentbox's own during supervision (the
        // journal's output cap): it goes through a relay too; one signal ends the wait for the reader.
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let r = stalled("'\(TestEnv.agentbox)' exec --name capstall --timeout 2 --journal-output 1M -- sh -c 'head -c 8000000 /dev/zero | tr \"\\0\" a; sleep 30'",
                        name: "capstall", home: home, cwd: ws, wait: 5, redirect: "> fifo 2>&1")
        #expect(r.inspect.contains("\"state\": \"timeout\""), "\(r)")
        #expect(r.code == "124" && (Int(r.seconds) ?? 9999) < 3000, "\(r)")
    }

    @Test func aStalledReaderDoesNotStallARun() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        // Each result is a full tool output: more --json than a pipe holds, then a call that outlives --timeout.
        let turns = (1...8).map { #"{"tool_calls": [{"name": "shell", "arguments": {"command": "head -c 6000\#($0) /dev/zero | tr '\\0' a"}}]}"# } + [#"{"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 60"}}]}"#]
        try #"{"turns": [\#(turns.joined(separator: ","))]}"#.write(toFile: ws + "/session.json", atomically: true, encoding: .utf8)
        let r = stalled("'\(TestEnv.agentbox)' run --name stallrun --model replay:session.json --task t --json --timeout 3",
                        name: "stallrun", home: home, cwd: ws, wait: 6)
        #expect(r.inspect.contains("\"state\": \"timeout\""), "\(r)")
        #expect(r.code == "124" && (Int(r.seconds) ?? 9999) < 3000, "\(r)")
    }
}

extension SurroundingsTests {
    @Test func aClosedTerminalStopsARunAsDocumented() throws {
        // SIGHUP (the terminal closed) is a stop, like SIGTERM: the run ends stopped (75), on record.
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        try #"{"turns": [{"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 30"}}]}]}"#
            .write(toFile: ws + "/session.json", atomically: true, encoding: .utf8)
        let script = """
        A='\(TestEnv.agentbox)'
        AGENTBOX_GRACE=1 "$A" run --name hup --model replay:session.json --task t > /dev/null 2>&1 & P=$!
        for i in $(seq 200); do "$A" logs hup --json 2>/dev/null | grep -q '"tool.call"' && break; sleep 0.05; done
        kill -HUP $P; wait $P; echo "code=$?"
        """
        let r = run(["/bin/bash", "-c", script], cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(r.out.contains("code=75"), "\(r)")
        let i = run([TestEnv.agentbox, "inspect", "hup", "--json"], env: ["AGENTBOX_HOME": home]).out
        #expect(i.contains("\"state\": \"stopped\"") && i.contains("stopped by signal 1"), "\(i)")
    }
}
