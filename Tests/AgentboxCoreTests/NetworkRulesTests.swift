import AgentboxCore
import Testing

/// `--network allow:RULES` (docs/network.md): parsing and deciding.
@Suite struct NetworkRulesTests {
    func rules(_ text: String) throws -> NetworkRules { try NetworkRules.parse(text) }

    @Test func namesWildcardsPortsAndDenials() throws {
        let r = try rules("pypi.org, *.pythonhosted.org:443, registry.npmjs.org, !evil.pythonhosted.org, github.com:22")
        #expect(r.decide(host: "pypi.org", port: 443).allowed)
        #expect(r.decide(host: "PyPI.org.", port: 80).allowed, "case and a trailing dot do not matter")
        #expect(r.decide(host: "files.pythonhosted.org", port: 443).allowed)
        #expect(!r.decide(host: "files.pythonhosted.org", port: 80).allowed, "the rule's port only")
        #expect(!r.decide(host: "pythonhosted.org", port: 443).allowed, "*.suffix is not the suffix itself")
        #expect(r.decide(host: "evil.pythonhosted.org", port: 443) == .deny("denied by !evil.pythonhosted.org"), "deny wins")
        #expect(!r.decide(host: "github.com", port: 443).allowed && r.decide(host: "github.com", port: 22).allowed)
        #expect(!r.decide(host: "example.com", port: 443).allowed)
        #expect(!r.decide(host: "pypi.org.evil.com", port: 443).allowed)
        #expect(r.description == "pypi.org,*.pythonhosted.org:443,registry.npmjs.org,!evil.pythonhosted.org,github.com:22")
    }

    @Test func addressesAreReachedOnlyWhenNamed() throws {
        let r = try rules("*.example.com, 10.0.0.5:3128, [fd00::1]:8080")
        #expect(!r.decide(host: "93.184.216.34", port: 443).allowed, "an IP literal needs its own rule")
        #expect(!r.decide(host: "127.0.0.1", port: 80).allowed)
        #expect(!r.decide(host: "[::1]", port: 80).allowed)
        #expect(r.decide(host: "10.0.0.5", port: 3128).allowed && !r.decide(host: "10.0.0.5", port: 22).allowed)
        #expect(r.decide(host: "[fd00:0::1]", port: 8080).allowed, "IPv6 compared as addresses")
        // What an allowed name resolves to: not into the host or its networks unless named.
        for a in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "fc00::2", "::ffff:127.0.0.1", "100.64.0.1"] {
            #expect(!r.admits(resolved: IPAddress(a)!, port: 443).allowed, "\(a)")
        }
        #expect(r.admits(resolved: IPAddress("10.0.0.5")!, port: 3128).allowed)
        #expect(r.admits(resolved: IPAddress("93.184.216.34")!, port: 443).allowed)
        #expect(r.admits(resolved: IPAddress("2606:2800:220:1::1")!, port: 443).allowed)
    }

    @Test func rulesPrintAsTheyParse() throws {
        for text in ["[::1]", "[fd00::1]:8080", "!10.0.0.5", "*.example.com:443", "[::ffff:1.2.3.4]"] {
            let r = try rules(text)
            #expect(try rules(r.description) == r, "\(text) -> \(r.description)")
        }
        let mapped = try rules("!1.2.3.4, 1.0.0.0")
        #expect(!mapped.decide(host: "[::ffff:1.2.3.4]", port: 443).allowed, "the same address written another way")
    }

    @Test func anEmptyListAllowsNothing() throws {
        #expect(try rules("").rules.isEmpty)
        #expect(!(try rules("")).decide(host: "pypi.org", port: 443).allowed)
    }

    @Test(arguments: [
        ("a,,b", "empty rule"), ("exa mple.com", "not a host name"), ("*foo.com", "wildcard"), ("pypi.org:0", "not a port"),
        ("pypi.org:70000", "not a port"), ("fd00::1", "in brackets"), ("[fd00::1", "closing ]"), ("[1.2.3.4]", "not an IPv6"),
        ("-a.com", "not a host name"), ("a..com", "not a host name"), ("010.0.0.5", "not a host name"), ("167772165", "not a host name"),
        ("0x7f.1", "not a host name"), ("a.com:+80", "not a port"), ("a.com:080", "not a port"),
    ])
    func badRulesAreRefusedNamingTheRule(text: String, problem: String) {
        do {
            _ = try NetworkRules.parse(text)
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.message.contains(problem), "\(error.message)")
        }
    }

    @Test func addressesParseStrictlyAndPrintCanonically() {
        #expect(IPAddress("0177.0.0.1") == nil && IPAddress("1.2.3") == nil && IPAddress("256.1.1.1") == nil)
        #expect(IPAddress("2001:db8:0:0:0:0:2:1")?.description == "2001:db8::2:1")
        #expect(IPAddress("::ffff:10.0.0.1") == IPAddress("10.0.0.1"), "one address, one way of comparing it")
        #expect(IPAddress("[::+1]".dropFirst().dropLast().description) == nil && IPAddress("1.2.3.4::") == nil)
        // Not public, whatever the form: documentation, benchmarking, site-local, IPv4 carried in IPv6.
        for a in ["192.0.2.1", "198.18.0.1", "203.0.113.9", "192.0.0.8", "fec0::1", "100::1", "::10.0.0.5", "::ffff:0:127.0.0.1",
                  "2002:7f00:1::", "2001::1", "64:ff9b::10.0.0.1"] {
            #expect(IPAddress(a).map { !$0.isPublic } == true, "\(a): \(IPAddress(a)?.kind ?? "not parsed")")
        }
        #expect(IPAddress("64:ff9b::93.184.216.34")?.isPublic == true, "NAT64 of a public address is public")
        #expect(IPAddress("1::2::3") == nil && IPAddress("fe80::1%eth0") == nil)
    }
}
