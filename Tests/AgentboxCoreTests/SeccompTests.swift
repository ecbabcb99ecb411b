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
