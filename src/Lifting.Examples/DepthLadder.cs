using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Training;
using ScottPlot;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// Issue 30's depth ladder: plain MLPs of width 128 with D hidden layers (ReLU or tanh) and residual
/// MLPs of B blocks x + W₂σ(W₁x), on MNIST-10k, every family's representative beside backprop
/// (default and Glorot/He initialisation), each lifted method cut after every hidden layer, every
/// 5th, and once before the output layer. One cell per (network, method, cuts, seed); each cell is
/// one line of a JSON-lines state file, so the ladder resumes where it stopped (it is long on 2
/// cores): `dotnet run --project src/Lifting.Examples -c Release -- depth ladder KEY=VALUE …`
///
///   data=mnist-10k epochs=5 batch=64 seeds=0 threads=1
///   plain=5,10,20,50,100 activations=relu,tanh residual=8,32,128 width=128   (plain=none, residual=none: no such nets)
///   methods=backprop,backprop:glorot,backprop:he,extraprop,distprop,am-adam,pcn,lpom,fenchel-bp,fa,dfa
///   cuts=every,every5,last state=runs/depth-ladder.jsonl out=docs/results/depth-ladder.md
///   train=false   (no training: the table and plot of every cell already in the state file)
///
/// A method is NAME or NAME:init=SCHEME;PARAM=VALUE (an initialisation and method parameters).
/// Per cell: the test accuracy at the validation-selected epoch, the final defect, seconds per
/// epoch and its ratio to default backprop's on the same network in the same run, and, for the
/// run's last mini-batch step, each layer's angle between the method's update −Δw and backprop's
/// gradient at the weights before it, and ‖Δw‖ (the first and last layers' and the median angle).
public static class DepthLadder
{
    public sealed record Cell(string Net, int Depth, string Activation, string Method, string Cuts, int Seed,
        double Test, double Validation, int Epoch, double FinalTest, double Defect, double CpuSecondsPerEpoch,
        double FirstAngle, double MedianAngle, double LastAngle, double FirstNorm, double LastNorm, string? Failure);

