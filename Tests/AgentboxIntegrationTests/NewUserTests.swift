import AgentboxCore
import Foundation
import Testing

/// What a new user trips over (issue 10, section 4): names, removing runs, the answer on stdout, and
/// messages that say what is really wrong.
@Suite struct NewUserTests {
    func ab(_ args: [String], home: String, cwd: String = "/tmp") -> RunResult {
        run([TestEnv.agentbox] + args, cwd: cwd, env: ["AGENTBOX_HOME": home])
    }
    func replay(_ ws: String, _ turns: String) throws -> String {
        let path = ws + "/session.json"
        try #"{"turns": [\#(turns)]}"#.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
    static let finish = #"{"text": "done", "tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "Fixed the parser.\nAll 12 tests pass."}}]}"#

    @Test func anUnknownCommandIsNamedAndHelpForItFails() {
        let home = TestEnv.workspace()
        let r = ab(["pss"], home: home)
        #expect(r.code == 125 && r.err.contains("no command \"pss\"; did you mean ps?") && r.err.contains("the commands are exec, run"), "\(r)")
        let h = ab(["help", "nosuch"], home: home)
        #expect(h.code == 125 && h.err.contains("no command \"nosuch\""), "\(h)")
        #expect(ab(["help", "stop"], home: home).code == 0)
        let nested = ab(["help", "journal", "nosuch"], home: home)
        #expect(nested.code == 125 && nested.err.contains("no command \"journal nosuch\"") && nested.err.contains("the commands are verify"), "\(nested)")
    }

    @Test func aNegativeNumberIsCheckedNotTakenForAnOption() {
        let home = TestEnv.workspace()
        let g = ab(["stop", "--grace", "-1", "x"], home: home)
        #expect(g.code == 125 && g.err.contains("--grace -1") && g.err.contains("must be 0 or more") && !g.err.contains("Missing value"), "\(g)")
        let s = ab(["run", "--max-steps", "-3", "--model", "replay:x", "--task", "t"], home: home)
        #expect(s.code == 125 && s.err.contains("--max-steps -3: must be at least 1"), "\(s)")
    }

    @Test func aDeletedWorkingDirectoryIsSaidAsSuch() {
        let home = TestEnv.workspace(), dir = TestEnv.workspace()
        let r = run(["/bin/sh", "-c", "cd '\(dir)' && rmdir '\(dir)' && '\(TestEnv.agentbox)' exec -- true"], env: ["AGENTBOX_HOME": home])
        #expect(r.code == 125 && r.err.contains("the current directory no longer exists") && !r.err.contains("whole filesystem"), "\(r)")
    }

    @Test func aReplaySessionShorterThanTheRunIsNotCalledABug() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let session = try replay(ws, #"{"tool_calls": [{"name": "shell", "arguments": {"command": "true"}}]}"#)
        let r = ab(["run", "--model", "replay:" + session, "--task", "t"], home: home, cwd: ws)
        #expect(r.code == 1 && r.err.contains("the session ended before the run did") && !r.err.contains("bug in agentbox"), "\(r)")
    }

    @Test func theAgentsAnswerIsOnStdoutAndProgressOnStderr() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let session = try replay(ws, NewUserTests.finish)
        let r = ab(["run", "--model", "replay:" + session, "--task", "t"], home: home, cwd: ws)
        #expect(r.code == 0 && r.out == "Fixed the parser.\nAll 12 tests pass.\n", "\(r)")
        #expect(r.err.contains("agentbox: finished (success)"), "\(r)")
        let j = ab(["run", "--model", "replay:" + session, "--task", "t", "--json"], home: home, cwd: ws)
        #expect(j.code == 0 && j.out.split(separator: "\n").allSatisfy { $0.hasPrefix("{") }, "--json: stdout is records only: \(j.out.suffix(300))")
    }

