using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lifting.Host;

/// An experiment as data: everything `lifting train` needs. Comes from CLI flags, a JSON file
/// (`--config FILE`), or both (flags override the file). The run's own settings are fixed fields;
/// every other key is a parameter of the chosen method (`lifting methods` lists them), checked
/// against the method's declaration when the method is resolved.
public sealed record Experiment
{
    public string Data { get; init; } = "digits";
    /// Layer sizes, e.g. "64-128-10"; null = input size, 128 hidden units, classes.
    public string? Net { get; init; }
    public string Activation { get; init; } = "relu";
    public string Loss { get; init; } = "cross-entropy";
    public string Method { get; init; } = "backprop";
    public int Epochs { get; init; } = 20;
    public int Batch { get; init; } = 64;
    public int Seed { get; init; }
    public int Patience { get; init; }
    public int Iterations { get; init; } = 1;
    public bool Cosine { get; init; }
    public string Device { get; init; } = "auto";
    /// LibTorch's intra-op thread count; null = LibTorch's default (recorded with the run).
    public int? Threads { get; init; }
    public double ValidationFraction { get; init; } = 0.1;
    public int SplitSeed { get; init; } = Lifting.Data.DataOptions.DefaultSplitSeed;
    /// "standardise" (default) or "unit": inputs kept in [0, 1].
    public string InputScaling { get; init; } = "standardise";
    /// The parameters' initialisation: "default" (each layer's own), "glorot" (Glorot-uniform
    /// weights, zero biases) or "glorot-negative-first" (and the first layer all-negative; seed 002).
    public string Init { get; init; } = "default";
    /// The method's parameters that differ from its defaults (invariant text).
    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();
    public string? Out { get; init; }
    public bool Json { get; init; }

    public MethodSettings ToMethodSettings() => new(Method) { Values = Parameters };

    public Experiment WithParameter(string name, string value) =>
        this with { Parameters = new Dictionary<string, string>(Parameters) { [name] = value } };

    /// The run's own settings by their JSON/flag names; the other keys are method parameters.
    private static readonly string[] RunKeys =
    {
        "data", "net", "activation", "loss", "method", "epochs", "batch", "seed", "patience", "iterations",
        "cosine", "device", "threads", "validation-fraction", "split-seed", "input-scaling", "init",
    };

    public static bool IsRunKey(string name) => RunKeys.Contains(name) || name is "out" or "json" or "config" or "environment";

