using System.Globalization;
using System.Text.Json;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Host;

/// The `lifting` command. Only the host prints or writes files.
public static class Cli
{
    public const string Usage = """
        lifting — train neural networks by lifting them (multiple shooting, penalties, saddle-point solvers)

        usage:
          lifting train [options]     train a network (defaults: MLP by backprop on the embedded digits)
          lifting methods             list methods, solvers and step rules, one line each
          lifting bench [options]     methods side by side: s/epoch, ratio to the first, memory
          lifting --help              this text

        train options:
          --data NAME|PATH            digits (default, embedded), mnist-10k (embedded), fashion-mnist,
                                      a folder of IDX files, or a digits-format .csv[.gz]
          --net SPEC                  784-256-10 (MLP sizes: inputs, hidden..., classes), a name (lenet5,
                                      seed001-conv), or layers: "conv:6:5:1:2,relu,maxpool:2,cut,dense:120,
                                      relu,dense:10" (conv:C:K[:S[:P]], maxpool:K, avgpool:K, flatten,
                                      dense:N, activations, cut)
          --activation relu           hidden activation: relu, tanh, sigmoid, hardtanh, identity, sign, step
          --loss cross-entropy        cross-entropy or mse
          --method backprop           backprop, extraprop, extraprop-rows, gda, auglag, penalty, regularized,
                                      fenchel-bp (--beta 0.01 or one per block: --beta 0.5,1,1,2)
          --PARAMETER VALUE           any parameter of the method, e.g. --lr 1e-3 --solver gda --settle 0.2;
                                      `lifting methods` lists each method's parameters and defaults
          --epochs N (20)  --batch N (64)  --seed N (0)
          --validation-fraction F     training examples held out for validation (0.1); selection (best
                                      epoch, early stopping) uses them; 0 = none, selection = last epoch
          --split-seed N              seed of the validation split (fixed by default)
          --input-scaling standardise|unit  standardise inputs with the training split's mean and std
                                      (default), or keep them in [0, 1] (seed 002's Fenchel BP setting)
          --init default|glorot|glorot-negative-first  each layer's own initialisers (default),
                                      Glorot-uniform weights and zero biases, or those with the first
                                      layer all-negative (seed 002's dead-ReLU start)
          --patience N                stop after N epochs without a better validation accuracy (0 = off)
          --iterations N              solver iterations per mini-batch (1)
          --cosine                    log the cosine between the weight update and backprop's gradient
          --device auto|cpu|cuda      (auto)
          --threads N                 LibTorch threads (default: LibTorch's choice, recorded); results
                                      are bit-identical for a seed and a thread count on one CPU type
          --out DIR                   write a run folder (config, metrics.jsonl, summary.json, timing.json,
                                      weights.bin, weights-selected.bin)
          --config FILE               read the experiment from JSON (flags override it)
          --json                      make the last line of output a JSON summary

        bench options: --methods backprop,extraprop,... --repeats N (3, interleaved rounds) plus --data --net
                       --epochs (4) --batch --seed --device --threads --json

        Bad input gives a one-line error and exit code 2.
        """;

    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        try
        {
            if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
            {
                output.WriteLine(Usage);
                return 0;
            }
            return args[0] switch
            {
                "train" => Train(args.Skip(1).ToArray(), output, error),
                "methods" => ListMethods(output),
                "bench" => Bench.Run(args.Skip(1).ToArray(), output),
                _ => throw new UsageException($"unknown command '{args[0]}' (expected train, methods or bench; see lifting --help)"),
            };
        }
        catch (Exception e) when (IsUserError(e))
        {
            error.WriteLine($"lifting: error: {OneLine(e.Message)}");
            return 2;
        }
        catch (Exception e)
        {
            error.WriteLine($"lifting: internal error ({e.GetType().Name}): {OneLine(e.Message)}");
            return 1;
        }
    }

    private static bool IsUserError(Exception e) => e is UsageException or DataFormatException or ArgumentException
        or InvalidOperationException or IOException or UnauthorizedAccessException or TrainingDivergedException;

    private static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    private static int ListMethods(TextWriter output)
    {
        output.WriteLine("methods (--method), each with its parameters (--name value) and defaults:");
        foreach (var m in Methods.All)
        {
            output.WriteLine($"  {m.Name,-16}{m.Description}");
            foreach (var p in m.Parameters)
                output.WriteLine($"      --{p.Name,-24}{p.Default,-14}{p.Domain,-28}{p.Description}");
        }
        output.WriteLine("solvers (--solver):");
        foreach (var s in SolverCatalog.All) output.WriteLine($"  {s.Name,-16}{s.Description}");
        output.WriteLine("step rules (--optimizer, --optimizer-states, ...):");
        foreach (var r in StepRuleCatalog.All) output.WriteLine($"  {r.Name,-16}{r.Description}");
        return 0;
    }

    /// Sets the thread count when asked; otherwise LibTorch's default stands (and is recorded).
    internal static void ApplyThreads(Experiment experiment)
    {
        if (experiment.Threads is { } threads) Threads.Set(threads);
    }

    internal static DataOptions DataOptions(Experiment experiment, Device device) =>
        new() { Device = device, ValidationFraction = experiment.ValidationFraction, SplitSeed = experiment.SplitSeed, Scaling = experiment.Scaling() };

    private static int Train(string[] args, TextWriter output, TextWriter error)
    {
        var start = new Experiment();
        var configAt = Array.IndexOf(args, "--config");
        if (configAt >= 0)
        {
            if (configAt + 1 >= args.Length) throw new UsageException("--config needs a value");
            start = Experiment.FromJsonFile(args[configAt + 1]);
        }
        var experiment = Experiment.Parse(args, start);
        if (experiment.Patience > 0 && experiment.ValidationFraction == 0)
            throw new UsageException("--patience needs a validation split; --validation-fraction 0 leaves none");

        ApplyThreads(experiment);
        var device = Devices.Resolve(experiment.Device);
        var method = Methods.Resolve(experiment.ToMethodSettings());
        using var data = DatasetCatalog.Load(experiment.Data, DataOptions(experiment, device));
        var program = BuildProgram(experiment, data.Train);
        var options = new TrainingOptions
        {
            Epochs = experiment.Epochs,
            BatchSize = experiment.Batch,
            Seed = experiment.Seed,
            Device = device,
            Patience = experiment.Patience,
            IterationsPerBatch = experiment.Iterations,
            CosineToBackprop = experiment.Cosine,
        };
        options.Validate();
        var engine = EngineInfo.Current(device);
        var folder = experiment.Out is null ? null : new RunFolder(experiment.Out);
        folder?.WriteConfig(experiment.ToJson(method, engine));

        output.WriteLine($"{method.Name} on {experiment.Data} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), " +
                         $"device {engine.Device}, {engine.Threads} threads, LibTorch {engine.LibTorch}");
        output.WriteLine($"  program   {program}");
        foreach (var (key, value) in method.Summary) output.WriteLine($"  {key,-18}{value}");

        var showBatches = !Console.IsErrorRedirected;
        var observer = Observers.Create(
            onEpoch: m =>
            {
                if (showBatches) error.Write("\r\x1b[K");
                output.WriteLine(FormatEpoch(m, experiment.Epochs));
                folder?.AppendMetrics(JsonSerializer.Serialize(MetricsRecord(m), JsonOptions));
            },
            onBatch: (epoch, batch, total) =>
            {
                if (showBatches && (batch % 10 == 0 || batch == total))
                    error.Write($"\repoch {epoch}/{experiment.Epochs}  batch {batch}/{total}");
            });

        using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules, options, observer);
        folder?.WriteWeights("weights.bin", program, result.Weights);
        folder?.WriteWeights("weights-selected.bin", program, result.SelectedWeights);

        var summary = Summary(method, experiment, result);
        var timing = Timing(result);
        folder?.WriteSummary(JsonSerializer.Serialize(summary, IndentedJsonOptions));
        folder?.WriteTiming(JsonSerializer.Serialize(timing, IndentedJsonOptions));

        var selected = result.Selected;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"selected epoch {result.SelectedEpoch} by {(result.SelectedBy == Selection.ValidationAccuracy ? "validation accuracy" : "last epoch (no validation split)")}: " +
            $"validation {Show(selected.ValidationAccuracy)}, test {selected.TestAccuracy:F4}; last epoch: test {result.Final.TestAccuracy:F4} " +
            $"({result.SecondsPerEpoch:F2} s/epoch){(folder is null ? "" : $"; run folder {folder.Path}")}"));
        if (experiment.Json)
        {
            foreach (var (k, v) in timing) if (v is not IEnumerable<double>) summary[k] = v;
            output.WriteLine(JsonSerializer.Serialize(summary, JsonOptions));
        }
        return 0;
    }

    private static string Show(double? accuracy) => accuracy is { } a ? a.ToString("F4", CultureInfo.InvariantCulture) : "–";

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    internal static readonly JsonSerializerOptions IndentedJsonOptions = new(JsonOptions) { WriteIndented = true };

    private static double Round(double v) => Math.Round(v, 6);

    /// What the run reached: a pure function of the config and the machine (no timings), so two
    /// runs of one config write the same summary.json byte for byte.
    private static Dictionary<string, object?> Summary(ResolvedMethod method, Experiment experiment, TrainingResult result)
    {
        var summary = new Dictionary<string, object?>
        {
            ["method"] = method.Name,
            ["data"] = experiment.Data,
            ["selected_by"] = result.SelectedBy == Selection.ValidationAccuracy ? "validation_accuracy" : "last_epoch",
            ["selected_epoch"] = result.SelectedEpoch,
            ["validation_accuracy"] = result.Selected.ValidationAccuracy is { } v ? Round(v) : null,
            ["test_accuracy"] = Round(result.Selected.TestAccuracy),
            ["final_validation_accuracy"] = result.Final.ValidationAccuracy is { } fv ? Round(fv) : null,
            ["final_test_accuracy"] = Round(result.Final.TestAccuracy),
            ["train_loss"] = Round(result.Final.TrainLoss),
            ["epochs"] = result.Epochs.Count,
            ["stopped_early"] = result.StoppedEarly,
            ["per_example_bytes"] = result.PerExampleBytes,
            ["state_bytes"] = result.StateBytes,
            ["threads"] = result.Engine.Threads,
        };
        if (method.Formulation.PlayerNames.Count > 1)
        {
            summary["defect"] = result.FinalDefect;
            summary["defect_before_finish"] = result.DefectBeforeFinish;
            summary["batch_defect"] = result.FinalBatchDefect;
        }
        return summary;
    }

    /// The run's timings, kept apart from the deterministic files.
    private static Dictionary<string, object> Timing(TrainingResult result)
    {
        var timing = new Dictionary<string, object>
        {
            ["seconds_per_epoch"] = Round(result.SecondsPerEpoch),
            ["epoch_seconds"] = result.Epochs.Select(e => Round(e.Seconds)).ToArray(),
        };
        if (double.IsFinite(result.SecondsPerLearningEpoch) && result.SecondsPerLearningEpoch != result.SecondsPerEpoch)
            timing["seconds_per_learning_epoch"] = Round(result.SecondsPerLearningEpoch);
        return timing;
    }

    private static Dictionary<string, object?> MetricsRecord(EpochMetrics m) => new()
    {
        ["epoch"] = m.Epoch,
        ["train_loss"] = m.TrainLoss,
        ["objective"] = m.Objective,
        ["loss_term"] = m.LossTerm,
        ["validation_accuracy"] = m.Validation?.Accuracy,
        ["validation_loss"] = m.Validation?.Loss,
        ["test_accuracy"] = m.Test.Accuracy,
        ["test_loss"] = m.Test.Loss,
        ["defects"] = m.Defects,
        ["batch_defect"] = m.BatchDefect,
        ["multiplier_norms"] = m.MultiplierNorms,
        ["cosine_to_backprop"] = m.CosineToBackprop,
        ["diagnostics"] = m.Diagnostics,
        ["held"] = m.Held,
    };

    private static string FormatEpoch(EpochMetrics m, int epochs)
    {
        var line = string.Create(CultureInfo.InvariantCulture,
            $"epoch {m.Epoch,3}/{epochs}  train loss {m.TrainLoss:F4}  objective {m.Objective:G4} (loss term {m.LossTerm:G4})  val acc {Show(m.ValidationAccuracy)}  test acc {m.TestAccuracy:F4}  {m.Seconds:F2} s");
        if (m.Defects.Count > 0) line += $"  defect {string.Join("/", m.Defects.Select(d => d.ToString("E2", CultureInfo.InvariantCulture)))}";
        if (m.MultiplierNorms.Count > 0) line += $"  |λ|² {string.Join("/", m.MultiplierNorms.Select(d => d.ToString("E2", CultureInfo.InvariantCulture)))}";
        if (m.CosineToBackprop is { } c) line += string.Create(CultureInfo.InvariantCulture, $"  cos {c:F3}");
        foreach (var (k, v) in m.Diagnostics) line += string.Create(CultureInfo.InvariantCulture, $"  {k} {v:G4}");
        if (m.Held.Count > 0) line += $"  (settling: {string.Join(", ", m.Held)} held)";
        return line;
    }

    /// The network named by --net (sizes, a zoo name or a layer list; see NetSpec), or
    /// inputs-128-classes, with the chosen hidden activation and loss.
    public static NestedProgram BuildProgram(Experiment e, Dataset train)
    {
        try { return NetSpec.Build(e.Net, train.ExampleShape, train.ClassCount, Activations.ByName(e.Activation), Losses.ByName(e.Loss)).Apply(Initialisation.Parse(e.Init)); }
        catch (ArgumentException x) when (e.Net is not null && !x.Message.StartsWith("--net", StringComparison.Ordinal))
        {
            throw new UsageException($"--net {e.Net}: {x.Message}");
        }
    }
}
