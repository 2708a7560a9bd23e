using System.Globalization;
using System.Text.Json;
using Lifting.Data;
using Lifting.Training;

namespace Lifting.Host;

/// `lifting bench`: methods side by side in one process on the same data, network and seed —
/// seconds per epoch (training only; the first epoch is reported apart as warm-up), its ratio to
/// the first method, the memory of the per-example store, and the process's peak resident memory
/// while each method ran (Linux: VmHWM, reset before each method through /proc/self/clear_refs).
public static class Bench
{
    public const string Usage = """
        lifting bench [--methods backprop,extraprop,...] [--data NAME] [--net 784-256-10] [--epochs 3]
                      [--batch 128] [--seed 0] [--device auto|cpu|cuda] [--json]
        """;

    public static int Run(string[] args, TextWriter output)
    {
        var methods = new[] { "backprop", "extraprop" };
        var experiment = new Experiment { Data = "mnist-10k", Net = "784-256-10", Epochs = 3, Batch = 128 };
        var rest = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--methods")
            {
                if (i + 1 >= args.Length) throw new UsageException("--methods needs a value");
                methods = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            }
            else rest.Add(args[i]);
        }
        foreach (var flag in rest.Where(a => a.StartsWith("--", StringComparison.Ordinal)))
            if (flag is not ("--data" or "--net" or "--activation" or "--epochs" or "--batch" or "--seed" or "--device" or "--json"))
                throw new UsageException($"unknown option '{flag}' for bench (see lifting --help)");
        experiment = Experiment.Parse(rest, experiment);
        if (experiment.Epochs < 2) throw new UsageException("--epochs: bench needs at least 2 epochs (the first is warm-up)");

        var device = Devices.Resolve(experiment.Device);
        var resolved = methods.Select(m => Methods.Resolve(new MethodSettings { Method = m })).ToArray();
        var data = DatasetCatalog.Load(experiment.Data, device);
        var program = Cli.BuildProgram(experiment, data.Train);
        output.WriteLine($"bench on {experiment.Data}, {experiment.Net ?? "default net"}, batch {experiment.Batch}, {experiment.Epochs} epochs, device {device.type}, {Environment.ProcessorCount} cores");

        var rows = new List<Dictionary<string, object>>();
        double? reference = null;
        foreach (var method in resolved)
        {
            ResetPeakMemory();
            var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                new TrainingOptions { Epochs = experiment.Epochs, BatchSize = experiment.Batch, Seed = experiment.Seed, Device = device });
            result.Weights.Dispose();
            var steady = result.Epochs.Skip(1).Select(e => e.Seconds).OrderBy(s => s).ToArray();
            var median = steady[steady.Length / 2];
            reference ??= median;
            var row = new Dictionary<string, object>
            {
                ["method"] = method.Name,
                ["seconds_per_epoch"] = Math.Round(median, 4),
                ["first_epoch_seconds"] = Math.Round(result.Epochs[0].Seconds, 4),
                ["ratio"] = Math.Round(median / reference.Value, 3),
                ["per_example_bytes"] = result.PerExampleBytes,
                ["peak_rss_mib"] = Math.Round(PeakMemoryBytes() / 1048576.0, 1),
                ["test_accuracy"] = Math.Round(result.FinalTestAccuracy, 4),
            };
            rows.Add(row);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {method.Name,-12} {median,8:F3} s/epoch  ×{median / reference.Value,5:F2}  first epoch {result.Epochs[0].Seconds:F3} s  " +
                $"per-example state {result.PerExampleBytes} B  peak RSS {row["peak_rss_mib"]} MiB  test acc {result.FinalTestAccuracy:F4}"));
        }
        if (experiment.Json) output.WriteLine(JsonSerializer.Serialize(rows));
        return 0;
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
