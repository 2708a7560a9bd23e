using System.Diagnostics;
using System.Globalization;
using System.Text;
using Lifting;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using TorchSharp;

namespace Lifting.Examples;

/// Seed 004's experiments (online alternating minimisation) side by side with back-propagation:
/// same data, network, budget, seeds and process; every reported accuracy is the test accuracy at
/// the epoch with the best validation accuracy (the validation split is carved from the training
/// set), unless a row says it is measured at a fixed point (after 50 mini-batches). Each experiment
/// writes docs/results/am-NAME.md with the command that made it.
///
///   am lenet     full Fashion-MNIST, LeNet-5, batch 128, 10 epochs: Adam vs AM-Adam (seed 004 appendix B)
///   am mlp       Fashion-MNIST, 784-100-100-10 and 784-500-500-10 ReLU, batch 200: accuracy after 50
///                mini-batches and after 10 epochs, Adam vs AM-Adam (seed 004 §4, Fig. 2)
///   am binary    MNIST-10k, 784-500(sign)-500(tanh)-10, batch 200, 20 epochs: AM-Adam vs straight-through
///                backprop (and backprop without the straight-through estimator)
///   am variants  MNIST-10k, 784-100-100-10 and 784-500-500-10: Adam, AM-Adam, AM-mem, AM-Adam-off, AM-mem-off
///   am admm      Taylor et al.'s ADMM beside Adam, AM-Adam and AM-Adam-off (seed 004 §4): data= (fashion-mnist),
///                net= (784-100-100-10), epochs= (50), batch= (200), methods=; accuracy per epoch as a PNG,
///                ADMM's objective and residuals per epoch, its per-example memory
///   am speed     Fashion-MNIST, 784-500-500-10, batch 200: seconds per epoch of backprop and AM-Adam with
///                sequential and layer-parallel weight updates, interleaved rounds; the weight phase alone
///   am tune      validation accuracy over a grid of AM-Adam settings (the defaults' provenance); seeds=
///                runs each setting from several initialisations, rank=final orders by the last epoch
///   am limit     the μ → ∞ limit on small random MLPs: code displacement and each block's cosine between
///                the AM weight direction and backprop's gradient, for several code steps
///   am run       one run: data=, net=, method=, epochs=, batch=, seed=, and any method parameter;
///                diagnose=true also prints, per epoch, every weight tensor's Frobenius norm (in
///                layer order, weight then bias)
///
/// Keys: seeds=0,1,2 epochs=N batch=N threads=N (LibTorch threads; Program.cs sets them), and
/// method parameters as am.NAME=VALUE (AM methods) or adam.NAME=VALUE (backprop).
public static class AlternatingMinimisationTable
{
    private sealed record Outcome(double SelectedTest, double SelectedValidation, int SelectedEpoch, double FinalTest,
        double SecondsPerEpoch, IReadOnlyList<EpochMetrics> Epochs, Evaluation? EarlyValidation, Evaluation? EarlyTest,
        double CodeSeconds, double WeightSeconds, long StateBytes)
    {
        /// Bytes per training example of the per-example store.
        public long PerExampleBytes { get; init; }
    }

    public static int Run(string experiment, Settings settings)
    {
        precision = Precision.Parse(settings.Text("dtype", "float32"));
        var command = "dotnet run --project src/Lifting.Examples -c Release -- am " + string.Join(" ", new[] { experiment }.Concat(settings.Where(kv => kv.Key != experiment).Select(kv => $"{kv.Key}={kv.Value}")));
        return experiment switch
        {
            "lenet" => LeNet(settings, command),
            "mlp" => Mlp(settings, command),
            "binary" => Binary(settings, command),
            "variants" => Variants(settings, command),
            "admm" => Admm(settings, command),
            "speed" => Speed(settings, command),
            "tune" => Tune(settings, command),
            "limit" => Limit(settings, command),
            "run" => Single(settings),
            _ => throw new ArgumentException($"Unknown experiment '{experiment}' (known: lenet, mlp, binary, variants, admm, speed, tune, limit, run)."),
        };
    }

    // ---- shared ---------------------------------------------------------------------------------

    /// The floating-point type of weights, codes and data (`dtype=float32|float64`).
    private static torch.ScalarType precision = torch.ScalarType.Float32;

    private static int[] Seeds(Settings s) => s.Ints("seeds", "0,1,2");
    private static string F(double v, string format = "F4") => v.ToString(format, CultureInfo.InvariantCulture);

