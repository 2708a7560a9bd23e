using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// Seed 002's Fenchel back-propagation experiment (§5, Fig. 1; its appendix C code) on MNIST-10k,
/// beside back-propagation in one process: a 784-256-128-64-10 ReLU MLP, softmax cross-entropy,
/// Adam at lr 1e-3, batch 50, Glorot-uniform weights and zero biases, pixel values in [0, 1] (not
/// standardised).
///
/// (a) Glorot start: back-propagation and Fenchel BP at small β. (b) The first layer all-negative,
/// U(−√(6/(fan_in + fan_out)), 0): with inputs ≥ 0 and zero biases every ReLU starts dead, so
/// back-propagation's gradient is zero below the output bias; Fenchel BP over a sweep of β. For
/// each seed the runs go one after another (a round) and each run's seconds per learning epoch is
/// divided by back-propagation's in the same part of the same round. Then a step timing: one
/// back-propagation step and one Fenchel BP step per mini-batch, alternating, median per step.
/// Every figure is taken at the epoch with the best validation accuracy (validation carved from
/// the training set); the test split is only reported.
///
/// β here scales one example's loss gradient; seed 002's code scales the gradient of the batch
/// mean, so its β is 50 × the β here at batch 50.
///
///   fenchel-bp [seeds=0,1,2] [epochs=20] [small=0.0002,0.01,0.1] [sweep=0.01,0.1,1,10,100,1000]
///              [timing-epochs=3] [threads=1] [out=docs/results/fenchel-bp.md]
///
/// `mode=escape` instead measures, at the all-negative start and before any step, which β give the
/// first layer a learning signal and why (`Escape`), writing docs/results/fenchel-bp-escape.md;
/// `mode=switch [high=10] [escape-epochs=3] [low=0.01]` measures why the escaped runs stay below
/// the Glorot start (`Switch`), writing docs/results/fenchel-bp-switch.md.
public static class FenchelBackpropExperiment
{
    private sealed record Trial(string Method, double Beta, int Seed, double Validation, double Test, int Epoch,
        double FinalTest, double FinalTrainLoss, double Seconds, double Ratio, double? Cosine, double ActiveUnits, int? EpochTo85);