    /// Reads an experiment: the run's settings by name, every other key a method parameter. The
    /// `environment` block a run folder's config carries is informational and skipped.
    public static Experiment FromJsonFile(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"config file not found: {path}");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException x) { throw new UsageException($"{path}: malformed config: {x.Message.Split('\n')[0]}"); }
        if (root is not JsonObject obj) throw new UsageException($"{path}: the config must be a JSON object");
        var e = new Experiment();
        foreach (var (key, node) in obj)
        {
            if (key is "environment" or "out" or "json") continue;
            var text = node switch
            {
                null => throw new UsageException($"{path}: '{key}' is null"),
                JsonValue v when v.TryGetValue<string>(out var s) => s,
                JsonValue v when v.TryGetValue<bool>(out var b) => b ? "true" : "false",
                JsonValue v => v.ToJsonString(),
                _ => throw new UsageException($"{path}: '{key}' must be a number, a string or a boolean"),
            };
            try { e = e.Set(key, text, fromFlag: false); }
            catch (UsageException u) { throw new UsageException($"{path}: {u.Message}"); }
        }
        return e;
    }

    /// Every setting of the run, method defaults included, and the environment it ran in: enough
    /// to repeat the run (`--config`), and nothing that names where it was written.
    public string ToJson(ResolvedMethod method, EngineInfo engine)
    {
        var o = new JsonObject
        {
            ["data"] = Data,
            ["net"] = Net,
            ["activation"] = Activation,
            ["loss"] = Loss,
            ["method"] = method.Name,
            ["epochs"] = Epochs,
            ["batch"] = Batch,
            ["seed"] = Seed,
            ["patience"] = Patience,
            ["iterations"] = Iterations,
            ["cosine"] = Cosine,
            ["device"] = Device,
            ["threads"] = engine.Threads,
            ["validation-fraction"] = ValidationFraction,
            ["split-seed"] = SplitSeed,
            ["input-scaling"] = InputScaling,
            ["init"] = Init,
        };
        if (Net is null) o.Remove("net");
        foreach (var (name, value) in method.Arguments.Values)
            o[name] = method.Arguments.Method.Parameter(name)!.Kind switch
            {
                ParameterKind.Real => JsonValue.Create(double.Parse(value, CultureInfo.InvariantCulture)),
                ParameterKind.Integer => JsonValue.Create(int.Parse(value, CultureInfo.InvariantCulture)),
                ParameterKind.Flag => JsonValue.Create(value == "true"),
                _ => JsonValue.Create(value),
            };
        o["environment"] = new JsonObject
        {
            ["libtorch"] = engine.LibTorch,
            ["torchsharp"] = engine.TorchSharp,
            ["threads"] = engine.Threads,
            ["device"] = engine.Device,
            ["cpu"] = engine.Cpu,
            ["vector-instructions"] = engine.VectorInstructions,
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// Parses `train` flags on top of `start`. `--name value` for the run's settings and the method's
    /// parameters; a method flag without a value (`--reparametrise`) means true.
    public static Experiment Parse(IReadOnlyList<string> args, Experiment start)
    {
        var e = start;
        for (int i = 0; i < args.Count; i++)
        {
            var flag = args[i];
            if (!flag.StartsWith("--", StringComparison.Ordinal) || flag.Length == 2)
                throw new UsageException($"unexpected argument '{flag}' (options start with --; see lifting --help)");
            var name = flag[2..];
            bool hasValue = i + 1 < args.Count && (!args[i + 1].StartsWith("--", StringComparison.Ordinal) || IsNumber(args[i + 1]));
            switch (name)
            {
                case "json": e = e with { Json = true }; continue;
                case "cosine": e = e with { Cosine = true }; continue;
                case "config": if (!hasValue) throw new UsageException("--config needs a value"); i++; continue; // read before parsing
            }
            if (IsRunKey(name) || name == "out")
            {
                if (!hasValue) throw new UsageException($"{flag} needs a value");
                e = e.Set(name, args[++i], fromFlag: true);
            }
            else e = e.WithParameter(name, hasValue ? args[++i] : "true");
        }
        return e;
    }

    private Experiment Set(string name, string value, bool fromFlag)
    {
        var flag = fromFlag ? "--" + name : name;
        return name switch
        {
            "data" => this with { Data = value },
            "net" => this with { Net = value },
            "activation" => this with { Activation = value },
            "loss" => this with { Loss = value },
            "method" => this with { Method = value },
            "epochs" => this with { Epochs = PositiveInt(flag, value) },
            "batch" => this with { Batch = PositiveInt(flag, value) },
            "seed" => this with { Seed = Int(flag, value) },
            "patience" => this with { Patience = NonNegativeInt(flag, value) },
            "iterations" => this with { Iterations = PositiveInt(flag, value) },
            "cosine" => this with { Cosine = Bool(flag, value) },
            "device" => this with { Device = value },
            "threads" => this with { Threads = PositiveInt(flag, value) },
            "validation-fraction" => this with { ValidationFraction = Fraction(flag, value) },
            "split-seed" => this with { SplitSeed = Int(flag, value) },
            "input-scaling" => this with { InputScaling = Scaling(flag, value) },
            "init" => this with { Init = InitName(flag, value) },
            "out" => this with { Out = value },
            _ => WithParameter(name, value),
        };
    }

    private static string Scaling(string flag, string value) => value.Trim().ToLowerInvariant() switch
    {
        "standardise" or "standardize" => "standardise",
        "unit" => "unit",
        _ => throw new UsageException($"{flag}: '{value}' is not standardise or unit"),
    };

    private static string InitName(string flag, string value)
    {
        try { return Lifting.Programs.Initialisation.Name(Lifting.Programs.Initialisation.Parse(value)); }
        catch (ArgumentException x) { throw new UsageException($"{flag}: {x.Message}"); }
    }

    /// The data loader's scaling for `InputScaling`.
    public Lifting.Data.InputScaling Scaling() => InputScaling == "unit" ? Lifting.Data.InputScaling.UnitRange : Lifting.Data.InputScaling.Standardise;

    private static bool IsNumber(string s) => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _);

    private static double Number(string flag, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) ? v
        : throw new UsageException($"{flag}: '{value}' is not a finite number");

    private static double Fraction(string flag, string value) =>
        Number(flag, value) is var v and >= 0 and < 1 ? v : throw new UsageException($"{flag}: {value} must be >= 0 and < 1");

    private static bool Bool(string flag, string value) => value.ToLowerInvariant() switch
    {
        "true" => true,
        "false" => false,
        _ => throw new UsageException($"{flag}: '{value}' is not true or false"),
    };

    private static int Int(string flag, string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v
        : throw new UsageException($"{flag}: '{value}' is not an integer");

    private static int PositiveInt(string flag, string value) =>
        Int(flag, value) is var v and > 0 ? v : throw new UsageException($"{flag}: {value} must be a positive integer");

    private static int NonNegativeInt(string flag, string value) =>
        Int(flag, value) is var v and >= 0 ? v : throw new UsageException($"{flag}: {value} must be >= 0");
}

/// Bad command-line input: reported as one line, exit code 2.
public sealed class UsageException : Exception
{
    public UsageException(string message) : base(message) { }
}