    /// The method's settings: its defaults, then the experiment's `extra`, then am.KEY=VALUE (AM
    /// methods) or adam.KEY=VALUE (backprop) from the command line.
    private static MethodSettings Settings(string method, IReadOnlyDictionary<string, string> s, params (string Key, object Value)[] extra)
    {
        var prefix = method == "backprop" ? "adam." : "am.";
        var settings = new MethodSettings(method);
        foreach (var (k, v) in extra) settings = settings.With(k, v);
        foreach (var (k, v) in s.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))) settings = settings.With(k[prefix.Length..], v);
        return settings;
    }

    private static string Describe(MethodSettings settings)
    {
        var m = Methods.Resolve(settings);
        return $"{m.Name}: " + string.Join(", ", m.Arguments.Values.Select(kv => $"{kv.Key}={kv.Value}"));
    }

    /// Trains one run; `earlyBatch` > 0 also evaluates the weights after that many mini-batches of
    /// the first epoch (the trainer updates the weights it is given in place).
    private static Outcome Train(NestedProgram program, DataSplit data, MethodSettings settings, int epochs, int batch, int seed, int earlyBatch = 0, string tag = "", bool diagnose = false)
    {
        var method = Methods.Resolve(settings);
        using var weights = program.Initialise(seed, dtype: precision);
        Evaluation? earlyValidation = null, earlyTest = null;
        var observer = Observers.Create(
            e => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"   {tag} epoch {e.Epoch,2} val {e.ValidationAccuracy:F4} test {e.TestAccuracy:F4} loss {e.TrainLoss:F4} {e.Seconds:F1}s{(e.Diagnostics.TryGetValue("mu", out var mu) ? $" mu {mu:G4}" : "")}") +
                (diagnose ? $" | weight norms {WeightNorms(weights.Tensors)}" : "")),
            (epoch, b, _) =>
            {
                if (epoch != 1 || b != earlyBatch) return;
                earlyValidation = Trainer.Evaluate(program, weights, data.Validation, precision);
                earlyTest = Trainer.Evaluate(program, weights, data.Test, precision);
                Console.WriteLine($"   {tag} after {b} mini-batches: val {F(earlyValidation.Accuracy)} test {F(earlyTest.Accuracy)}");
            });
        using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
            new TrainingOptions { Epochs = epochs, BatchSize = batch, Seed = seed, DType = precision }, observer, weights);
        var am = method.Solver as AlternatingMinimisationSolver;
        return new Outcome(result.Selected.TestAccuracy, result.Selected.ValidationAccuracy ?? double.NaN, result.SelectedEpoch, result.Final.TestAccuracy,
            result.SecondsPerEpoch, result.Epochs, earlyValidation, earlyTest, am?.CodePhaseSeconds ?? 0, am?.WeightPhaseSeconds ?? 0, result.StateBytes)
        { PerExampleBytes = result.PerExampleBytes };
    }

    /// The Frobenius norm of every weight tensor (diagnostic of `am run diagnose=true`).
    private static string WeightNorms(IReadOnlyList<torch.Tensor> weights)
    {
        using var _ = torch.no_grad();
        return string.Join(" ", weights.Select(w => w.norm().ToDouble().ToString("F2", CultureInfo.InvariantCulture)));
    }

    private static string MeanSd(IEnumerable<double> values, string format = "F4")
    {
        var (mean, sd) = ResultsTable.MeanSd(values.ToArray());
        return $"{F(mean, format)} ± {F(sd, format)}";
    }

    private static string Header(string command, string what, bool accuracies = true) =>
        $"<!-- produced by: {command} -->\n" +
        $"{what} Machine: {Environment.ProcessorCount} cores (CPU, shared with other jobs), {Threads.Count} LibTorch thread(s), {EngineInfo.Current(TorchSharp.torch.CPU).Cpu}." +
        (accuracies ? " Test accuracies are at the epoch with the best validation accuracy (validation: 10 % of the training set, fixed split) unless a column says otherwise." : "") + "\n\n";

    private static void Write(string file, string text)
    {
        var path = Path.Combine("docs", "results", file);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
        Console.WriteLine(text);
        Console.WriteLine($"wrote {path}");
    }

    private static string Settings(IEnumerable<MethodSettings> methods) =>
        "Settings (every parameter, defaults included):\n\n" + string.Join("\n", methods.Select(m => $"- {Describe(m)}")) + "\n";

    // ---- experiments ----------------------------------------------------------------------------

    /// Seed 004 appendix B: LeNet-5 on full Fashion-MNIST, batch 128, 10 epochs; AM-Adam within one
    /// point of Adam-backprop.
    private static int LeNet(Settings s, string command)
    {
        int epochs = s.Int("epochs", 10), batch = s.Int("batch", 128);
        using var data = DatasetCatalog.Load(s.Text("data", "fashion-mnist"));
        // net=SPEC: another network in --net syntax (e.g. LeNet-5 with batch normalisation).
        var program = s.ContainsKey("net")
            ? NetSpec.Build(s.Text("net", ""), data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy)
            : Zoo.LeNet5(data.Train.ExampleShape, data.Train.ClassCount);
        var methods = new[] { Settings("backprop", s, ("lr", 2e-3)), Settings("am-adam", s) };
        var runs = methods.Select(_ => new List<Outcome>()).ToArray();
        foreach (var seed in Seeds(s))
            for (int m = 0; m < methods.Length; m++)
            {
                Console.WriteLine($"== seed {seed} {Describe(methods[m])}");
                runs[m].Add(Train(program, data, methods[m], epochs, batch, seed, tag: methods[m].Method));
            }
        var md = new StringBuilder(Header(command, $"Full Fashion-MNIST ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), {(s.ContainsKey("net") ? $"network {s.Text("net", "")} ({program.Segments.Count} segments)" : $"LeNet-5 ({program.Segments.Count} blocks: codes after conv1, conv2, dense120, dense84)")}, batch {batch}, {epochs} epochs, seeds {string.Join(", ", Seeds(s))}; the two methods run one after the other for each seed."));
        md.AppendLine("| method | test acc., mean ± sd | per seed: test (epoch, validation) | final test per seed | s/epoch (median) | × backprop |");
        md.AppendLine("|---|---|---|---|---|---|");
        var reference = runs[0].Select(r => r.SecondsPerEpoch).ToArray();
        for (int m = 0; m < methods.Length; m++)
        {
            var ratios = runs[m].Select((r, i) => r.SecondsPerEpoch / reference[i]).OrderBy(x => x).ToArray();
            md.AppendLine($"| {methods[m].Method} | {MeanSd(runs[m].Select(r => r.SelectedTest))} | {string.Join(" / ", runs[m].Select(r => $"{F(r.SelectedTest)} ({r.SelectedEpoch}, {F(r.SelectedValidation)})"))} | " +
                $"{string.Join(" / ", runs[m].Select(r => F(r.FinalTest)))} | {F(Median(runs[m].Select(r => r.SecondsPerEpoch)), "F1")} | {F(ratios[ratios.Length / 2], "F2")} |");
        }
        var gaps = runs[0].Zip(runs[1]).Select(p => p.First.SelectedTest - p.Second.SelectedTest).ToArray();
        md.AppendLine();
        md.AppendLine($"Gap Adam − AM-Adam per seed: {string.Join(", ", gaps.Select(g => F(100 * g, "F2")))} points (mean {F(100 * gaps.Average(), "F2")}; target ≤ 1 point).");
        md.AppendLine();
        md.Append(Settings(methods));
        Write(s.Text("out", "am-lenet5-fashion.md"), md.ToString());
        return 0;
    }

    /// Seed 004 §4 (Fig. 2) on Fashion-MNIST without BatchNorm: after 50 mini-batches and after 10
    /// epochs, AM-Adam against Adam on 784-100-100-10 and 784-500-500-10.
    private static int Mlp(Settings s, string command)
    {
        int epochs = s.Int("epochs", 10), batch = s.Int("batch", 200), early = s.Int("early", 50);
        using var data = DatasetCatalog.Load(s.Text("data", "fashion-mnist"));
        // Networks separated by ';' when a layer list (with commas) is among them.
        var text = s.Text("nets", "784-100-100-10,784-500-500-10");
        var nets = text.Split(text.Contains(';') ? ';' : ',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var batchNorm = nets.Any(n => n.Contains("batchnorm"));
        var md = new StringBuilder(Header(command, $"Fashion-MNIST ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), ReLU MLPs {(batchNorm ? "as given (batch normalisation where the network says so)" : "without BatchNorm")}, batch {batch}, {epochs} epochs, seeds {string.Join(", ", Seeds(s))}; Adam and AM-Adam run one after the other for each seed. \"After {early} mini-batches\" is measured at that point of the first epoch (no selection)."));
        md.AppendLine($"| network | method | test acc. after {early} mini-batches | its validation acc. | test acc. after {epochs} epochs (selected) | per seed (epoch) | final test | s/epoch (median) |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        var summary = new StringBuilder();
        var all = new List<MethodSettings>();
        foreach (var net in nets)
        {
            var program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
            var methods = new[] { Settings("backprop", s, ("lr", 1e-3)), Settings("am-adam", s) };
            all.AddRange(methods);
            var runs = methods.Select(_ => new List<Outcome>()).ToArray();
            foreach (var seed in Seeds(s))
                for (int m = 0; m < methods.Length; m++)
                {
                    Console.WriteLine($"== {net} seed {seed} {Describe(methods[m])}");
                    runs[m].Add(Train(program, data, methods[m], epochs, batch, seed, early, $"{net} {methods[m].Method}"));
                }
            for (int m = 0; m < methods.Length; m++)
                md.AppendLine($"| {net} | {methods[m].Method} | {MeanSd(runs[m].Select(r => r.EarlyTest!.Accuracy))} | {MeanSd(runs[m].Select(r => r.EarlyValidation!.Accuracy))} | " +
                    $"{MeanSd(runs[m].Select(r => r.SelectedTest))} | {string.Join(" / ", runs[m].Select(r => $"{F(r.SelectedTest)} ({r.SelectedEpoch})"))} | " +
                    $"{MeanSd(runs[m].Select(r => r.FinalTest))} | {F(Median(runs[m].Select(r => r.SecondsPerEpoch)), "F1")} |");
            double Ratio(Func<Outcome, double> pick) => runs[1].Select(pick).Average() / runs[0].Select(pick).Average();
            summary.AppendLine($"- {net}: AM-Adam / Adam = {F(Ratio(r => r.EarlyTest!.Accuracy), "F3")} after {early} mini-batches, {F(Ratio(r => r.SelectedTest), "F3")} after {epochs} epochs (target ≥ 0.98 both)" +
                (net == "784-100-100-10" ? $"; AM-Adam {F(runs[1].Average(r => r.SelectedTest))} against the authors' code without BatchNorm, 0.851 (issue 9)."
                : net.Contains("batchnorm") && net.Contains("dense:100,") ? $"; AM-Adam {F(runs[1].Average(r => r.SelectedTest))} against the authors' code with BatchNorm on 784-100-100-10, 0.884 (issue 24)." : "."));
        }
        md.AppendLine();
        md.Append(summary);
        md.AppendLine();
        md.Append(Settings(all.Take(2)));
        Write(s.Text("out", $"am-mlp-fashion-{string.Join("+", nets)}.md"), md.ToString());
        return 0;
    }

    /// Seed 004 §4, binary nets: 784-500-500-10 with a sign first hidden layer and a tanh second on
    /// MNIST-10k, against backprop through the straight-through estimator (Lee et al. 2015's baseline).
    private static int Binary(Settings s, string command)
    {
        int epochs = s.Int("epochs", 20), batch = s.Int("batch", 200);
        using var data = DatasetCatalog.Load(s.Text("data", "mnist-10k"));
        NestedProgram Net(string first) => NetSpec.Build($"dense:500, {first}, dense:500, tanh, dense:10", data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
        var rows = new (string Label, NestedProgram Program, MethodSettings Method)[]
        {
            ("AM-Adam (squared distance to the codes)", Net("sign"), Settings("am-adam", s)),
            ("AM-Adam (hinge to the codes' signs)", Net("sign"), Settings("am-adam", s, ("step-blocks", "hinge"))),
            ("backprop, straight-through sign (STE)", Net("sign-ste"), Settings("backprop", s, ("lr", 1e-3))),
            ("backprop through sign (no STE: the first layer gets no gradient)", Net("sign"), Settings("backprop", s, ("lr", 1e-3))),
        };
        var runs = rows.Select(_ => new List<Outcome>()).ToArray();
        foreach (var seed in Seeds(s))
            for (int m = 0; m < rows.Length; m++)
            {
                Console.WriteLine($"== seed {seed} {rows[m].Label}: {Describe(rows[m].Method)}");
                runs[m].Add(Train(rows[m].Program, data, rows[m].Method, epochs, batch, seed, tag: rows[m].Method.Method));
            }
        var md = new StringBuilder(Header(command, $"MNIST-10k ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), 784-500-500-10 with sign on the first hidden layer and tanh on the second (no dropout), batch {batch}, {epochs} epochs, seeds {string.Join(", ", Seeds(s))}."));
        md.AppendLine("| method | test error at the selected epoch, mean ± sd | per seed (epoch) | first epoch with test error ≤ 0.2, per seed | test error after epoch 1, 5, 20 (mean) | s/epoch (median) |");
        md.AppendLine("|---|---|---|---|---|---|");
        for (int m = 0; m < rows.Length; m++)
        {
            string At(int e) => e <= epochs ? F(runs[m].Average(r => 1 - r.Epochs[e - 1].TestAccuracy)) : "–";
            md.AppendLine($"| {rows[m].Label} | {MeanSd(runs[m].Select(r => 1 - r.SelectedTest))} | {string.Join(" / ", runs[m].Select(r => $"{F(1 - r.SelectedTest)} ({r.SelectedEpoch})"))} | " +
                $"{string.Join(" / ", runs[m].Select(r => r.Epochs.FirstOrDefault(e => 1 - e.TestAccuracy <= 0.2)?.Epoch.ToString(CultureInfo.InvariantCulture) ?? "never"))} | " +
                $"{At(1)}, {At(5)}, {At(epochs)} | {F(Median(runs[m].Select(r => r.SecondsPerEpoch)), "F1")} |");
        }
        md.AppendLine();
        md.Append(Settings(rows.Select(r => r.Method)));
        Write(s.Text("out", "am-binary-mnist10k.md"), md.ToString());
        return 0;
    }

    /// AM-mem and the offline variants next to AM-Adam and Adam (seed 004 §4: AM-mem 0.91 / 0.96 on
    /// MNIST with 100 / 500 units after 50 epochs; offline far below online).
    private static int Variants(Settings s, string command)
    {
        int epochs = s.Int("epochs", 50), batch = s.Int("batch", 200);
        using var data = DatasetCatalog.Load(s.Text("data", "mnist-10k"));
        var nets = s.Text("nets", "784-100-100-10,784-500-500-10").Split(',');
        var names = s.Text("methods", "backprop,am-adam,am-mem,am-adam-off,am-mem-off").Split(',');
        var md = new StringBuilder(Header(command, $"MNIST-10k ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), ReLU MLPs, batch {batch} (the offline variants take one iteration per epoch over the whole training set; the batch is only their chunk size), {epochs} epochs, seeds {string.Join(", ", Seeds(s))}."));
        md.AppendLine("| network | method | test acc., mean ± sd | per seed (epoch) | final test | auxiliary state kept | s/epoch (median) |");
        md.AppendLine("|---|---|---|---|---|---|---|");
        var described = new List<MethodSettings>();
        foreach (var net in nets)
        {
            var program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
            var methods = names.Select(n => n == "backprop" ? Settings(n, s, ("lr", 1e-3)) : Settings(n, s)).ToArray();
            if (described.Count == 0) described.AddRange(methods);
            var runs = methods.Select(_ => new List<Outcome>()).ToArray();
            foreach (var seed in Seeds(s))
                for (int m = 0; m < methods.Length; m++)
                {
                    Console.WriteLine($"== {net} seed {seed} {Describe(methods[m])}");
                    runs[m].Add(Train(program, data, methods[m], epochs, batch, seed, tag: $"{net} {methods[m].Method}"));
                }
            for (int m = 0; m < methods.Length; m++)
                md.AppendLine($"| {net} | {methods[m].Method} | {MeanSd(runs[m].Select(r => r.SelectedTest))} | {string.Join(" / ", runs[m].Select(r => $"{F(r.SelectedTest)} ({r.SelectedEpoch})"))} | " +
                    $"{MeanSd(runs[m].Select(r => r.FinalTest))} | {Bytes(runs[m][0].StateBytes)} | {F(Median(runs[m].Select(r => r.SecondsPerEpoch)), "F1")} |");
        }
        md.AppendLine();
        md.Append(Settings(described));
        Write(s.Text("out", "am-variants-mnist10k.md"), md.ToString());
        return 0;
    }

    /// Seed 004 §4's offline baseline: Taylor et al.'s ADMM beside Adam (backprop), AM-Adam and
    /// AM-Adam-off on one network, every method on every seed in one process; the accuracy per epoch
    /// (mean over the seeds) as a PNG beside the table, and ADMM's objective and residuals per epoch.
    private static int Admm(Settings s, string command)
    {
        int epochs = s.Int("epochs", 50), batch = s.Int("batch", 200);
        var dataName = s.Text("data", "fashion-mnist");
        var net = s.Text("net", "784-100-100-10");
        using var data = DatasetCatalog.Load(dataName);
        var program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
        // A method may carry its own settings: NAME:KEY=VALUE;KEY=VALUE (e.g. admm:warm-start=0;beta=1).
        var names = s.Text("methods", "backprop,am-adam,am-adam-off,admm,admm:warm-start=0;beta=1").Split(',');
        var methods = names.Select(n =>
        {
            var parts = n.Split(':', 2);
            var extra = parts.Length < 2 ? Array.Empty<(string, object)>()
                : parts[1].Split(';').Select(kv => kv.Split('=', 2)).Select(kv => (kv[0], (object)kv[1])).ToArray();
            return parts[0] == "backprop" ? Settings(parts[0], s, extra.Prepend(("lr", (object)1e-3)).ToArray()) : Settings(parts[0], s, extra);
        }).ToArray();
        var runs = methods.Select(_ => new List<Outcome>()).ToArray();
        var file = s.Text("out", $"am-admm-{(dataName == "fashion-mnist" ? "fashion" : dataName)}-{net}.md");
        var stem = Path.GetFileNameWithoutExtension(file);
        // The document is rewritten after every seed, so a run stopped early leaves the seeds it finished.
        foreach (var seed in Seeds(s))
        {
            for (int m = 0; m < methods.Length; m++)
            {
                Console.WriteLine($"== {net} seed {seed} {names[m]}: {Describe(methods[m])}");
                runs[m].Add(Train(program, data, methods[m], epochs, batch, seed, tag: $"{net} {names[m]}"));
            }
            Document(runs[0].Count);
        }
        return 0;

        void Document(int seedsDone)
        {
            var seeds = Seeds(s).Take(seedsDone).ToArray();
            var md = new StringBuilder(Header(command, $"{dataName} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), {net} ReLU, batch {batch} (AM-Adam-off and ADMM take one iteration per epoch over the whole training set; the batch is only their chunk size), {epochs} epochs, seeds {string.Join(", ", seeds)}{(seedsDone < Seeds(s).Length ? $" (of {string.Join(", ", Seeds(s))}: written after each seed)" : "")}; the methods run one after the other for each seed."));
            md.AppendLine("| method | test acc., mean ± sd | per seed: test (epoch, validation) | final test, mean ± sd | validation after epoch 1 / 5 / 10 / 20 (mean) | per-example state | s/epoch (median) |");
            md.AppendLine("|---|---|---|---|---|---|---|");
            for (int m = 0; m < methods.Length; m++)
            {
                string At(int e) => e <= epochs ? F(runs[m].Average(r => r.Epochs[e - 1].ValidationAccuracy ?? double.NaN)) : "–";
                md.AppendLine($"| {names[m]} | {MeanSd(runs[m].Select(r => r.SelectedTest))} | {string.Join(" / ", runs[m].Select(r => $"{F(r.SelectedTest)} ({r.SelectedEpoch}, {F(r.SelectedValidation)})"))} | " +
                    $"{MeanSd(runs[m].Select(r => r.FinalTest))} | {At(1)} / {At(5)} / {At(10)} / {At(20)} | " +
                    $"{(runs[m][0].PerExampleBytes > 0 ? $"{runs[m][0].PerExampleBytes} B/example ({Bytes(runs[m][0].PerExampleBytes * data.Train.Count)})" : "–")} | {F(Median(runs[m].Select(r => r.SecondsPerEpoch)), "F2")} |");
            }
            // Test accuracy per epoch, mean over the seeds.
            var curves = new List<Lifting.Host.Curve>();
            for (int m = 0; m < methods.Length; m++)
            {
                var xs = Enumerable.Range(1, epochs).Select(e => (double)e).ToArray();
                curves.Add(new Lifting.Host.Curve(names[m], xs, xs.Select(e => runs[m].Average(r => r.Epochs[(int)e - 1].TestAccuracy)).ToArray()) { Style = m });
            }
            // Beside the table, wherever `out` puts it (an absolute out replaces docs/results).
            var png = Path.ChangeExtension(Path.Combine("docs", "results", file), ".png");
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(png))!);
            Lifting.Host.Plots.Save(png, $"{dataName} {net}: test accuracy per epoch (mean of {seedsDone} seed{(seedsDone == 1 ? "" : "s")})", "test accuracy", curves, log: false);
            md.AppendLine();
            md.AppendLine($"![test accuracy per epoch]({stem}.png)");
            // ADMM's own record per epoch (first seed), for every ADMM row.
            for (int m = 0; m < methods.Length; m++)
            {
                if (methods[m].Method != "admm") continue;
                var first = runs[m][0];
                var keys = first.Epochs[0].Diagnostics.Keys.ToArray();
                md.AppendLine();
                md.AppendLine($"{names[m]}, seed {seeds[0]}, per epoch: validation and test accuracy, the training loss of the forward pass, and its objective's terms after the epoch's iteration (means per example: objective, ℓ(z_L, y), ‖z_L − m_L‖², ‖λ‖², ‖z_l − m_l‖², ‖a_l − h(z_l)‖²).");
                md.AppendLine();
                md.AppendLine($"| epoch | val | test | train loss | {string.Join(" | ", keys)} |");
                md.AppendLine($"|---|---|---|---|{string.Concat(keys.Select(_ => "---|"))}");
                foreach (var e in first.Epochs.Where(e => e.Epoch <= 10 || e.Epoch % 5 == 0))
                    md.AppendLine($"| {e.Epoch} | {F(e.ValidationAccuracy ?? double.NaN)} | {F(e.TestAccuracy)} | {F(e.TrainLoss)} | {string.Join(" | ", keys.Select(k => e.Diagnostics.TryGetValue(k, out var v) ? v.ToString("G4", CultureInfo.InvariantCulture) : "–"))} |");
            }
            md.AppendLine();
            md.Append(Settings(methods));
            Write(file, md.ToString());
        }
    }

    /// Seconds per epoch of backprop and AM-Adam (sequential and layer-parallel weight updates),
    /// interleaved: each round trains one epoch of each, so a drift of the machine's speed hits all
    /// three alike; the ratio is taken within each round. The weight phase is timed on its own.
    private static int Speed(Settings s, string command)
    {
        int rounds = s.Int("rounds", 3), batch = s.Int("batch", 200);
        var net = s.Text("net", "784-500-500-10");
        using var data = DatasetCatalog.Load(s.Text("data", "fashion-mnist"));
        var program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
        var methods = new[] { Settings("backprop", s, ("lr", 1e-3)), Settings("am-adam", s, ("parallel", false)), Settings("am-adam", s, ("parallel", true)) };
        var labels = new[] { "backprop (Adam)", "AM-Adam, weights layer by layer", "AM-Adam, weights of the layers in parallel" };
        var seconds = methods.Select(_ => new List<double>()).ToArray();
        var codePhase = methods.Select(_ => new List<double>()).ToArray();
        var weightPhase = methods.Select(_ => new List<double>()).ToArray();
        for (int r = 0; r < rounds; r++)
            for (int m = 0; m < methods.Length; m++)
            {
                Console.WriteLine($"== round {r + 1} {labels[m]}");
                var o = Train(program, data, methods[m], 1, batch, r, tag: labels[m]);
                seconds[m].Add(o.SecondsPerEpoch);
                codePhase[m].Add(o.CodeSeconds);
                weightPhase[m].Add(o.WeightSeconds);
            }
        var md = new StringBuilder(Header(command, $"Fashion-MNIST ({data.Train.Count} training examples per epoch), {net} ReLU, batch {batch}, {rounds} interleaved rounds of one epoch per method (seed = round)."));
        md.AppendLine("| method | s/epoch (median, min–max) | × backprop, within a round (median, min–max) | code phase s/epoch (median) | weight phase s/epoch (median, min–max) |");
        md.AppendLine("|---|---|---|---|---|");
        for (int m = 0; m < methods.Length; m++)
        {
            var ratios = seconds[m].Zip(seconds[0], (a, b) => a / b).ToArray();
            md.AppendLine($"| {labels[m]} | {F(Median(seconds[m]), "F2")} ({F(seconds[m].Min(), "F2")}–{F(seconds[m].Max(), "F2")}) | " +
                $"{F(Median(ratios), "F2")} ({F(ratios.Min(), "F2")}–{F(ratios.Max(), "F2")}) | " +
                (m == 0 ? "– | – |" : $"{F(Median(codePhase[m]), "F2")} | {F(Median(weightPhase[m]), "F2")} ({F(weightPhase[m].Min(), "F2")}–{F(weightPhase[m].Max(), "F2")}) |"));
        }
        var parallelRatios = weightPhase[2].Zip(weightPhase[1], (p, q) => p / q).ToArray();
        md.AppendLine();
        md.AppendLine($"Weight phase, parallel / sequential within a round: {string.Join(", ", parallelRatios.Select(x => F(x, "F2")))} (median {F(Median(parallelRatios), "F2")}).");
        md.AppendLine();
        md.Append(Settings(methods));
        Write(s.Text("out", $"am-speed-threads{Threads.Count}.md"), md.ToString());
        return 0;
    }

    /// The grid the AM-Adam defaults were chosen from, on validation accuracy only. `seeds=` runs
    /// every setting from several initialisations; `rank=final` orders by the mean validation accuracy
    /// after the last epoch (seed 004 appendix B's criterion), `rank=best` (default) by the mean of each
    /// run's best epoch.
    private static int Tune(Settings s, string command)
    {
        int epochs = s.Int("epochs", 3), batch = s.Int("batch", 200);
        var seeds = s.ContainsKey("seeds") ? Seeds(s) : new[] { s.Int("seed", 0) };
        var rank = s.Text("rank", "best");
        if (rank is not ("best" or "final")) throw new ArgumentException($"Unknown rank '{rank}' (known: best, final).");
        var net = s.Text("net", "784-100-100-10");
        using var data = DatasetCatalog.Load(s.Text("data", "fashion-mnist"));
        var program = NetSpec.Build(net, data.Train.ExampleShape, data.Train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
        var method = s.Text("method", "am-adam");
        // grid=KEY:V1|V2;KEY:V1|V2 — every combination.
        var axes = s.Text("grid", "lr:0.001|0.002|0.005;lr-codes:0.005|0.02|0.1;code-steps:1|3")
            .Split(';').Select(a => a.Split(':')).Select(a => (Key: a[0], Values: a[1].Split('|'))).ToArray();
        IEnumerable<(string Key, string Value)[]> Combinations(int i) => i == axes.Length
            ? new[] { Array.Empty<(string, string)>() }
            : axes[i].Values.SelectMany(v => Combinations(i + 1).Select(rest => new[] { (axes[i].Key, v) }.Concat(rest).ToArray()));
        var rows = new List<(string Setting, Outcome[] Runs)>();
        foreach (var combination in Combinations(0))
        {
            var settings = Settings(method, s, combination.Select(c => (c.Key, (object)c.Value)).ToArray());
            var label = string.Join(", ", combination.Select(c => $"{c.Key}={c.Value}"));
            var runs = new List<Outcome>();
            foreach (var seed in seeds)
            {
                Console.WriteLine($"== {label}, seed {seed}");
                try { runs.Add(Train(program, data, settings, epochs, batch, seed, tag: label)); }
                catch (TrainingDivergedException e) { Console.WriteLine($"   {e.Message}"); }
            }
            if (runs.Count == seeds.Length) rows.Add((label, runs.ToArray()));
        }
        static double FinalValidation(Outcome o) => o.Epochs[^1].Validation?.Accuracy ?? double.NaN;
        double Key((string, Outcome[] Runs) r) => r.Runs.Average(o => rank == "final" ? FinalValidation(o) : o.SelectedValidation);
        var seedText = seeds.Length == 1 ? $"seed {seeds[0]}" : $"seeds {string.Join(", ", seeds)} (means over seeds)";
        var md = new StringBuilder(Header(command, $"Validation accuracy of {method} over a grid, {s.Text("data", "fashion-mnist")}, {net}, batch {batch}, {epochs} epochs, {seedText}; ordered by the {(rank == "final" ? "validation accuracy after the last epoch (seed 004 appendix B's criterion)" : "best epoch's validation accuracy")}. Only validation was used to choose; the test column is shown for completeness, not selection."));
        if (seeds.Length == 1)
        {
            md.AppendLine("| setting | best validation acc. (epoch) | final validation acc. | test acc. at the best epoch |");
            md.AppendLine("|---|---|---|---|");
            foreach (var (setting, runs) in rows.OrderByDescending(Key))
                md.AppendLine($"| {setting} | {F(runs[0].SelectedValidation)} ({runs[0].SelectedEpoch}) | {F(FinalValidation(runs[0]))} | {F(runs[0].SelectedTest)} |");
        }
        else
        {
            md.AppendLine("| setting | final validation acc. | best validation acc. | per seed: best validation (epoch) / final validation | test acc. at the best epoch |");
            md.AppendLine("|---|---|---|---|---|");
            foreach (var (setting, runs) in rows.OrderByDescending(Key))
                md.AppendLine($"| {setting} | {MeanSd(runs.Select(FinalValidation))} | {MeanSd(runs.Select(o => o.SelectedValidation))} | " +
                    string.Join(" · ", runs.Select(o => $"{F(o.SelectedValidation)} ({o.SelectedEpoch}) / {F(FinalValidation(o))}")) + $" | {MeanSd(runs.Select(o => o.SelectedTest))} |");
        }
        md.AppendLine();
        md.AppendLine($"Other parameters: {Describe(Settings(method, s))}.");
        Write(s.Text("out", $"am-tuning-{method}-{net}.md"), md.ToString());
        return 0;
    }

    /// After one top-down code pass at μ: the largest code displacement from the forward values and,
    /// per block, the cosine between the AM weight direction and the backprop gradient (float64,
    /// one batch of 5 examples, 6-8-7-3 MLPs).
    private static int Limit(Settings s, string command)
    {
        var mus = new[] { 0.01, 1.0, 100.0, 1e4 };
        var md = new StringBuilder(Header(command, "The μ → ∞ limit on random 6-8-7-3 MLPs (float64, a batch of 5, seeds 1–3): after one top-down code pass, the largest |c − c⁰| and, for blocks 1, 2, 3, the cosine between the AM weight direction and the back-propagation gradient.", accuracies: false));
        md.AppendLine("| activation | code step, steps | seed | " + string.Join(" | ", mus.Select(m => $"μ = {m:G3}: max abs(c − c⁰); cosines")) + " |");
        md.AppendLine("|---|---|---|" + string.Concat(mus.Select(_ => "---|")));
        foreach (var activation in new[] { Activations.Tanh, Activations.ReLU })
            foreach (var (step, steps) in new[] { (0.05, 1), (0.3, 1), (0.05, 5), (0.3, 5) })
                foreach (var seed in new[] { 1, 2, 3 })
                {
                    var cells = mus.Select(mu =>
                    {
                        var (moved, cosines) = AfterCodes(activation, step, steps, seed, mu);
                        return $"{F(moved, "E1")}; {string.Join(" ", cosines.Select(c => F(c)))}";
                    });
                    md.AppendLine($"| {activation.Name} | {step}, {steps} | {seed} | {string.Join(" | ", cells)} |");
                }
        Write(s.Text("out", "am-limit.md"), md.ToString());
        return 0;
    }

    private static (double Moved, double[] Cosines) AfterCodes(IActivation activation, double step, int steps, int seed, double mu)
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        var f64 = TorchSharp.torch.ScalarType.Float64;
        var program = Net.Mlp(new long[] { 6 }, new long[] { 6, 8, 7, 3 }, activation, Losses.CrossEntropy);
        using var generator = new TorchSharp.torch.Generator((ulong)seed);
        var x = TorchSharp.torch.randn(new long[] { 5, 6 }, dtype: f64, generator: generator);
        var y = TorchSharp.torch.randint(3, new long[] { 5 }, generator: generator);
        using var weights = program.Initialise(seed, TorchSharp.torch.CPU, f64);
        TorchSharp.torch.Tensor[] reference;
        using (TorchSharp.torch.enable_grad())
        {
            var loss = program.Loss.PerExample(program.Forward(x, weights.Tensors), y).mean();
            reference = TorchSharp.torch.autograd.grad(new[] { loss }, weights.Tensors.ToArray()).ToArray();
        }
        var formulation = new Lifting.Formulations.OnlineAlternatingMinimisation(new Lifting.Formulations.OnlineAlternatingMinimisationOptions { Mu = new Lifting.Formulations.MuSchedule(mu) });
        var rules = new Func<string, IStepRule>(p => p == "codes" ? StepRules.Momentum(step, 0.9, true) : StepRules.Constant(0.1));
        var context = new Lifting.Formulations.LiftContext(program, new Dataset("limit", x, y, 3), TorchSharp.torch.CPU, f64, 0, rules, 0);
        using var problem = formulation.Lift(context, weights);
        using var batchGame = problem.Batch(new MiniBatch(TorchSharp.torch.arange(5L), x, y));
        var game = (IAlternatingMinimisationGame)batchGame;
        var codes = batchGame.Players[1].Variables;
        var forward = codes.Select(c => c.detach().clone()).ToArray();
        new AlternatingMinimisationSolver(new AlternatingMinimisationSolverOptions { CodeSteps = steps }).UpdateCodes(game);
        var moved = codes.Zip(forward).Max(p => (p.First - p.Second).abs().max().ToDouble());
        var cosines = game.WeightProblems().Select((problemOfBlock, l) =>
        {
            var a = TorchSharp.torch.cat(problemOfBlock.Direction().Select(t => t.flatten()).ToArray());
            var b = TorchSharp.torch.cat(program.BlockWeights(reference, l).Select(t => t.flatten()).ToArray());
            return (a.dot(b) / (a.norm() * b.norm())).ToDouble();
        }).ToArray();
        return (moved, cosines);
    }

    private static int Single(Settings s)
    {
        using var data = DatasetCatalog.Load(s.Text("data", "mnist-10k"));
        var program = NetSpec.Build(s.Text("net", "784-100-100-10"), data.Train.ExampleShape, data.Train.ClassCount, Activations.ByName(s.Text("activation", "relu")), Losses.CrossEntropy);
        var run = new HashSet<string> { "data", "net", "activation", "epochs", "batch", "seed", "threads", "method", "early", "run", "diagnose", "dtype" };
        var settings = new MethodSettings(s.Text("method", "am-adam"))
        {
            Values = s.Where(kv => !run.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value),
        };
        Console.WriteLine(Describe(settings));
        var watch = Stopwatch.StartNew();
        var o = Train(program, data, settings, s.Int("epochs", 5), s.Int("batch", 200), s.Int("seed", 0), s.Int("early", 0), settings.Method, s.Text("diagnose", "false") == "true");
        Console.WriteLine($"RESULT selected epoch {o.SelectedEpoch} validation {F(o.SelectedValidation)} test {F(o.SelectedTest)}; final test {F(o.FinalTest)}; " +
            $"s/epoch {F(o.SecondsPerEpoch, "F2")} (code phase {F(o.CodeSeconds, "F1")} s, weight phase {F(o.WeightSeconds, "F1")} s in all); {F(watch.Elapsed.TotalSeconds, "F0")} s");
        return 0;
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        return sorted.Length == 0 ? double.NaN : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : 0.5 * (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]);
    }

    private static string Bytes(long bytes) => bytes == 0 ? "0 B" : bytes < 1 << 20 ? $"{F(bytes / 1024.0, "F0")} KiB" : $"{F(bytes / 1048576.0, "F1")} MiB";
}
