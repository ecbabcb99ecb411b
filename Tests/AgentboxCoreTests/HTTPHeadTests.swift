import AgentboxCore
import Testing

/// The HTTP head parser the proxy and the agentbox API read untrusted requests with.
@Suite struct HTTPHeadTests {
    func parse(_ text: String) throws(AgentboxError) -> HTTPHead { try HTTPHead.parse(Array(text.utf8)[...]) }

    @Test func aRequestHeadParsesWithItsFields() throws {
        let h = try parse("GET http://pkgs.test:8080/simple/x/?a=1 HTTP/1.1\r\nHost: pkgs.test:8080\r\nX-Y:  v w \r\n\r\n")
        #expect(h.method == "GET" && h.target == "http://pkgs.test:8080/simple/x/?a=1" && h.start.2 == "HTTP/1.1")
        #expect(h.field("host") == "pkgs.test:8080" && h.field("x-y") == "v w" && h.field("missing") == nil)
        #expect(try parse(String(decoding: h.bytes, as: UTF8.self)) == h)
    }

    @Test func theEndOfAHeadIsFoundOnlyAtABlankLine() {
        #expect(HTTPHead.end(in: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY".utf8)) == 27)
        #expect(HTTPHead.end(in: Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)) == nil)
        #expect(HTTPHead.end(in: Array("\r\n\r".utf8)) == nil)
    }

    @Test func malformedHeadsAreRefused() {
        for bad in ["GET / HTTP/1.1\nHost: x\r\n\r\n", "GET / HTTP/1.1\r\nHost x\r\n\r\n", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                    "GET / HTTP/1.1\r\nX: a\u{1b}[2J\r\n\r\n", "GET\r\n\r\n", "GET / HTTP/1.1\r\n : x\r\n\r\n", "GET / HTTP/1.1\r\nX: y\r\n"] {
            #expect(throws: AgentboxError.self, "\(bad.debugDescription)") { try parse(bad) }
        }
    }

    @Test func bodiesHaveOneUnambiguousLength() throws {
        #expect(try parse("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").contentLength() == 12)
        #expect(try parse("POST / HTTP/1.1\r\n\r\n").contentLength() == 0)
        #expect(try parse("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n").contentLength() == 5)
        for bad in ["Content-Length: 5\r\nContent-Length: 6", "Content-Length: -1", "Content-Length: 1e3", "Content-Length: 99999999999999",
                    "Transfer-Encoding: chunked", "Content-Length: 5\r\nTransfer-Encoding: chunked"] {
            #expect(throws: AgentboxError.self, "\(bad)") { try parse("POST / HTTP/1.1\r\n\(bad)\r\n\r\n").contentLength() }
        }
    }

    @Test func proxyTargetsAreReadStrictly() {
        #expect(HTTPAuthority.connect("pypi.org:443") == HTTPAuthority(host: "pypi.org", port: 443))
        #expect(HTTPAuthority.connect("[::1]:8080") == HTTPAuthority(host: "[::1]", port: 8080))
        #expect(HTTPAuthority.connect("pypi.org") == nil)  // CONNECT needs the port
        #expect(HTTPAuthority.connect("a:b:443") == nil)
        #expect(HTTPAuthority.connect("x:0") == nil && HTTPAuthority.connect("x:65536") == nil)
        #expect(HTTPAuthority.absolute("http://pkgs.test/simple/") == HTTPAuthority(host: "pkgs.test", port: 80, path: "/simple/"))
        #expect(HTTPAuthority.absolute("HTTP://h:81?q") == HTTPAuthority(host: "h", port: 81, path: "/?q"))
        #expect(HTTPAuthority.absolute("http://user@evil.test@good.test/") == nil)  // no userinfo
        #expect(HTTPAuthority.absolute("https://h/") == nil && HTTPAuthority.absolute("/path") == nil)
    }
}
