import AgentboxCore
import AgentboxModels
import ArgumentParser
import Glibc

struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "model", abstract: "Check model endpoints and keys.",
                                                    subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make one streamed request offering the built-in tools and print the parsed turn as JSON.",
            discussion: """
                Prints {"text", "tool_calls": [{"id","name","arguments"}], "stop_reason", "usage", "attempts"} ("refusal" too \
                when the model refused). Each retry is said on stderr as it happens. Exit 0 when a reply was parsed; 1 with \
                what the server answered and what to do otherwise; 125 before any request for a usage error, a base URL that \
                cannot work (not http:// or https://) or a missing key for an official endpoint. Keys come from \
                OPENAI_API_KEY / ANTHROPIC_API_KEY; the base URL from --base-url, OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else \
                the official endpoints.
                """)
        @Option(parsing: .unconditional, help: ArgumentHelp("PROVIDER:MODEL: openai:..., anthropic:... or replay:FILE (default: $AGENTBOX_MODEL).", valueName: "P:M"))
        var model: String?
        @Option(name: .customLong("base-url"), parsing: .unconditional, help: ArgumentHelp("Endpoint base (OpenAI-style bases include /v1, Anthropic's do not).", valueName: "URL"))
        var baseURL: String?
        @Option(parsing: .unconditional, help: ArgumentHelp("The user message to send.", valueName: "TEXT"))
        var prompt: String = "List the files in the workspace, using the shell tool."

        func run() throws {
            guarded { () throws(AgentboxError) -> Int32 in
                let spec = try ModelSpec.resolve(model: model, baseURL: baseURL)
                // Every retry is said as it happens: "attempt 1/6: connection refused; retrying in 0.5 s".
                let provider = try makeProvider(spec, onRetry: { Console.note($0.description) })
                let conversation = Conversation(system: "You are checking that a model endpoint works. Answer briefly.",
                                                messages: [.user(prompt)])
                do throws(ModelError) {
                    let (turn, attempts) = try provider.complete(conversation, tools: BuiltinTools.definitions)
                    Console.out(turn.json(attempts: attempts.count).pretty)
                    return 0
                } catch {
                    Console.error(AgentboxError(stage: "model", error.description, exitCode: 1))
                    return 1
                }
            }
        }
    }
}
