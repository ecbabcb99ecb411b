/// Text that agentbox did not write (model text, tool output, confession summaries, run names, server
/// error messages) made safe to print on a person's terminal (docs/security.md, "Terminal output").
///
/// A terminal acts on control characters: ESC starts sequences that write the clipboard (OSC 52), set the
/// window title, clear the screen or move the cursor; CR returns to the start of the line, so a line can
/// overwrite what agentbox printed; a newline in a one-line field starts what looks like another record.
/// Every such character is printed visibly instead, in one form:
///
/// - a C0 control or DEL: `\n` (LF), `\r` (CR), else `\xNN` (two lowercase hex digits: `\x1b`, `\x07`, `\x7f`);
/// - a C1 control (U+0080-U+009F, which some terminals also act on), the line and paragraph separators
///   U+2028/U+2029, and the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, which
///   reorder what is shown): `\u{85}`, `\u{2028}`, `\u{202e}` (the code point in lowercase hex);
/// - a byte that is not part of valid UTF-8 (output replayed from raw bytes): `\xNN`.
///
/// Tab is kept: it only moves right to the next tab stop, and changing the tab stops needs ESC. `block`
/// keeps newlines (a command's output, a model's text); `line` escapes them too (one record, one line).
/// Backslashes are not doubled, so the view is for reading, not lossless: `--json` is exact.
public enum TerminalText {
    /// One line: every control character escaped, newlines included (tab kept).
    public static func line(_ text: String) -> String {
        escape(text, keepNewlines: false)
    }

    /// Several lines: newlines kept, every other control character escaped (tab kept).
    public static func block(_ text: String) -> String {
        escape(text, keepNewlines: true)
    }

    /// Bytes that may not be UTF-8 (a command's output): newlines kept, controls and invalid bytes escaped.
    public static func block(bytes: [UInt8]) -> String {
        bytes.withUnsafeBufferPointer { escape(utf8: $0, keepNewlines: true) ?? String(decoding: $0, as: UTF8.self) }
    }

    /// `text` escaped; newlines kept or not.
    public static func escape(_ text: String, keepNewlines: Bool) -> String {
        var text = text
        text.makeContiguousUTF8()
        let escaped = text.utf8.withContiguousStorageIfAvailable { escape(utf8: $0, keepNewlines: keepNewlines) }
        return (escaped ?? nil) ?? text
    }

    /// Each line of `text` (after escaping) with `prefix` in front: a block that cannot pass for lines
    /// agentbox printed itself, since none of those start with the prefix. A final newline adds no line.
    public static func prefixed(_ text: String, _ prefix: String) -> String {
        var body = block(text)
        if body.hasSuffix("\n") { body.removeLast() }
        return body.split(separator: "\n", omittingEmptySubsequences: false).map { prefix + $0 }.joined(separator: "\n")
    }

    /// The escaped text, or nil when nothing needed escaping (the caller keeps its input: no copy).
    static func escape(utf8 b: UnsafeBufferPointer<UInt8>, keepNewlines: Bool) -> String? {
        let n = b.count
        var out: [UInt8] = []
        var copied = 0  // b[..<copied] is in `out` (once out is in use)
        var dirty = false
        let hex = Array("0123456789abcdef".utf8)

        func flush(_ upTo: Int) {
            if !dirty {
                dirty = true
                out.reserveCapacity(n + 16)
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: b[copied..<upTo]))
        }
        func byteEscape(_ c: UInt8) {
            out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "x"), hex[Int(c >> 4)], hex[Int(c & 15)]])
        }
        func scalarEscape(_ v: UInt32) {
            out.append(contentsOf: Array("\\u{".utf8))
            out.append(contentsOf: Array(String(v, radix: 16).utf8))
            out.append(UInt8(ascii: "}"))
        }

        var i = 0
        while i < n {
            let c = b[i]
            if c < 0x80 {
                if c >= 0x20 && c != 0x7F || c == 0x09 || (c == 0x0A && keepNewlines) { i += 1; continue }
                flush(i)
                switch c {
                case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
                default: byteEscape(c)
                }
                i += 1
                copied = i
                continue
            }
            let length = validSequenceLength(b, at: i)
            if length == 0 {
                flush(i)
                byteEscape(c)
                i += 1
                copied = i
                continue
            }
            var scalar: UInt32? = nil
            if length == 2 && c == 0xC2 && b[i + 1] < 0xA0 {
                scalar = UInt32(b[i + 1])  // U+0080-U+009F
            } else if length == 3 && c == 0xE2 {
                let v = 0x2000 | UInt32(b[i + 1] & 0x3F) << 6 | UInt32(b[i + 2] & 0x3F)
                if (0x2028...0x202E).contains(v) || (0x2066...0x2069).contains(v) { scalar = v }
            }
            if let scalar {
                flush(i)
                scalarEscape(scalar)
                copied = i + length
            }
            i += length
        }
        guard dirty else { return nil }
        flush(n)
        return String(decoding: out, as: UTF8.self)
    }

    /// The length of the valid UTF-8 sequence starting at `i` (RFC 3629: no overlong forms, no
    /// surrogates, nothing above U+10FFFF), or 0 when the byte there does not start one.
    static func validSequenceLength(_ b: UnsafeBufferPointer<UInt8>, at i: Int) -> Int {
        let c = b[i]
        let n = b.count
        func cont(_ k: Int, _ range: ClosedRange<UInt8> = 0x80...0xBF) -> Bool { i + k < n && range.contains(b[i + k]) }
        switch c {
        case 0xC2...0xDF: return cont(1) ? 2 : 0
        case 0xE0: return cont(1, 0xA0...0xBF) && cont(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: return cont(1) && cont(2) ? 3 : 0
        case 0xED: return cont(1, 0x80...0x9F) && cont(2) ? 3 : 0
        case 0xF0: return cont(1, 0x90...0xBF) && cont(2) && cont(3) ? 4 : 0
        case 0xF1...0xF3: return cont(1) && cont(2) && cont(3) ? 4 : 0
        case 0xF4: return cont(1, 0x80...0x8F) && cont(2) && cont(3) ? 4 : 0
        default: return 0
        }
    }
}
