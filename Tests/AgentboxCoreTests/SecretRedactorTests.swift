import AgentboxCore
import Testing

@Suite struct SecretRedactorTests {
    static let key = "sk-proj-Q3vX9aLmN2pR7tYw8ZkB4cDf6GhJ1sEu0Io5"
    let r = SecretRedactor(secret: SecretRedactorTests.key)!
    let mark = "[R]"

    func redact(_ text: String) -> (text: String, count: Int) { r.redact(text, replacement: mark) }

    @Test func theKeyIsReplacedWhereverItIs() {
        let (text, n) = redact("OPENAI_API_KEY=\(Self.key)\nagain: \(Self.key)\(Self.key)")
        #expect(text == "OPENAI_API_KEY=[R]\nagain: [R]" && n == 2, "back-to-back copies are one place: \(text)")
        #expect(SecretRedactor(secret: "short") == nil)
    }

    @Test func textWithoutTheKeyIsUntouched() {
        let plain = "exit code 0\nsk-proj-abc is the format of a key; \(Self.key.prefix(12)) alone is not redacted\n"
        #expect(redact(plain) == (plain, 0))
    }

    /// The output cap keeps the first and last 16 KiB: a key the cut goes through leaves its first (or
    /// last) characters at the edge of the marker. Every position of the key across both edges.
    @Test func aKeyStraddlingTheCutIsRedactedOnBothSides() {
        let key = Array(Self.key.utf8)
        let limit = 1024, half = limit / 2
        for inHead in 1..<key.count {
            let before = [UInt8](repeating: UInt8(ascii: "a"), count: half - inHead)
            let output = before + key + [UInt8](repeating: UInt8(ascii: "b"), count: 3000)
            let (capped, cut) = ToolText.headTail(output, limit: limit)
            #expect(cut)
            let (text, n) = redact("exit code 0 (0.1 s)\n" + capped)
            #expect(text.contains("bytes cut by agentbox"))
            if inHead >= SecretRedactor.minimumPartial {
                #expect(n == 1 && !text.contains(String(decoding: key.prefix(8), as: UTF8.self)), "\(inHead) bytes in the head: \(text.suffix(700).prefix(200))")
                #expect(text.contains(String(repeating: "a", count: half - inHead) + "[R]\n[... "))
            } else {
                #expect(n == 0, "\(inHead) bytes are below the minimum")
            }
        }
        for inTail in 1..<key.count {
            let output = [UInt8](repeating: UInt8(ascii: "a"), count: 3000) + key + [UInt8](repeating: UInt8(ascii: "b"), count: half - inTail)
            let (capped, _) = ToolText.headTail(output, limit: limit)
            let (text, n) = redact(capped)
            if inTail >= SecretRedactor.minimumPartial {
                #expect(n == 1 && !text.contains(String(decoding: key.suffix(8), as: UTF8.self)), "\(inTail) bytes in the tail")
                #expect(text.contains("...]\n[R]" + String(repeating: "b", count: half - inTail)))
            } else {
                #expect(n == 0)
            }
        }
    }

    @Test func theEdgesAreOnlyThoseOfARealCut() {
        let fake = "x \(Self.key.prefix(10))\n[... 12 bytes cut by agentbox: but on a line with more ...] tail\n\(Self.key.suffix(10)) y"
        #expect(redact(fake).count == 0, "a marker line that is not agentbox's is not an edge")
        let (capped, _) = ToolText.headTail(Array(String(repeating: "z", count: 100).utf8), limit: 40)
        let edges = Array(capped.utf8).withUnsafeBufferPointer { ToolText.cutEdges($0) }
        #expect(edges.headEnds == [20] && edges.tailStarts == [capped.utf8.count - 20], "\(edges)")
        // read_file's note after a line cut short: the text before it is a head edge.
        let lines = ToolText.lines(Array(("k=" + Self.key + String(repeating: "q", count: 100)).utf8), offset: 1, limit: 10, maxBytes: 20)
        #expect(redact(lines).text.hasPrefix("k=[R]\n[agentbox: showing lines"), "\(lines)")
    }

    /// base64 of data in which the key starts at any offset: 3 alignments; wrapped lines; URL alphabet.
    @Test func base64AtEveryAlignmentIsRedacted() {
        for lead in ["", "K", "KE", "KEY", "OPENAI_API_KEY="] {
            let data = Array((lead + Self.key + "\n").utf8)
            let encoded = Base64.encode(data)
            let (text, n) = redact("before " + encoded + " after")
            #expect(n == 1, "lead \(lead.count): \(text)")
            let rest = text.replacingFirst("before ", "").replacingFirst(" after", "").replacingFirst(mark, "")
            // What is left encodes the bytes before the key and at most 2 bytes of it at each end.
            #expect(rest.count <= (lead.count + 2) * 4 / 3 + 8, "lead \(lead.count): \(text)")
            let url = encoded.map { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 }
            #expect(redact(String(url)).count == 1)
        }
        let long = String(repeating: Self.key, count: 3)  // 132 bytes: base64 wraps at 76 columns
        let wrapped = SecretRedactor(secret: long)!
        var encoded = Base64.encode(Array(long.utf8))
        encoded.insert("\n", at: encoded.index(encoded.startIndex, offsetBy: 76))
        #expect(wrapped.redact("a\n" + encoded + "\nb", replacement: mark) == ("a\n[R]\nb", 1))
    }

    @Test func hexInBothCasesIsRedacted() {
        let hex = Array(Self.key.utf8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        #expect(redact("dump: " + hex + "0a") == ("dump: [R]0a", 1))
        #expect(redact("DUMP: " + hex.uppercased()) == ("DUMP: [R]", 1))
        // `xxd -p` wraps at 60 columns.
        let wrapped = stride(from: 0, to: hex.count, by: 60).map { String(hex.dropFirst($0).prefix(60)) }.joined(separator: "\n")
        #expect(redact(wrapped + "\n") == ("[R]\n", 1))
    }

    @Test func percentEncodingIsRedactedWhenItDiffers() {
        let key = "ab+cd/ef=gh:ij"
        let r = SecretRedactor(secret: key)!
        #expect(r.redact("q=ab%2Bcd%2Fef%3Dgh%3Aij&x", replacement: mark) == ("q=[R]&x", 1))
    }

    @Test func aKeyAtTheEndOfALargeResultIsFound() {
        let big = String(repeating: "0123456789abcdef", count: 1 << 16) + Self.key  // 1 MiB first
        #expect(redact(big).text.hasSuffix("f[R]"))
    }
}

extension String {
    fileprivate func replacingFirst(_ s: String, _ with: String) -> String {
        guard let r = range(of: s) else { return self }
        return replacingCharacters(in: r, with: with)
    }
}
