import Foundation
import AgentboxCore
@testable import AgentboxSandbox
import Testing

@Suite struct SeccompPolicyTests {
    static let repoRoot: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    @Test func defaultPolicyParsesAndCompiles() throws {
        let policy = try SeccompPolicy.load(Self.repoRoot + "/sandbox-profiles/seccomp/default.json")
        #expect(policy.defaultAction == "SCMP_ACT_ERRNO")
        let program = try policy.compile()
        #expect(!program.isEmpty && program.count % 8 == 0)
    }

    @Test func dockerStyleRulesWithCapsAndArchFiltersCompile() throws {
        let text = """
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
             "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
             "syscalls": [
               {"names": ["read", "write", "exit_group", "not_a_real_syscall"], "action": "SCMP_ACT_ALLOW"},
               {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
               {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
               {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
               {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "arm64"], "minKernel": "4.0"}}
             ]}
            """
        let policy = try SeccompPolicy.parse(text, file: "docker.json")
        #expect(policy.rules.count == 5)
        #expect(!policy.applies(policy.rules[1]), "rules that need capabilities do not apply: the sandbox has none")
        #expect(policy.applies(policy.rules[3]))
        #expect(try !policy.compile().isEmpty)
    }

    @Test(arguments: [
        (#"{"syscalls": []}"#, "defaultAction"),
        (#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "defaultAction"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}"#, "syscalls[0].action"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#, "syscalls[0].names"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#, "syscalls[0].args[0].index"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "LT"}]}]}"#, "syscalls[0].args[0].op"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "bogus": 1}]}"#, "syscalls[0].bogus"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "sycalls": []}"#, "sycalls"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1e30, "op": "SCMP_CMP_EQ"}]}]}"#, "syscalls[0].args[0].value"),
    ])
    func rejectsMalformedPolicies(text: String, key: String) {
        do {
            _ = try SeccompPolicy.parse(text, file: "bad.json")
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.key == key, "\(error)")
            #expect(error.file == "bad.json")
        }
    }
}

/// The compiled-program cache decides the sandbox's filter: it is used only when nobody else could
/// have written it, and only for the exact key it was written for.
@Suite struct SeccompCacheTests {
    final class Counter { var compiles = 0 }

    func fresh() -> String {
        var template = [CChar]("/tmp/agentbox-cache-test-XXXXXX".utf8CString)
        return String(cString: mkdtemp(&template)!)
    }

    /// Asks the cache for the guard's program; returns it and whether it had to be compiled.
    func fetch(_ dir: String, source: [UInt8] = Array("policy".utf8)) throws -> ([UInt8], Bool) {
        let counter = Counter()
        let program = try SeccompCache.program(source: source, dir: dir) { () throws(AgentboxError) -> [UInt8] in
            counter.compiles += 1
            return try SeccompPolicy.fileModeGuard.compile()
        }
        return (program, counter.compiles == 1)
    }

    func cachedFile(_ dir: String) -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return dir + "/" + (names.first { $0.hasSuffix(".bpf") } ?? "missing")
    }

    @Test func aSecondLookupIsServedFromTheCache() throws {
        let dir = fresh()
        let (first, compiled) = try fetch(dir)
        #expect(compiled)
        let (second, compiledAgain) = try fetch(dir)
        #expect(!compiledAgain && second == first)
        #expect(try fetch(dir, source: Array("other policy".utf8)).1, "another source is another key")
    }

    @Test func aTamperedProgramIsRebuilt() throws {
        let dir = fresh()
        let (good, _) = try fetch(dir)
        let file = cachedFile(dir)
        var bytes = [UInt8](FileManager.default.contents(atPath: file)!)
        bytes[bytes.count - 3] ^= 0xff  // the program's last instruction: an attacker's ALLOW
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes), attributes: [.posixPermissions: 0o600])
        let (program, compiled) = try fetch(dir)
        #expect(compiled && program == good)
    }

    @Test func aFileWrittenForAnotherKeyIsNotTrusted() throws {
        let dir = fresh()
        _ = try fetch(dir)
        let file = cachedFile(dir)
        // The same bytes under another key (another agentbox version, kernel or source): not this program.
        let program = try SeccompPolicy.fileModeGuard.compile()
        let forged = SeccompCache.encode(program, key: Array("agentbox 0.0.1; anything".utf8))
        _ = FileManager.default.createFile(atPath: file, contents: Data(forged), attributes: [.posixPermissions: 0o600])
        #expect(try fetch(dir).1)
    }

    @Test func groupOrWorldWritableFilesAndFoldersAreNotTrusted() throws {
        let dir = fresh()
        _ = try fetch(dir)
        let file = cachedFile(dir)
        chmod(file, 0o666)
        #expect(try fetch(dir).1, "a world-writable file is rebuilt")
        let dir2 = fresh()
        _ = try fetch(dir2)
        chmod(dir2, 0o777)
        #expect(try fetch(dir2).1, "a world-writable folder is not trusted")
    }

    @Test func aSymlinkedFileIsNotFollowed() throws {
        let dir = fresh(), elsewhere = fresh()
        _ = try fetch(elsewhere)
        _ = try fetch(dir)
        let file = cachedFile(dir)
        unlink(file)
        symlink(cachedFile(elsewhere), file)
        #expect(try fetch(dir).1)
    }

    @Test(.enabled(if: getuid() == 0)) func anotherUsersFileIsNotTrusted() throws {
        let dir = fresh()
        _ = try fetch(dir)
        chown(cachedFile(dir), 65534, 65534)
        #expect(try fetch(dir).1)
    }
}
