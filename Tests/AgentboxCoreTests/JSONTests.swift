import AgentboxCore
import Testing

@Suite struct JSONTests {
    @Test func roundTripsValues() throws {
        let text = #"{"a":1,"b":[true,false,null],"c":"x\"y\\z\n\u00e9","d":-1.5,"e":{}}"#
        let value = try JSON.parse(text)
        #expect(value["a"]?.intValue == 1)
        #expect(value["c"]?.stringValue == "x\"y\\z\né")
        #expect(value["d"]?.numberValue == -1.5)
        #expect(try JSON.parse(value.serialized) == value)
        #expect(try JSON.parse(value.pretty) == value)
    }

    @Test func largeIntegersStayExact() throws {
        #expect(try JSON.parse("18446744073709551615").uint64Value == UInt64.max)
        #expect(try JSON.parse("18446744073709551616").uint64Value == nil, "beyond 2^64-1 is not a u64")
        #expect(try JSON.parse("[18446744073709551615]").serialized == "[18446744073709551615]")
        #expect(try JSON.parse("-1").uint64Value == nil)
    }

    @Test func surrogatePairsDecode() throws {
        #expect(try JSON.parse(#""\ud83d\ude00""#).stringValue == "😀")
    }

    @Test(arguments: [
        ("{\"a\":1,}", "expected a string key"),
        ("[1,2", "unexpected end of input"),
        ("{\"a\" 1}", "expected ':'"),
        ("\"abc", "unterminated string"),
        ("{\"a\":1}{", "unexpected content"),
        ("{\"a\":1,\"a\":2}", "duplicate key"),
        ("tru", "invalid literal"),
        ("01x", "unexpected content"),
    ])
    func rejectsMalformedInputWithPosition(text: String, fragment: String) {
        do {
            _ = try JSON.parse(text)
            Issue.record("parsed malformed JSON: \(text)")
        } catch {
            #expect(error.message.contains(fragment), "\(error)")
            #expect(error.line >= 1 && error.column >= 1)
        }
    }

    @Test func reportsLineAndColumn() {
        do {
            _ = try JSON.parse("{\n  \"a\": [1,\n  }\n")
            Issue.record("parsed malformed JSON")
        } catch {
            #expect(error.line == 3)
        }
    }

    @Test func controlCharactersAreEscapedAndRoundTrip() throws {
        let hostile = "\u{1B}]52;c;c2VjcmV0\u{07}\r\n\t\u{0}\u{7F}\u{1B}[2J"
        let text = JSON.string(hostile).serialized
        #expect(text == "\"\\u001b]52;c;c2VjcmV0\\u0007\\r\\n\\t\\u0000\u{7F}\\u001b[2J\"")
        #expect(try JSON.parse(text).stringValue == hostile)
    }

    /// Line-based readers that split at U+2028/U+2029/U+0085 never see one inside a record, and no C1
    /// control reaches a terminal raw; other non-ASCII text is written as is.
    @Test func separatorsAndC1ControlsAreEscapedAtEveryOffset() throws {
        let specials: [(String, String)] = [("\u{2028}", "\\u2028"), ("\u{2029}", "\\u2029"), ("\u{85}", "\\u0085"),
                                            ("\u{9B}", "\\u009b"), ("\u{80}", "\\u0080")]
        for (special, escaped) in specials {
            for offset in 0..<20 {
                let s = String(repeating: "a", count: offset) + special + "…é€\u{A0}" + String(repeating: "b", count: 20 - offset)
                let bytes = JSON.string(s).serializedBytes
                let text = String(decoding: bytes, as: UTF8.self)
                #expect(text.contains(escaped) && text.contains("…é€\u{A0}"), "\(text)")
                #expect(!text.contains(special) && !bytes.contains(0x0A))
                #expect(try JSON.parse(text).stringValue == s)
            }
        }
        // Lone lead bytes of those sequences are not touched (they are other characters).
        let others = "\u{A0}\u{A9}\u{2027}\u{202A}\u{2030}\u{20AC}"
        #expect(JSON.string(others).serialized == "\"" + others + "\"")
    }

    /// Strings of the characters the word-at-a-time scan must not skip, and their neighbours, at every
    /// alignment: each round-trips and its JSON holds no raw control, C1 control or line separator.
    @Test func mixedStringsRoundTripWithoutRawControls() throws {
        let pieces = ["a", "bcdefgh", "\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1B}", "\u{7F}", "\u{80}", "\u{85}", "\u{9F}", "\u{A0}",
                      "\u{A9}", "é", "\u{2027}", "\u{2028}", "\u{2029}", "\u{202A}", "—", "…", "→", "😀", "日本"]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15  // fixed seed: the same strings every run
        for _ in 0..<2000 {
            var s = ""
            for _ in 0..<(Int(state % 24) + 1) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                s += pieces[Int(state >> 33) % pieces.count]
            }
            let bytes = JSON.string(s).serializedBytes
            #expect(try JSON.parse(bytes: bytes).stringValue == s)
            let raw = bytes.indices.contains { i in
                bytes[i] < 0x20 || (bytes[i] == 0xC2 && i + 1 < bytes.count && bytes[i + 1] < 0xA0)
                    || (bytes[i] == 0xE2 && i + 2 < bytes.count && bytes[i + 1] == 0x80 && (bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9))
            }
            #expect(!raw, "\(s.debugDescription)")
        }
    }

    @Test func deepNestingIsAnErrorNotACrash() {
        let text = String(repeating: "[", count: 100_000)
        #expect(throws: JSONParseError.self) { try JSON.parse(text) }
    }
}

@Suite struct UnitsTests {
    @Test func sizes() {
        #expect(Units.parseSize("512M") == 512 << 20)
        #expect(Units.parseSize("2G") == 2 << 30)
        #expect(Units.parseSize("1.5g") == 3 << 29)
        #expect(Units.parseSize("100") == 100)
        #expect(Units.parseSize("64KiB") == 64 << 10)
        #expect(Units.parseSize("-1M") == nil)
        #expect(Units.parseSize("lots") == nil)
        #expect(Units.parseSize("") == nil)
        #expect(Units.formatSize(512 << 20) == "512M")
    }

    @Test func durations() {
        #expect(Units.parseDuration("90s") == 90)
        #expect(Units.parseDuration("30m") == 1800)
        #expect(Units.parseDuration("2h") == 7200)
        #expect(Units.parseDuration("1h30m") == 5400)
        #expect(Units.parseDuration("250ms") == 0.25)
        #expect(Units.parseDuration("10") == 10)
        #expect(Units.parseDuration("0s") == nil)
        #expect(Units.parseDuration("5 parsecs") == nil)
        #expect(Units.parseDuration("1x") == nil)
        #expect(Units.formatDuration(5400) == "1h30m")
    }
}
