using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lifting.Host;

/// One setting of a run: its key (the flag `--key` and the JSON key), what it means and its
/// default as shown in help.
public sealed record RunKey(string Name, string HelpName, string Description, string Default, bool IsFlag = false);

/// An experiment as data: every setting a run needs. Comes from flags, a JSON file (`--config`,
/// a sweep's base) or both (flags override the file). The run's own settings are fixed fields;
/// every other key is a parameter of the chosen method (`lifting methods` lists them), checked
/// against the method's declaration when the method is resolved. A run folder's config.json holds
/// every resolved value (`Resolved.ToJson`), method defaults included, and nothing about where it
/// was written, so `train --config RUN/config.json` repeats the run into a new folder.
public sealed record Experiment
{
    public string Data { get; init; } = "digits";
    /// CSV data: the label column (name or index); null = the last column.
    public string? Label { get; init; }
    /// CSV data: the test fraction; null = 0.2.
    public double? TestFraction { get; init; }
    /// CSV data: lines at the start of the file to skip.
    public int SkipRows { get; init; }
    /// CSV data: the first row is data (no header); false = detected.
    public bool NoHeader { get; init; }
    /// MLP sizes, a zoo name or a layer list (`NetSpec`); null = inputs-128-classes.
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
    /// The floating-point type of weights, states and data: "float32" or "float64".
    public string DType { get; init; } = "float32";
    /// LibTorch's intra-op thread count; null = LibTorch's default (recorded with the run).
    public int? Threads { get; init; }
    public double ValidationFraction { get; init; } = 0.1;
    public int SplitSeed { get; init; } = Lifting.Data.DataOptions.DefaultSplitSeed;
    /// "standardise" (default) or "unit": inputs kept in [0, 1] (raw values for CSV data).
    public string InputScaling { get; init; } = "standardise";
    /// The parameters' initialisation: "default" (each layer's own), "glorot" (Glorot-uniform
    /// weights, zero biases) or "glorot-negative-first" (and the first layer all-negative; seed 002).
    public string Init { get; init; } = "default";
    /// Which epoch is reported: "best" (highest validation accuracy) or "last" (no selection on validation).
    public string Select { get; init; } = "best";
    /// A run whose training loss exceeds this many times its start has diverged.
    public double MaxLossRatio { get; init; } = 100;
    /// The method's parameters that differ from its defaults (invariant text).
    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();

    /// The run's own settings, in the order of help and config files.
    public static IReadOnlyList<RunKey> Keys { get; } = new RunKey[]
    {
        new("data", "NAME|PATH", "digits and mnist-10k (embedded), fashion-mnist, a folder of IDX files, or a .csv[.gz] file of your own", "digits"),
        new("label", "NAME|INDEX", "CSV: the label column by header name or 0-based index (-1 = last)", "last column"),
        new("test-fraction", "F", "CSV: fraction of the rows held out for testing (other data has its own test split)", "0.2"),
        new("skip-rows", "N", "CSV: lines at the start of the file to skip (1 for scikit-learn's exports, whose first line is a summary such as 569,30,malignant,benign)", "0"),
        new("no-header", "", "CSV: the first row is data, not a header (default: a header when its fields are names above numbers)", "false", IsFlag: true),
        new("net", "SPEC", "784-256-10 (MLP sizes), lenet5, seed001-conv, or layers \"conv:6:5:1:2,relu,maxpool:2,cut,dense:120,relu,dense:10\"", "inputs-128-classes"),
        new("activation", "NAME", "hidden activation of an MLP: relu, tanh, sigmoid, hardtanh, identity, sign, step", "relu"),
        new("loss", "NAME", "cross-entropy or mse", "cross-entropy"),
        new("method", "NAME", "training method (lifting methods lists them with their parameters)", "backprop"),
        new("epochs", "N", "training epochs", "20"),
        new("batch", "N", "mini-batch size", "64"),
        new("seed", "N", "seed of the initial weights and the mini-batch order", "0"),
        new("patience", "N", "stop after N epochs without a better validation accuracy (0 = off)", "0"),
        new("select", "best|last", "the reported epoch: best = highest validation accuracy, last = the last epoch (no selection on validation; for validation splits too small to select on)", "best"),
        new("iterations", "N", "solver iterations per mini-batch", "1"),
        new("cosine", "", "log the cosine between the weight update and backprop's gradient", "false", IsFlag: true),
        new("device", "auto|cpu|cuda", "where tensors live", "auto"),
        new("dtype", "float32|float64", "floating-point type of weights, auxiliary variables and data (float64 resolves steps below float32's 1e-7)", "float32"),
        new("threads", "N", "LibTorch threads (results are bit-identical for a seed and a thread count)", "LibTorch's choice"),
        new("validation-fraction", "F", "training examples held out for validation; selection (best epoch, early stopping) uses them", "0.1"),
        new("split-seed", "N", "seed of the validation (and CSV test) split", MethodParameter.Format(Lifting.Data.DataOptions.DefaultSplitSeed)),
        new("input-scaling", "standardise|unit", "standardise inputs with the training split's statistics (per feature for CSV), or keep them raw", "standardise"),
        new("init", "default|glorot|glorot-negative-first|he", "initialisation: each layer's own, Glorot-uniform weights with zero biases, those with the first layer all-negative (seed 002's dead-ReLU start), or He (Kaiming) uniform weights with zero biases", "default"),
        new("max-loss-ratio", "R", "stop as diverged when the training loss exceeds R times its start", "100"),
    };