    public static int Run(Settings settings)
    {
        var seeds = settings.Ints("seeds", "0,1,2");
        int epochs = settings.Int("epochs", 20);
        int timingEpochs = settings.Int("timing-epochs", 3);
        var small = settings.Reals("small", "0.0002,0.01,0.1");
        var sweep = settings.Reals("sweep", "0.01,0.1,1,10,100,1000");
        var output = settings.Text("out", "docs/results/fenchel-bp.md");
        const int batch = 50;

        using var data = DatasetCatalog.Load("mnist-10k", new DataOptions { Scaling = InputScaling.UnitRange });
        if (settings.Text("mode", "train") == "escape") return Escape(settings, data, seeds, sweep, settings.Text("out", "docs/results/fenchel-bp-escape.md"));
        if (settings.Text("mode", "train") == "switch") return Switch(settings, data, seeds, epochs, settings.Text("out", "docs/results/fenchel-bp-switch.md"));
        var mlp = Net.Mlp(data.Train.ExampleShape, new long[] { 784, 256, 128, 64, 10 }, Activations.ReLU, Losses.CrossEntropy);
        var glorot = mlp.Apply(InitialisationScheme.Glorot);
        var negative = mlp.Apply(InitialisationScheme.NegativeFirstLayer);

        var partA = new List<Trial>();
        var partB = new List<Trial>();
        foreach (var seed in seeds)
        {
            foreach (var (program, part, betas, tag) in new[] { (glorot, partA, small, "glorot"), (negative, partB, sweep, "negative first layer") })
            {
                double? reference = null;
                foreach (var beta in betas.Prepend(0))
                {
                    var settingsFor = beta == 0 ? new MethodSettings("backprop") : new MethodSettings("fenchel-bp").With("beta", beta);
                    var method = Methods.Resolve(settingsFor);
                    var name = beta == 0 ? "backprop" : "fenchel-bp";
                    Console.WriteLine($"== seed {seed}, {tag}, {name}{(beta == 0 ? "" : $" β={Show(beta)}")}");
                    using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                        new TrainingOptions { Epochs = epochs, BatchSize = batch, Seed = seed, CosineToBackprop = beta != 0 && part == partA },
                        Observers.OnEpoch(e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"   epoch {e.Epoch,2} val {e.ValidationAccuracy:F4} test {e.TestAccuracy:F4} train loss {e.TrainLoss:F4} {e.Seconds:F2}s{(e.CosineToBackprop is { } c ? $" cos {c:F4}" : "")}"))));
                    reference ??= result.SecondsPerLearningEpoch;
                    var cosines = result.Epochs.Where(e => e.CosineToBackprop.HasValue).Select(e => e.CosineToBackprop!.Value).ToArray();
                    var to85 = result.Epochs.FirstOrDefault(e => e.ValidationAccuracy >= 0.85)?.Epoch;
                    part.Add(new Trial(name, beta, seed, result.Selected.ValidationAccuracy ?? double.NaN, result.Selected.TestAccuracy, result.SelectedEpoch,
                        result.Final.TestAccuracy, result.Final.TrainLoss, result.SecondsPerLearningEpoch, result.SecondsPerLearningEpoch / reference.Value,
                        cosines.Length > 0 ? cosines.Average() : null, ActiveFirstLayerUnits(program, result.SelectedWeights, data.Validation), to85));
                }
            }
        }

        var steps = StepTiming(glorot, data.Train, timingEpochs, batch, small.Length > 1 ? small[1] : small[0]);

        var md = new StringBuilder();
        md.AppendLine(ProducedBy(settings));
        md.AppendLine("# Fenchel back-propagation beside back-propagation (seed 002 §5, appendix C)");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"MNIST-10k ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test; validation carved from the training set with a fixed seed), " +
            $"pixels in [0, 1] (not standardised), 784-256-128-64-10 ReLU MLP, softmax cross-entropy, Adam lr 1e-3, batch {batch}, {epochs} epochs, seeds {string.Join(", ", seeds)}, " +
            $"{Threads.Count} LibTorch thread(s), {Environment.ProcessorCount} cores (CPU, shared). Figures at the epoch with the best validation accuracy. " +
            $"β scales one example's loss gradient: seed 002's code scales the batch-mean gradient, so its β is {batch} × the β here (column \"seed-code β\"). " +
            $"Seconds count training only; the ratio is taken within each seed's round against back-propagation of the same part; median (range) over seeds."));
        md.AppendLine();
        md.AppendLine("## (a) Glorot-uniform weights, zero biases");
        md.AppendLine();
        Table(md, partA, showCosine: true);
        md.AppendLine("## (b) First layer all-negative, U(−√(6/(fan_in+fan_out)), 0); the other layers Glorot, zero biases");
        md.AppendLine();
        Table(md, partB, showCosine: false);
        md.AppendLine("\"active first-layer units\": the fraction of the 256 first-layer ReLUs positive on at least one validation example, at the selected weights. " +
                      "\"epoch to val ≥ 0.85\": the first epoch whose validation accuracy reaches 0.85, per seed (– = never).");
        md.AppendLine();
        md.AppendLine("## Step timing (interleaved)");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"One back-propagation step and one Fenchel BP step (β = {Show(steps.Beta)}) on each mini-batch of {batch}, alternating, {steps.Count} batches per method over {timingEpochs} epochs (Glorot start, seed 0): " +
            $"median {steps.Backprop:F3} ms vs {steps.Fenchel:F3} ms per step, **× {steps.Fenchel / steps.Backprop:F2}** backprop (each step: operator, Adam update)."));
        Console.WriteLine(md.ToString());
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        File.WriteAllText(output + ".tmp", md.ToString());
        File.Move(output + ".tmp", output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    private static void Table(StringBuilder md, List<Trial> runs, bool showCosine)
    {
        md.AppendLine($"| method | β | seed-code β | test acc. at selected epoch, mean ± sd | per seed: test (epoch, val) | final test acc. per seed | final train loss per seed |{(showCosine ? " mean cos to backprop |" : " active first-layer units | epoch to val ≥ 0.85 |")} s/epoch | × backprop |");
        md.AppendLine($"|---|---|---|---|---|---|---|---|{(showCosine ? "" : "---|")}---|---|");
        foreach (var group in runs.GroupBy(r => (r.Method, r.Beta)))
        {
            var rs = group.OrderBy(r => r.Seed).ToArray();
            var (mean, sd) = ResultsTable.MeanSd(rs.Select(r => r.Test).ToArray());
            var ratios = rs.Select(r => r.Ratio).OrderBy(r => r).ToArray();
            var seconds = rs.Select(r => r.Seconds).OrderBy(r => r).ToArray();
            string Each(Func<Trial, string> f) => string.Join(" / ", rs.Select(f));
            var extra = showCosine
                ? (rs[0].Cosine is null ? "–" : Each(r => r.Cosine!.Value.ToString("F4", CultureInfo.InvariantCulture)))
                : $"{Each(r => r.ActiveUnits.ToString("F3", CultureInfo.InvariantCulture))} | {Each(r => r.EpochTo85?.ToString(CultureInfo.InvariantCulture) ?? "–")}";
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {group.Key.Method} | {(group.Key.Beta == 0 ? "–" : Show(group.Key.Beta))} | {(group.Key.Beta == 0 ? "–" : Show(50 * group.Key.Beta))} | " +
                $"{mean:F4} ± {sd:F4} | {Each(r => $"{r.Test:F4} ({r.Epoch}, {r.Validation:F4})")} | {Each(r => r.FinalTest.ToString("F4", CultureInfo.InvariantCulture))} | " +
                $"{Each(r => r.FinalTrainLoss.ToString("F4", CultureInfo.InvariantCulture))} | {extra} | {seconds[seconds.Length / 2]:F3} | " +
                $"{ratios[ratios.Length / 2]:F2} ({ratios[0]:F2}–{ratios[^1]:F2}) |"));
        }
        md.AppendLine();
    }

    /// The fraction of first-layer units positive on at least one example of `data`.
    private static double ActiveFirstLayerUnits(NestedProgram program, Weights weights, Dataset data)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var z = program.ForwardBlock(0, data.Inputs, weights.Block(0));
        return (z > 0).any(0).to_type(ScalarType.Float64).mean().ToDouble();
    }

    private sealed record Steps(double Backprop, double Fenchel, int Count, double Beta);

    /// Median milliseconds of a back-propagation step and a Fenchel BP step on the same mini-batches,
    /// alternating batch by batch so that the machine's drift falls on both alike.
    private static Steps StepTiming(NestedProgram program, Dataset train, int epochs, int batch, double beta)
    {
        var backprop = Methods.Resolve("backprop");
        var fenchel = Methods.Resolve(new MethodSettings("fenchel-bp").With("beta", beta));
        using var w1 = program.Initialise(0);
        using var w2 = program.Initialise(0);
        using var p1 = backprop.Formulation.Lift(new LiftContext(program, train, CPU, ScalarType.Float32, 0, backprop.StepRules, 0), w1);
        using var p2 = fenchel.Formulation.Lift(new LiftContext(program, train, CPU, ScalarType.Float32, 0, fenchel.StepRules, 0), w2);
        var times = new[] { new List<double>(), new List<double>() };
        var clock = new Stopwatch();
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            int b = 0;
            foreach (var mb in MiniBatches.Epoch(train, batch, 0, epoch))
            {
                using var scope = NewDisposeScope();
                using var owned = mb;
                var order = b++ % 2 == 0 ? new[] { 0, 1 } : new[] { 1, 0 };
                foreach (var k in order)
                {
                    var (problem, method) = k == 0 ? (p1, backprop) : (p2, fenchel);
                    clock.Restart();
                    using (var game = problem.Batch(mb))
                    {
                        method.Solver.Step(game);
                        game.Commit();
                        _ = game.Loss;
                    }
                    times[k].Add(clock.Elapsed.TotalMilliseconds);
                }
            }
        }
        double Median(List<double> v) { var s = v.OrderBy(x => x).ToArray(); return s[s.Length / 2]; }
        return new Steps(Median(times[0]), Median(times[1]), times[0].Count, beta);
    }

    /// At the all-negative start every first-layer pre-activation a₁ = W₁x is < 0 (x ≥ 0, W₁ ≤ 0,
    /// b₁ = 0) and the layers above see z = 0, so their pre-activations are exactly 0. There
    /// Fenchel BP's signal is (0 − relu(−βg))/β = min(g, 0) whatever β, so the signal g₁ = W₂ᵀδ₂
    /// reaching the first layer is the same for every β > 0, and unit i of example n receives
    /// δ₁ = (0 − relu(a₁ − βg₁))/β ≠ 0 exactly when β > β* = a₁/g₁ (g₁ < 0). This measures, on the
    /// first `examples` training examples at seeds' initial weights: the per-unit threshold
    /// min_n β*_{n,i} (its quantiles over the units) and, per β, the fraction of first-layer units
    /// with a non-zero signal on at least one example. Back-propagation's signal is zero for all.
    private static int Escape(Settings settings, DataSplit data, int[] seeds, double[] sweep, string output)
    {
        int examples = settings.Int("examples", 1000);
        var program = Net.Mlp(data.Train.ExampleShape, new long[] { 784, 256, 128, 64, 10 }, Activations.ReLU, Losses.CrossEntropy)
            .Apply(InitialisationScheme.NegativeFirstLayer);
        var relu = Activations.ReLU;
        var thresholds = new List<double[]>();
        var reached = sweep.Select(_ => new List<double>()).ToArray();
        var magnitudes = new List<(double A, double G)>();
        foreach (var seed in seeds)
        {
            using var weights = program.Initialise(seed);
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var w = weights.Tensors;
            var x = data.Train.Inputs.narrow(0, 0, examples).reshape(examples, -1);
            var y = data.Train.Labels.narrow(0, 0, examples);
            var a = new Tensor[4];
            var z = x;
            for (int k = 0; k < 4; k++)
            {
                a[k] = TorchSharp.torch.nn.functional.linear(z, w[2 * k], w[2 * k + 1]);
                z = k < 3 ? relu.Apply(a[k]) : a[k];
            }
            var g = a[3].softmax(-1) - TorchSharp.torch.nn.functional.one_hot(y, 10).to_type(a[3].dtype);
            for (int k = 3; k >= 1; k--)
            {
                g = g.mm(w[2 * k]);
                if (k > 1) g = FenchelBackprop.Signal(relu, a[k - 1], g, 1.0); // = min(g, 0) at a = 0, any β
            }
            // g is now g₁, the signal at the first layer's output, identical for every β > 0.
            var betaStar = where(g < 0, a[0] / g, full_like(g, double.PositiveInfinity)).min(0).values; // per unit
            thresholds.Add(betaStar.to_type(ScalarType.Float64).data<double>().ToArray());
            magnitudes.Add((a[0].abs().median().ToDouble(), g.abs().median().ToDouble()));
            for (int i = 0; i < sweep.Length; i++)
            {
                var delta = FenchelBackprop.Signal(relu, a[0], g, sweep[i]);
                reached[i].Add((delta != 0).any(0).to_type(ScalarType.Float64).mean().ToDouble());
            }
        }
        double Quantile(double[] v, double q) { var s = v.OrderBy(t => t).ToArray(); return s[(int)Math.Min(s.Length - 1, Math.Floor(q * s.Length))]; }
        var all = thresholds.SelectMany(t => t).ToArray();
        var md = new StringBuilder();
        md.AppendLine(ProducedBy(settings));
        md.AppendLine("# Which β give the all-negative first layer a signal (seed 002 §5)");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"MNIST-10k, pixels in [0, 1], 784-256-128-64-10 ReLU, first layer U(−√(6/(fan_in+fan_out)), 0), other layers Glorot, zero biases; initial weights of seeds {string.Join(", ", seeds)}, " +
            $"the first {examples} training examples, no training step. Median |a₁| = {magnitudes.Average(m => m.A):G3}, median |g₁| = {magnitudes.Average(m => m.G):G3} (mean over seeds). " +
            $"A unit receives a Fenchel BP signal on example n when β > β* = a₁/g₁ (g₁ < 0); back-propagation's is zero for every unit."));
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Per-unit threshold min_n β* over the {examples} examples, quantiles over the 256 units × {seeds.Length} seeds: 10 % {Quantile(all, 0.1):G3}, 25 % {Quantile(all, 0.25):G3}, " +
            $"50 % {Quantile(all, 0.5):G3}, 75 % {Quantile(all, 0.75):G3}, 90 % {Quantile(all, 0.9):G3}; units with no negative g₁ on any example (never reached): {all.Count(double.IsPositiveInfinity)} of {all.Length}."));
        md.AppendLine();
        md.AppendLine("| β | seed-code β (×50) | first-layer units with a non-zero signal, per seed |");
        md.AppendLine("|---|---|---|");
        for (int i = 0; i < sweep.Length; i++)
            md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {Show(sweep[i])} | {Show(50 * sweep[i])} | {string.Join(" / ", reached[i].Select(r => r.ToString("F3", CultureInfo.InvariantCulture)))} |"));
        Console.WriteLine(md.ToString());
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        File.WriteAllText(output + ".tmp", md.ToString());
        File.Move(output + ".tmp", output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    /// Why the escaped runs stay near 0.90: after `escape-epochs` epochs of Fenchel BP at the large
    /// β = `high` from the all-negative start, training goes on for the rest of the budget (a)
    /// unchanged, (b) with Fenchel BP at the small β = `low`, (c) with back-propagation, each from
    /// the same escaped weights (fresh Adam state), logging the cosine between the weight direction
    /// and back-propagation's gradient on each epoch's first batch. The reported epoch is the one with
    /// the best validation accuracy over both phases.
    private static int Switch(Settings settings, DataSplit data, int[] seeds, int epochs, string output)
    {
        double high = settings.Real("high", 10), low = settings.Real("low", 0.01);
        int escape = (int)settings.Real("escape-epochs", 3);
        const int batch = 50;
        var program = Net.Mlp(data.Train.ExampleShape, new long[] { 784, 256, 128, 64, 10 }, Activations.ReLU, Losses.CrossEntropy)
            .Apply(InitialisationScheme.NegativeFirstLayer);
        var arms = new[] { ("fenchel-bp", high), ("fenchel-bp", low), ("backprop", 0.0) };
        var results = arms.Select(_ => new List<(double Test, int Epoch, double Validation, double Final, double Loss, double Cos, double Active)>()).ToArray();
        TrainingResult Train(string name, double beta, int count, int seed, Weights? start)
        {
            var method = Methods.Resolve(name == "backprop" ? new MethodSettings(name) : new MethodSettings(name).With("beta", beta));
            return Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
                new TrainingOptions { Epochs = count, BatchSize = batch, Seed = seed, CosineToBackprop = true },
                Observers.OnEpoch(e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"   {name}{(beta > 0 ? $" β={Show(beta)}" : "")} epoch {e.Epoch,2} val {e.ValidationAccuracy:F4} test {e.TestAccuracy:F4} train loss {e.TrainLoss:F4} cos {e.CosineToBackprop:F4}"))),
                start);
        }
        foreach (var seed in seeds)
        {
            Console.WriteLine($"== seed {seed}: fenchel-bp β={Show(high)} for {escape} epochs");
            using var first = Train("fenchel-bp", high, escape, seed, null);
            for (int a = 0; a < arms.Length; a++)
            {
                var (name, beta) = arms[a];
                Console.WriteLine($"== seed {seed}: then {name}{(beta > 0 ? $" β={Show(beta)}" : "")} for {epochs - escape} epochs");
                using var start = first.Weights.Clone(); // trained in place by the continuation
                using var rest = Train(name, beta, epochs - escape, seed + 1000, start);
                var all = first.Epochs.Concat(rest.Epochs).ToArray();
                var best = Enumerable.Range(0, all.Length).Aggregate((i, j) => all[j].ValidationAccuracy > all[i].ValidationAccuracy ? j : i);
                var selectedWeights = best < first.Epochs.Count ? first.SelectedWeights : rest.SelectedWeights;
                results[a].Add((all[best].TestAccuracy, best + 1, all[best].ValidationAccuracy ?? double.NaN, all[^1].TestAccuracy, all[^1].TrainLoss,
                    rest.Epochs.Average(e => e.CosineToBackprop ?? double.NaN), ActiveFirstLayerUnits(program, selectedWeights, data.Validation)));
            }
        }
        var md = new StringBuilder();
        md.AppendLine(ProducedBy(settings));
        md.AppendLine("# Why the escaped runs stay near 0.90: the large β's direction, not dead units");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"MNIST-10k, pixels in [0, 1], 784-256-128-64-10 ReLU, all-negative first layer (docs/results/fenchel-bp.md, part b), Adam lr 1e-3, batch {batch}. " +
            $"Fenchel BP at β = {Show(high)} for {escape} epochs from the all-negative start, then {epochs - escape} more epochs from those weights (fresh Adam state) with each continuation below; " +
            $"seeds {string.Join(", ", seeds)}; the reported epoch is the one with the best validation accuracy over all {epochs} epochs. \"cos\": the mean over the continuation's epochs of the cosine " +
            $"between the weight direction and back-propagation's gradient on the epoch's first mini-batch. {Threads.Count} LibTorch thread(s)."));
        md.AppendLine();
        md.AppendLine("| continuation | test acc. at selected epoch, mean ± sd | per seed: test (epoch, val) | final test acc. per seed | final train loss per seed | cos to backprop per seed | active first-layer units per seed |");
        md.AppendLine("|---|---|---|---|---|---|---|");
        for (int a = 0; a < arms.Length; a++)
        {
            var rs = results[a];
            var (mean, sd) = ResultsTable.MeanSd(rs.Select(r => r.Test).ToArray());
            string Each(Func<(double Test, int Epoch, double Validation, double Final, double Loss, double Cos, double Active), string> f) => string.Join(" / ", rs.Select(f));
            var (name, beta) = arms[a];
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name}{(beta > 0 ? $" β = {Show(beta)}" : "")} | {mean:F4} ± {sd:F4} | {Each(r => $"{r.Test:F4} ({r.Epoch}, {r.Validation:F4})")} | " +
                $"{Each(r => r.Final.ToString("F4", CultureInfo.InvariantCulture))} | {Each(r => r.Loss.ToString("F4", CultureInfo.InvariantCulture))} | " +
                $"{Each(r => r.Cos.ToString("F4", CultureInfo.InvariantCulture))} | {Each(r => r.Active.ToString("F3", CultureInfo.InvariantCulture))} |"));
        }
        Console.WriteLine(md.ToString());
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        File.WriteAllText(output + ".tmp", md.ToString());
        File.Move(output + ".tmp", output, overwrite: true);
        Console.WriteLine($"wrote {output}");
        return 0;
    }

    private static string Show(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    /// The first line of every file this script writes: the command that made it.
    private static string ProducedBy(IReadOnlyDictionary<string, string> settings) =>
        $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- fenchel-bp {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))} -->";
}
