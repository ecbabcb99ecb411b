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
