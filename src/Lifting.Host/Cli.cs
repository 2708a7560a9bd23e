using System.Globalization;
using System.Text.Json;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;

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
          --net 784-256-10            layer sizes (first = inputs per example, last = classes)
          --activation relu           hidden activation: relu, tanh, sigmoid, hardtanh, identity, sign, step
          --loss cross-entropy        cross-entropy or mse
          --method backprop           backprop, extraprop, extraprop-rows, gda, auglag, penalty, regularized
          --solver NAME               override the method's solver (see lifting methods)
          --optimizer sgd|adagrad|adam  step rule of the weights
          --optimizer-states R, --optimizer-multipliers R   step rule of those players only
          --inner N                   solver iterations on the per-example players alone before each full one
          --inner-solver NAME         the solver of those iterations (extragradient)
          --schedule constant|cosine  schedule of the weights' step over the epochs
          --settle F                  hold the weights in the last fraction F of the epochs while the
                                      per-example states and multipliers settle (extraprop: 0.2)
          --settle-states X           while settling, state step ×X and multiplier step ÷X (extraprop: 0.3)
          --lr X                      step size of the weights
          --lr-states X               step size of the per-example states
          --lr-multipliers X          step size of the multipliers
          --eps X                     epsilon-insensitive defect (seed 001 eq. 3)
          --c X                       augmented-Lagrangian coefficient
          --reparametrise             states reparametrised through the activation's range
          --reduced                   one constraint ReLU(|g|_1 - eps) per example and block
          --mu X --mu-growth X --mu-max X   penalty schedule (initial, per-epoch factor, cap)
          --state-steps N             inner state steps per weight step (penalty)
          --epochs N (20)  --batch N (64)  --seed N (0)  --patience N (0 = off)
          --iterations N              solver iterations per mini-batch (1)
          --cosine                    log the cosine between the weight update and backprop's gradient
          --device auto|cpu|cuda      (auto)
          --out DIR                   write a run folder (config, metrics.jsonl, summary.json, weights.bin)
          --config FILE               read the experiment from JSON (flags override it)
          --json                      make the last line of output a JSON summary

        bench options: --methods backprop,extraprop,... --repeats N (3, interleaved rounds) plus --data --net
                       --epochs (4) --batch --seed --device --json

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
        output.WriteLine("methods (--method):");
        foreach (var m in Methods.All) output.WriteLine($"  {m.Name,-16}{m.Description}");
        output.WriteLine("solvers (--solver):");
        foreach (var s in SolverCatalog.All) output.WriteLine($"  {s.Name,-16}{s.Description}");
        output.WriteLine("step rules (--optimizer):");
        foreach (var r in StepRuleCatalog.All) output.WriteLine($"  {r.Name,-16}{r.Description}");
        return 0;
    }

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

        var device = Devices.Resolve(experiment.Device);
        var method = Methods.Resolve(experiment.ToMethodSettings());
        var data = DatasetCatalog.Load(experiment.Data, device);
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
        var folder = experiment.Out is null ? null : new RunFolder(experiment.Out);
        folder?.WriteConfig(experiment.ToJson());

        var quiet = experiment.Json;
        output.WriteLine($"{method.Name} on {experiment.Data} ({data.Train.Count} train / {data.Test.Count} test), device {device.type}");
        output.WriteLine($"  program   {program}");
        foreach (var (key, value) in method.Settings) output.WriteLine($"  {key,-18}{value}");

        var showBatches = !Console.IsErrorRedirected;
        var observer = Observers.Create(
            onEpoch: m =>
            {
                if (showBatches) error.Write("\r\x1b[K");
                output.WriteLine(FormatEpoch(m, experiment.Epochs));
                folder?.AppendMetrics(JsonSerializer.Serialize(MetricsRecord(m)));
            },
            onBatch: (epoch, batch, total) =>
            {
                if (showBatches && (batch % 10 == 0 || batch == total))
                    error.Write($"\repoch {epoch}/{experiment.Epochs}  batch {batch}/{total}");
            });

        var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules, options, observer);
        using var weights = result.Weights;
        folder?.WriteWeights(program, weights);

        var summary = new Dictionary<string, object>
        {
            ["method"] = method.Name,
            ["data"] = experiment.Data,
            ["test_accuracy"] = Round(result.FinalTestAccuracy),
            ["best_test_accuracy"] = Round(result.BestTestAccuracy),
            ["best_epoch"] = result.BestEpoch,
            ["train_loss"] = Round(result.FinalTrainLoss),
            ["epochs"] = result.Epochs.Count,
            ["seconds_per_epoch"] = Round(result.SecondsPerEpoch),
        };
        if (double.IsFinite(result.SecondsPerLearningEpoch) && result.SecondsPerLearningEpoch != result.SecondsPerEpoch)
            summary["seconds_per_learning_epoch"] = Round(result.SecondsPerLearningEpoch);
        if (method.Formulation.PlayerNames.Count > 1)
        {
            summary["defect"] = result.FinalDefect;
            summary["batch_defect"] = result.FinalBatchDefect;
        }
        var summaryJson = JsonSerializer.Serialize(summary);
        folder?.WriteSummary(JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));

        output.WriteLine($"test accuracy {result.FinalTestAccuracy:F4} after {result.Epochs.Count} epochs " +
                         $"({result.SecondsPerEpoch:F2} s/epoch){(folder is null ? "" : $"; run folder {folder.Path}")}");
        if (quiet) output.WriteLine(summaryJson);
        return 0;
    }

    private static double Round(double v) => Math.Round(v, 6);

    private static Dictionary<string, object?> MetricsRecord(EpochMetrics m) => new()
    {
        ["epoch"] = m.Epoch,
        ["train_loss"] = m.TrainLoss,
        ["objective"] = m.Objective,
        ["test_accuracy"] = m.TestAccuracy,
        ["test_loss"] = m.TestLoss,
        ["seconds"] = m.Seconds,
        ["defects"] = m.Defects,
        ["batch_defect"] = m.BatchDefect,
        ["multiplier_norms"] = m.MultiplierNorms,
        ["cosine_to_backprop"] = m.CosineToBackprop,
        ["diagnostics"] = m.Diagnostics,
        ["held"] = m.Held,
    };

    private static string FormatEpoch(EpochMetrics m, int epochs)
    {
        var line = $"epoch {m.Epoch,3}/{epochs}  train loss {m.TrainLoss:F4}  test acc {m.TestAccuracy:F4}  {m.Seconds:F2} s";
        if (m.Defects.Count > 0) line += $"  defect {string.Join("/", m.Defects.Select(d => d.ToString("E2", CultureInfo.InvariantCulture)))}";
        if (m.MultiplierNorms.Count > 0) line += $"  |λ|² {string.Join("/", m.MultiplierNorms.Select(d => d.ToString("E2", CultureInfo.InvariantCulture)))}";
        if (m.CosineToBackprop is { } c) line += $"  cos {c:F3}";
        foreach (var (k, v) in m.Diagnostics) line += $"  {k} {v:G4}";
        if (m.Held.Count > 0) line += $"  (settling: {string.Join(", ", m.Held)} held)";
        return line;
    }

    /// The MLP named by --net (or inputs-128-classes) with the chosen activation and loss.
    public static NestedProgram BuildProgram(Experiment e, Dataset train)
    {
        var flat = train.ExampleShape.Aggregate(1L, (a, b) => a * b);
        long[] sizes;
        if (e.Net is null) sizes = new[] { flat, 128L, train.ClassCount };
        else
        {
            var parts = e.Net.Split('-', StringSplitOptions.TrimEntries);
            sizes = parts.Select(p => long.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
                : throw new UsageException($"--net {e.Net}: '{p}' is not a positive layer size")).ToArray();
            if (sizes.Length < 2) throw new UsageException($"--net {e.Net}: give at least input and output sizes, e.g. {flat}-128-{train.ClassCount}");
            if (sizes[0] != flat) throw new UsageException($"--net {e.Net}: the network starts with {sizes[0]} inputs but {e.Data} has {flat} values per example");
            if (sizes[^1] != train.ClassCount) throw new UsageException($"--net {e.Net}: the network ends with {sizes[^1]} outputs but {e.Data} has {train.ClassCount} classes");
        }
        return Net.Mlp(train.ExampleShape, sizes, Activations.ByName(e.Activation), Losses.ByName(e.Loss));
    }
}
