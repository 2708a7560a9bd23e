using System.Globalization;

namespace Lifting;

/// The kind of value a method parameter takes.
public enum ParameterKind { Real, Integer, Flag, Choice, Name, RealList }

/// One hyperparameter of a method: its name (the host's flag `--name`), kind, default, a one-line
/// description and the values it accepts. Values are carried as invariant text ("0.001", "true",
/// "adam") so that settings round-trip through command lines and JSON unchanged.
public sealed record MethodParameter
{
    private MethodParameter(string name, ParameterKind kind, string @default, string description)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Any(char.IsWhiteSpace))
            throw new ArgumentException($"Invalid parameter name '{name}' (expected a non-empty name without spaces).");
        Name = name;
        Kind = kind;
        Default = @default;
        Description = description;
    }

    public string Name { get; }
    public ParameterKind Kind { get; }
    /// The default as invariant text; see also `DefaultFrom`.
    public string Default { get; init; }
    public string Description { get; }
    public double Minimum { get; init; } = double.NegativeInfinity;
    public bool MinimumExclusive { get; init; }
    public double Maximum { get; init; } = double.PositiveInfinity;
    public bool MaximumExclusive { get; init; }
    private readonly IReadOnlyList<string> choices = Array.Empty<string>();
    private (Func<IReadOnlyList<string>> Names, Func<string, string?> Canonical)? catalog { get; init; }

    /// For `Choice`: the accepted values (canonical spelling); for a catalog's names, those
    /// registered when asked.
    public IReadOnlyList<string> Choices { get => catalog?.Names() ?? choices; init => choices = value; }
    /// For `Choice`: other spellings and the value each stands for (e.g. sgd → constant).
    public IReadOnlyDictionary<string, string> Aliases { get; init; } = new Dictionary<string, string>();
    /// A default that depends on parameters declared before this one (given their resolved
    /// values); null = `Default`. E.g. a step size whose default follows the chosen step rule.
    public Func<Func<string, string>, string>? DefaultFrom { get; init; }

    /// A real number in [minimum, maximum] (either end exclusive on request), finite.
    public static MethodParameter Real(string name, double @default, string description,
        double minimum = double.NegativeInfinity, bool minimumExclusive = false,
        double maximum = double.PositiveInfinity, bool maximumExclusive = false) =>
        new(name, ParameterKind.Real, Format(@default), description)
        {
            Minimum = minimum, MinimumExclusive = minimumExclusive, Maximum = maximum, MaximumExclusive = maximumExclusive,
        };

    /// A real number > 0.
    public static MethodParameter Positive(string name, double @default, string description) =>
        Real(name, @default, description, 0, minimumExclusive: true);

    /// A real number >= 0.
    public static MethodParameter NonNegative(string name, double @default, string description) =>
        Real(name, @default, description, 0);

    /// An integer >= minimum.
    public static MethodParameter Integer(string name, int @default, string description, int minimum = 0) =>
        new(name, ParameterKind.Integer, Format(@default), description) { Minimum = minimum };

    /// On or off; on the command line a flag without a value means on.
    public static MethodParameter Flag(string name, bool @default, string description) =>
        new(name, ParameterKind.Flag, Format(@default), description);

    /// One of a fixed list of values.
    public static MethodParameter Choice(string name, string @default, string description, params string[] choices) =>
        new(name, ParameterKind.Choice, @default, description) { Choices = choices };

    /// One real number or a comma-separated list of them ("1", "0.5,1,1,2"), each in
    /// [minimum, maximum] (either end exclusive on request) and finite; e.g. one β per layer.
    /// Whoever uses the list checks its length (`MethodArguments.RealList`).
    public static MethodParameter RealList(string name, double @default, string description,
        double minimum = double.NegativeInfinity, bool minimumExclusive = false,
        double maximum = double.PositiveInfinity, bool maximumExclusive = false) =>
        new(name, ParameterKind.RealList, Format(@default), description)
        {
            Minimum = minimum, MinimumExclusive = minimumExclusive, Maximum = maximum, MaximumExclusive = maximumExclusive,
        };

    /// One of the names of a catalog that users extend (e.g. the step rules): `names` lists them
    /// when asked, `canonical` maps a name or alias to its canonical spelling (null if unknown).
    public static MethodParameter CatalogName(string name, string @default, string description,
        Func<IReadOnlyList<string>> names, Func<string, string?> canonical) =>
        new(name, ParameterKind.Choice, @default, description) { catalog = (names, canonical) };

    /// A name checked by whoever uses it (e.g. a solver of the solver catalog).
    public static MethodParameter Named(string name, string @default, string description) =>
        new(name, ParameterKind.Name, @default, description);

    /// The accepted values, for listings: "> 0", "0 <= x < 1", "constant | adagrad | adam", "on | off".
    public string Domain => Kind switch
    {
        ParameterKind.Flag => "true | false",
        ParameterKind.Choice => string.Join(" | ", Choices),
        ParameterKind.Name => "name",
        ParameterKind.RealList => $"{NumberDomain}, or a list x,y,…",
        _ => NumberDomain,
    };

    private string NumberDomain => (double.IsNegativeInfinity(Minimum), double.IsPositiveInfinity(Maximum)) switch
    {
        (true, true) => Kind == ParameterKind.Integer ? "integer" : "real",
        (false, true) => $"{(Kind == ParameterKind.Integer ? "integer " : "")}{(MinimumExclusive ? ">" : ">=")} {Format(Minimum)}",
        (true, false) => $"{(MaximumExclusive ? "<" : "<=")} {Format(Maximum)}",
        _ => $"{Format(Minimum)} {(MinimumExclusive ? "<" : "<=")} x {(MaximumExclusive ? "<" : "<=")} {Format(Maximum)}",
    };

    /// The canonical text of `text`, or an ArgumentException naming the parameter, the value and
    /// what was expected.
    public string Normalise(string text)
    {
        var value = text.Trim();
        string Bad() => $"Invalid {Name}: '{text}' (expected {Domain}).";
        switch (Kind)
        {
            case ParameterKind.Real:
                if (!double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var real) || !double.IsFinite(real) || !InRange(real))
                    throw new ArgumentException(Bad());
                return Format(real);
            case ParameterKind.RealList:
                var items = value.Split(',');
                var reals = new double[items.Length];
                for (int i = 0; i < items.Length; i++)
                    if (!double.TryParse(items[i].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out reals[i]) || !double.IsFinite(reals[i]) || !InRange(reals[i]))
                        throw new ArgumentException(Bad());
                return string.Join(",", reals.Select(r => Format(r)));
            case ParameterKind.Integer:
                if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var integer) || !InRange(integer))
                    throw new ArgumentException(Bad());
                return Format(integer);
            case ParameterKind.Flag:
                return value.ToLowerInvariant() switch
                {
                    "true" or "on" or "yes" or "1" => "true",
                    "false" or "off" or "no" or "0" => "false",
                    _ => throw new ArgumentException(Bad()),
                };
            case ParameterKind.Choice:
                var lower = value.ToLowerInvariant();
                if (catalog is { } names) return names.Canonical(lower) ?? throw new ArgumentException(Bad());
                if (Aliases.TryGetValue(lower, out var canonical)) return canonical;
                return Choices.FirstOrDefault(c => c == lower) ?? throw new ArgumentException(Bad());
            default:
                if (value.Length == 0) throw new ArgumentException($"Invalid {Name}: an empty name.");
                return value.ToLowerInvariant();
        }
    }

    private bool InRange(double v) =>
        (MinimumExclusive ? v > Minimum : v >= Minimum) && (MaximumExclusive ? v < Maximum : v <= Maximum);

    /// Invariant text of a value: round-trippable numbers, lower-case booleans.
    public static string Format(object value) => value switch
    {
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        float f => ((double)f).ToString("R", CultureInfo.InvariantCulture),
        int i => i.ToString(CultureInfo.InvariantCulture),
        long l => l.ToString(CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        string s => s,
        IEnumerable<double> list => string.Join(",", list.Select(d => d.ToString("R", CultureInfo.InvariantCulture))),
        _ => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "",
    };
}
