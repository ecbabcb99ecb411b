# agentbox: the two commands of the README quickstart are `make demo` and `make test`.
# Both install what is missing (Debian/Ubuntu packages, with sudo when not root), build, and run.

SHELL := /bin/bash
SWIFT_BIN ?= $(shell command -v swift 2>/dev/null || ls /opt/swift/usr/bin/swift 2>/dev/null)
SWIFT     := $(SWIFT_BIN)
PREFIX    ?= /usr/local
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Static Swift stdlib for fast start (a Foundation-free init, ~1 ms). The -l flags work around
# SwiftPM not adding FoundationEssentials' own static dependencies when linking statically.
STATIC    := --disable-local-rpath --static-swift-stdlib -Xlinker -l_FoundationCShims -Xlinker -l_FoundationCollections -Xlinker -lswiftSynchronization
# The supervisor also links libstdc++ and libgcc statically; glibc stays shared (NSS, and the dlopen of
# libcurl, need it). Each shared library costs its loading, symbol binding and CPU probing at every
# start: 1.1 ms of a Swift program's 2.8 ms on the development host (docs/benchmarks.md). The Swift
# driver asks for `-lstdc++` itself, so a folder searched before the compiler's answers `-lstdc++` and
# `-lgcc_s` with linker scripts naming the archives (made by `make link-archives`; when an archive is
# missing, that library stays shared).
ARCHIVES  := .build/link-archives
CLANG     := $(dir $(realpath $(SWIFT_BIN)))clang
STATIC    += -Xswiftc -L$(CURDIR)/$(ARCHIVES)
BUILD_DEPS := libseccomp-dev libcap-dev libcurl4-openssl-dev pkg-config
TEST_DEPS  := util-linux passwd procps bash coreutils python3 python3-pip python3-venv curl
BENCH_DEPS := hyperfine bubblewrap runc python3
DEBUG_BIN   = .build/debug
RELEASE_BIN = .build/release

FUZZ_SECONDS ?= 60

PYCLIENTS          ?= /var/tmp/agentbox-pyclients
PYCLIENTS_PACKAGES := openai anthropic llm
PYCLIENTS_STAMP     = $(PYCLIENTS)/.agentbox-installed

.PHONY: all build release link-archives deps bench-deps test demo install uninstall bench fuzz clean check-swift pyclients pyclients-clean

all: build

check-swift:
	@if [ -z "$(SWIFT)" ]; then \
	  echo "error: no Swift toolchain found (looked for 'swift' on PATH and /opt/swift/usr/bin/swift)."; \
	  echo "  install Swift 6 from https://www.swift.org/install/linux/ and put it on PATH, then re-run."; \
	  exit 1; fi

