using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Lifting.Host;

/// An experiment as data: everything `lifting train` needs. Comes from CLI flags, a JSON file
/// (`--config FILE`), or both (flags override the file).
public sealed record Experiment
{
    public string Data { get; init; } = "digits";
    /// Layer sizes, e.g. "64-128-10"; null = input size, 128 hidden units, classes.
    public string? Net { get; init; }
    public string Activation { get; init; } = "relu";
    public string Loss { get; init; } = "cross-entropy";
    public string Method { get; init; } = "backprop";
    public string? Solver { get; init; }
    public string? Optimizer { get; init; }
    public string? OptimizerStates { get; init; }
    public string? OptimizerMultipliers { get; init; }
    public int? Inner { get; init; }
    public string? InnerSolver { get; init; }
    public string? Schedule { get; init; }
    public double? Settle { get; init; }
    public double? SettleStates { get; init; }
    public double? Lr { get; init; }
    public double? LrStates { get; init; }
    public double? LrMultipliers { get; init; }
    public double? Eps { get; init; }
    public double? C { get; init; }
    public bool? Reparametrise { get; init; }
    public bool? Reduced { get; init; }
    public double? Mu { get; init; }
    public double? MuGrowth { get; init; }
    public double? MuMax { get; init; }
    public int? StateSteps { get; init; }
    public int Epochs { get; init; } = 20;
    public int Batch { get; init; } = 64;
    public int Seed { get; init; }
    public int Patience { get; init; }
    public int Iterations { get; init; } = 1;
    public bool Cosine { get; init; }
    public string Device { get; init; } = "auto";
    public string? Out { get; init; }
    public bool Json { get; init; }

    public MethodSettings ToMethodSettings() => new()
    {
        Method = Method,
        Solver = Solver,
        StepRule = Rule(Optimizer),
        StateStepRule = Rule(OptimizerStates),
        MultiplierStepRule = Rule(OptimizerMultipliers),
        InnerIterations = Inner,
        InnerSolver = InnerSolver,
        WeightSchedule = Schedule?.ToLowerInvariant(),
        Settle = Settle,
        SettleStateScale = SettleStates,
        LearningRate = Lr,
        StateLearningRate = LrStates,
        MultiplierLearningRate = LrMultipliers,
        Epsilon = Eps,
        Augmentation = C,
        ReparametriseStates = Reparametrise,
        ReducedConstraint = Reduced,
        MuInitial = Mu,
        MuGrowth = MuGrowth,
        MuMaximum = MuMax,
        StateSteps = StateSteps,
    };

    private static string? Rule(string? name) =>
        name is null ? null : name.Equals("sgd", StringComparison.OrdinalIgnoreCase) ? "constant" : name.ToLowerInvariant();

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.KebabCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    public static Experiment FromJsonFile(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"config file not found: {path}");
        try
        {
            return JsonSerializer.Deserialize<Experiment>(File.ReadAllText(path), JsonOptions)
                ?? throw new UsageException($"{path}: the config is empty");
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path}: malformed config: {e.Message.Split('\n')[0]}");
        }
    }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// Parses `train` flags on top of `start`.
    public static Experiment Parse(IReadOnlyList<string> args, Experiment start)
    {
        var e = start;
        for (int i = 0; i < args.Count; i++)
        {
            var flag = args[i];
            string Value()
            {
                if (i + 1 >= args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal) && !IsNumber(args[i + 1]))
                    throw new UsageException($"{flag} needs a value");
                return args[++i];
            }
            e = flag switch
            {
                "--data" => e with { Data = Value() },
                "--net" => e with { Net = Value() },
                "--activation" => e with { Activation = Value() },
                "--loss" => e with { Loss = Value() },
                "--method" => e with { Method = Value() },
                "--solver" => e with { Solver = Value() },
                "--optimizer" or "--step-rule" => e with { Optimizer = Value() },
                "--optimizer-states" => e with { OptimizerStates = Value() },
                "--optimizer-multipliers" => e with { OptimizerMultipliers = Value() },
                "--inner" => e with { Inner = NonNegativeInt(flag, Value()) },
                "--inner-solver" => e with { InnerSolver = Value() },
                "--schedule" => e with { Schedule = Value() },
                "--settle" => e with { Settle = Fraction(flag, Value()) },
                "--settle-states" => e with { SettleStates = Positive(flag, Value()) },
                "--lr" => e with { Lr = Positive(flag, Value()) },
                "--lr-states" => e with { LrStates = Positive(flag, Value()) },
                "--lr-multipliers" => e with { LrMultipliers = Positive(flag, Value()) },
                "--eps" => e with { Eps = NonNegative(flag, Value()) },
                "--c" => e with { C = NonNegative(flag, Value()) },
                "--reparametrise" => e with { Reparametrise = true },
                "--reduced" => e with { Reduced = true },
                "--mu" => e with { Mu = Positive(flag, Value()) },
                "--mu-growth" => e with { MuGrowth = Positive(flag, Value()) },
                "--mu-max" => e with { MuMax = Positive(flag, Value()) },
                "--state-steps" => e with { StateSteps = PositiveInt(flag, Value()) },
                "--epochs" => e with { Epochs = PositiveInt(flag, Value()) },
                "--batch" => e with { Batch = PositiveInt(flag, Value()) },
                "--seed" => e with { Seed = Int(flag, Value()) },
                "--patience" => e with { Patience = NonNegativeInt(flag, Value()) },
                "--iterations" => e with { Iterations = PositiveInt(flag, Value()) },
                "--cosine" => e with { Cosine = true },
                "--device" => e with { Device = Value() },
                "--out" => e with { Out = Value() },
                "--json" => e with { Json = true },
                "--config" => Value() is var _ ? e : e, // handled before parsing
                _ => throw new UsageException($"unknown option '{flag}' (see lifting --help)"),
            };
        }
        return e;
    }

    private static bool IsNumber(string s) => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _);

    private static double Number(string flag, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) ? v
        : throw new UsageException($"{flag}: '{value}' is not a finite number");

    private static double Positive(string flag, string value) =>
        Number(flag, value) is var v and > 0 ? v : throw new UsageException($"{flag}: {value} must be > 0");

    private static double NonNegative(string flag, string value) =>
        Number(flag, value) is var v and >= 0 ? v : throw new UsageException($"{flag}: {value} must be >= 0");

    private static double Fraction(string flag, string value) =>
        Number(flag, value) is var v and >= 0 and < 1 ? v : throw new UsageException($"{flag}: {value} must be >= 0 and < 1");

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