    public static bool IsRunKey(string name) => Keys.Any(k => k.Name == name);

    public MethodSettings ToMethodSettings() => new(Method) { Values = Parameters };

    public Experiment WithParameter(string name, string value) =>
        this with { Parameters = new Dictionary<string, string>(Parameters) { [name] = value } };

    /// Reads an experiment from a JSON file: the run's settings by name, every other key a method
    /// parameter. The `environment` block of a run folder's config is informational and skipped.
    public static Experiment FromJsonFile(string path)
    {
        if (Directory.Exists(path)) throw new UsageException($"{path}: is a folder; give a JSON file (a run's config is RUN/config.json)");
        if (!File.Exists(path)) throw new UsageException($"config file not found: {path}");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException x) { throw new UsageException($"{path}: malformed JSON: {x.Message.Split('\n')[0]}"); }
        if (root is not JsonObject obj) throw new UsageException($"{path}: the config must be a JSON object");
        try { return FromJson(obj, new Experiment()); }
        catch (UsageException u) { throw new UsageException($"{path}: {u.Message}"); }
    }

    /// `start` with the settings of a JSON object applied.
    public static Experiment FromJson(JsonObject obj, Experiment start)
    {
        var e = start;
        // The method first: its parameters are read against it.
        if (obj.TryGetPropertyValue("method", out var m) && m is not null) e = e.Set("method", Text("method", m), fromFlag: false);
        foreach (var (key, node) in obj)
        {
            if (key is "environment" or "method") continue;
            e = node is null ? e.Reset(key) : e.Set(key, Text(key, node), fromFlag: false);
        }
        return e;
    }

    /// A JSON value as setting text.
    public static string Text(string key, JsonNode node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonValue v when v.TryGetValue<bool>(out var b) => b ? "true" : "false",
        JsonValue v => v.ToJsonString(),
        _ => throw new UsageException($"'{key}' must be a number, a string or a boolean"),
    };

    /// This experiment with `name` set from `value` (text, as on the command line), validated.
    /// Names that are not run settings are method parameters (checked when the method resolves).
    public Experiment Set(string name, string value, bool fromFlag)
    {
        var flag = fromFlag ? "--" + name : name;
        return name switch
        {
            "data" => this with { Data = NonEmpty(flag, value) },
            "label" => this with { Label = NonEmpty(flag, value) },
            "test-fraction" => this with { TestFraction = OpenFraction(flag, value) },
            "skip-rows" => this with { SkipRows = NonNegativeInt(flag, value) },
            "no-header" => this with { NoHeader = Bool(flag, value) },
            "net" => this with { Net = NonEmpty(flag, value) },
            "activation" => this with { Activation = Known(flag, value, () => Programs.Activations.ByName(value)) },
            "loss" => this with { Loss = Known(flag, value, () => Programs.Losses.ByName(value)) },
            "method" => this with { Method = Known(flag, value, () => Methods.Find(value)).Trim().ToLowerInvariant() },
            "epochs" => this with { Epochs = PositiveInt(flag, value) },
            "batch" => this with { Batch = PositiveInt(flag, value) },
            "seed" => this with { Seed = Int(flag, value) },
            "patience" => this with { Patience = NonNegativeInt(flag, value) },
            "select" => this with { Select = value.Trim().ToLowerInvariant() is "best" or "last" ? value.Trim().ToLowerInvariant() : throw new UsageException($"{flag}: '{value}' is not best or last") },
            "iterations" => this with { Iterations = PositiveInt(flag, value) },
            "cosine" => this with { Cosine = Bool(flag, value) },
            "device" => this with { Device = Known(flag, value, () => Devices.Parse(value)).Trim().ToLowerInvariant() },
            "dtype" => this with { DType = Known(flag, value, () => Precision.Parse(value)).Trim().ToLowerInvariant() },
            "threads" => this with { Threads = PositiveInt(flag, value) },
            "validation-fraction" => this with { ValidationFraction = Fraction(flag, value) },
            "split-seed" => this with { SplitSeed = Int(flag, value) },
            "input-scaling" => this with { InputScaling = Scaling(flag, value) },
            "init" => this with { Init = InitName(flag, value) },
            "max-loss-ratio" => this with { MaxLossRatio = Number(flag, value) is var r and > 1 ? r : throw new UsageException($"{flag}: {value} must be > 1") },
            "out" or "json" or "force" or "config" or "plain" => throw new UsageException($"'{name}' is not a setting of the experiment; give it on the command line"),
            _ => WithParameter(name, value),
        };
    }

    /// A null in a JSON file: the setting's default.
    private Experiment Reset(string name) => name switch
    {
        "label" => this with { Label = null },
        "test-fraction" => this with { TestFraction = null },
        "net" => this with { Net = null },
        "threads" => this with { Threads = null },
        _ when IsRunKey(name) => throw new UsageException($"'{name}' is null; only label, test-fraction, net and threads may be null"),
        _ => throw new UsageException($"'{name}' is null; give the parameter a value or leave it out"),
    };

    private static string NonEmpty(string flag, string value) =>
        string.IsNullOrWhiteSpace(value) ? throw new UsageException($"{flag}: an empty value") : value.Trim();

    private static string Known(string flag, string value, Func<object> check)
    {
        try { check(); }
        catch (ArgumentException e) { throw new UsageException($"{flag}: {e.Message.TrimEnd('.')}"); }
        return value.Trim();
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

    /// The program's initialisation scheme for `Init`.
    public Lifting.Programs.InitialisationScheme InitScheme() => Lifting.Programs.Initialisation.Parse(Init);

    /// The CSV layout for `SkipRows` and `NoHeader`.
    public Lifting.Data.CsvFormat CsvFormat() => new() { SkipRows = SkipRows, Header = NoHeader ? false : null };

    /// The trainer's selection for `Select`.
    public Lifting.Training.Selection Selection() => Select == "last" ? Lifting.Training.Selection.LastEpoch : Lifting.Training.Selection.ValidationAccuracy;

    /// The data loader's scaling for `InputScaling`.
    public Lifting.Data.InputScaling Scaling() => InputScaling == "unit" ? Lifting.Data.InputScaling.UnitRange : Lifting.Data.InputScaling.Standardise;

    private static double Number(string flag, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) ? v
        : throw new UsageException($"{flag}: '{value}' is not a finite number");

    private static double Fraction(string flag, string value) =>
        Number(flag, value) is var v and >= 0 and < 1 ? v : throw new UsageException($"{flag}: {value} must be >= 0 and < 1");

    private static double OpenFraction(string flag, string value) =>
        Number(flag, value) is var v and > 0 and < 1 ? v : throw new UsageException($"{flag}: {value} must be > 0 and < 1");

    private static bool Bool(string flag, string value) => value.Trim().ToLowerInvariant() switch
    {
        "true" or "on" or "yes" or "1" => true,
        "false" or "off" or "no" or "0" => false,
        _ => throw new UsageException($"{flag}: '{value}' is not true or false"),
    };

    private static int Int(string flag, string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v
        : throw new UsageException($"{flag}: '{value}' is not an integer");

    private static int PositiveInt(string flag, string value) =>
        Int(flag, value) is var v and > 0 ? v : throw new UsageException($"{flag}: {value} must be a positive integer (>= 1)");

    private static int NonNegativeInt(string flag, string value) =>
        Int(flag, value) is var v and >= 0 ? v : throw new UsageException($"{flag}: {value} must be >= 0");
}

/// Bad command-line input: reported as one line, exit code 2.
public sealed class UsageException : Exception
{
    public UsageException(string message) : base(message) { }
}
