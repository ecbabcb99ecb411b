import AgentboxCore
import Testing

@Suite struct ProfileParsingTests {
    let full = """
        {
          "description": "test",
          "filesystem": {"workspace": "ro", "system": ["/usr", "/etc"], "ro": ["/opt"], "rw": ["/var/tmp"], "hide": ["/etc/ssh"]},
          "network": "loopback",
          "limits": {"memory": "1G", "pids": 100, "cpus": 1.5, "timeout": "10m", "tmp_size": "64M"},
          "env": {"FOO": "bar"},
          "seccomp": "seccomp/default.json",
          "landlock": "required",
          "hostname": "box-1"
        }
        """

    @Test func parsesEveryKey() throws {
        let p = try Profile.parse(full, name: "t", file: "/p/t.json")
        #expect(p.workspace == .ro)
        #expect(p.system == ["/usr", "/etc"])
        #expect(p.hide == ["/etc/ssh"])
        #expect(p.network == .loopback)
        #expect(p.limits.memory == 1 << 30)
        #expect(p.limits.pids == 100)
        #expect(p.limits.cpus == 1.5)
        #expect(p.limits.timeout == 600)
        #expect(p.limits.tmpSize == 64 << 20)
        #expect(p.env.first! == ("FOO", "bar"))
        #expect(p.seccomp == "/p/seccomp/default.json")
        #expect(p.landlock == .required)
        #expect(p.hostname == "box-1")
    }

    @Test func extendsOverridesOnlyWhatItNames() throws {
        let base = try Profile.parse(full, name: "base", file: "/p/base.json")
        let child = try Profile.parse(#"{"extends": "base", "filesystem": {"workspace": "rw"}, "limits": {"pids": null}}"#,
                                      name: "child", file: "/p/child.json", base: base)
        #expect(child.workspace == .rw)
        #expect(child.system == ["/usr", "/etc"])
        #expect(child.limits.pids == nil)
        #expect(child.limits.memory == 1 << 30)
        #expect(child.name == "child")
    }

