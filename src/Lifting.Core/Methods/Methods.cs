using System.Globalization;
using Lifting.Formulations;
using Lifting.Solvers;

namespace Lifting;

/// A training method as three parts: what is lifted (formulation), how the game is solved
/// (solver) and each player's step rule.
public sealed record MethodParts(IFormulation Formulation, ISolver Solver, Func<string, IStepRule> StepRules);

/// A named method: its parameters with their defaults, and how resolved arguments build its parts.
/// Register one with `Methods.Register` and it is listed by `lifting methods`, runs from the host
/// with its parameters as flags, and is recorded with every resolved value in a run's config.
public sealed record MethodDefinition(
    string Name,
    string Description,
    IReadOnlyList<MethodParameter> Parameters,
    Func<MethodArguments, MethodParts> Build)
{
    private readonly string? family;

    public MethodParameter? Parameter(string name) => Parameters.FirstOrDefault(p => p.Name == name);

    /// The family the method belongs to (e.g. "backprop", "lagrangian", "penalty", "distprop",
    /// "alternating-minimisation", "contrastive"); a method without one is its own family.
    public string Family { get => family ?? Name; init => family = value; }

    /// Marks the method that stands for its family where one method per family is run (the host's
    /// `demo`); without a mark, the family's first method in the catalog stands for it.
    public bool Representative { get; init; }
}

/// The arguments of one method: every parameter's value, defaults included, as canonical text,
/// with typed accessors.
public sealed class MethodArguments
{
    private readonly Dictionary<string, string> values;
    private readonly HashSet<string> given;

    internal MethodArguments(MethodDefinition method, Dictionary<string, string> values, HashSet<string> given)
    {
        Method = method;
        this.values = values;
        this.given = given;
    }

    public MethodDefinition Method { get; }

    /// Every parameter and its value, in the order the method declares them.
    public IReadOnlyList<KeyValuePair<string, string>> Values =>
        Method.Parameters.Select(p => new KeyValuePair<string, string>(p.Name, values[p.Name])).ToArray();

    /// True when the value was given rather than defaulted.
    public bool Given(string name) => given.Contains(Check(name));

    public string Text(string name) => values[Check(name)];
    public double Real(string name) => double.Parse(Text(name), CultureInfo.InvariantCulture);
    public int Integer(string name) => int.Parse(Text(name), CultureInfo.InvariantCulture);
    public bool Flag(string name) => Text(name) == "true";
    /// A `RealList` parameter's values, in the order given.
    public IReadOnlyList<double> RealList(string name) =>
        Text(name).Split(',').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
    public bool Has(string name) => values.ContainsKey(name);

    private string Check(string name) => values.ContainsKey(name) ? name
        : throw new ArgumentException($"Method '{Method.Name}' has no parameter '{name}'.");
}

/// Which method to train with and the parameters to change from its defaults (invariant text,
/// or any value through `With`). Parameters the method does not have are refused by name.
public sealed record MethodSettings(string Method)
{
    public IReadOnlyDictionary<string, string> Values { get; init; } = new Dictionary<string, string>();

    /// These settings with `name` set to `value` (numbers and booleans formatted invariantly).
    public MethodSettings With(string name, object value)
    {
        var copy = new Dictionary<string, string>(Values) { [name] = MethodParameter.Format(value) };
        return this with { Values = copy };
    }

    /// A method written as one word: `NAME` or `NAME:PARAM=VALUE;PARAM=VALUE…`, e.g.
    /// `distprop:resample=false;lr-multipliers=0.01`. Whether the method and its parameters exist
    /// is checked by `Methods.Resolve`; here only the form.
    public static MethodSettings Parse(string text)
    {
        var colon = text.IndexOf(':');
        var name = (colon < 0 ? text : text[..colon]).Trim();
        if (name.Length == 0) throw new ArgumentException($"Invalid method '{text}' (expected NAME[:PARAM=VALUE;...]).");
        var settings = new MethodSettings(name);
        if (colon < 0) return settings;
        foreach (var pair in text[(colon + 1)..].Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = pair.Split('=', 2, StringSplitOptions.TrimEntries);
            if (kv.Length != 2 || kv[0].Length == 0)
                throw new ArgumentException($"Invalid parameter '{pair}' in method '{text}' (expected PARAM=VALUE).");
            if (settings.Values.ContainsKey(kv[0]))
                throw new ArgumentException($"Parameter '{kv[0]}' given twice in method '{text}'.");
            settings = settings.With(kv[0], kv[1]);
        }
        return settings;
    }

    /// The method's name, and the parameters changed from its defaults in brackets:
    /// `distprop (resample=false, lr-multipliers=0.01)`.
    public string Label => Values.Count == 0 ? Method : $"{Method} ({string.Join(", ", Values.Select(kv => $"{kv.Key}={kv.Value}"))})";
}

/// A method resolved into the parts the trainer needs, with the arguments it was built from.
public sealed record ResolvedMethod(string Name, IFormulation Formulation, ISolver Solver, Func<string, IStepRule> StepRules, MethodArguments Arguments)
{
    /// What the method is, one line per item: formulation, solver and each player's step rule.
    public IReadOnlyList<KeyValuePair<string, string>> Summary =>
        new[]
        {
            new KeyValuePair<string, string>("formulation", Formulation.Description),
            new KeyValuePair<string, string>("solver", Solver.Name),
        }.Concat(Formulation.PlayerNames.Select(p => new KeyValuePair<string, string>($"step.{p}", StepRules(p).Name))).ToArray();
}

