using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Host;

/// An experiment with every setting resolved and every input checked: the method built from its
/// validated parameters, the data loaded and split, the network built for it and its memory
/// checked against the machine's. Nothing is written while preparing, so bad input leaves no
/// trace.
public sealed class PreparedRun : IDisposable
{
    private PreparedRun(Experiment experiment, ResolvedMethod method, DataSplit data, NestedProgram program, TrainingOptions options, EngineInfo engine, bool csv)
    {
        Experiment = experiment;
        Method = method;
        Data = data;
        Program = program;
        Options = options;
        Engine = engine;
        IsCsv = csv;
    }

    /// The experiment with its defaults resolved: the network spelled out, the device and the
    /// thread count the run uses, the CSV test fraction.
    public Experiment Experiment { get; }
    public ResolvedMethod Method { get; }
    public DataSplit Data { get; }
    public NestedProgram Program { get; }
    public TrainingOptions Options { get; }
    public EngineInfo Engine { get; }
    public bool IsCsv { get; }

    /// Validation splits smaller than this are too coarse to select an epoch on (a warning).
    public const int SmallValidation = 100;

    /// Lines to print before the run (e.g. a validation split too small to select on).
    public IReadOnlyList<string> Warnings { get; private init; } = Array.Empty<string>();

    public static PreparedRun Prepare(Experiment e)
    {
        if (e.Patience > 0 && e.ValidationFraction == 0)
            throw new UsageException("--patience needs a validation split; --validation-fraction 0 leaves none");
        if (e.Patience > 0 && e.Select == "last")
            throw new UsageException($"--patience {e.Patience}: early stopping selects on validation; --select last does not (give one of them)");
        // Set only when it changes: LibTorch's pool is process-wide, and resizing it while another
        // run in the process computes is not safe.
        if (e.Threads is { } threads && threads != Threads.Count) Threads.Set(threads);
        var device = Devices.Resolve(e.Device);
        ResolvedMethod method;
        try { method = Methods.Resolve(e.ToMethodSettings()); }
        catch (ArgumentException x) { throw new UsageException($"--method {e.Method}: {x.Message.TrimEnd('.')}"); }
        var csv = !Directory.Exists(e.Data) && File.Exists(e.Data) && !DatasetCatalog.Names.Contains(e.Data.ToLowerInvariant());
        DataSplit data;
        try { data = DatasetCatalog.Load(e.Data, DataOptions(e, device)); }
        catch (DataFormatException x) { throw new UsageException($"--data {e.Data}: {x.Message}"); }
        try
        {
            // A batch the size of the whole split is one mini-batch; the default is used so on data
            // smaller than it, a larger batch asked for is refused.
            if (e.Batch > data.Train.Count && e.Batch != new Experiment().Batch)
                throw new UsageException($"--batch {e.Batch}: more than the {data.Train.Count} training examples (give at most {data.Train.Count}, one mini-batch of the whole training split)");
            var flat = data.Train.ExampleShape.Aggregate(1L, (a, b) => a * b);
            var net = e.Net ?? $"{flat}-128-{data.Train.ClassCount}";
            NestedProgram program;
            try { program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ByName(e.Activation), Losses.ByName(e.Loss)).Apply(e.InitScheme()); }
            catch (ArgumentException x) { throw new UsageException(x.Message.StartsWith("--net", StringComparison.Ordinal) ? x.Message : $"--net {net}: {x.Message}"); }
            if (method.Formulation.PlayerNames.Count > 1 && program.Segments.Count < 2)
                throw new UsageException($"--net {net}: a single block, but {method.Name} lifts the network at its cuts; give a hidden layer or a cut");
            var estimate = MemoryEstimate.Of(program, data.Train.Count, Math.Min(e.Batch, data.Train.Count), method.Formulation);
            var available = MemoryEstimate.AvailableBytes();
            if (estimate.TotalBytes > available && estimate.ActivationBytes > Math.Max(estimate.WeightBytes, estimate.PerExampleBytes))
                throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                    $"--batch {e.Batch}: a mini-batch of {net} needs at least {MemoryEstimate.Show(estimate.ActivationBytes)} of activations, the whole run {MemoryEstimate.Show(estimate.TotalBytes)}, but {MemoryEstimate.Show(available)} of memory is available; give a smaller batch"));
            if (estimate.TotalBytes > available)
                throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                    $"--net {net}: the run needs at least {MemoryEstimate.Show(estimate.TotalBytes)} ({estimate.Parameters:N0} parameters, {MemoryEstimate.Show(estimate.PerExampleBytes)} of per-example state) but {MemoryEstimate.Show(available)} of memory is available"));
            var options = new TrainingOptions
            {
                Epochs = e.Epochs,
                BatchSize = e.Batch,
                Seed = e.Seed,
                Device = device,
                DType = Precision.Parse(e.DType),
                Patience = e.Patience,
                IterationsPerBatch = e.Iterations,
                CosineToBackprop = e.Cosine,
                MaxLossRatio = e.MaxLossRatio,
                Selection = e.Selection(),
            };
            options.Validate();
            var engine = EngineInfo.Current(device);
            var resolved = e with
            {
                Net = net,
                Method = method.Name,
                Device = device.type.ToString().ToLowerInvariant(),
                Threads = engine.Threads,
                TestFraction = csv ? e.TestFraction ?? Lifting.Data.DataOptions.DefaultTestFraction : null,
            };
            var warnings = new List<string>();
            if (data.HasValidation && e.Select == "best" && data.Validation.Count < SmallValidation)
                warnings.Add(string.Create(CultureInfo.InvariantCulture,
                    $"warning: the validation split has {data.Validation.Count} examples (its accuracy moves in steps of {1.0 / data.Validation.Count:F3}), too few to select an epoch on; raise --validation-fraction, or give --select last to report the last epoch"));
            return new PreparedRun(resolved, method, data, program, options, engine, csv) { Warnings = warnings };
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    public static DataOptions DataOptions(Experiment e, Device device) => new()
    {
        Device = device,
        ValidationFraction = e.ValidationFraction,
        SplitSeed = e.SplitSeed,
        Scaling = e.Scaling(),
        Label = e.Label,
        TestFraction = e.TestFraction,
        Csv = e.CsvFormat(),
    };

    /// Every setting of the run, method defaults included, and the environment it ran in: enough
    /// to repeat the run, and nothing that names where it was written.
    public JsonObject Config()
    {
        var e = Experiment;
        var o = new JsonObject
        {
            ["data"] = e.Data,
        };
        if (IsCsv)
        {
            o["label"] = e.Label;
            o["test-fraction"] = e.TestFraction;
            o["skip-rows"] = e.SkipRows;
            o["no-header"] = e.NoHeader;
        }
        o["net"] = e.Net;
        o["activation"] = e.Activation;
        o["loss"] = e.Loss;
        o["method"] = Method.Name;
        o["epochs"] = e.Epochs;
        o["batch"] = e.Batch;
        o["seed"] = e.Seed;
        o["patience"] = e.Patience;
        o["select"] = e.Select;
        o["iterations"] = e.Iterations;
        o["cosine"] = e.Cosine;
        o["device"] = e.Device;
        o["dtype"] = e.DType;
        o["threads"] = e.Threads;
        o["validation-fraction"] = e.ValidationFraction;
        o["split-seed"] = e.SplitSeed;
        o["input-scaling"] = e.InputScaling;
        o["init"] = e.Init;
        o["max-loss-ratio"] = e.MaxLossRatio;
        foreach (var (name, value) in Method.Arguments.Values)
            o[name] = Method.Arguments.Method.Parameter(name)!.Kind switch
            {
                ParameterKind.Real => JsonValue.Create(double.Parse(value, CultureInfo.InvariantCulture)),
                ParameterKind.Integer => JsonValue.Create(int.Parse(value, CultureInfo.InvariantCulture)),
                ParameterKind.Flag => JsonValue.Create(value == "true"),
                _ => JsonValue.Create(value),
            };
        o["environment"] = new JsonObject
        {
            ["libtorch"] = Engine.LibTorch,
            ["torchsharp"] = Engine.TorchSharp,
            ["threads"] = Engine.Threads,
            ["device"] = Engine.Device,
            ["cpu"] = Engine.Cpu,
            ["vector-instructions"] = Engine.VectorInstructions,
        };
        return o;
    }

    /// What a weights file carries besides the tensors, so that it is enough to evaluate the
    /// network on new data: the input shape, the classes and the data's normalisation.
    public IReadOnlyDictionary<string, string> WeightsMetadata()
    {
        var n = Data.Normalisation;
        return new Dictionary<string, string>
        {
            ["method"] = Method.Name,
            ["net"] = Experiment.Net!,
            ["input-shape"] = JsonSerializer.Serialize(Data.Train.ExampleShape),
            ["classes"] = Data.Train.ClassCount.ToString(CultureInfo.InvariantCulture),
            ["class-names"] = JsonSerializer.Serialize(Data.ClassNames),
            ["normalisation"] = JsonSerializer.Serialize(new { mean = n.Mean, std = n.Std, feature_means = n.FeatureMeans, feature_stds = n.FeatureStds }),
        };
    }

    /// The normalisation and class names recorded by `WeightsMetadata`.
    public static (Normalisation Normalisation, IReadOnlyList<string> ClassNames) ReadDataMetadata(IReadOnlyDictionary<string, string> metadata, string file)
    {
        try
        {
            using var doc = JsonDocument.Parse(metadata["normalisation"]);
            var r = doc.RootElement;
            var normalisation = new Normalisation(r.GetProperty("mean").GetDouble(), r.GetProperty("std").GetDouble())
            {
                FeatureMeans = r.GetProperty("feature_means").EnumerateArray().Select(v => v.GetDouble()).ToArray(),
                FeatureStds = r.GetProperty("feature_stds").EnumerateArray().Select(v => v.GetDouble()).ToArray(),
            };
            var names = JsonSerializer.Deserialize<string[]>(metadata.GetValueOrDefault("class-names", "[]")) ?? Array.Empty<string>();
            if (normalisation.FeatureMeans.Count == 0) normalisation = normalisation with { FeatureMeans = Array.Empty<double>(), FeatureStds = Array.Empty<double>() };
            return (normalisation, names);
        }
        catch (Exception x) when (x is KeyNotFoundException or JsonException or InvalidOperationException)
        {
            throw new UsageException($"{file}: no data normalisation in its metadata ({x.Message.Split('\n')[0]})");
        }
    }

    public void Dispose() => Data.Dispose();
}
