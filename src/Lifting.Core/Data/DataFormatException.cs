namespace Lifting.Data;

/// Malformed or unusable data. The message is one line naming the file (or dataset) and the problem.
public sealed class DataFormatException : Exception
{
    public DataFormatException(string message) : base(message) { }
}