    @Test func theAnswerCannotDriveTheTerminal() throws {
        // The model writes the summary: on a terminal (a pty here) its escape sequences are shown, not run.
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let evil = #"{"turns": [{"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "done\u001b]0;pwned\u0007\u001b[2J"}}]}]}"#
        try evil.write(toFile: ws + "/s.json", atomically: true, encoding: .utf8)
        let r = run(["/usr/bin/script", "-qec", "'\(TestEnv.agentbox)' run --model replay:s.json --task t 2>/dev/null", "/dev/null"],
                    cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(r.out.contains("done") && !r.out.contains("\u{1B}]0;pwned") && !r.out.contains("\u{1B}[2J"), "\(r.out.debugDescription)")
        let piped = ab(["run", "--model", "replay:s.json", "--task", "t"], home: home, cwd: ws)
        #expect(piped.out == "done\u{1B}]0;pwned\u{07}\u{1B}[2J\n", "a pipe gets the text as written: \(piped.out.debugDescription)")
    }

    @Test func aNameARunningRunHasIsRefusedUnlessAllowed() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        let script = """
        A='\(TestEnv.agentbox)'
        "$A" exec --name web -- sleep 30 > /dev/null 2>&1 &
        for i in $(seq 100); do "$A" ps | grep -q web && break; sleep 0.05; done
        "$A" exec --name web -- true; echo "dup=$?"
        "$A" exec --name web --allow-duplicate-name -- sleep 30 > /dev/null 2>&1 &
        for i in $(seq 100); do [ "$("$A" ps | grep -c web)" = 2 ] && break; sleep 0.05; done
        "$A" stop web; echo "stop=$?"
        for id in $("$A" ps --json | sed -n 's/.*"id":"\\([0-9a-f]*\\)".*/\\1/p'); do "$A" kill "$id" > /dev/null; done
        wait
        "$A" exec --name web -- true; echo "after=$?"
        """
        let r = run(["/bin/bash", "-c", script], cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(r.out.contains("dup=125") && r.err.contains("the name \"web\" belongs to a running run"), "\(r)")
        #expect(r.err.contains("--allow-duplicate-name"), "the hint names the option: \(r.err)")
        #expect(r.out.contains("stop=125") && r.err.contains("\"web\" names 2 running runs"), "\(r)")
        #expect(r.out.contains("after=0"), "the name is free once its runs ended: \(r)")
        let long = String(repeating: "n", count: 128)
        #expect(ab(["exec", "--name", long, "--", "true"], home: home, cwd: ws).code == 0, "the longest name is claimed too")
    }

    @Test func rmAndPruneDeleteEndedRunsOnly() throws {
        let home = TestEnv.workspace(), ws = TestEnv.workspace()
        for name in ["a", "b", "c"] { #expect(ab(["exec", "--name", name, "--", "true"], home: home, cwd: ws).code == 0) }
        let script = """
        A='\(TestEnv.agentbox)'
        "$A" exec --name live -- sleep 30 > /dev/null 2>&1 &
        for i in $(seq 100); do "$A" ps | grep -q live && break; sleep 0.05; done
        "$A" rm live; echo "rm-live=$?"
        "$A" rm a nosuch; echo "rm-a=$?"
        "$A" prune --older-than 1h; echo "prune-old=$?"
        "$A" prune --dry-run; echo "dry=$?"
        "$A" prune; echo "prune=$?"
        "$A" rm "$(ls "$AGENTBOX_HOME/runs" | cut -c1)"; echo "rm-short=$?"
        "$A" rm ""; echo "rm-empty=$?"
        "$A" ps --all --json | grep -c '"id"'
        ls "$AGENTBOX_HOME/runs"
        "$A" kill live > /dev/null; wait
        """
        let r = run(["/bin/bash", "-c", script], cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(r.out.contains("rm-live=1") && r.err.contains("run ") && r.err.contains(" is running"), "\(r)")
        #expect(r.out.contains("removed ") && r.out.contains("(a)") && r.out.contains("rm-a=1") && r.err.contains("no run \"nosuch\""), "\(r)")
        #expect(r.err.contains("removed 0 run(s)") && r.out.contains("would remove") && r.err.contains("removed 2 run(s)"), "\(r)")
        #expect(r.out.contains("\n1\n"), "only the running run is left: \(r.out)")
        #expect(r.out.contains("rm-short=1") && r.err.contains("too short a prefix"), "rm of a one-letter prefix deletes nothing: \(r)")
        #expect(r.out.contains("rm-empty=1") && r.err.contains("an empty run id or name"), "rm \"\" deletes nothing: \(r)")
        let left = try FileManager.default.contentsOfDirectory(atPath: home + "/runs")
        #expect(left.count == 1 && !left.contains { $0.hasPrefix(".removing") }, "\(left)")
        let names = try FileManager.default.contentsOfDirectory(atPath: home + "/names")
        #expect(names.count == 1, "prune removes the name claims of ended runs; the running run's stays: \(names)")
    }
}

extension NewUserTests {
    @Test func theManPageAndCompletionsComeFromTheHelp() throws {
        let man = run(["/usr/bin/python3", TestEnv.repoRoot + "/tools/manpage.py", TestEnv.agentbox])
        #expect(man.code == 0 && man.out.hasPrefix(".TH AGENTBOX 1"), "\(man.err)")
        for text in [#".SH "AGENTBOX RM""#, #".SH "AGENTBOX PRUNE""#, "--older-than", "--allow-duplicate-name", #".SH "AGENTBOX MODEL CHECK""#] {
            #expect(man.out.contains(text), "the man page lacks \(text)")
        }
        for shell in ["bash", "zsh", "fish"] {
            let script = run([TestEnv.agentbox, "--generate-completion-script", shell])
            #expect(script.code == 0 && script.out.contains("prune") && script.out.contains("allow-duplicate-name"), "\(shell): \(script.err)")
            if shell == "bash" {
                let path = TestEnv.workspace() + "/agentbox.bash"
                try script.out.write(toFile: path, atomically: true, encoding: .utf8)
                #expect(run(["/bin/bash", "-n", path]).code == 0, "the bash completion parses")
            }
        }
    }
}