    // A diverged cell's defect or angle is ±∞ or NaN: written as JSON's named literals.
    private static readonly JsonSerializerOptions Json = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static int Run(string experiment, Settings s, string[] args)
    {
        if (experiment != "ladder") throw new ArgumentException($"Unknown depth experiment '{experiment}' (known: ladder).");
        var command = "dotnet run --project src/Lifting.Examples -c Release -- " + string.Join(" ", args);
        int epochs = s.Int("epochs", 5), batch = s.Int("batch", 64), width = s.Int("width", 128);
        var seeds = s.Ints("seeds", "0");
        var plain = s.Text("plain", "") == "none" ? Array.Empty<int>() : s.Ints("plain", "5,10,20,50,100");
        var residual = s.Text("residual", "") == "none" ? Array.Empty<int>() : s.Ints("residual", "8,32,128");
        var activations = s.Text("activations", "relu,tanh").Split(',', StringSplitOptions.RemoveEmptyEntries);
        var methods = s.Text("methods", "backprop,backprop:init=glorot,backprop:init=he,extraprop,distprop,am-adam,pcn,lpom,fenchel-bp,fa,dfa").Split(',', StringSplitOptions.RemoveEmptyEntries);
        var cutsList = s.Text("cuts", "every,every5,last").Split(',', StringSplitOptions.RemoveEmptyEntries);
        var statePath = s.Text("state", "runs/depth-ladder.jsonl");
        var output = s.Text("out", "docs/results/depth-ladder.md");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(statePath))!);
        var done = Load(statePath);
        using var data = DatasetCatalog.Load(s.Text("data", "mnist-10k"));
        if (s.Text("train", "true") == "false")
        {
            // Only the table and the plot of every cell in the state file (several runs of the ladder
            // that share one state file end in one table).
            Write(output, command, data, done.Values.ToList(), epochs, batch, width, statePath);
            return 0;
        }

        var nets = new List<(string Kind, int Depth, string Activation)>();
        foreach (var a in activations) foreach (var d in plain) nets.Add(("plain", d, a));
        foreach (var b in residual) nets.Add(("residual", b, "relu"));
        foreach (var seed in seeds)
            foreach (var (kind, depth, activation) in nets)
                foreach (var method in methods)
                    foreach (var cuts in IsBackprop(method) ? new[] { "-" } : cutsList)
                    {
                        var key = Key(kind, depth, activation, method, cuts, seed);
                        if (done.ContainsKey(key)) continue;
                        Console.WriteLine($"== {key}");
                        var cell = TrainCell(data, kind, depth, activation, width, method, cuts, seed, epochs, batch);
                        done[key] = cell;
                        File.AppendAllText(statePath, JsonSerializer.Serialize(cell, Json) + "\n");
                        Console.WriteLine($"   test {F(cell.Test)} (epoch {cell.Epoch}), defect {cell.Defect:G3}, {cell.CpuSecondsPerEpoch:F1} CPU s/epoch, angles {F(cell.FirstAngle, "F0")}/{F(cell.MedianAngle, "F0")}/{F(cell.LastAngle, "F0")}{(cell.Failure is null ? "" : ", " + cell.Failure)}");
                        Write(output, command, data, done.Values.ToList(), epochs, batch, width, statePath);
                    }
        Write(output, command, data, done.Values.ToList(), epochs, batch, width, statePath);
        return 0;
    }

    private static bool IsBackprop(string method) => method.Split(':')[0] == "backprop";

    private static string Key(string kind, int depth, string activation, string method, string cuts, int seed) =>
        $"{kind} {depth} {activation} | {method} | {cuts} | seed {seed}";

    private static Dictionary<string, Cell> Load(string path)
    {
        var cells = new Dictionary<string, Cell>();
        if (!File.Exists(path)) return cells;
        foreach (var line in File.ReadLines(path).Where(l => l.Trim().Length > 0))
        {
            var c = JsonSerializer.Deserialize<Cell>(line, Json)!;
            cells[Key(c.Net, c.Depth, c.Activation, c.Method, c.Cuts, c.Seed)] = c;
        }
        return cells;
    }

    /// The network: plain (D hidden layers of `width`) or residual (a dense layer, then B blocks),
    /// cut after every hidden layer / block, every 5th, or once before the output layer.
    public static NestedProgram Network(long[] inputShape, int classes, string kind, int depth, string activation, int width, string cuts)
    {
        var act = Activations.ByName(activation);
        var net = Net.Input(inputShape).Flatten().Dense(width).Activation(act);
        bool Cut(int k) => cuts switch
        {
            "every" => true,
            "every5" => k % 5 == 0,
            _ => false,
        };
        if (kind == "plain")
        {
            for (int k = 1; k < depth; k++)
            {
                if (Cut(k)) net = net.Cut();
                net = net.Dense(width).Activation(act);
            }
        }
        else
        {
            for (int k = 1; k <= depth; k++)
            {
                if (Cut(k)) net = net.Cut();
                net = net.Residual(b => b.Dense(width).Activation(act).Dense(width));
            }
        }
        // "last" (and every cut strategy, for the lifted methods): a cut before the output layer.
        return net.Cut().Dense(classes).CrossEntropy();
    }

    private static Cell TrainCell(DataSplit data, string kind, int depth, string activation, int width, string method, string cuts, int seed, int epochs, int batch)
    {
        var parts = MethodSettings.Parse(method);
        var scheme = parts.Values.TryGetValue("init", out var init) ? Initialisation.Parse(init) : InitialisationScheme.LayerDefault;
        var settings = parts with { Values = parts.Values.Where(kv => kv.Key != "init").ToDictionary(kv => kv.Key, kv => kv.Value) };
        var program = Network(data.Train.ExampleShape, data.Train.ClassCount, kind, depth, activation, width, cuts).Apply(scheme);
        var resolved = Methods.Resolve(settings);
        var options = new TrainingOptions { Epochs = epochs, BatchSize = batch, Seed = seed, MaxLossRatio = 100 };
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        try
        {
            using var weights = program.Initialise(seed, options.Device, options.DType);
            using var snapshot = new LastStep(weights, epochs);
            using var result = Trainer.Train(program, data, resolved, options, snapshot, weights);
            // Process CPU time per epoch (the machine is shared: wall time drifts 2x), evaluation included.
            var cpuPerEpoch = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds / result.Epochs.Count;
            var (first, median, last, firstNorm, lastNorm) = snapshot.Angles(program, data, seed, batch);
            return new Cell(kind, depth, activation, method, cuts, seed, result.Selected.TestAccuracy, result.Selected.ValidationAccuracy ?? double.NaN,
                result.SelectedEpoch, result.Final.TestAccuracy, result.FinalDefect, cpuPerEpoch, first, median, last, firstNorm, lastNorm, null);
        }
        catch (TrainingDivergedException e)
        {
            return new Cell(kind, depth, activation, method, cuts, seed, double.NaN, double.NaN, 0, double.NaN, double.NaN,
                (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds / epochs, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, "diverged: " + e.Message.Split('\n')[0]);
        }
    }

    /// The weights around one mid-training step (the second mini-batch of epoch ⌈E/2⌉, before any
    /// settling phase holds the weights) and, after training, that step's update Δw per layer
    /// against backprop's gradient at the weights before it on the same batch: the angle between
    /// −Δw and the gradient, and ‖Δw‖. Backprop's own row measures the same (its Adam step is not
    /// its gradient either).
    private sealed class LastStep : ITrainingObserver, IDisposable
    {
        private readonly Weights live;
        private readonly int epochs;
        private Weights? before, after;

        public LastStep(Weights live, int epochs) { this.live = live; this.epochs = epochs; }

        private int Epoch => (epochs + 1) / 2;

        public void OnBatch(int epoch, int batch, int batchesPerEpoch)
        {
            if (epoch != Epoch || batchesPerEpoch < 2) return;
            if (batch == 1) { before?.Dispose(); before = live.Clone(); }
            if (batch == 2) { after?.Dispose(); after = live.Clone(); }
        }

        public (double First, double Median, double Last, double FirstNorm, double LastNorm) Angles(NestedProgram program, DataSplit data, int seed, int batchSize)
        {
            if (before is null || after is null) return (double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
            using var scope = NewDisposeScope();
            var order = MiniBatches.Permutation(data.Train.Count, seed, Epoch);
            var rows = tensor(order.Skip(batchSize).Take(batchSize).ToArray());
            var x = data.Train.Inputs.index_select(0, rows);
            var y = data.Train.Labels.index_select(0, rows);
            Tensor[] reference;
            using (enable_grad())
            {
                using var pass = ForwardPass.Measuring(program, before, seed);
                var loss = program.Loss.PerExample(program.Forward(x, before.Tensors, pass), y).mean();
                reference = autograd.grad(new[] { loss }, before.Tensors.ToArray()).Select(t => t.detach()).ToArray();
            }
            using var _ = no_grad();
            var step = before.Tensors.Zip(after.Tensors, (b, a) => b - a).ToArray(); // −Δw
            var angles = LayerAngles.Between(program, step, reference).OrderBy(kv => int.Parse(kv.Key.Split('-')[1], CultureInfo.InvariantCulture)).Select(kv => kv.Value).ToArray();
            var seen = new HashSet<int>();
            var norms = program.Nodes.Select(node => node.Parameters.Where(seen.Add).ToArray()).Where(p => p.Length > 0)
                .Select(p => Math.Sqrt(p.Sum(i => step[i].square().sum().ToDouble()))).ToArray();
            var sorted = angles.OrderBy(a => a).ToArray();
            return (angles[0], sorted[sorted.Length / 2], angles[^1], norms[0], norms[^1]);
        }

        public void Dispose()
        {
            before?.Dispose();
            after?.Dispose();
        }
    }

    private static string F(double v, string format = "F4") => double.IsNaN(v) ? "—" : v.ToString(format, CultureInfo.InvariantCulture);

    private static void Write(string output, string command, DataSplit data, List<Cell> cells, int epochs, int batch, int width, string statePath)
    {
        var md = new StringBuilder();
        md.AppendLine($"<!-- produced by: {command} -->");
        md.AppendLine($"# Depth ladder ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test, {epochs} epochs, batch {batch}, width {width})");
        md.AppendLine();
        md.AppendLine("Test accuracy at the validation-selected epoch, mean ± sd over the seeds that did not diverge (— every seed diverged; [k/n diverged] otherwise); lifted methods cut after every hidden layer (or residual block), every 5th, or once before the output layer (`every`, `every5`, `last`). Angles: degrees between one mid-training step's update −Δw (the second mini-batch of epoch ⌈E/2⌉) and backprop's gradient before it, per layer (the median over the layers in the table; first and last layer in the JSON; backprop's own Adam step is far from 0° too); time: process CPU seconds per epoch (evaluation included) as a ratio to default backprop on the same network (wall time drifts 2x on this shared machine). The PNG draws one curve per method: at each depth the setting (initialisation, step, cuts) with the best mean validation accuracy, its test accuracy.");
        md.AppendLine();
        var nets = cells.Select(c => (c.Net, c.Activation, c.Depth)).Distinct().OrderBy(t => t.Net).ThenBy(t => t.Activation).ThenBy(t => t.Depth).ToArray();
        var rows = cells.Select(c => (c.Method, c.Cuts)).Distinct().ToArray();
        md.AppendLine("| method | cuts | " + string.Join(" | ", nets.Select(n => $"{n.Net} {n.Activation} {n.Depth}")) + " |");
        md.AppendLine("|---|---|" + string.Concat(nets.Select(_ => "---|")));
        foreach (var (method, cuts) in rows)
        {
            var line = new StringBuilder($"| {method} | {cuts} |");
            foreach (var n in nets)
            {
                var here = cells.Where(c => c.Method == method && c.Cuts == cuts && c.Net == n.Net && c.Activation == n.Activation && c.Depth == n.Depth).ToArray();
                if (here.Length == 0) { line.Append(" |"); continue; }
                // Seeds that diverged are counted, not averaged: the mean and sd are over the others.
                var accuracies = here.Select(c => c.Test).Where(a => !double.IsNaN(a)).ToArray();
                var diverged = here.Length - accuracies.Length;
                var mean = accuracies.Length == 0 ? double.NaN : accuracies.Average();
                line.Append(' ').Append(accuracies.Length == 0 ? "—" : here.Length == 1 ? F(mean) : accuracies.Length == 1 ? F(mean) : $"{F(mean)} ± {F(Sd(accuracies))}");
                if (diverged > 0 && here.Length > 1) line.Append($" [{diverged}/{here.Length} diverged]");
                var backprop = cells.Where(c => c.Method == "backprop" && c.Net == n.Net && c.Activation == n.Activation && c.Depth == n.Depth).Select(c => c.CpuSecondsPerEpoch).DefaultIfEmpty(double.NaN).Average();
                var angles = here.Select(c => c.MedianAngle).Where(a => !double.IsNaN(a)).ToArray();
                var angle = angles.Length == 0 ? double.NaN : angles.Average();
                line.Append($" ({F(angle, "F0")}°, {F(here.Average(c => c.CpuSecondsPerEpoch) / backprop, "F1")}×) |");
            }
            md.AppendLine(line.ToString());
        }
        md.AppendLine();
        md.AppendLine($"Every cell (`{statePath}` holds them with the per-layer angles, norms, defects and the reason a run diverged).");
        var path = Path.GetFullPath(output);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path + ".tmp", md.ToString());
        File.Move(path + ".tmp", path, overwrite: true);
        Plot(Path.ChangeExtension(path, ".png"), cells, data.Train.Name.Split('/')[0]);
    }

    private static double Sd(double[] v) => v.Length < 2 ? 0 : Math.Sqrt(v.Sum(x => (x - v.Average()) * (x - v.Average())) / (v.Length - 1));

    /// Accuracy against depth, one panel per network kind and activation, one curve per method with
    /// its cut strategy of the best validation accuracy at each depth.
    private static void Plot(string path, List<Cell> cells, string dataName)
    {
        var groups = cells.GroupBy(c => $"{c.Net} {c.Activation}").OrderBy(g => g.Key).ToArray();
        // One colour per method name in every panel.
        var names = cells.Select(c => c.Method.Split(':')[0]).Distinct().ToList();
        var palette = new ScottPlot.Palettes.Category10();
        var multi = new Multiplot();
        multi.AddPlots(groups.Length);
        for (int i = 0; i < groups.Length; i++)
        {
            var plot = multi.GetPlot(i);
            plot.Title($"{groups[i].Key} ({dataName})");
            plot.XLabel("depth (hidden layers or blocks)");
            plot.YLabel("test accuracy");
            plot.Axes.SetLimitsY(0, 1);
            // One curve per method name: at each depth the setting (initialisation, step, cuts) with the
            // best mean validation accuracy, its mean test accuracy plotted (backprop gets its best too).
            foreach (var name in groups[i].Select(c => c.Method.Split(':')[0]).Distinct())
            {
                var points = groups[i].Where(c => c.Method.Split(':')[0] == name && !double.IsNaN(c.Test)).GroupBy(c => c.Depth)
                    .Select(g => (Depth: (double)g.Key, Best: g.GroupBy(c => (c.Method, c.Cuts)).MaxBy(cg => cg.Average(c => c.Validation))!.Average(c => c.Test)))
                    .OrderBy(p => p.Depth).ToArray();
                if (points.Length == 0) continue;
                var scatter = plot.Add.Scatter(points.Select(p => p.Depth).ToArray(), points.Select(p => p.Best).ToArray());
                scatter.LegendText = name;
                scatter.Color = palette.GetColor(names.IndexOf(name));
            }
            plot.ShowLegend(Edge.Right);
        }
        multi.Layout = new ScottPlot.MultiplotLayouts.Grid(1, groups.Length);
        multi.SavePng(path, 600 * Math.Max(1, groups.Length), 480);
    }
}
