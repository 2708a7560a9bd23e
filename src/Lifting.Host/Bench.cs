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
    public const string Usage = """
        lifting bench [--methods backprop,extraprop,...] [--repeats 3] [--data NAME] [--net 784-256-10]
                      [--epochs 4] [--batch 128] [--seed 0] [--device auto|cpu|cuda] [--json]
        """;

    public static int Run(string[] args, TextWriter output)
    {
        var methods = new[] { "backprop", "extraprop" };
        int repeats = 3;
        var experiment = new Experiment { Data = "mnist-10k", Net = "784-256-10", Epochs = 4, Batch = 128 };
        var rest = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] is "--methods" or "--repeats")
            {
                if (i + 1 >= args.Length) throw new UsageException($"{args[i]} needs a value");
                if (args[i] == "--methods") methods = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                else repeats = int.TryParse(args[++i], NumberStyles.Integer, CultureInfo.InvariantCulture, out var r) && r > 0 ? r
                    : throw new UsageException($"--repeats: {args[i]} must be a positive integer");
            }
            else rest.Add(args[i]);
        }
        foreach (var flag in rest.Where(a => a.StartsWith("--", StringComparison.Ordinal)))
            if (flag is not ("--data" or "--net" or "--activation" or "--epochs" or "--batch" or "--seed" or "--device" or "--threads" or "--json"))
                throw new UsageException($"unknown option '{flag}' for bench (see lifting --help)");
        experiment = Experiment.Parse(rest, experiment);

        Cli.ApplyThreads(experiment);
        var device = Devices.Resolve(experiment.Device);
        var resolved = methods.Select(Methods.Resolve).ToArray();
        using var data = DatasetCatalog.Load(experiment.Data, Cli.DataOptions(experiment, device));
        var program = Cli.BuildProgram(experiment, data.Train);
        output.WriteLine($"bench on {experiment.Data}, {experiment.Net ?? "default net"}, batch {experiment.Batch}, {experiment.Epochs} epochs, " +
                         $"{repeats} rounds, device {device.type}, {Threads.Count} threads, {Environment.ProcessorCount} cores");

        var runs = resolved.Select(_ => new List<(double Seconds, double Ratio, double PeakMiB, long Bytes, double Accuracy)>()).ToArray();
        for (int round = 0; round < repeats; round++)
        {
            double? reference = null;
            for (int m = 0; m < resolved.Length; m++)
            {
                var method = resolved[m];
                ResetPeakMemory();
                using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                    new TrainingOptions { Epochs = experiment.Epochs, BatchSize = experiment.Batch, Seed = experiment.Seed, Device = device });
                var learning = result.Epochs.Skip(1).Where(e => e.Held.Count == 0).Select(e => e.Seconds).ToArray();
                if (learning.Length == 0)
                    throw new UsageException($"--epochs {experiment.Epochs}: {method.Name} has no learning epoch after the first; give more epochs");
                var seconds = Median(learning);
                reference ??= seconds;
                runs[m].Add((seconds, seconds / reference.Value, PeakMemoryBytes() / 1048576.0, result.PerExampleBytes, result.Selected.TestAccuracy));
            }
        }

        var rows = new List<Dictionary<string, object>>();
        for (int m = 0; m < resolved.Length; m++)
        {
            var r = runs[m];
            var row = new Dictionary<string, object>
            {
                ["method"] = resolved[m].Name,
                ["seconds_per_epoch"] = Math.Round(Median(r.Select(x => x.Seconds)), 4),
                ["ratio"] = Math.Round(Median(r.Select(x => x.Ratio)), 3),
                ["ratio_min"] = Math.Round(r.Min(x => x.Ratio), 3),
                ["ratio_max"] = Math.Round(r.Max(x => x.Ratio), 3),
                ["per_example_bytes"] = r[0].Bytes,
                ["peak_rss_mib"] = Math.Round(Median(r.Select(x => x.PeakMiB)), 1),
                ["test_accuracy"] = Math.Round(r[0].Accuracy, 4), // at the epoch selected on validation
            };
            rows.Add(row);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {resolved[m].Name,-15} {row["seconds_per_epoch"],8:F3} s/epoch  ×{row["ratio"],5:F2} (rounds {row["ratio_min"]:F2}–{row["ratio_max"]:F2})  " +
                $"per-example state {row["per_example_bytes"]} B  peak RSS {row["peak_rss_mib"]} MiB  test acc {row["test_accuracy"]:F4}"));
        }
        if (experiment.Json) output.WriteLine(JsonSerializer.Serialize(rows));
        return 0;
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
