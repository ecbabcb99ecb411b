import Foundation
import Testing

/// The built agentbox, copied with its profiles into a world-readable folder so that the unprivileged
/// test user can run it too (a CI checkout may live under a 0700 temporary directory).
enum TestEnv {
    static let repoRoot: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    static let isRoot = getuid() == 0

    /// A private, world-readable copy of the binaries and profiles.
    static let installDir: String = {
        let build = repoRoot + "/.build/debug"
        let dir = "/tmp/agentbox-tests-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: dir)
        try! fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in ["agentbox", "agentbox-init"] {
            precondition(fm.fileExists(atPath: build + "/" + name), "build first: swift build (make test does)")
            try! fm.copyItem(atPath: build + "/" + name, toPath: dir + "/" + name)
        }
        try! fm.copyItem(atPath: repoRoot + "/sandbox-profiles", toPath: dir + "/sandbox-profiles")
        chmodTree(dir)
        atexit { try? FileManager.default.removeItem(atPath: "/tmp/agentbox-tests-\(getpid())") }
        return dir
    }()

    static var agentbox: String { installDir + "/agentbox" }

    static func chmodTree(_ path: String) {
        _ = shell("chmod -R a+rX '\(path)'")
    }

    /// A fresh workspace directory, owned by `owner` when given.
    static func workspace(owner: TestUser? = nil) -> String {
        let dir = "/tmp/agentbox-ws-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if let owner { _ = shell("chown \(owner.uid):\(owner.gid) '\(dir)'") }
        return dir
    }

    /// The syscall probe (Tests/Probe/probe.c), compiled once with the toolchain's C compiler.
    static let probe: String = {
        let out = installDir + "/probe"
        let swiftDir = shell("dirname \"$(readlink -f \"$(command -v swift || echo /opt/swift/usr/bin/swift)\")\"").out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let compilers = [swiftDir + "/clang", "/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"]
        guard let cc = compilers.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            fatalError("no C compiler found for the syscall probe (tried \(compilers))")
        }
        let r = shell("'\(cc)' -O1 -o '\(out)' '\(repoRoot)/Tests/Probe/probe.c'")
        precondition(r.code == 0, "compiling the probe failed: \(r.err)")
        chmodTree(installDir)
        return out
    }()
}

/// An unprivileged user the tests create (root only), to test the rootless path for real.
struct TestUser: Sendable {
    let name: String
    let uid: UInt32
    let gid: UInt32

    static let shared: TestUser? = {
        guard TestEnv.isRoot else { return nil }
        let name = "agentbox-test"
        if shell("id -u \(name)").code != 0 {
            let r = shell("useradd --system --no-create-home --shell /usr/sbin/nologin \(name)")
            guard r.code == 0 else { return nil }
        }
        guard let uid = UInt32(shell("id -u \(name)").out.trimmingCharacters(in: .whitespacesAndNewlines)),
              let gid = UInt32(shell("id -g \(name)").out.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return nil }
        return TestUser(name: name, uid: uid, gid: gid)
    }()
}

struct RunResult: CustomStringConvertible {
    var code: Int32
    var out: String
    var err: String
    /// stdout exactly as written (`out` replaces invalid UTF-8).
    var outBytes: [UInt8] = []
    var description: String { "exit \(code)\n--- stdout\n\(out)--- stderr\n\(err)" }
}

/// Runs a command line through /bin/sh and captures its output.
@discardableResult
func shell(_ command: String) -> RunResult {
    run(["/bin/sh", "-c", command])
}

/// Runs argv (directly, no shell) in `cwd`, optionally as `user`, with a small fixed environment plus `env`.
func run(_ argv: [String], cwd: String = "/", user: TestUser? = nil, env: [String: String] = [:], stdin: String? = nil) -> RunResult {
    let p = Process()
    var args = argv
    if let user {
        args = ["/usr/bin/setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--"] + argv
    }
    p.executableURL = URL(fileURLWithPath: args[0])
    p.arguments = Array(args.dropFirst())
    p.currentDirectoryURL = URL(fileURLWithPath: cwd)
    var environment = ["PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": user == nil ? "/root" : "/tmp"]
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
    p.standardOutput = outPipe
    p.standardError = errPipe
    p.standardInput = inPipe
    do { try p.run() } catch { return RunResult(code: -1, out: "", err: "\(error)") }
    if let stdin { inPipe.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
    try? inPipe.fileHandleForWriting.close()
    // Read both pipes concurrently so a chatty command cannot block on a full pipe.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData = errPipe.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = outPipe.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    p.waitUntilExit()
    let code = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
    return RunResult(code: code, out: String(decoding: outData, as: UTF8.self), err: String(decoding: errData, as: UTF8.self),
                     outBytes: [UInt8](outData))
}

/// Starts agentbox in the background (for tests that signal or kill it), stdout discarded unless given.
func startAgentbox(_ args: [String], cwd: String = TestEnv.workspace(), env: [String: String] = [:],
                   stdout: Any? = FileHandle.nullDevice, stderr: Any? = nil) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: TestEnv.agentbox)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: cwd)
    if !env.isEmpty { p.environment = ["PATH": "/usr/bin:/bin"].merging(env) { $1 } }
    if let stdout { p.standardOutput = stdout }
    if let stderr { p.standardError = stderr }
    try p.run()
    return p
}

/// `agentbox exec [options] -- command...` in `workspace`.
func exec(_ options: [String] = [], _ command: [String], in workspace: String? = nil, user: TestUser? = nil,
          env: [String: String] = [:], stdin: String? = nil) -> RunResult {
    let ws = workspace ?? TestEnv.workspace(owner: user)
    return run([TestEnv.agentbox, "exec"] + options + ["--"] + command, cwd: ws, user: user, env: env, stdin: stdin)
}

func sh(_ script: String, _ options: [String] = [], in workspace: String? = nil, user: TestUser? = nil) -> RunResult {
    exec(options, ["/bin/sh", "-c", script], in: workspace, user: user)
}

/// Whether any process on the host has `marker` in its command line.
func hostHasProcess(withMarker marker: String) -> Bool {
    let dirs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for d in dirs where d.allSatisfy(\.isNumber) {
        if let data = FileManager.default.contents(atPath: "/proc/\(d)/cmdline"),
           String(decoding: data, as: UTF8.self).contains(marker) {
            return true
        }
    }
    return false
}

/// Polls `condition` for up to `seconds` (for effects that are asynchronous by nature, not for timing).
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// Starts one of the project's Python test servers (Tests/FakeModelServer/SCRIPT with `arguments`),
/// which writes its port to `--port-file` when it is ready; returns the port (0 if it never said).
/// No inherited stdio: swift-test waits for EOF on the runner's output pipes.
func startTestServer(_ process: Process, script: String, _ arguments: [String], portFile: String) throws -> Int {
    try? FileManager.default.removeItem(atPath: portFile)
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", TestEnv.repoRoot + "/Tests/FakeModelServer/" + script] + arguments + ["--port-file", portFile]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    process.standardInput = FileHandle.nullDevice
    try process.run()
    var found = 0
    _ = eventually(20) {
        found = Int((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "") ?? 0
        return found > 0
    }
    return found
}
