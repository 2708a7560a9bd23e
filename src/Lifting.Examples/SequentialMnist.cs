using System.Globalization;
using System.Text;
using System.Text.Json;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;
using ScottPlot;

namespace Lifting.Examples;

/// Seed 004 appendix C: an Elman RNN h_t = tanh(W x_t + U h_{t−1} + b) over MNIST-10k images read
/// pixel by pixel (784 steps) or row by row (28 steps), a ReLU on the last state and a linear
/// read-out, batch 1024; SGD, Adam and AM-Adam (seed 004's best settings: weights' step 0.005, μ
/// from 0.01, μ-max 1, 5 code and 5 weight iterations per mini-batch), and any other method; the
/// RNN lifted at every step, at every 28th step or only at the end. One cell per (steps, hidden,
/// method, cuts, seed), resumable from a JSON-lines state file:
///
///   dotnet run --project src/Lifting.Examples -c Release -- rnn seqmnist KEY=VALUE …
///   data=mnist-10k values=1 hidden=15,50 epochs=10 batch=1024 seeds=0,1,2 cuts=1,28,0
///   methods=sgd,adam,am-adam state=runs/rnn-seqmnist.jsonl out=docs/results/rnn-seqmnist.md
///   train=false   (no training: the table and plot of every cell already in the state file)
///
/// `values` is the count of pixels per step (1: 784 steps; 28: a row per step); a cut value c lifts
/// every c-th step (0: only the output). `sgd` is backprop with a constant step (seed 004 gives SGD
/// its learning rate decay 0.9 per epoch; here constant), `adam` backprop with Adam; any catalog
/// method, with parameters as NAME:P=V;…, may be added.
public static class SequentialMnist
{
    public sealed record Cell(int Values, int Hidden, string Method, int Cuts, int Seed, double[] TestPerEpoch, double[] ValidationPerEpoch,
        double Selected, int SelectedEpoch, double SecondsPerEpoch, string? Failure);

    /// The methods by their names in this experiment.
    public static MethodSettings Method(string name) => name switch
    {
        "sgd" => MethodSettings.Parse("backprop:optimizer=constant;lr=0.05"),
        "adam" => MethodSettings.Parse("backprop:lr=0.005"),
        // Seed 004 appendix C's best: lr 0.005, μ 0.01 (+0.01 per batch, ×1.1 per epoch, ≤ 1), 5 + 5 iterations.
        "am-adam" => MethodSettings.Parse("am-adam:lr=0.005;mu=0.01;mu-increment=0.01;mu-multiplier=1.1;mu-max=1;code-steps=5;weight-steps=5"),
        _ => MethodSettings.Parse(name),
    };

    public static NestedProgram Network(long[] inputShape, int classes, int hidden, int cuts, int values) =>
        Net.Input(inputShape).Elman(hidden, cutEvery: cuts, valuesPerStep: values).ReLU().Dense(classes).CrossEntropy();