# Install the Debian/Ubuntu packages that are missing (nothing when all are present).
deps:
	@missing=""; for p in $(BUILD_DEPS) $(TEST_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get install -y $$missing >/dev/null || { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y $$missing; }; fi

bench-deps:
	@missing=""; for p in $(BENCH_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get install -y $$missing >/dev/null || { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y $$missing; }; fi

# Static linking of the Swift runtime makes GNU ld print two notices about code agentbox never runs:
# "Using 'dlopen' in statically linked applications requires at runtime the shared libraries..."
# (libswiftCore.a; the init loads no library: no Foundation, no NSS) and "the use of `mktemp' is
# dangerous" (FoundationEssentials' temporary-file helper, which agentbox does not call: its files are
# created with O_EXCL or mkdtemp). Those two lines are filtered; every other warning shows.
QUIET_STATIC := 2>&1 | { grep --line-buffered -v -e "Using 'dlopen' in statically linked" -e "the use of \`mktemp' is dangerous" || true; }

# Debug build with the shared Swift runtime (the test frameworks are not available statically).
build: check-swift deps
	@set -o pipefail; $(SWIFT) build $(QUIET_STATIC)

release: check-swift deps link-archives
	@set -o pipefail; $(SWIFT) build -c release $(STATIC) $(QUIET_STATIC)

link-archives:
	@mkdir -p $(ARCHIVES); \
	archive() { p=$$($(CLANG) -print-file-name=$$1 2>/dev/null); [ "$${p#/}" != "$$p" ] && [ -f "$$p" ] && echo "$$p"; }; \
	script() { name=$$1; shift; files=""; for a in "$$@"; do f=$$(archive $$a) || { rm -f $(ARCHIVES)/$$name; \
	  echo "note: $$a not found: the release binary links $${name%.so} as a shared library (slower start)"; return; }; files="$$files $$f"; done; \
	  text="INPUT($$files )"; [ "$$(cat $(ARCHIVES)/$$name 2>/dev/null)" = "$$text" ] || echo "$$text" > $(ARCHIVES)/$$name; }; \
	script libstdc++.so libstdc++.a; script libgcc_s.so libgcc_eh.a libgcc.a

test: build $(PYCLIENTS_STAMP)
	@set -o pipefail; $(SWIFT) test $(QUIET_STATIC)

# The real SDK clients the agent tests run inside sandboxes (Tests/AgentboxIntegrationTests/AgentsTests.swift):
# a venv of the Debian python with openai, anthropic and llm, outside the repo (which may be in a 0700
# folder) and world-readable (the sandbox's unprivileged user must reach it). Made once; a stamp file
# records that it is complete (`make pyclients-clean` removes it). The tests find it through
# AGENTBOX_PYCLIENTS or this default path.
pyclients: $(PYCLIENTS_STAMP)

$(PYCLIENTS_STAMP): | deps
	@set -o pipefail; start=$$(date +%s); log=$$(mktemp /tmp/agentbox-pyclients-XXXXXX.log); \
	printf 'python clients for the tests (%s): venv' "$(PYCLIENTS)"; \
	rm -rf "$(PYCLIENTS)" && /usr/bin/python3 -m venv "$(PYCLIENTS)" >>"$$log" 2>&1 && \
	printf ', pip install %s' "$(PYCLIENTS_PACKAGES)" && \
	"$(PYCLIENTS)/bin/pip" install --disable-pip-version-check --no-cache-dir -q $(PYCLIENTS_PACKAGES) >>"$$log" 2>&1 && \
	"$(PYCLIENTS)/bin/python" -c 'import openai, anthropic, llm' >>"$$log" 2>&1 && \
	chmod -R a+rX "$(PYCLIENTS)" && touch "$@" && chmod a+r "$@" \
	  && { echo ", done in $$(( $$(date +%s) - start )) s"; rm -f "$$log"; } \
	  || { echo ", failed (log: $$log):"; tail -20 "$$log"; exit 1; }

pyclients-clean:
	rm -rf "$(PYCLIENTS)"

demo: release
	@bash examples/demo.sh $(RELEASE_BIN)/agentbox

install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/agentbox $(DESTDIR)$(PREFIX)/share/agentbox
	install -m 0755 $(RELEASE_BIN)/agentbox $(DESTDIR)$(PREFIX)/bin/agentbox
	install -m 0755 $(RELEASE_BIN)/agentbox-init $(DESTDIR)$(PREFIX)/libexec/agentbox/agentbox-init
	rm -rf $(DESTDIR)$(PREFIX)/share/agentbox/sandbox-profiles
	cp -r sandbox-profiles $(DESTDIR)$(PREFIX)/share/agentbox/sandbox-profiles
	chmod -R a+rX $(DESTDIR)$(PREFIX)/share/agentbox
	# The man page and the shell completions are generated from the CLI's own help.
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	python3 tools/manpage.py $(RELEASE_BIN)/agentbox > $(DESTDIR)$(PREFIX)/share/man/man1/agentbox.1
	$(RELEASE_BIN)/agentbox --generate-completion-script bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/agentbox
	$(RELEASE_BIN)/agentbox --generate-completion-script zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_agentbox
	$(RELEASE_BIN)/agentbox --generate-completion-script fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/agentbox.fish
	@echo "installed $(DESTDIR)$(PREFIX)/bin/agentbox (man agentbox; completions for bash, zsh, fish); try: agentbox doctor"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/agentbox
	rm -rf $(DESTDIR)$(PREFIX)/libexec/agentbox $(DESTDIR)$(PREFIX)/share/agentbox
	rm -f $(DESTDIR)$(PREFIX)/share/man/man1/agentbox.1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions/agentbox \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_agentbox $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/agentbox.fish

bench: release bench-deps
	@bash bench/sandbox.sh $(RELEASE_BIN)/agentbox
	@echo
	@bash bench/journal.sh $(RELEASE_BIN)/agentbox
	@echo
	@bash bench/agent.sh $(RELEASE_BIN)/agentbox
	@echo
	@bash bench/checkpoint.sh $(RELEASE_BIN)/agentbox
	@echo
	@bash bench/network.sh $(RELEASE_BIN)/agentbox

# Mutation fuzzing of every parser that takes untrusted bytes (Sources/agentbox-fuzz), FUZZ_SECONDS in all.
# Prints the seed, the inputs tried per target, and writes any crashing input to fuzz-crash-TARGET.bin.
fuzz: check-swift deps
	$(SWIFT) build -c release --product agentbox-fuzz
	$(RELEASE_BIN)/agentbox-fuzz --seconds $(FUZZ_SECONDS)

clean:
	rm -rf .build
