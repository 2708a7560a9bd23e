using System.Diagnostics;
using System.Globalization;
using System.Text;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// The contrastive family (seed 002; dual propagation and ePC, issue 27) beside back-propagation on one dataset: for every seed, one
/// round in which each method trains the same MLP from the same initial weights for the same
/// number of epochs; the reported test accuracy is the one at the epoch with the best validation
/// accuracy (the validation split is carved from the training set), and seconds per epoch are
/// divided by back-propagation's in the same round. Then a speed bench: the methods' mini-batch
/// steps interleaved batch by batch over one epoch's batches (each method on its own weights),
/// median milliseconds per step and the ratio to back-propagation's; it adds PCN with its local
/// gradients by autograd, to show what the closed forms save. Writes a markdown file.
///
///   contrastive [data=mnist-10k] [net=784-256-256-10] [methods=backprop,pcn,lpom,chl,eqprop] [seeds=0,1,2]
///               [epochs=30] [batch=128] [speed-batches=150] [out=docs/results/contrastive-DATA.md]
///               [METHOD.PARAMETER=VALUE ...]   e.g. pcn.inference-steps=10 (the defaults are the registered ones)
public static class ContrastiveTable
{
    private sealed record SeedRun(int Seed, double Validation, double Test, int Epoch, double Seconds, double Ratio);

