using System.Collections;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace Lifting.Examples;

/// A script's command-line settings, KEY=VALUE (a bare KEY is KEY=true), in the order given. Each
/// reader takes the value to use when the key is absent; numbers parse in the invariant culture, and
/// a value that does not parse is an ArgumentException naming the key and the value (one line).
/// Still a dictionary, for the scripts that hand the raw values on (method parameters, produced-by).
public sealed class Settings : IReadOnlyDictionary<string, string>
{
    private readonly Dictionary<string, string> values;

    private Settings(Dictionary<string, string> values) => this.values = values;

    /// The settings of `args` (the words after the script's name); a repeated key is an error.
    public static Settings Parse(IEnumerable<string> args) =>
        new(args.Select(a => a.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "true"));

    public string Text(string key, string fallback) => values.TryGetValue(key, out var v) ? v : fallback;

    public int Int(string key, int fallback) => One(key, fallback, "an integer");

    public double Real(string key, double fallback) => One(key, fallback, "a number");

    /// true or false (bool.TryParse: case-insensitive).
    public bool Bool(string key, bool fallback) => One(key, fallback, "true or false");

    /// A list such as seeds=0,1,2; `fallback` is the list's text.
    public int[] Ints(string key, string fallback, char separator = ',') => Many<int>(key, fallback, separator, "integers");

    /// A list of sizes such as net=784-256-10 (separator '-').
    public long[] Longs(string key, string fallback, char separator = ',') => Many<long>(key, fallback, separator, "integers");

    public double[] Reals(string key, string fallback, char separator = ',') => Many<double>(key, fallback, separator, "numbers");

    private T One<T>(string key, T fallback, string expected) where T : IParsable<T> =>
        values.TryGetValue(key, out var v) ? Parsed<T>(key, v, v, expected) : fallback;

    private T[] Many<T>(string key, string fallback, char separator, string expected) where T : IParsable<T>
    {
        var text = Text(key, fallback);
        return text.Split(separator).Select(part => Parsed<T>(key, text, part, $"{expected} separated by '{separator}'")).ToArray();
    }

    private static T Parsed<T>(string key, string value, string part, string expected) where T : IParsable<T> =>
        T.TryParse(part, CultureInfo.InvariantCulture, out var result) ? result
            : throw new ArgumentException($"Invalid value for '{key}': '{value}' (expected {expected}).");

    public string this[string key] => values[key];
    public IEnumerable<string> Keys => values.Keys;
    public IEnumerable<string> Values => values.Values;
    public int Count => values.Count;
    public bool ContainsKey(string key) => values.ContainsKey(key);
    public bool TryGetValue(string key, [MaybeNullWhen(false)] out string value) => values.TryGetValue(key, out value);
    public IEnumerator<KeyValuePair<string, string>> GetEnumerator() => values.GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
