namespace Lifting.Testing;

/// A conformance check failed; the message says which check, on what, and with which numbers.
/// Test frameworks report it as a failure (the kit depends on none of them).
public sealed class ConformanceException : Exception
{
    public ConformanceException(string message) : base(message) { }
}
