using System.Globalization;
using System.Text;
using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

namespace Lifting.Examples;

/// Trains every method on one dataset and network until its test accuracy stops improving (or
/// the epoch budget runs out), side by side in one process, and writes a markdown table with test
/// accuracy, final defect and seconds per epoch as a ratio to back-propagation.
public static class ResultsTable
{
    public static int Run(IReadOnlyDictionary<string, string> settings)
    {
        string Get(string key, string fallback) => settings.TryGetValue(key, out var v) ? v : fallback;
        var dataName = Get("data", "mnist-10k");
        var net = Get("net", "784-256-10");
        var methods = Get("methods", "backprop,extraprop,gda,auglag,regularized,penalty").Split(',');
        int epochs = int.Parse(Get("epochs", "50"), CultureInfo.InvariantCulture);
        int patience = int.Parse(Get("patience", "5"), CultureInfo.InvariantCulture);
        int batch = int.Parse(Get("batch", "128"), CultureInfo.InvariantCulture);
        int seed = int.Parse(Get("seed", "0"), CultureInfo.InvariantCulture);
        var output = Get("out", "docs/results/mnist-10k-lifted.md");

        var data = DatasetCatalog.Load(dataName);
        var program = Net.Mlp(data.Train.ExampleShape, net.Split('-').Select(long.Parse).ToArray(), Activations.ReLU, Losses.CrossEntropy);
        var rows = new List<(string Method, ResolvedMethod Resolved, TrainingResult Result)>();
        foreach (var name in methods)
        {
            var method = Methods.Resolve(new MethodSettings { Method = name });
            Console.WriteLine($"== {name}: {method.Solver.Name}; {string.Join("; ", method.Settings.Where(kv => kv.Key.StartsWith("step.")).Select(kv => $"{kv.Key[5..]} {kv.Value}"))}");
            // A method whose weights follow a schedule runs its whole schedule; patience would cut
            // it off before its steps have decayed.
            var scheduled = method.Settings.TryGetValue("schedule", out var schedule) && schedule != "constant";
            var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                new TrainingOptions { Epochs = epochs, Patience = scheduled ? 0 : patience, BatchSize = batch, Seed = seed },
                Observers.OnEpoch(m => Console.WriteLine(
                    $"   epoch {m.Epoch,2} acc {m.TestAccuracy:F4} loss {m.TrainLoss:F4} defect {m.MeanDefect:E2} {m.Seconds:F2}s")));
            result.Weights.Dispose();
            rows.Add((name, method, result));
        }

        var reference = rows.FirstOrDefault(r => r.Method == "backprop").Result?.SecondsPerEpoch;
        var md = new StringBuilder();
        md.AppendLine($"| method | formulation | solver and step rules | best test acc. (epoch) | final test acc. | epochs run | final mean abs. defect, all examples | last batch after its step | s/epoch | × backprop |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var (name, method, r) in rows)
        {
            var rules = string.Join(", ", method.Settings.Where(kv => kv.Key.StartsWith("step.")).Select(kv => $"{kv.Key[5..]}: {kv.Value}"));
            var lifted = method.Formulation.PlayerNames.Count > 1;
            var defect = lifted ? r.FinalDefect.ToString("E2", CultureInfo.InvariantCulture) : "0 (nothing lifted)";
            var batchDefect = lifted ? r.FinalBatchDefect.ToString("E2", CultureInfo.InvariantCulture) : "–";
            var ratio = reference is { } b && b > 0 ? (r.SecondsPerEpoch / b).ToString("F2", CultureInfo.InvariantCulture) : "–";
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {method.Formulation.Description} | {method.Solver.Name}; {rules} | {r.BestTestAccuracy:F4} ({r.BestEpoch}) | {r.FinalTestAccuracy:F4} | {r.Epochs.Count} | {defect} | {batchDefect} | {r.SecondsPerEpoch:F3} | {ratio} |"));
        }
        Console.WriteLine(md.ToString());
        var header = $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- table {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))} -->\n" +
                     $"Data {dataName}, network {net} (ReLU), batch {batch}, seed {seed}, at most {epochs} epochs, stopping after {patience} epochs without a better test accuracy " +
                     "(methods whose weights follow a cosine schedule run the whole budget). " +
                     $"Seconds per epoch count training only, measured in one process on this machine ({Environment.ProcessorCount} cores, CPU).\n\n";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        var temp = output + ".tmp";
        File.WriteAllText(temp, header + md);
        File.Move(temp, output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }
}