    public static int Run(Settings settings, IReadOnlyList<string> args)
    {
        var dataName = settings.Text("data", "mnist-10k");
        var net = settings.Text("net", "784-256-256-10");
        var methods = settings.Text("methods", "backprop,pcn,lpom,chl,eqprop").Split(',');
        if (methods[0] != "backprop") throw new ArgumentException("methods must start with backprop (the reference of every ratio).");
        var seeds = settings.Ints("seeds", "0,1,2");
        int epochs = settings.Int("epochs", 30), batch = settings.Int("batch", 128), speedBatches = settings.Int("speed-batches", 150);
        var output = settings.Text("out", $"docs/results/contrastive-{dataName}.md");

        using var data = DatasetCatalog.Load(dataName);
        var program = Net.Mlp(data.Train.ExampleShape, settings.Longs("net", net, '-'), Activations.ReLU, Losses.CrossEntropy);
        MethodSettings SettingsOf(string method) => new(method)
        {
            Values = settings.Where(kv => kv.Key.StartsWith(method + ".", StringComparison.Ordinal)).ToDictionary(kv => kv.Key[(method.Length + 1)..], kv => kv.Value),
        };

        var runs = methods.ToDictionary(m => m, _ => new List<SeedRun>());
        var described = new Dictionary<string, ResolvedMethod>();
        foreach (var seed in seeds)
        {
            double reference = double.NaN;
            foreach (var name in methods)
            {
                var method = described[name] = Methods.Resolve(SettingsOf(name));
                Console.WriteLine($"== seed {seed}, {name}: {method.Formulation.Description}; {method.Solver.Name}");
                using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                    new TrainingOptions { Epochs = epochs, BatchSize = batch, Seed = seed },
                    Observers.OnEpoch(e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"   epoch {e.Epoch,2} val {e.ValidationAccuracy:F4} test {e.TestAccuracy:F4} loss {e.TrainLoss:F4} {e.Seconds:F2}s"))));
                if (name == "backprop") reference = result.SecondsPerEpoch;
                runs[name].Add(new SeedRun(seed, result.Selected.ValidationAccuracy ?? double.NaN, result.Selected.TestAccuracy, result.SelectedEpoch,
                    result.SecondsPerEpoch, result.SecondsPerEpoch / reference));
            }
        }

        var speed = Speed(program, data.Train, methods, SettingsOf, batch, speedBatches);

        var md = new StringBuilder();
        md.AppendLine("| method | formulation, solver, step rules | test acc. at the validation-selected epoch, mean ± sd | per seed: test (epoch, validation) | gap to backprop (points) | target | s/epoch (median) | × backprop per round, median (range) |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        var (bpMean, _) = ResultsTable.MeanSd(runs["backprop"].Select(r => r.Test).ToArray());
        foreach (var name in methods)
        {
            var method = described[name];
            var list = runs[name];
            var (mean, sd) = ResultsTable.MeanSd(list.Select(r => r.Test).ToArray());
            var ratios = list.Select(r => r.Ratio).OrderBy(r => r).ToArray();
            var seconds = list.Select(r => r.Seconds).OrderBy(s => s).ToArray();
            var target = name switch
            {
                "pcn" => "within 1 point", "lpom" or "chl" or "eqprop" => "within 3 points",
                "dual-prop" => "within 0.5 points, ≤ 1.2×", "epc" => "within 0.5 points, ≤ 1.5×", _ => "reference",
            };
            var gap = 100 * (bpMean - mean);
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {method.Formulation.Description}; {method.Solver.Name}; {Rules(method)} | {mean:F4} ± {sd:F4} | " +
                $"{string.Join(" / ", list.Select(r => $"{r.Test:F4} ({r.Epoch}, {r.Validation:F4})"))} | {(name == "backprop" ? "–" : gap.ToString("F2", CultureInfo.InvariantCulture))} | {target} | " +
                $"{seconds[seconds.Length / 2]:F2} | {ratios[ratios.Length / 2]:F2} ({ratios[0]:F2}–{ratios[^1]:F2}) |"));
        }
        md.AppendLine();
        md.AppendLine($"Speed, interleaved: the methods' mini-batch steps alternate batch by batch over {speed.Batches} batches of {batch} (each method on its own weights, after 10 warm-up batches); median milliseconds per step.");
        md.AppendLine();
        md.AppendLine("| method | inference steps T | ms per step (median) | × backprop | target |");
        md.AppendLine("|---|---|---|---|---|");
        var bpStep = speed.Median["backprop"];
        foreach (var (name, ms) in speed.Median)
        {
            var steps = speed.Steps[name];
            var target = name.StartsWith("pcn", StringComparison.Ordinal) ? $"≤ 0.5·T = {0.5 * steps:F1}"
                : name == "dual-prop" ? "≤ 1.2" : name == "epc" ? "≤ 1.5" : "–";
            md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {(steps > 0 ? steps.ToString(CultureInfo.InvariantCulture) : "–")} | {ms:F2} | {ms / bpStep:F2} | {target} |"));
        }
        Console.WriteLine(md.ToString());
        var header =
            $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- {string.Join(" ", args)} -->\n" +
            $"Data {dataName} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test; the validation examples are carved from " +
            $"the training set with a fixed seed; inputs standardised), network {net} (ReLU, cross-entropy), batch {batch}, seeds {string.Join(", ", seeds)}, " +
            $"{epochs} epochs for every method (no early stopping), Adam 1e-3 on the weights for every method, {Threads.Count} LibTorch thread(s), " +
            $"{Environment.ProcessorCount} cores shared with other jobs (CPU). The reported test accuracy is the one at the epoch with the best validation accuracy. " +
            "Seconds count training only (the mean epoch); the ratio is taken within each seed's round, where the methods run one after another in one process.\n\n";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        File.WriteAllText(output + ".tmp", header + md);
        File.Move(output + ".tmp", output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    private sealed record SpeedResult(Dictionary<string, double> Median, Dictionary<string, int> Steps, int Batches);

    /// Mini-batch steps of every method interleaved batch by batch; PCN also with autograd local gradients.
    private static SpeedResult Speed(NestedProgram program, Dataset train, IReadOnlyList<string> methods, Func<string, MethodSettings> settingsOf, int batch, int batches)
    {
        var variants = methods.Select(m => (Name: m, Settings: settingsOf(m))).ToList();
        if (methods.Contains("pcn")) variants.Insert(methods.ToList().IndexOf("pcn") + 1, ("pcn (autograd local gradients)", settingsOf("pcn").With("autograd", true)));
        var resolved = variants.Select(v => Methods.Resolve(v.Settings)).ToArray();
        var weights = resolved.Select(_ => program.Initialise(0)).ToArray();
        var problems = resolved.Select((m, i) => m.Formulation.Lift(new LiftContext(program, train, CPU, ScalarType.Float32, 0, m.StepRules, m.Solver.MemorySlots), weights[i])).ToArray();
        var times = variants.Select(_ => new List<double>()).ToArray();
        int seen = 0;
        try
        {
            for (int epoch = 1; seen < batches + 10; epoch++)
            foreach (var mb in MiniBatches.Epoch(train, batch, 0, epoch))
            {
                using var owned = mb;
                if (seen++ >= batches + 10) continue;
                for (int i = 0; i < resolved.Length; i++)
                {
                    using var scope = NewDisposeScope();
                    var clock = Stopwatch.StartNew();
                    using (var game = problems[i].Batch(mb))
                    {
                        resolved[i].Solver.Step(game);
                        game.Commit();
                        _ = game.Loss;
                    }
                    if (seen > 10) times[i].Add(clock.Elapsed.TotalMilliseconds);
                }
            }
        }
        finally
        {
            foreach (var p in problems) p.Dispose();
            foreach (var w in weights) w.Dispose();
        }
        var median = new Dictionary<string, double>();
        var steps = new Dictionary<string, int>();
        for (int i = 0; i < variants.Count; i++)
        {
            var sorted = times[i].OrderBy(t => t).ToArray();
            median[variants[i].Name] = sorted[sorted.Length / 2];
            steps[variants[i].Name] = resolved[i].Solver is InnerSolve inner ? inner.MaxIterations : 0;
        }
        return new SpeedResult(median, steps, times[0].Count);
    }

    private static string Rules(ResolvedMethod method) =>
        string.Join(", ", method.Summary.Where(kv => kv.Key.StartsWith("step.", StringComparison.Ordinal)).Select(kv => $"{kv.Key[5..]}: {kv.Value}"));
}
