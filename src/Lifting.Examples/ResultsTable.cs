using System.Globalization;
using System.Text;
using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

namespace Lifting.Examples;

/// Trains every method on one dataset and network, for several seeds, and writes a markdown table:
/// best test accuracy (mean ± standard deviation over the seeds), final test accuracy, final mean
/// |defect| over all training examples, and seconds per learning epoch as a ratio to
/// back-propagation. For each seed the methods run one after another in one process, and the
/// ratio is taken within that round, so a drift of the machine's speed between rounds cancels.
/// Methods with a constant weights' step stop once their test accuracy has not improved for
/// `patience` epochs; methods whose weights follow a schedule run the whole budget.
///
///   table [methods=backprop,extraprop,extraprop-rows,gda,auglag,regularized,penalty] [seeds=0,1,2] [epochs=50]
///         [patience=5] [batch=128] [data=mnist-10k] [net=784-256-10] [out=docs/results/mnist-10k-lifted.md]
public static class ResultsTable
{
    private sealed record SeedRun(int Seed, TrainingResult? Result, string? Failure, double Ratio);

    public static int Run(IReadOnlyDictionary<string, string> settings)
    {
        string Get(string key, string fallback) => settings.TryGetValue(key, out var v) ? v : fallback;
        int Int(string key, string fallback) => int.Parse(Get(key, fallback), CultureInfo.InvariantCulture);
        var dataName = Get("data", "mnist-10k");
        var net = Get("net", "784-256-10");
        var methods = Get("methods", "backprop,extraprop,extraprop-rows,gda,auglag,regularized,penalty").Split(',');
        var seeds = Get("seeds", "0,1,2").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int epochs = Int("epochs", "50"), patience = Int("patience", "5"), batch = Int("batch", "128");
        var output = Get("out", "docs/results/mnist-10k-lifted.md");

        var data = DatasetCatalog.Load(dataName);
        var program = Net.Mlp(data.Train.ExampleShape, net.Split('-').Select(long.Parse).ToArray(), Activations.ReLU, Losses.CrossEntropy);
        var resolved = methods.Select(name => Methods.Resolve(new MethodSettings { Method = name })).ToArray();
        var runs = methods.Select(_ => new List<SeedRun>()).ToArray();
        foreach (var seed in seeds)
        {
            double? reference = null;
            for (int m = 0; m < methods.Length; m++)
            {
                var method = resolved[m];
                Console.WriteLine($"== seed {seed}, {method.Name}: {method.Solver.Name}; {Rules(method)}");
                var scheduled = method.Settings["schedule"] != "constant";
                try
                {
                    var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                        new TrainingOptions { Epochs = epochs, Patience = scheduled ? 0 : patience, BatchSize = batch, Seed = seed },
                        Observers.OnEpoch(e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"   epoch {e.Epoch,2} acc {e.TestAccuracy:F4} loss {e.TrainLoss:F4} defect {e.MeanDefect:E2} {e.Seconds:F2}s{(e.Held.Count > 0 ? " (settling)" : "")}"))));
                    result.Weights.Dispose();
                    reference ??= result.SecondsPerLearningEpoch;
                    runs[m].Add(new SeedRun(seed, result, null, result.SecondsPerLearningEpoch / reference.Value));
                }
                catch (TrainingDivergedException e)
                {
                    Console.WriteLine($"   {e.Message}");
                    runs[m].Add(new SeedRun(seed, null, e.Message, double.NaN));
                }
            }
        }

        var md = new StringBuilder();
        md.AppendLine("| method | formulation | solver and step rules | best test acc., mean ± sd | best test acc. per seed (epoch) | final test acc. per seed | final mean abs. defect, all examples | s per learning epoch | × backprop (per round) |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|");
        for (int m = 0; m < methods.Length; m++)
        {
            var method = resolved[m];
            var done = runs[m].Where(r => r.Result is not null).ToArray();
            string PerSeed(Func<TrainingResult, string> show) =>
                string.Join(" / ", runs[m].Select(r => r.Result is { } x ? show(x) : "diverged"));
            var best = done.Select(r => r.Result!.BestTestAccuracy).ToArray();
            var mean = best.Length > 0 ? best.Average() : double.NaN;
            var sd = best.Length > 1 ? Math.Sqrt(best.Sum(b => (b - mean) * (b - mean)) / (best.Length - 1)) : 0;
            var lifted = method.Formulation.PlayerNames.Count > 1;
            var ratios = done.Select(r => r.Ratio).OrderBy(r => r).ToArray();
            var seconds = done.Select(r => r.Result!.SecondsPerLearningEpoch).OrderBy(s => s).ToArray();
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {method.Name} | {method.Formulation.Description} | {method.Solver.Name}; {Rules(method)} | " +
                $"{mean:F4} ± {sd:F4} | {PerSeed(r => $"{r.BestTestAccuracy:F4} ({r.BestEpoch})")} | {PerSeed(r => $"{r.FinalTestAccuracy:F4}")} | " +
                $"{(lifted ? PerSeed(r => r.FinalDefect.ToString("E1", CultureInfo.InvariantCulture)) : "0 (nothing lifted)")} | " +
                $"{(seconds.Length > 0 ? seconds[seconds.Length / 2].ToString("F3", CultureInfo.InvariantCulture) : "–")} | " +
                $"{(ratios.Length > 0 ? $"{ratios[ratios.Length / 2]:F2} ({ratios[0]:F2}–{ratios[^1]:F2})" : "–")} |"));
        }
        Console.WriteLine(md.ToString());
        var header = $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- table {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))} -->\n" +
                     $"Data {dataName}, network {net} (ReLU), batch {batch}, seeds {string.Join(", ", seeds)}, at most {epochs} epochs. " +
                     $"Methods with a constant weights' step stop after {patience} epochs without a better test accuracy; methods whose weights follow a " +
                     "schedule run the whole budget, the last epochs of it settling (weights held). Seconds count training only, median over " +
                     $"seeds of the mean learning epoch; the ratio is taken within each seed's round, in one process on this machine ({Environment.ProcessorCount} cores, CPU).\n\n";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        var temp = output + ".tmp";
        File.WriteAllText(temp, header + md);
        File.Move(temp, output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    private static string Rules(ResolvedMethod method)
    {
        var rules = string.Join(", ", method.Settings.Where(kv => kv.Key.StartsWith("step.", StringComparison.Ordinal)).Select(kv => $"{kv.Key[5..]}: {kv.Value}"));
        return method.Settings["schedule"] == "constant" ? rules : $"{rules}; weights' schedule {method.Settings["schedule"]}, settle {method.Settings["settle"]}";
    }
}
