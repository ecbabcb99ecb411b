import AgentboxCore
import Testing

@Suite struct AgentWireTests {
    @Test func largeMessagesAreSplitAndReassembled() throws {
        let big = String(repeating: "é", count: 100_000)  // 200 KB of UTF-8, several packets
        let message: JSON = ["t": "tool_done", "content": .string(big)]
        let packets = AgentWire.packets(message)
        #expect(packets.count > 1 && packets.allSatisfy { $0.count <= AgentWire.packetPayload + 1 })
        var a = AgentWire.Assembler()
        var out: JSON? = nil
        for p in packets { out = try a.add(p[...]) }
        #expect(out == message)
        // The assembler is ready for the next message.
        #expect(try a.add(AgentWire.packets(["t": "next"])[0][...]) == ["t": "next"])
    }

    @Test func badPacketsAreErrors() {
        var a = AgentWire.Assembler()
        #expect(throws: WireError.self) { try a.add([WireTag.agentLast.rawValue] + Array("{nope".utf8)) }
        #expect(throws: WireError.self) { try a.add([WireTag.ready.rawValue, 0][...]) }
    }
}

@Suite struct ToolTextTests {
    @Test func shortOutputIsKeptWhole() {
        #expect(ToolText.headTail(Array("hello".utf8), limit: 10) == ("hello", false))
    }

    @Test func longOutputKeepsHeadAndTailWithAMarker() {
        let bytes = Array(String(repeating: "a", count: 100).utf8) + Array(String(repeating: "b", count: 100).utf8)
        let (text, cut) = ToolText.headTail(bytes, limit: 40)
        #expect(cut)
        #expect(text.hasPrefix(String(repeating: "a", count: 20) + "\n[... 160 bytes cut"))
        #expect(text.hasSuffix("]\n" + String(repeating: "b", count: 20)))
    }

    @Test func cutsNeverSplitACharacter() {
        let bytes = Array(String(repeating: "€", count: 50).utf8)  // 3 bytes each
        for limit in 10...40 {
            let (text, _) = ToolText.headTail(bytes, limit: limit)
            #expect(!text.contains("\u{FFFD}"), "limit \(limit): \(text)")
        }
    }

    @Test func replaceUniqueNeedsExactlyOneOccurrence() {
        let c = Array("a = 1\nb = 1\n".utf8)
        #expect(ToolText.replaceUnique(c, old: Array("a = 1".utf8), new: Array("a = 2".utf8)) == .success(Array("a = 2\nb = 1\n".utf8)))
        #expect(ToolText.replaceUnique(c, old: Array(" = 1".utf8), new: []) == .failure(.notUnique(2)))
        #expect(ToolText.replaceUnique(c, old: Array("c".utf8), new: []) == .failure(.notFound))
        #expect(ToolText.replaceUnique(c, old: [], new: []) == .failure(.emptyOldText))
        #expect(ToolText.replaceUnique(Array("aaaa".utf8), old: Array("aa".utf8), new: []) == .failure(.notUnique(2)))
    }

    @Test func linesHonoursOffsetLimitAndSaysWhereToContinue() {
        let c = Array((1...10).map { "line \($0)" }.joined(separator: "\n").utf8)
        #expect(ToolText.lines(c, offset: 1, limit: 100, maxBytes: 1000) == String(decoding: c, as: UTF8.self))
        let part = ToolText.lines(c, offset: 3, limit: 2, maxBytes: 1000)
        #expect(part.hasPrefix("line 3\nline 4\n[agentbox: showing lines 3-4 of 10; call read_file with offset 5"), "\(part)")
        #expect(ToolText.lines(c, offset: 11, limit: 2, maxBytes: 1000).contains("past the end"))
        let bytesCut = ToolText.lines(c, offset: 1, limit: 100, maxBytes: 20)
        #expect(bytesCut.hasPrefix("line 1\nline 2\n[agentbox: showing lines 1-2 of 10"), "\(bytesCut)")
        #expect(ToolText.lines([], offset: 1, limit: 10, maxBytes: 10) == "")
    }
}
