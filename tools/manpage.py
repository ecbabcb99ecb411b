#!/usr/bin/env python3
"""Writes agentbox(1) in roff from the CLI's own help (`agentbox --experimental-dump-help`), so the man
page says exactly what `--help` says. Usage: tools/manpage.py PATH/TO/agentbox > agentbox.1"""
import json, subprocess, sys, datetime

def esc(text):
    """Roff-safe text: backslashes, and a leading dot or quote would be read as a request."""
    lines = []
    for line in (text or "").replace("\\", "\\e").split("\n"):
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)

def flag_names(arg):
    names = []
    for n in arg.get("names", []):
        names.append(("-" if n["kind"] == "short" else "--") + n["name"])
    return ", ".join("\\fB" + esc(n) + "\\fR" for n in names)

def arguments(args, out, root=False):
    for a in args:
        # --help and --version are said once, for agentbox itself.
        standard = any(n["name"] in ("help", "version") for n in a.get("names", []))
        if not a.get("shouldDisplay", True) or (standard and not root):
            continue
        if a["kind"] == "positional":
            head = "\\fI" + esc(a.get("valueName", "ARG")) + "\\fR" + ("..." if a.get("isRepeating") else "")
        else:
            head = flag_names(a)
            if a["kind"] == "option":
                head += " \\fI" + esc(a.get("valueName", "VALUE")) + "\\fR"
        out.append(".TP\n" + head)
        text = a.get("abstract", "")
        if a.get("defaultValue") and a["kind"] == "option":
            text += " (default: %s)" % a["defaultValue"]
        out.append(esc(text))

def command(c, path, out):
    name = " ".join(path)
    out.append(".SH \"%s\"" % esc(name.upper()))
    if c.get("abstract"):
        out.append(esc(c["abstract"]))
    if c.get("discussion"):
        out.append(".PP\n" + esc(c["discussion"]))
    arguments(c.get("arguments", []), out)
    for sub in c.get("subcommands", []):
        if sub.get("shouldDisplay", True):
            command(sub, path + [sub["commandName"]], out)

def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else "agentbox"
    info = json.loads(subprocess.run([exe, "--experimental-dump-help"], check=True, capture_output=True).stdout)
    root = info["command"]
    out = ['.TH AGENTBOX 1 "%s" "agentbox" "User Commands"' % datetime.date.today().isoformat(),
           ".SH NAME", "agentbox \\- " + esc(root.get("abstract", "")),
           ".SH SYNOPSIS", "\\fBagentbox\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]"]
    if root.get("discussion"):
        out += [".SH DESCRIPTION", esc(root["discussion"])]
    out.append(".SH OPTIONS")
    arguments(root.get("arguments", []), out, root=True)
    out.append(".SH COMMANDS")
    for sub in root.get("subcommands", []):
        if sub.get("shouldDisplay", True):
            out.append(".TP\n\\fB%s\\fR\n%s" % (esc(sub["commandName"]), esc(sub.get("abstract", ""))))
    for sub in root.get("subcommands", []):
        if sub.get("shouldDisplay", True):
            command(sub, ["agentbox", sub["commandName"]], out)
    out += [".SH FILES", "Journals under \\fI$AGENTBOX_HOME/runs\\fR (default: $XDG_STATE_HOME/agentbox or ~/.local/state/agentbox; for root /var/lib/agentbox).",
            ".SH SEE ALSO", "The documentation in docs/ of the agentbox sources: cli.md, agent.md, journal.md, security.md."]
    print("\n".join(out))

main()
