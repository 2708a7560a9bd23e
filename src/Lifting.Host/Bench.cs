using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Lifting.Data;
using Lifting.Training;

namespace Lifting.Host;

/// `lifting bench`: methods side by side in one process on the same data, network and seed. The
/// methods run in turn, A B C A B C …, `--repeats` times, so that a drift in the machine's speed
/// reaches all of them alike. Per run: the median training time of its learning epochs after the
/// first (warm-up; settling epochs, in which the weights are held, are left out), the ratio of that
/// to the first method's in the same round, the memory of the per-example store, and the process's
/// peak resident memory during the run (Linux: VmHWM, reset before each run through
/// /proc/self/clear_refs). Reported per method: the medians over the rounds.
public static class Bench
{
    public static Command Create(CliContext context)
    {
        var command = new Command("bench", "Methods side by side in interleaved rounds: s/epoch, ratio to the first, per-example memory, peak RSS.");
        var methods = new Option<string>("--methods") { Description = "comma-separated methods, each NAME or NAME:PARAM=VALUE;... (e.g. distprop:resample=false) [default: backprop,extraprop]", HelpName = "A,B,..." };
        var repeats = new Option<string>("--repeats") { Description = "interleaved rounds [default: 3]", HelpName = "N" };
        var json = new Option<bool>("--json") { Description = "make the last line of output the rows as JSON" };
        var keys = new[] { "data", "net", "activation", "epochs", "batch", "seed", "device", "threads" };
        var defaults = new Experiment { Data = "mnist-10k", Net = "784-256-10", Epochs = 4, Batch = 128 };
        var options = keys.Select(k => (Key: k, Option: new Option<string>("--" + k)
        {
            Description = Experiment.Keys.First(x => x.Name == k).Description + $" [default: {k switch { "data" => defaults.Data, "net" => defaults.Net, "epochs" => "4", "batch" => "128", _ => Experiment.Keys.First(x => x.Name == k).Default }}]",
            HelpName = Experiment.Keys.First(x => x.Name == k).HelpName,
        })).ToArray();
        command.Add(methods);
        command.Add(repeats);
        command.Add(json);
        foreach (var (_, o) in options) command.Add(o);
        command.SetAction(parsed =>
        {
            var names = (parsed.GetValue(methods) ?? "backprop,extraprop").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (names.Length == 0) throw new UsageException("--methods: give at least one method");
            int rounds = parsed.GetValue(repeats) is not { } r ? 3
                : int.TryParse(r, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new UsageException($"--repeats: {r} must be a positive integer");
            var experiment = defaults;
            foreach (var (key, option) in options)
                if (parsed.GetValue(option) is { } value) experiment = experiment.Set(key, value, fromFlag: true);
            return Run(experiment, names, rounds, parsed.GetValue(json), context.Output);
        });
        return command;
    }

    private static int Run(Experiment experiment, string[] methods, int repeats, bool json, TextWriter output)
    {
        if (experiment.Epochs < 2)
            throw new UsageException($"--epochs {experiment.Epochs}: bench times the learning epochs after the first (a warm-up); give at least 2");
        // Each entry as written (NAME or NAME:PARAM=VALUE;...), under the method's catalog name.
        var settings = new MethodSettings[methods.Length];
        var resolved = new ResolvedMethod[methods.Length];
        for (int i = 0; i < methods.Length; i++)
        {
            try
            {
                var parsed = MethodSettings.Parse(methods[i]);
                resolved[i] = Methods.Resolve(parsed);
                settings[i] = parsed with { Method = resolved[i].Name };
            }
            catch (ArgumentException x) { throw new UsageException($"--methods: {x.Message.TrimEnd('.')}"); }
            // Before anything trains: a method whose schedule holds a player (settling) in every
            // epoch after the first leaves nothing to time.
            if (LearningEpochsAfterFirst(Methods.Resolve(settings[i]), experiment.Epochs) == 0)
                throw new UsageException($"--epochs {experiment.Epochs}: {settings[i].Label} settles (holds its weights) in every epoch after the first, which leaves no learning epoch to time; give more epochs");
        }
        using var prepared = PreparedRun.Prepare(experiment with { Method = resolved[0].Name });
        var data = prepared.Data;
        var program = prepared.Program;
        var device = prepared.Options.Device;
        output.WriteLine($"bench on {experiment.Data}, {prepared.Experiment.Net}, batch {experiment.Batch}, {experiment.Epochs} epochs, " +
                         $"{repeats} rounds, device {device.type}, {Threads.Count} threads, {Environment.ProcessorCount} cores");

        var runs = resolved.Select(_ => new List<(double Seconds, double Ratio, double PeakMiB, long Bytes, IReadOnlyDictionary<string, long> Variables, double Accuracy)>()).ToArray();
        for (int round = 0; round < repeats; round++)
        {
            double? reference = null;
            for (int m = 0; m < resolved.Length; m++)
            {
                // Fresh step rules every run: scheduled rules carry per-run state.
                var method = round == 0 ? resolved[m] : Methods.Resolve(settings[m]);
                ResetPeakMemory();
                using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                    new TrainingOptions { Epochs = experiment.Epochs, BatchSize = experiment.Batch, Seed = experiment.Seed, Device = device });
                var learning = result.Epochs.Skip(1).Where(e => e.Held.Count == 0).Select(e => e.Seconds).ToArray();
                if (learning.Length == 0)
                    throw new UsageException($"--epochs {experiment.Epochs}: {method.Name} has no learning epoch after the first; give more epochs");
                var seconds = Median(learning);
                reference ??= seconds;
                runs[m].Add((seconds, seconds / reference.Value, PeakMemoryBytes() / 1048576.0, result.PerExampleBytes, result.PerExampleVariables, result.Selected.TestAccuracy));
            }
        }

        var rows = new List<Dictionary<string, object>>();
        int width = Math.Max(15, settings.Max(x => x.Label.Length));
        for (int m = 0; m < resolved.Length; m++)
        {
            var r = runs[m];
            var row = new Dictionary<string, object>
            {
                ["method"] = settings[m].Label,
                ["seconds_per_epoch"] = Math.Round(Median(r.Select(x => x.Seconds)), 4),
                ["ratio"] = Math.Round(Median(r.Select(x => x.Ratio)), 3),
                ["ratio_min"] = Math.Round(r.Min(x => x.Ratio), 3),
                ["ratio_max"] = Math.Round(r.Max(x => x.Ratio), 3),
                ["per_example_bytes"] = r[0].Bytes,
                ["per_example_variables"] = r[0].Variables,
                ["peak_rss_mib"] = Math.Round(Median(r.Select(x => x.PeakMiB)), 1),
                ["test_accuracy"] = Math.Round(r[0].Accuracy, 4), // at the epoch selected on validation
            };
            rows.Add(row);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {settings[m].Label.PadRight(width)} {row["seconds_per_epoch"],8:F3} s/epoch  ×{row["ratio"],5:F2} (rounds {row["ratio_min"]:F2}–{row["ratio_max"]:F2})  " +
                $"per-example state {row["per_example_bytes"]} B{Contents(r[0].Variables)}  peak RSS {row["peak_rss_mib"]} MiB  test acc {row["test_accuracy"]:F4}"));
        }
        if (json) output.WriteLine(JsonSerializer.Serialize(rows));
        return 0;
    }

    /// " (lambda1 1024 B)": what the per-example figure holds, each variable with its step-rule state.
    private static string Contents(IReadOnlyDictionary<string, long> variables) =>
        variables.Count == 0 ? "" : $" ({string.Join(", ", variables.Select(v => $"{v.Key} {v.Value} B"))})";

    /// The epochs after the first in which no player's schedule holds it (the trainer's rule).
    private static int LearningEpochsAfterFirst(ResolvedMethod method, int epochs)
    {
        int learning = 0;
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            bool held = false;
            foreach (var player in method.Formulation.PlayerNames)
                if (method.StepRules(player) is Lifting.Solvers.IScheduledStepRule scheduled)
                {
                    scheduled.Advance(epoch, epochs);
                    held |= scheduled.Holding;
                }
            if (epoch > 1 && !held) learning++;
        }
        return learning;
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : 0.5 * (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]);
    }

    private static void ResetPeakMemory()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static long PeakMemoryBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        return Environment.WorkingSet;
    }
}
