import AgentboxCore
import Glibc

/// USD per million tokens.
public struct Price: Sendable, Equatable {
    public var input: Double
    public var output: Double
    public init(input: Double, output: Double) {
        self.input = input
        self.output = output
    }
}

/// Model prices (docs/models.md, "Prices"): a built-in table that a file extends or overrides.
/// Lookup is by `provider:model`, else `model`, by the longest matching prefix ("gpt-4o" covers
/// "gpt-4o-2024-08-06", and "gpt-4o-mini" wins over it for the mini).
public struct PriceTable: Sendable {
    public var entries: [String: Price]

    /// List prices published by the providers (USD per million tokens) when this table was written.
    /// They change: check the provider's page, and override them in a prices file.
    public static let builtin: [String: Price] = [
        "gpt-4o": Price(input: 2.5, output: 10),
        "gpt-4o-mini": Price(input: 0.15, output: 0.6),
        "gpt-4.1": Price(input: 2, output: 8),
        "gpt-4.1-mini": Price(input: 0.4, output: 1.6),
        "gpt-4.1-nano": Price(input: 0.1, output: 0.4),
        "o3": Price(input: 2, output: 8),
        "o4-mini": Price(input: 1.1, output: 4.4),
        "claude-opus-4": Price(input: 15, output: 75),
        "claude-sonnet-4": Price(input: 3, output: 15),
        "claude-3-7-sonnet": Price(input: 3, output: 15),
        "claude-3-5-sonnet": Price(input: 3, output: 15),
        "claude-3-5-haiku": Price(input: 0.8, output: 4),
        "claude-haiku-4": Price(input: 1, output: 5),
        "replay:": Price(input: 0, output: 0),
    ]

    public init(entries: [String: Price] = PriceTable.builtin) { self.entries = entries }

    /// `$AGENTBOX_PRICES`, else `$XDG_CONFIG_HOME/agentbox/prices.json` (`~/.config/...`), when it exists.
    public static func defaultFile() -> String? {
        if let p = AgentboxPaths.file("AGENTBOX_PRICES") { return p }
        guard let config = AgentboxPaths.configDir() else { return nil }
        let path = config + "/prices.json"
        return FileIO.exists(path) ? path : nil
    }

    /// The built-in table extended by `file` (`{"models": {"name-or-prefix": {"input": USD, "output": USD}}}`).
    public static func load(file: String? = defaultFile()) throws(AgentboxError) -> PriceTable {
        var table = PriceTable()
        guard let file else { return table }
        let text = try FileIO.readString(file)
        func fail(_ key: String, _ problem: String) -> AgentboxError {
            AgentboxError(stage: "prices", "\(file): \(key.isEmpty ? "" : key + ": ")\(problem)",
                          hint: "format: {\"models\": {\"gpt-4o\": {\"input\": 2.5, \"output\": 10}}} in USD per million tokens")
        }
        let json: JSON
        do { json = try JSON.parse(text) } catch { throw fail("", "not valid JSON: \(error)") }
        guard let models = json["models"]?.objectValue else { throw fail("models", "must be an object") }
        for (k, _) in json.objectValue ?? [] where k != "models" { throw fail(k, "unknown key (known: models)") }
        for (name, value) in models {
            guard let input = value["input"]?.numberValue, input >= 0, let output = value["output"]?.numberValue, output >= 0 else {
                throw fail("models.\(name)", "needs non-negative numbers \"input\" and \"output\"")
            }
            for (k, _) in value.objectValue ?? [] where k != "input" && k != "output" {
                throw fail("models.\(name).\(k)", "unknown key (known: input, output)")
            }
            table.entries[name] = Price(input: input, output: output)
        }
        return table
    }

    public func price(provider: String, model: String) -> Price? {
        let candidates = [provider + ":" + model, model]
        var best: (Int, Price)? = nil
        for (key, price) in entries {
            for c in candidates where c.hasPrefix(key) && key.count > (best?.0 ?? -1) { best = (key.count, price) }
        }
        return best?.1
    }