/// A player's default step rule and step size, for `Methods.ForFormulation`.
public sealed record PlayerDefault(string Player, string StepRule, double StepSize);

/// The catalog of named methods. The built-in ones are registered on first use; users add theirs
/// with `Register`.
public static class Methods
{
    /// A method for `formulation` with the parameters every method shares, so that the host's flags
    /// and the settings work for it as for the built-in ones: `solver` (default `solver`), each
    /// player's `optimizer[-player]` and `lr[-player]` (defaults from `players`, which must name
    /// every player of the formulation), and the weights' `schedule`; then its own `parameters`,
    /// read by `formulation` from the resolved arguments. Register the result with `Register`.
    public static MethodDefinition ForFormulation(string name, string description, string solver,
        IEnumerable<PlayerDefault> players, IEnumerable<MethodParameter> parameters, Func<MethodArguments, IFormulation> formulation)
    {
        var all = new List<MethodParameter> { PlayerRules.Solver(solver) };
        foreach (var p in players) all.AddRange(PlayerRules.StepRule(p.Player, p.StepRule, p.StepSize));
        all.Add(PlayerRules.Schedule("constant"));
        all.AddRange(parameters);
        return new MethodDefinition(name, description, all, a =>
        {
            var f = formulation(a);
            return new MethodParts(f, PlayerRules.Solver(a, f), PlayerRules.Build(a, f));
        });
    }

    private static readonly object gate = new();
    private static readonly List<MethodDefinition> registry = new(BuiltinMethods.All);

    public static IReadOnlyList<MethodDefinition> All
    {
        get { lock (gate) return registry.ToArray(); }
    }

    /// One method per family, in catalog order of the families: the one marked `Representative`,
    /// else the family's first method.
    public static IReadOnlyList<MethodDefinition> Representatives =>
        All.GroupBy(m => m.Family).Select(g => g.FirstOrDefault(m => m.Representative) ?? g.First()).ToArray();

    /// Adds a method; its name must be new.
    public static void Register(MethodDefinition method)
    {
        var names = method.Parameters.Select(p => p.Name).ToArray();
        var twice = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (twice is not null) throw new ArgumentException($"Method '{method.Name}' declares parameter '{twice.Key}' twice.");
        lock (gate)
        {
            if (registry.Any(m => string.Equals(m.Name, method.Name, StringComparison.OrdinalIgnoreCase)))
                throw new ArgumentException($"A method named '{method.Name}' is already registered.");
            registry.Add(method);
        }
    }

    /// The settings a retired method name stands for (e.g. `distprop-tight`), or null.
    public static string? Retired(string name) =>
        DistPropMethods.Retired.TryGetValue(name.Trim().ToLowerInvariant(), out var spelled) ? spelled : null;

    public static MethodDefinition Find(string name)
    {
        var key = name.Trim();
        if (Retired(key) is { } spelled)
        {
            var replacement = MethodSettings.Parse(spelled);
            var flags = string.Join(" ", replacement.Values.Select(kv => $"--{kv.Key} {kv.Value}"));
            throw new ArgumentException($"Method '{key}' was retired (one default per family); it is --method {replacement.Method}{(flags.Length > 0 ? " " + flags : "")}.");
        }
        lock (gate)
            return registry.FirstOrDefault(m => string.Equals(m.Name, key, StringComparison.OrdinalIgnoreCase))
                ?? throw new ArgumentException($"Unknown method '{name}' (known: {string.Join(", ", registry.Select(m => m.Name))}).");
    }


    public static ResolvedMethod Resolve(string name) => Resolve(new MethodSettings(name));

    /// Checks every given value against the method's parameters, fills in the defaults and builds
    /// the method. Fresh step rules every time: scheduled rules carry per-run state.
    public static ResolvedMethod Resolve(MethodSettings settings)
    {
        // A retired name stands for its spelled-out settings (the caller's values on top).
        if (Retired(settings.Method) is { } spelled)
        {
            var replacement = MethodSettings.Parse(spelled);
            var merged = new Dictionary<string, string>(replacement.Values);
            foreach (var (k, v) in settings.Values) merged[k] = v;
            return Resolve(replacement with { Values = merged });
        }
        var method = Find(settings.Method);
        foreach (var name in settings.Values.Keys)
            if (method.Parameter(name) is null)
                throw new ArgumentException($"Method '{method.Name}' has no parameter '{name}' (its parameters: {string.Join(", ", method.Parameters.Select(p => p.Name))}).");
        var values = new Dictionary<string, string>();
        var given = new HashSet<string>();
        foreach (var p in method.Parameters)
        {
            if (settings.Values.TryGetValue(p.Name, out var text))
            {
                values[p.Name] = p.Normalise(text);
                given.Add(p.Name);
            }
            else values[p.Name] = p.Normalise(p.DefaultFrom?.Invoke(n => values.TryGetValue(n, out var v) ? v
                : throw new InvalidOperationException($"Parameter '{p.Name}' of '{method.Name}' depends on '{n}', which is not declared before it.")) ?? p.Default);
        }
        var arguments = new MethodArguments(method, values, given);
        var parts = method.Build(arguments);
        return new ResolvedMethod(method.Name, parts.Formulation, parts.Solver, parts.StepRules, arguments);
    }
}
