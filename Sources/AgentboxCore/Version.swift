/// agentbox's version: printed by `agentbox version`, and part of every cache key (a cache written by
/// another version is never trusted).
public enum AgentboxVersion {
    public static let string = "0.1.0"
}
