using System.Globalization;
using System.Text;
using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

namespace Lifting.Examples;

/// Trains every method on one dataset and network, for several seeds, and writes a markdown table.
/// Every selection uses the validation split carved from the training set (10 %, fixed split
/// seed): the reported test accuracy is the one at the epoch with the best validation accuracy,
/// never the best test accuracy. Also: the final test accuracy, the final mean |defect| over all
/// training examples, and seconds per learning epoch as a ratio to back-propagation. For each seed
/// the methods run one after another in one process, and the ratio is taken within that round, so
/// a drift of the machine's speed between rounds cancels. Methods with a constant weights' step
/// stop once their validation accuracy has not improved for `patience` epochs; methods whose
/// weights follow a schedule run the whole budget.
///
///   table [methods=backprop,extraprop,extraprop-rows,gda,auglag,regularized,penalty] [seeds=0,1,2] [epochs=50]
///         [patience=5] [batch=128] [data=mnist-10k] [net=784-256-10] [out=docs/results/mnist-10k-lifted.md]
public static class ResultsTable
{
    private sealed record SeedRun(int Seed, Summary? Result, string? Failure, double Ratio);

    /// What the table keeps of a run (the weights are freed at once).
    private sealed record Summary(double Validation, double Test, int Epoch, double FinalTest, double Defect, double Seconds);

    public static int Run(Settings settings)
    {
        var dataName = settings.Text("data", "mnist-10k");
        var net = settings.Text("net", "784-256-10");
        var methods = settings.Text("methods", "backprop,extraprop,extraprop-rows,gda,auglag,regularized,penalty").Split(',');
        var seeds = settings.Ints("seeds", "0,1,2");
        int epochs = settings.Int("epochs", 50), patience = settings.Int("patience", 5), batch = settings.Int("batch", 128);
        var output = settings.Text("out", "docs/results/mnist-10k-lifted.md");

        using var data = DatasetCatalog.Load(dataName);
        var program = Net.Mlp(data.Train.ExampleShape, settings.Longs("net", net, '-'), Activations.ReLU, Losses.CrossEntropy);
        var runs = methods.Select(_ => new List<SeedRun>()).ToArray();
        var described = new ResolvedMethod[methods.Length];
        foreach (var seed in seeds)
        {
            double? reference = null;
            for (int m = 0; m < methods.Length; m++)
            {
                var method = described[m] = Methods.Resolve(methods[m]); // fresh step rules for every run
                Console.WriteLine($"== seed {seed}, {method.Name}: {method.Solver.Name}; {Rules(method)}");
                var scheduled = method.Arguments.Text("schedule") != "constant";
                try
                {
                    using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                        new TrainingOptions { Epochs = epochs, Patience = scheduled ? 0 : patience, BatchSize = batch, Seed = seed },
                        Observers.OnEpoch(e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"   epoch {e.Epoch,2} val {e.ValidationAccuracy:F4} test {e.TestAccuracy:F4} loss {e.TrainLoss:F4} defect {e.MeanDefect:E2} {e.Seconds:F2}s{(e.Held.Count > 0 ? " (settling)" : "")}"))));
                    reference ??= result.SecondsPerLearningEpoch;
                    var summary = new Summary(result.Selected.ValidationAccuracy ?? double.NaN, result.Selected.TestAccuracy, result.SelectedEpoch,
                        result.Final.TestAccuracy, result.FinalDefect, result.SecondsPerLearningEpoch);
                    runs[m].Add(new SeedRun(seed, summary, null, result.SecondsPerLearningEpoch / reference.Value));
                }
                catch (TrainingDivergedException e)
                {
                    Console.WriteLine($"   {e.Message}");
                    runs[m].Add(new SeedRun(seed, null, e.Message, double.NaN));
                }
            }
        }

        var md = new StringBuilder();
        md.AppendLine("| method | formulation | solver and step rules | test acc. at the selected epoch, mean ± sd | per seed: test acc. (selected epoch, its validation acc.) | final test acc. per seed | final mean abs. defect, all examples | s per learning epoch | × backprop (per round) |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|");
        for (int m = 0; m < methods.Length; m++)
        {
            var method = described[m];
            var done = runs[m].Where(r => r.Result is not null).ToArray();
            string PerSeed(Func<Summary, string> show) =>
                string.Join(" / ", runs[m].Select(r => r.Result is { } x ? show(x) : "diverged"));
            var (mean, sd) = MeanSd(done.Select(r => r.Result!.Test).ToArray());
            var lifted = method.Formulation.PlayerNames.Count > 1;
            var ratios = done.Select(r => r.Ratio).OrderBy(r => r).ToArray();
            var seconds = done.Select(r => r.Result!.Seconds).OrderBy(s => s).ToArray();
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {method.Name} | {method.Formulation.Description} | {method.Solver.Name}; {Rules(method)} | " +
                $"{mean:F4} ± {sd:F4} | {PerSeed(r => $"{r.Test:F4} ({r.Epoch}, {r.Validation:F4})")} | {PerSeed(r => $"{r.FinalTest:F4}")} | " +
                $"{(lifted ? PerSeed(r => r.Defect.ToString("E1", CultureInfo.InvariantCulture)) : "0 (nothing lifted)")} | " +
                $"{(seconds.Length > 0 ? seconds[seconds.Length / 2].ToString("F3", CultureInfo.InvariantCulture) : "–")} | " +
                $"{(ratios.Length > 0 ? $"{ratios[ratios.Length / 2]:F2} ({ratios[0]:F2}–{ratios[^1]:F2})" : "–")} |"));
        }
        Console.WriteLine(md.ToString());
        var header = $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- table {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))} -->\n" +
                     $"Data {dataName} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test; the validation examples are " +
                     $"carved from the training set with a fixed seed), network {net} (ReLU), batch {batch}, seeds {string.Join(", ", seeds)}, at most {epochs} epochs, " +
                     $"{Threads.Count} LibTorch threads. The reported test accuracy is the one at the epoch with the best validation accuracy. " +
                     $"Methods with a constant weights' step stop after {patience} epochs without a better validation accuracy; methods whose weights " +
                     "follow a schedule run the whole budget, the last epochs of it settling (weights held). Seconds count training only, median over " +
                     $"seeds of the mean learning epoch; the ratio is taken within each seed's round, in one process on this machine ({Environment.ProcessorCount} cores, CPU).\n\n";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        var temp = output + ".tmp";
        File.WriteAllText(temp, header + md);
        File.Move(temp, output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    /// Mean and sample standard deviation (0 for fewer than two values).
    public static (double Mean, double Sd) MeanSd(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return (double.NaN, double.NaN);
        var mean = values.Average();
        var sd = values.Count > 1 ? Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1)) : 0;
        return (mean, sd);
    }

    private static string Rules(ResolvedMethod method)
    {
        var rules = string.Join(", ", method.Summary.Where(kv => kv.Key.StartsWith("step.", StringComparison.Ordinal)).Select(kv => $"{kv.Key[5..]}: {kv.Value}"));
        var a = method.Arguments;
        return !a.Has("schedule") || a.Text("schedule") == "constant" ? rules
            : $"{rules}; weights' schedule {a.Text("schedule")}, settle {(a.Has("settle") ? a.Text("settle") : "0")}";
    }
}
