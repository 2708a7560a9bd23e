namespace Lifting.Solvers;

/// A registry of named things (solvers, step rules) that users extend: names and aliases are
/// matched without regard to case and must be unique across both.
internal sealed class Catalog<T> where T : class
{
    private readonly object gate = new();
    private readonly List<T> entries = new();
    private readonly Func<T, string> name;
    private readonly Func<T, IReadOnlyList<string>> aliases;
    private readonly string kind;

    public Catalog(string kind, Func<T, string> name, Func<T, IReadOnlyList<string>> aliases, IEnumerable<T> builtin)
    {
        this.kind = kind;
        this.name = name;
        this.aliases = aliases;
        foreach (var entry in builtin) Register(entry);
    }

    public IReadOnlyList<T> All
    {
        get { lock (gate) return entries.ToArray(); }
    }

    public void Register(T entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var names = aliases(entry).Prepend(name(entry)).ToArray();
        foreach (var n in names)
            if (string.IsNullOrWhiteSpace(n) || n.Any(char.IsWhiteSpace))
                throw new ArgumentException($"Invalid {kind} name '{n}' (expected a non-empty name without spaces).");
        lock (gate)
        {
            var taken = names.FirstOrDefault(n => TryFind(n) is not null);
            if (taken is not null) throw new ArgumentException($"A {kind} named '{taken}' is already registered.");
            entries.Add(entry);
        }
    }

    public T? TryFind(string key)
    {
        var k = key.Trim();
        lock (gate)
            return entries.FirstOrDefault(e => string.Equals(name(e), k, StringComparison.OrdinalIgnoreCase)
                                            || aliases(e).Any(a => string.Equals(a, k, StringComparison.OrdinalIgnoreCase)));
    }

    public T Find(string key) => TryFind(key)
        ?? throw new ArgumentException($"Unknown {kind} '{key}' (known: {string.Join(", ", All.Select(Describe))}).");

    private string Describe(T e) => aliases(e).Count == 0 ? name(e) : $"{name(e)}/{string.Join("/", aliases(e))}";
}
