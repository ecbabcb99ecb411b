import AgentboxCore
import Testing

@Suite struct TerminalTextTests {
    /// Bytes a terminal acts on: C0 controls but tab and newline, DEL, and UTF-8 C1 controls.
    func rawControls(_ s: String, newlines: Bool) -> [UInt8] {
        let bytes = Array(s.utf8)
        var found: [UInt8] = []
        for (i, b) in bytes.enumerated() {
            if (b < 0x20 && b != 0x09 && !(newlines && b == 0x0A)) || b == 0x7F { found.append(b) }
            if b == 0xC2, i + 1 < bytes.count, bytes[i + 1] < 0xA0 { found.append(bytes[i + 1]) }
        }
        return found
    }

    @Test func escapeSequencesArePrintedVisibly() {
        let osc52 = "\u{1B}]52;c;c2VjcmV0\u{07}"
        #expect(TerminalText.line(osc52) == "\\x1b]52;c;c2VjcmV0\\x07")
        #expect(TerminalText.line("\u{1B}[2J\u{1B}]0;title\u{1B}\\") == "\\x1b[2J\\x1b]0;title\\x1b\\")
        #expect(TerminalText.line("a\u{7F}b\u{0}c") == "a\\x7fb\\x00c")
    }

    @Test func oneLineFieldsEscapeNewlinesAndCarriageReturns() {
        let forged = "ok\r2026-01-01T00:00:00Z  abc123 other  blocker  secrets: fake\nnext"
        let line = TerminalText.line(forged)
        #expect(line == "ok\\r2026-01-01T00:00:00Z  abc123 other  blocker  secrets: fake\\nnext")
        #expect(!line.utf8.contains(0x0A) && !line.utf8.contains(0x0D))
        #expect(TerminalText.line("a\tb") == "a\tb", "tab stays readable")
    }

    @Test func blocksKeepNewlinesOnly() {
        #expect(TerminalText.block("one\ntwo\r\n\u{1B}[31mred\u{1B}[0m\tx\n") == "one\ntwo\\r\n\\x1b[31mred\\x1b[0m\tx\n")
    }

    @Test func c1ControlsSeparatorsAndBidiOverridesAreEscaped() {
        #expect(TerminalText.line("a\u{85}b\u{9B}31mc\u{80}\u{9F}") == "a\\u{85}b\\u{9b}31mc\\u{80}\\u{9f}")
        #expect(TerminalText.block("x\u{2028}y\u{2029}z") == "x\\u{2028}y\\u{2029}z")
        #expect(TerminalText.line("file\u{202E}txt.exe\u{2066}") == "file\\u{202e}txt.exe\\u{2066}")
        // Neighbours stay as they are: U+00A0, U+00E9, U+2027, U+202F, U+2026, U+20AC, emoji.
        let fine = "\u{A0}é\u{2027}\u{202F}…€😀 日本"
        #expect(TerminalText.line(fine) == fine)
    }

    @Test func plainTextIsUnchanged() {
        let s = "step 3 · model 1.2 s · 4.5k tokens — $0.01 (ok) \\x1b is text"
        #expect(TerminalText.line(s) == s && TerminalText.block(s) == s)
    }

    @Test func invalidUTF8BytesAreEscapedByteByByte() {
        let bytes: [UInt8] = Array("out\n".utf8) + [0xFF, 0xFE] + Array("x".utf8) + [0xC2] + [0xE2, 0x82] + [0xED, 0xA0, 0x80] + [0xC0, 0xAF]
            + [0x1B] + Array("é\n".utf8)
        #expect(TerminalText.block(bytes: bytes) == "out\n\\xff\\xfex\\xc2\\xe2\\x82\\xed\\xa0\\x80\\xc0\\xaf\\x1bé\n")
        #expect(TerminalText.block(bytes: Array("plain\n".utf8)) == "plain\n")
    }

    @Test func prefixedBlocksCannotPassForAgentboxLines() {
        let text = "result\n[12] run ended: finished (success): all good\n\u{1B}[1A\rdone\n"
        let shown = TerminalText.prefixed(text, "  | ")
        #expect(shown == "  | result\n  | [12] run ended: finished (success): all good\n  | \\x1b[1A\\rdone")
        #expect(shown.split(separator: "\n", omittingEmptySubsequences: false).allSatisfy { $0.hasPrefix("  | ") })
    }

    @Test func everyControlIsCovered() {
        var all = ""
        for v in 0..<0x2100 { if let u = Unicode.Scalar(v) { all.unicodeScalars.append(u) } }
        #expect(rawControls(TerminalText.line(all), newlines: false).isEmpty)
        #expect(rawControls(TerminalText.block(all), newlines: true).isEmpty)
        #expect(!TerminalText.line(all).utf8.contains(0x0A))
    }
}