    public func cost(_ usage: Usage, provider: String, model: String) -> Double? {
        guard let p = price(provider: provider, model: model) else { return nil }
        return (Double(usage.inputTokens) * p.input + Double(usage.outputTokens) * p.output) / 1_000_000
    }
}

/// Limits of one run (`--max-steps`, `--max-tool-calls`, `--max-tokens`, `--max-cost`, `--timeout`).
public struct Budget: Sendable {
    public var maxSteps: Int? = nil
    /// Tool calls the run may make, counted as the model asks for them (one turn may hold many).
    public var maxToolCalls: Int? = nil
    public var maxTokens: Int? = nil
    public var maxCost: Double? = nil
    public var maxWallSeconds: Double? = nil
    public init() {}
}

/// What a run has used so far, and the check the agent loop makes before every model request.
public struct Accounting: Sendable {
    public private(set) var steps = 0
    public private(set) var toolCalls = 0
    public private(set) var usage = Usage()
    /// nil when some call's model has no known price.
    public private(set) var cost: Double? = 0
    public let started: Double
    let provider: String
    let model: String
    let prices: PriceTable

    public init(provider: String, model: String, prices: PriceTable, started: Double = Clock.monotonic()) {
        self.provider = provider
        self.model = model
        self.prices = prices
        self.started = started
        cost = prices.price(provider: provider, model: model) == nil ? nil : 0
    }

    /// Adds one model call.
    public mutating func record(_ callUsage: Usage) {
        steps += 1
        usage.inputTokens += callUsage.inputTokens
        usage.outputTokens += callUsage.outputTokens
        if let c = cost, let add = prices.cost(callUsage, provider: provider, model: model) { cost = c + add } else { cost = nil }
    }

    /// Adds one tool call.
    public mutating func recordToolCall() { toolCalls += 1 }

    public enum Exceeded: Equatable, Sendable {
        case steps(Int), toolCalls(Int), tokens(Int), cost(Double), wallTime(Double)
        public var description: String {
            switch self {
            case let .steps(n): return "the step budget (\(n)) is used up"
            case let .toolCalls(n): return "the tool-call budget (\(n)) is used up"
            case let .tokens(n): return "the token budget (\(n)) is used up"
            case let .cost(c): return "the cost budget ($\(c)) is used up"
            case let .wallTime(s): return "the time budget (\(Units.formatDuration(s))) is used up"
            }
        }
    }

    /// Whether another request may be made. Errors when a cost budget is set but the model's price is
    /// unknown: a budget that cannot be enforced must not be silently ignored.
    public func check(_ budget: Budget, now: Double = Clock.monotonic()) throws(AgentboxError) -> Exceeded? {
        if let max = budget.maxSteps, steps >= max { return .steps(max) }
        if let max = budget.maxToolCalls, toolCalls >= max { return .toolCalls(max) }
        if let max = budget.maxTokens, usage.total >= max { return .tokens(max) }
        if let max = budget.maxCost {
            guard let cost else {
                throw AgentboxError(stage: "budget", "--max-cost cannot be enforced: no price for \(provider):\(model)",
                                    hint: "add the model to a prices file (docs/models.md, \"Prices\")")
            }
            if cost >= max { return .cost(max) }
        }
        if let max = budget.maxWallSeconds, now - started >= max { return .wallTime(max) }
        return nil
    }

    /// Fails before the first request when `--max-cost` is set for a model without a price.
    public func validate(_ budget: Budget) throws(AgentboxError) {
        if budget.maxCost != nil && prices.price(provider: provider, model: model) == nil {
            throw AgentboxError(stage: "budget", "--max-cost cannot be enforced: no price for \(provider):\(model)",
                                hint: "add the model to a prices file (docs/models.md, \"Prices\")")
        }
    }
}