    public static int Run(string experiment, Settings s, string[] args)
    {
        if (experiment != "seqmnist") throw new ArgumentException($"Unknown rnn experiment '{experiment}' (known: seqmnist).");
        var command = "dotnet run --project src/Lifting.Examples -c Release -- " + string.Join(" ", args);
        int epochs = s.Int("epochs", 10), batch = s.Int("batch", 1024), values = s.Int("values", 1);
        var hidden = s.Ints("hidden", "15,50");
        var seeds = s.Ints("seeds", "0,1,2");
        var cutsList = s.Ints("cuts", "1");
        var methods = s.Text("methods", "sgd,adam,am-adam").Split(',', StringSplitOptions.RemoveEmptyEntries);
        var statePath = s.Text("state", $"runs/rnn-seqmnist-{values}.jsonl");
        var output = s.Text("out", $"docs/results/rnn-seqmnist-{(values == 1 ? "pixels" : $"{values}-values")}.md");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(statePath))!);
        var done = new Dictionary<string, Cell>();
        if (File.Exists(statePath))
            foreach (var line in File.ReadLines(statePath).Where(l => l.Trim().Length > 0))
            {
                var c = JsonSerializer.Deserialize<Cell>(line)!;
                done[Key(c.Values, c.Hidden, c.Method, c.Cuts, c.Seed)] = c;
            }
        using var data = DatasetCatalog.Load(s.Text("data", "mnist-10k"));
        if (s.Text("train", "true") == "false")
        {
            // Only the table and the plot of every cell in the state file (several commands that share
            // one state file end in one table).
            Write(output, command, data, done.Values.Where(c => c.Values == values).ToList(), epochs, batch);
            return 0;
        }
        foreach (var seed in seeds)
            foreach (var h in hidden)
                foreach (var method in methods)
                    foreach (var cuts in IsLifted(method) ? cutsList : new[] { 0 })
                    {
                        var key = Key(values, h, method, cuts, seed);
                        if (done.ContainsKey(key)) continue;
                        Console.WriteLine($"== {key}");
                        var program = Network(data.Train.ExampleShape, data.Train.ClassCount, h, cuts, values);
                        var test = new List<double>();
                        var validation = new List<double>();
                        Cell cell;
                        try
                        {
                            var observer = Observers.OnEpoch(m =>
                            {
                                test.Add(m.Test.Accuracy);
                                validation.Add(m.Validation?.Accuracy ?? double.NaN);
                                Console.WriteLine($"   epoch {m.Epoch}: test {m.Test.Accuracy:F4}, validation {m.Validation?.Accuracy:F4}, {m.Seconds:F1} s");
                            });
                            using var result = Trainer.Train(program, data, Methods.Resolve(Method(method)),
                                new TrainingOptions { Epochs = epochs, BatchSize = batch, Seed = seed, MaxLossRatio = 100 }, observer);
                            cell = new Cell(values, h, method, cuts, seed, test.ToArray(), validation.ToArray(), result.Selected.TestAccuracy, result.SelectedEpoch, result.SecondsPerEpoch, null);
                        }
                        catch (TrainingDivergedException e)
                        {
                            cell = new Cell(values, h, method, cuts, seed, test.ToArray(), validation.ToArray(), double.NaN, 0, double.NaN, "diverged: " + e.Message.Split('\n')[0]);
                        }
                        done[key] = cell;
                        File.AppendAllText(statePath, JsonSerializer.Serialize(cell) + "\n");
                        Write(output, command, data, done.Values.Where(c => c.Values == values).ToList(), epochs, batch);
                    }
        Write(output, command, data, done.Values.Where(c => c.Values == values).ToList(), epochs, batch);
        return 0;
    }

    private static bool IsLifted(string method) => method is not ("sgd" or "adam") && Method(method).Method != "backprop";

    private static string Key(int values, int hidden, string method, int cuts, int seed) => $"{values} values/step, {hidden} hidden | {method} | cuts {cuts} | seed {seed}";

    private static string F(double v) => double.IsNaN(v) ? "—" : v.ToString("F4", CultureInfo.InvariantCulture);

    private static void Write(string output, string command, DataSplit data, List<Cell> cells, int epochs, int batch)
    {
        var md = new StringBuilder();
        md.AppendLine($"<!-- produced by: {command} -->");
        var values = cells.FirstOrDefault()?.Values ?? 1;
        md.AppendLine($"# Sequential MNIST-10k, {(values == 1 ? "pixel by pixel (784 steps)" : $"{values} pixels per step ({784 / values} steps)")}: Elman RNN (tanh), ReLU, linear read-out; batch {batch}, {epochs} epochs");
        md.AppendLine();
        md.AppendLine($"{data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test. Test accuracy after each epoch (mean over the seeds), and at the validation-selected epoch (mean ± sd). Cuts: the RNN lifted at every c-th step (0: only the output; backprop lifts nothing). Methods: {string.Join("; ", cells.Select(c => c.Method).Distinct().Select(m => $"`{m}` = {Method(m).Label}"))}.");
        md.AppendLine();
        md.AppendLine("| hidden | method | cuts | seeds | " + string.Join(" | ", Enumerable.Range(1, epochs).Select(e => $"epoch {e}")) + " | selected | s/epoch |");
        md.AppendLine("|---|---|---|---|" + string.Concat(Enumerable.Range(0, epochs + 2).Select(_ => "---|")));
        foreach (var g in cells.GroupBy(c => (c.Hidden, c.Method, c.Cuts)).OrderBy(g => g.Key.Hidden).ThenBy(g => g.Key.Method).ThenBy(g => g.Key.Cuts))
        {
            var runs = g.ToArray();
            var perEpoch = Enumerable.Range(0, epochs).Select(e => runs.Where(r => r.TestPerEpoch.Length > e).Select(r => r.TestPerEpoch[e]).DefaultIfEmpty(double.NaN).Average());
            var selected = runs.Select(r => r.Selected).ToArray();
            var sd = selected.Length < 2 ? 0 : Math.Sqrt(selected.Sum(x => (x - selected.Average()) * (x - selected.Average())) / (selected.Length - 1));
            md.AppendLine($"| {g.Key.Hidden} | {g.Key.Method} | {g.Key.Cuts} | {runs.Length} | {string.Join(" | ", perEpoch.Select(F))} | {F(selected.Average())} ± {F(sd)} | {runs.Average(r => r.SecondsPerEpoch):F1} |");
        }
        var failures = cells.Where(c => c.Failure is not null).ToArray();
        if (failures.Length > 0)
        {
            md.AppendLine();
            foreach (var f in failures) md.AppendLine($"- {Key(f.Values, f.Hidden, f.Method, f.Cuts, f.Seed)}: {f.Failure}");
        }
        var path = Path.GetFullPath(output);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path + ".tmp", md.ToString());
        File.Move(path + ".tmp", path, overwrite: true);
        Plot(Path.ChangeExtension(path, ".png"), cells, epochs);
    }

    /// Test accuracy per epoch, one panel per hidden size, one curve per method and cut (mean over seeds).
    private static void Plot(string path, List<Cell> cells, int epochs)
    {
        var sizes = cells.Select(c => c.Hidden).Distinct().OrderBy(h => h).ToArray();
        if (sizes.Length == 0) return;
        var multi = new Multiplot();
        multi.AddPlots(sizes.Length);
        for (int i = 0; i < sizes.Length; i++)
        {
            var plot = multi.GetPlot(i);
            plot.Title($"{sizes[i]} hidden units");
            plot.XLabel("epoch");
            plot.YLabel("test accuracy");
            var palette = new ScottPlot.Palettes.Category20();
            int curve = 0;
            foreach (var g in cells.Where(c => c.Hidden == sizes[i]).GroupBy(c => (c.Method, c.Cuts)))
            {
                var xs = Enumerable.Range(1, epochs).Select(e => (double)e).ToArray();
                var ys = Enumerable.Range(0, epochs).Select(e => g.Where(r => r.TestPerEpoch.Length > e).Select(r => r.TestPerEpoch[e]).DefaultIfEmpty(double.NaN).Average()).ToArray();
                var keep = xs.Zip(ys).Where(p => !double.IsNaN(p.Second)).ToArray();
                if (keep.Length == 0) continue;
                var line = plot.Add.Scatter(keep.Select(p => p.First).ToArray(), keep.Select(p => p.Second).ToArray());
                line.LegendText = !IsLifted(g.Key.Method) ? g.Key.Method : g.Key.Cuts == 0 ? $"{g.Key.Method}, output lifted only" : $"{g.Key.Method}, cut every {g.Key.Cuts}";
                line.Color = palette.GetColor(curve++);
            }
            plot.ShowLegend(Edge.Right);
        }
        multi.Layout = new ScottPlot.MultiplotLayouts.Grid(1, sizes.Length);
        multi.SavePng(path, 760 * sizes.Length, 460);
    }
}