    @Test(arguments: [
        (#"{"netwrok": "none"}"#, "netwrok", "unknown key"),
        (#"{"network": "host"}"#, "network", "unknown network mode"),
        (#"{"limits": {"memory": "lots"}}"#, "limits.memory", "must be a size"),
        (#"{"limits": {"pids": -3}}"#, "limits.pids", "positive integer"),
        (#"{"limits": {"pids": 1.5}}"#, "limits.pids", "positive integer"),
        (#"{"limits": {"cpus": 0}}"#, "limits.cpus", "positive number"),
        (#"{"limits": {"timeout": "soon"}}"#, "limits.timeout", "duration"),
        (#"{"limits": {"swap": "1G"}}"#, "limits.swap", "unknown key"),
        (#"{"filesystem": {"ro": ["relative/path"]}}"#, "filesystem.ro[0]", "not an absolute path"),
        (#"{"filesystem": {"rw": "/tmp"}}"#, "filesystem.rw", "array"),
        (#"{"filesystem": {"workspace": "rwx"}}"#, "filesystem.workspace", "must be"),
        (#"{"filesystem": {"ro": ["/a/../etc"]}}"#, "filesystem.ro[0]", ".."),
        (#"{"env": {"1BAD": "x"}}"#, "env.1BAD", "not a valid variable name"),
        (#"{"landlock": "maybe"}"#, "landlock", "not a Landlock mode"),
        (#"{"hostname": "a b"}"#, "hostname", "letters"),
        (#"[1, 2]"#, "", "top level must be a JSON object"),
        (#"{"description": "x",}"#, "", "not valid JSON"),
    ])
    func rejectsBadProfilesNamingFileAndKey(text: String, key: String, problem: String) {
        do {
            _ = try Profile.parse(text, name: "bad", file: "/etc/agentbox/bad.json")
            Issue.record("accepted a bad profile: \(text)")
        } catch {
            #expect(error.file == "/etc/agentbox/bad.json")
            #expect(error.key == key)
            #expect(error.problem.contains(problem), "\(error.problem)")
            #expect(error.description.hasPrefix("/etc/agentbox/bad.json"))
        }
    }
}

/// A fake host filesystem for the resolver.
struct FakeHost: HostPaths {
    var dirs: Set<String> = ["/usr", "/etc", "/work/proj", "/work/proj/sub", "/data", "/opt", "/tmp", "/proc", "/work"]
    var files: Set<String> = ["/work/proj/.env"]
    var links: [String: String] = ["/bin": "usr/bin", "/lib": "usr/lib"]
    func canonical(_ path: String) -> String? {
        if let l = links[path] { return "/" + l }
        return dirs.contains(path) || files.contains(path) ? path : nil
    }
    func symlinkText(_ path: String) -> String? { links[path] }
    func isDirectory(_ path: String) -> Bool { dirs.contains(path) }
}

@Suite struct PolicyResolutionTests {
    func profile() -> Profile {
        var p = Profile(name: "t")
        p.system = ["/usr", "/bin", "/lib", "/etc", "/lib32"]
        p.limits.pids = 10
        return p
    }

    @Test func resolvesMountsParentsFirstWithOverrides() throws {
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        o.ro = ["/data"]
        o.hide = ["../.env"]
        o.pids = 99
        o.memory = 1 << 20
        let policy = try PolicyResolver.resolve(profile: profile(), options: o, cwd: "/work/proj/sub", host: FakeHost())
        #expect(policy.workspace == "/work/proj")
        #expect(policy.workdir == "/work/proj/sub")
        #expect(policy.limits.pids == 99)
        #expect(policy.limits.memory == 1 << 20)
        let targets = policy.mounts.map(\.target)
        #expect(!targets.contains("/lib32"), "missing system paths are skipped")
        #expect(policy.mounts.first { $0.target == "/bin" }?.kind == .symlink)
        #expect(policy.mounts.first { $0.target == "/work/proj" }?.kind == .bindRW)
        #expect(policy.mounts.first { $0.target == "/work/proj/.env" }?.kind == .hideFile)
        let ws = targets.firstIndex(of: "/work/proj"), env = targets.firstIndex(of: "/work/proj/.env")
        #expect(ws != nil && env != nil && ws! < env!, "a path inside the workspace is mounted after the workspace")
        #expect(policy.env.contains { $0.0 == "PATH" })
    }

    @Test func readOnlyWorkspaceAndCwdOutsideWorkspace() throws {
        var p = profile()
        p.workspace = .ro
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        let policy = try PolicyResolver.resolve(profile: p, options: o, cwd: "/data", host: FakeHost())
        #expect(policy.workdir == "/work/proj")
        #expect(policy.mounts.first { $0.target == "/work/proj" }?.kind == .bindRO)
        #expect(!policy.mounts.contains { $0.writable })
    }

    @Test(arguments: ["/", "/proc"])
    func refusesWorkspacesThatExposeTheHost(workspace: String) {
        var o = SandboxOptions()
        o.workspace = workspace
        #expect(throws: AgentboxError.self) {
            try PolicyResolver.resolve(profile: profile(), options: o, cwd: "/", host: FakeHost())
        }
    }

    @Test func missingPathsAreClearErrors() {
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        o.rw = ["/nope"]
        do {
            _ = try PolicyResolver.resolve(profile: profile(), options: o, cwd: "/", host: FakeHost())
            Issue.record("accepted a missing --rw path")
        } catch {
            #expect(error.message.contains("/nope"))
            #expect(error.exitCode == 125)
        }
    }

    /// `run` warns about `.env*` files the sandbox can read; hidden ones (command line or profile), and
    /// links to files the sandbox cannot see, do not count.
    @Test func exposedEnvFilesAreThoseNotHidden() throws {
        var host = FakeHost()
        host.files = ["/work/proj/.env", "/work/proj/.env.local", "/work/proj/.envrc", "/data/secret.env", "/opt/x.env"]
        var p = profile()
        p.hide = ["/work/proj/.envrc"]
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        o.ro = ["/data"]
        let files: [(name: String, path: String)] = [(".env", "/work/proj/.env"), (".env.local", "/work/proj/.env.local"),
                                                     (".envrc", "/work/proj/.envrc"), (".env.shared", "/data/secret.env"),
                                                     (".env.home", "/home/me/.env"), (".environment", "/opt/x.env"), ("env", "/work/proj/env")]
        let policy = try PolicyResolver.resolve(profile: p, options: o, cwd: "/", host: host)
        #expect(policy.exposedEnvFiles(files) == [".env", ".env.local", ".env.shared"])
        o.hide = [".env", "/work/proj/.env.local"]
        let hidden = try PolicyResolver.resolve(profile: p, options: o, cwd: "/work/proj", host: host)
        #expect(hidden.exposedEnvFiles(files) == [".env.shared"])
        #expect(hidden.exposes("/work/proj/sub/file") && !hidden.exposes("/work/proj/.env") && !hidden.exposes("/home/me"))
        o.hide = ["/data"]
        #expect(try PolicyResolver.resolve(profile: p, options: o, cwd: "/", host: host).exposedEnvFiles(files) == [".env", ".env.local"])
    }

    @Test func commandLineEnvOverridesProfileEnv() throws {
        var p = profile()
        p.env = [("A", "profile"), ("B", "b")]
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        o.env = [("A", "cli")]
        let policy = try PolicyResolver.resolve(profile: p, options: o, cwd: "/", host: FakeHost())
        #expect(policy.env.filter { $0.0 == "A" }.map(\.1) == ["cli"])
        #expect(policy.env.contains { $0 == ("B", "b") })
    }
}

@Suite struct WireTests {
    @Test func setupSpecRoundTrips() throws {
        var s = SetupSpec()
        s.hostname = "h"
        s.uid = 1000
        s.gid = 1001
        s.mounts = [MountEntry(.bindRW, source: "/a", target: "/a"), MountEntry(.symlink, source: "usr/bin", target: "/bin")]
        s.mountFds = [0, -1]
        s.argv = ["sh", "-c", "echo ü"]
        s.seccompPrograms = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]]
        s.writablePaths = ["/tmp"]
        s.rlimits = [(6, 100)]
        let decoded = try SetupSpec.decode(s.encode())
        #expect(decoded == s)
        #expect(decoded.argv == s.argv)
    }

    @Test func truncatedOrForeignMessagesAreErrors() {
        let bytes = SetupSpec().encode()
        #expect(throws: WireError.self) { try SetupSpec.decode(Array(bytes.prefix(bytes.count - 3))) }
        #expect(throws: WireError.self) { try SetupSpec.decode([99, 1, 2]) }
        #expect(throws: WireError.self) { try InitMessage.decode([]) }
    }

    @Test func initMessagesRoundTrip() throws {
        for m: InitMessage in [.ready(landlockABI: 7), .failed(stage: "mount /proc", errno: 1, detail: "x"),
                               .started(pid: 2), .execFailed(errno: 2, path: "nope"), .exited(status: 256)] {
            #expect(try InitMessage.decode(m.encode()) == m)
        }
    }
}

/// agentbox's own paths stay out of reach whatever the options say (docs/security.md).
@Suite struct ProtectedPathTests {
    var host: FakeHost {
        var h = FakeHost()
        h.dirs.formUnion(["/home/u", "/home/u/.local", "/home/u/.local/state", "/home/u/.local/state/agentbox",
                          "/home/u/.config", "/home/u/.config/agentbox", "/home/u/src", "/home/u/src/ab",
                          "/home/u/src/ab/.build", "/home/u/src/ab/.build/debug", "/home/u/src/ab/sandbox-profiles"])
        h.files.formUnion(["/home/u/src/ab/.build/debug/agentbox"])
        return h
    }
    let protected = [
        ProtectedPath("/home/u/.local/state/agentbox", "agentbox's state", .hidden),
        ProtectedPath("/home/u/.config/agentbox", "agentbox's configuration", .hidden),
        ProtectedPath("/home/u/src/ab/.build/debug/agentbox", "agentbox's binary", .readOnly),
        ProtectedPath("/home/u/src/ab/sandbox-profiles", "a profile folder", .readOnly),
        ProtectedPath("/home/u/.config/agentbox/profiles", "a profile folder", .readOnly),
    ]

    func resolve(_ o: SandboxOptions, _ p: Profile = Profile(name: "t")) throws(AgentboxError) -> SandboxPolicy {
        try PolicyResolver.resolve(profile: p, options: o, cwd: "/home/u", host: host, protected: protected)
    }

    @Test func aWorkspaceContainingThemHidesStatePinsTheWayAndMakesBinariesReadOnly() throws {
        var o = SandboxOptions()
        o.workspace = "/home/u"
        let policy = try resolve(o)
        func kind(_ target: String) -> MountEntry.Kind? { policy.mounts.first { $0.target == target }?.kind }
        #expect(kind("/home/u") == .bindRW)
        #expect(kind("/home/u/.local/state/agentbox") == .hideDir)
        #expect(kind("/home/u/.config/agentbox") == .hideDir)
        #expect(kind("/home/u/src/ab/.build/debug/agentbox") == .bindRO)
        #expect(kind("/home/u/src/ab/sandbox-profiles") == .bindRO)
        // The way to each stays where the host expects it: every directory in between is a mount point.
        for dir in ["/home/u/.local", "/home/u/.local/state", "/home/u/.config", "/home/u/src", "/home/u/src/ab",
                    "/home/u/src/ab/.build", "/home/u/src/ab/.build/debug"] {
            #expect(kind(dir) == .pin, "\(dir) must be pinned")
        }
        // Covered by the hidden configuration folder already: nothing inside it is mounted.
        #expect(kind("/home/u/.config/agentbox/profiles") == nil)
        #expect(policy.protections.map(\.path).sorted() == ["/home/u/.config/agentbox", "/home/u/.local/state/agentbox",
                                                           "/home/u/src/ab/.build/debug/agentbox", "/home/u/src/ab/sandbox-profiles"])
        // Parents are mounted before what is inside them.
        let order = policy.mounts.map(\.target)
        #expect(order.firstIndex(of: "/home/u")! < order.firstIndex(of: "/home/u/.local")!)
        #expect(order.firstIndex(of: "/home/u/.local/state")! < order.firstIndex(of: "/home/u/.local/state/agentbox")!)
        #expect(policy.json.serialized.contains("\"protected\""))
    }

    @Test func aReadOnlyBindHidesStateButNeedsNoPins() throws {
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        o.ro = ["/home/u"]
        let policy = try resolve(o)
        #expect(policy.mounts.contains { $0.target == "/home/u/.local/state/agentbox" && $0.kind == .hideDir })
        #expect(!policy.mounts.contains { $0.kind == .pin })
        #expect(!policy.mounts.contains { $0.target == "/home/u/src/ab/.build/debug/agentbox" }, "read-only already")
    }

    @Test func bindsInsideProtectedPathsAreRefused() {
        for (workspace, rw) in [("/home/u/.local/state/agentbox", nil), ("/work/proj", "/home/u/.config/agentbox"),
                                ("/work/proj", "/home/u/src/ab/sandbox-profiles")] as [(String, String?)] {
            var o = SandboxOptions()
            o.workspace = workspace
            if let rw { o.rw = [rw] }
            #expect(throws: AgentboxError.self) { try resolve(o) }
        }
        var ro = SandboxOptions()
        ro.workspace = "/work/proj"
        ro.ro = ["/home/u/.local/state/agentbox"]
        #expect(throws: AgentboxError.self, "reading other runs' journals is refused too") { try resolve(ro) }
    }

    @Test func aMissingProtectedPathInsideAWritableBindIsRefused() {
        var o = SandboxOptions()
        o.workspace = "/home/u"
        let missing = [ProtectedPath("/home/u/.profiles", "a profile folder", .readOnly)]
        do {
            _ = try PolicyResolver.resolve(profile: Profile(name: "t"), options: o, cwd: "/home/u", host: host, protected: missing)
            Issue.record("a sandbox could create the folder")
        } catch {
            #expect(error.message.contains("/home/u/.profiles") && error.message.contains("does not exist"))
        }
    }

    @Test func aSymlinkOnTheWayInsideAWritableBindIsRefusedOutsideItIsFine() {
        var h = host
        h.links["/home/u/.cfg"] = "home/u/.config"  // FakeHost resolves a link to "/" + its text
        var o = SandboxOptions()
        o.workspace = "/home/u"
        let linked = [ProtectedPath("/home/u/.cfg/agentbox", "agentbox's configuration", .hidden)]
        #expect(throws: AgentboxError.self) {
            try PolicyResolver.resolve(profile: Profile(name: "t"), options: o, cwd: "/home/u", host: h, protected: linked)
        }
        o.workspace = "/work/proj"
        #expect(throws: Never.self) {
            try PolicyResolver.resolve(profile: Profile(name: "t"), options: o, cwd: "/work/proj", host: h, protected: linked)
        }
    }

    @Test func aMissingPathReachedThroughASymlinkOutsideTheBindsIsStillRefused() {
        var h = host
        h.links["/data"] = "work/proj"  // /data -> /work/proj, the workspace
        var o = SandboxOptions()
        o.workspace = "/work/proj"
        let missing = [ProtectedPath("/data/profiles", "a profile folder", .readOnly)]
        #expect(throws: AgentboxError.self, "a sandbox could create /work/proj/profiles") {
            try PolicyResolver.resolve(profile: Profile(name: "t"), options: o, cwd: "/work/proj", host: h, protected: missing)
        }
    }

    @Test func profileRWEntriesGetTheSameChecksAsTheOption() {
        var p = Profile(name: "t", path: "/etc/agentbox/p.json")
        p.rw = ["/proc"]
        do {
            _ = try resolve(SandboxOptions(), p)
            Issue.record("a profile could bind /proc read-write")
        } catch {
            #expect(error.message.contains("/etc/agentbox/p.json") && error.message.contains("/proc"))
        }
        var q = Profile(name: "t")
        q.rw = ["/home/u/.config/agentbox"]
        #expect(throws: AgentboxError.self) { try resolve(SandboxOptions(), q) }
    }
}
