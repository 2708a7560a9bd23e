using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Host;

/// `lifting bench`: methods side by side in one process on the same data, network and seed, timed
/// so that a busy, shared machine still gives figures one can trust.
///
/// The methods run in turn, A B C A B C …, `--repeats` times, so that a drift in the machine's speed
/// reaches all of them alike; the engine floor (a plain TorchSharp `nn.Sequential` + `optim.Adam`
/// loop on the same tensors and mini-batches) runs in every round beside them. Per run and per
/// training epoch (evaluation excluded): wall time, the process's CPU time (user + system, all
/// threads; on a loaded machine wall time also counts the time other processes held the cores)
/// and minor page faults (getrusage). A run's figure is the median over its epochs after the first
/// (a warm-up; settling epochs, in which the weights are held, are left out); its ratios are to the
/// floor's and to the first method's figures in the same round. Reported per method: the medians
/// over the rounds and the range of the CPU ratio. A line is printed as each run finishes, the
/// table at the end; `--out DIR` writes it as bench.md and bench.json. `--scale AXIS=V1,V2,…`
/// repeats the whole bench for each value of the MLP's width, depth or the batch size and draws the
/// CPU-time ratios to the floor as curves (scaling.png).
public static class Bench
{
    public static Command Create(CliContext context)
    {
        var command = new Command("bench", "Methods side by side in interleaved rounds: per-epoch wall time, CPU time and page faults, ratios to the engine floor and to the first method, per-example memory, peak RSS.");
        var methods = new Option<string>("--methods") { Description = "comma-separated methods, each NAME or NAME:PARAM=VALUE;... (e.g. distprop:resample=false) [default: backprop,extraprop]", HelpName = "A,B,..." };
        var all = new Option<bool>("--all") { Description = "every family's representative method (backprop first)" };
        var repeats = new Option<string>("--repeats") { Description = "interleaved rounds [default: 3]", HelpName = "N" };
        var json = new Option<bool>("--json") { Description = "make the last line of output the rows as JSON" };
        var outDir = new Option<string>("--out") { Description = "write bench.md and bench.json (and scaling.png with --scale) into this folder", HelpName = "DIR" };
        var noFloor = new Option<bool>("--no-floor") { Description = "leave out the engine-floor row (a plain TorchSharp nn.Sequential + optim.Adam loop)" };
        var scale = new Option<string>("--scale") { Description = "repeat for each value of width, depth (hidden layers of the MLP) or batch, e.g. depth=1,3,6; draws the ratios to the floor", HelpName = "AXIS=V1,V2,..." };
        var keys = new[] { "data", "net", "activation", "epochs", "batch", "seed", "device", "threads" };
        var defaults = new Experiment { Data = "mnist-10k", Net = "784-256-10", Epochs = 4, Batch = 128 };
        var options = keys.Select(k => (Key: k, Option: new Option<string>("--" + k)
        {
            Description = Experiment.Keys.First(x => x.Name == k).Description + $" [default: {k switch { "data" => defaults.Data, "net" => defaults.Net, "epochs" => "4", "batch" => "128", _ => Experiment.Keys.First(x => x.Name == k).Default }}]",
            HelpName = Experiment.Keys.First(x => x.Name == k).HelpName,
        })).ToArray();
        foreach (var o in new Option[] { methods, all, repeats, json, outDir, noFloor, scale }) command.Add(o);
        foreach (var (_, o) in options) command.Add(o);
        command.SetAction(parsed =>
        {
            if (parsed.GetValue(all) && parsed.GetValue(methods) is not null) throw new UsageException("--all and --methods: give one of them");
            var names = parsed.GetValue(all)
                ? Methods.Representatives.Select(m => m.Name).OrderBy(n => n == "backprop" ? 0 : 1).ToArray()
                : (parsed.GetValue(methods) ?? "backprop,extraprop").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (names.Length == 0) throw new UsageException("--methods: give at least one method");
            int rounds = parsed.GetValue(repeats) is not { } r ? 3
                : int.TryParse(r, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new UsageException($"--repeats: {r} must be a positive integer");
            var experiment = defaults;
            foreach (var (key, option) in options)
                if (parsed.GetValue(option) is { } value) experiment = experiment.Set(key, value, fromFlag: true);
            var settings = new Settings(names, rounds, parsed.GetValue(json), parsed.GetValue(outDir), !parsed.GetValue(noFloor));
            return parsed.GetValue(scale) is { } axis ? RunScaling(experiment, settings, axis, context.Output) : Run(experiment, settings, context.Output);
        });
        return command;
    }

    private sealed record Settings(string[] Methods, int Repeats, bool Json, string? Out, bool Floor);

    /// The label of the engine-floor row.
    public const string FloorLabel = "floor (TorchSharp nn.Sequential + optim.Adam)";

    /// Per-epoch figures of one run: medians over its timed epochs.
    private sealed record Figures(double Wall, double Cpu, double Faults, double PeakMiB, long Bytes, IReadOnlyDictionary<string, long> Variables, double Accuracy);

    /// One row of the table: a method's medians over the rounds, with ratios.
    public sealed record Row(string Method, double WallSeconds, double CpuSeconds, double Faults, double? CpuToFloor, double? WallToFloor,
        double Ratio, double RatioMin, double RatioMax, double CpuRatio, double CpuRatioMin, double CpuRatioMax,
        long PerExampleBytes, IReadOnlyDictionary<string, long> PerExampleVariables, double PeakRssMiB, double? TestAccuracy);

    private static int Run(Experiment experiment, Settings settings, TextWriter output)
    {
        var rows = Measure(experiment, settings, output);
        if (settings.Out is { } dir)
        {
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "bench.md"), Markdown(Header(experiment, settings), rows));
            File.WriteAllText(Path.Combine(dir, "bench.json"), Json(experiment, settings, rows));
            output.WriteLine($"wrote {Path.Combine(dir, "bench.md")} and bench.json");
        }
        if (settings.Json) output.WriteLine(JsonSerializer.Serialize(rows.Select(JsonRow)));
        return 0;
    }

    private static string Header(Experiment e, Settings s) =>
        $"bench on {e.Data}, {e.Net}, batch {e.Batch}, {e.Epochs} epochs, {s.Repeats} rounds, {Threads.Count} threads, {Environment.ProcessorCount} cores, C heap: {NativeMemory.HeapConfiguration}";

    /// Trains every method (and the floor) in interleaved rounds, printing a line per run; returns
    /// the table's rows (the methods, then the floor when it runs).
    private static IReadOnlyList<Row> Measure(Experiment experiment, Settings settings, TextWriter output)
    {
        if (experiment.Epochs < 2)
            throw new UsageException($"--epochs {experiment.Epochs}: bench times the learning epochs after the first (a warm-up); give at least 2");
        var methods = settings.Methods;
        var parsedSettings = new MethodSettings[methods.Length];
        var resolved = new ResolvedMethod[methods.Length];
        for (int i = 0; i < methods.Length; i++)
        {
            try
            {
                var parsed = MethodSettings.Parse(methods[i]);
                resolved[i] = Methods.Resolve(parsed);
                parsedSettings[i] = parsed with { Method = resolved[i].Name };
            }
            catch (ArgumentException x) { throw new UsageException($"--methods: {x.Message.TrimEnd('.')}"); }
            // Before anything trains: a method whose schedule holds a player (settling) in every
            // epoch after the first leaves nothing to time.
            if (LearningEpochsAfterFirst(Methods.Resolve(parsedSettings[i]), experiment.Epochs) == 0)
                throw new UsageException($"--epochs {experiment.Epochs}: {parsedSettings[i].Label} settles (holds its weights) in every epoch after the first, which leaves no learning epoch to time; give more epochs");
        }
        NativeMemory.Configure(); // before anything allocates: the floor and the methods share it
        using var prepared = PreparedRun.Prepare(experiment with { Method = resolved[0].Name });
        var data = prepared.Data;
        var program = prepared.Program;
        var device = prepared.Options.Device;
        var floorReason = settings.Floor ? FloorUnavailable(program) : "left out (--no-floor)";
        bool floor = floorReason is null;
        output.WriteLine(Header(experiment with { Net = prepared.Experiment.Net }, settings) + $", device {device.type}");
        if (!floor) output.WriteLine($"  no floor row: {floorReason}");
        output.Flush();

        var labels = (floor ? new[] { FloorLabel } : Array.Empty<string>()).Concat(parsedSettings.Select(s => s.Label)).ToArray();
        int width = Math.Max(15, labels.Max(l => l.Length));
        var runs = labels.Select(_ => new List<(Figures F, double? CpuToFloor, double? WallToFloor, double Ratio, double CpuRatio)>()).ToArray();
        for (int round = 0; round < settings.Repeats; round++)
        {
            Figures? floorFigures = null, first = null;
            var roundFigures = new Figures[labels.Length];
            for (int k = 0; k < labels.Length; k++)
            {
                Figures f;
                if (floor && k == 0) f = floorFigures = FloorRun(program, data, experiment, device);
                else
                {
                    int m = floor ? k - 1 : k;
                    // Fresh step rules every run: scheduled rules carry per-run state.
                    var method = round == 0 ? resolved[m] : Methods.Resolve(parsedSettings[m]);
                    f = MethodRun(program, data, method, experiment, device, parsedSettings[m].Label);
                }
                bool isFloor = floor && k == 0;
                if (!isFloor) first ??= f;
                double? cpuToFloor = floorFigures is null ? null : f.Cpu / floorFigures.Cpu;
                roundFigures[k] = f;
                var floorNote = cpuToFloor is { } c && !isFloor ? I($"  ×{c:F2} floor (CPU)") : "";
                output.WriteLine(I($"  round {round + 1}/{settings.Repeats}  {labels[k].PadRight(width)} {f.Wall,8:F3} s/epoch wall  {f.Cpu,8:F3} s/epoch CPU  {f.Faults / 1000,7:F1} K faults/epoch") + floorNote);
                output.Flush();
            }
            // Ratios within the round: to the floor (run first) and to the first method.
            for (int k = 0; k < labels.Length; k++)
            {
                var f = roundFigures[k];
                runs[k].Add((f, floorFigures is null ? null : f.Cpu / floorFigures.Cpu, floorFigures is null ? null : f.Wall / floorFigures.Wall,
                    f.Wall / first!.Wall, f.Cpu / first.Cpu));
            }
        }

        var rows = new List<Row>();
        for (int k = 0; k < labels.Length; k++)
        {
            var r = runs[k];
            bool isFloor = floor && k == 0;
            var row = new Row(labels[k],
                Math.Round(Median(r.Select(x => x.F.Wall)), 4), Math.Round(Median(r.Select(x => x.F.Cpu)), 4), Math.Round(Median(r.Select(x => x.F.Faults))),
                floor ? Math.Round(Median(r.Select(x => x.CpuToFloor!.Value)), 3) : null,
                floor ? Math.Round(Median(r.Select(x => x.WallToFloor!.Value)), 3) : null,
                Math.Round(Median(r.Select(x => x.Ratio)), 3), Math.Round(r.Min(x => x.Ratio), 3), Math.Round(r.Max(x => x.Ratio), 3),
                Math.Round(Median(r.Select(x => x.CpuRatio)), 3), Math.Round(r.Min(x => x.CpuRatio), 3), Math.Round(r.Max(x => x.CpuRatio), 3),
                r[0].F.Bytes, r[0].F.Variables, Math.Round(Median(r.Select(x => x.F.PeakMiB)), 1),
                isFloor ? null : Math.Round(r[0].F.Accuracy, 4)); // at the epoch selected on validation
            rows.Add(row);
        }
        // The methods in the order given, the floor last (it runs first in every round).
        if (floor) rows.Add(rows[0]);
        if (floor) rows.RemoveAt(0);
        output.WriteLine();
        foreach (var row in rows)
        {
            var toFloor = row.CpuToFloor is { } cf ? I($"×{cf,5:F2} floor CPU (×{row.WallToFloor,5:F2} wall)  ") : "";
            var accuracy = row.TestAccuracy is { } a ? I($"  test acc {a:F4}") : "";
            output.WriteLine(I($"  {row.Method.PadRight(width)} {row.WallSeconds,8:F3} s/epoch  CPU {row.CpuSeconds,8:F3} s/epoch  {row.Faults / 1000,7:F1} K faults/epoch  ") + toFloor +
                I($"×{row.Ratio,5:F2} (rounds {row.RatioMin:F2}–{row.RatioMax:F2}) wall, ×{row.CpuRatio:F2} CPU to the first  ") +
                I($"per-example state {row.PerExampleBytes} B{Contents(row.PerExampleVariables)}  peak RSS {row.PeakRssMiB} MiB") + accuracy);
        }
        output.Flush();
        return rows;
    }

    private static Dictionary<string, object?> JsonRow(Row r) => new()
    {
        ["method"] = r.Method,
        ["seconds_per_epoch"] = r.WallSeconds,
        ["cpu_seconds_per_epoch"] = r.CpuSeconds,
        ["minor_faults_per_epoch"] = r.Faults,
        ["cpu_ratio_to_floor"] = r.CpuToFloor,
        ["wall_ratio_to_floor"] = r.WallToFloor,
        ["ratio"] = r.Ratio,
        ["ratio_min"] = r.RatioMin,
        ["ratio_max"] = r.RatioMax,
        ["cpu_ratio"] = r.CpuRatio,
        ["cpu_ratio_min"] = r.CpuRatioMin,
        ["cpu_ratio_max"] = r.CpuRatioMax,
        ["per_example_bytes"] = r.PerExampleBytes,
        ["per_example_variables"] = r.PerExampleVariables,
        ["peak_rss_mib"] = r.PeakRssMiB,
        ["test_accuracy"] = r.TestAccuracy,
    };

    /// The rows as a JSON document: the settings and one object per row.
    public static string Json(Experiment e, object settings, IReadOnlyList<Row> rows) =>
        JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["data"] = e.Data, ["net"] = e.Net, ["batch"] = e.Batch, ["epochs"] = e.Epochs, ["seed"] = e.Seed,
            ["threads"] = Threads.Count, ["cores"] = Environment.ProcessorCount, ["c_heap"] = NativeMemory.HeapConfiguration,
            ["settings"] = settings,
            ["rows"] = rows.Select(JsonRow).ToArray(),
        }, new JsonSerializerOptions { WriteIndented = true });

    /// The rows as a Markdown table under a one-line header.
    public static string Markdown(string header, IReadOnlyList<Row> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine(header).AppendLine();
        sb.AppendLine("| method | wall s/epoch | CPU s/epoch | minor faults/epoch | CPU × floor | wall × floor | CPU × first (range) | wall × first (range) | per-example B | peak RSS MiB | test acc |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            string Or(double? v, string format) => v is { } x ? x.ToString(format, CultureInfo.InvariantCulture) : "–";
            sb.AppendLine(I($"| {r.Method} | {r.WallSeconds:F3} | {r.CpuSeconds:F3} | {r.Faults:F0} | {Or(r.CpuToFloor, "F2")} | {Or(r.WallToFloor, "F2")} | ") +
                I($"{r.CpuRatio:F2} ({r.CpuRatioMin:F2}–{r.CpuRatioMax:F2}) | {r.Ratio:F2} ({r.RatioMin:F2}–{r.RatioMax:F2}) | {r.PerExampleBytes} | {r.PeakRssMiB:F1} | {Or(r.TestAccuracy, "F4")} |"));
        }
        return sb.ToString();
    }

    // ---- scaling ------------------------------------------------------------------------------

    /// `--scale AXIS=V1,V2,...`: the bench at each value; the CPU-time ratio to the floor of every
    /// method as a curve over the values (scaling.png), and one table per value.
    private static int RunScaling(Experiment experiment, Settings settings, string spec, TextWriter output)
    {
        var (axis, values) = ParseScale(spec);
        if (!settings.Floor) throw new UsageException("--scale draws ratios to the floor: leave out --no-floor");
        var perValue = new List<(long Value, IReadOnlyList<Row> Rows)>();
        var md = new StringBuilder();
        foreach (var v in values)
        {
            var e = axis switch
            {
                "batch" => experiment with { Batch = (int)v },
                _ => experiment with { Net = Scaled(experiment.Net ?? "784-256-10", axis, v) },
            };
            output.WriteLine($"-- {axis} = {v}");
            var rows = Measure(e, settings, output);
            perValue.Add((v, rows));
            md.AppendLine($"### {axis} = {v}").AppendLine().Append(Markdown(Header(e, settings), rows)).AppendLine();
        }
        var methods = perValue[0].Rows.Where(r => r.Method != FloorLabel).Select(r => r.Method).ToArray();
        var curves = methods.Select((m, k) => new Curve(m, perValue.Select(p => (double)p.Value).ToArray(),
            perValue.Select(p => p.Rows.First(r => r.Method == m).CpuToFloor ?? double.NaN).ToArray()) { Style = k }).ToArray();
        output.WriteLine();
        output.WriteLine($"CPU time × floor by {axis}:");
        foreach (var c in curves)
            output.WriteLine($"  {c.Label,-30} " + string.Join("  ", c.Epochs.Zip(c.Values).Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.First}: ×{p.Second:F2}"))));
        if (settings.Out is { } dir)
        {
            Directory.CreateDirectory(dir);
            var png = Path.Combine(dir, "scaling.png");
            Plots.Save(png, $"per-epoch CPU time as a multiple of the engine floor, by {axis}", "CPU time × floor", curves, log: false, xLabel: axis);
            File.WriteAllText(Path.Combine(dir, "bench.md"), md.ToString());
            File.WriteAllText(Path.Combine(dir, "bench.json"), JsonSerializer.Serialize(perValue.Select(p => new Dictionary<string, object?>
            {
                [axis] = p.Value, ["rows"] = p.Rows.Select(JsonRow).ToArray(),
            }), new JsonSerializerOptions { WriteIndented = true }));
            output.WriteLine($"wrote {png}, bench.md and bench.json");
        }
        if (settings.Json) output.WriteLine(JsonSerializer.Serialize(curves.Select(c => new { method = c.Label, axis, values = c.Epochs, cpu_ratio_to_floor = c.Values })));
        return 0;
    }

    /// "depth=1,3,6" → ("depth", [1, 3, 6]).
    public static (string Axis, long[] Values) ParseScale(string spec)
    {
        var eq = spec.IndexOf('=');
        var axis = eq < 0 ? spec : spec[..eq].Trim();
        if (axis is not ("width" or "depth" or "batch"))
            throw new UsageException($"--scale {spec}: the axis is width, depth or batch, e.g. depth=1,3,6");
        var values = (eq < 0 ? "" : spec[(eq + 1)..]).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(v => long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0 ? n
                : throw new UsageException($"--scale {spec}: '{v}' is not a positive integer")).ToArray();
        if (values.Length < 2) throw new UsageException($"--scale {spec}: give at least two values, e.g. {axis}=1,3,6");
        return (axis, values);
    }

    /// The MLP `net` ("784-256-10") with every hidden layer `value` wide (width), or with `value`
    /// hidden layers as wide as its first (depth).
    public static string Scaled(string net, string axis, long value)
    {
        var sizes = net.Split('-');
        if (sizes.Length < 3 || !sizes.All(s => long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out _)))
            throw new UsageException($"--scale {axis}: needs an MLP --net such as 784-256-10, got '{net}'");
        var hidden = axis == "width" ? Enumerable.Repeat(value.ToString(CultureInfo.InvariantCulture), sizes.Length - 2)
            : Enumerable.Repeat(sizes[1], (int)value);
        return string.Join("-", new[] { sizes[0] }.Concat(hidden).Append(sizes[^1]));
    }

    // ---- one run ------------------------------------------------------------------------------

    private static Figures MethodRun(NestedProgram program, DataSplit data, ResolvedMethod method, Experiment experiment, Device device, string label)
    {
        ResetPeakMemory();
        var probe = new EpochProbe();
        using var result = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules,
            new TrainingOptions { Epochs = experiment.Epochs, BatchSize = experiment.Batch, Seed = experiment.Seed, Device = device }, probe);
        var timed = Enumerable.Range(0, Math.Min(result.Epochs.Count, probe.Epochs.Count))
            .Where(i => i > 0 && result.Epochs[i].Held.Count == 0).Select(i => probe.Epochs[i]).ToArray();
        if (timed.Length == 0)
            throw new UsageException($"--epochs {experiment.Epochs}: {label} has no learning epoch after the first; give more epochs");
        return new Figures(Median(timed.Select(t => t.Wall)), Median(timed.Select(t => t.Cpu)), Median(timed.Select(t => (double)t.Faults)),
            PeakMemoryBytes() / 1048576.0, result.PerExampleBytes, result.PerExampleVariables, result.Selected.TestAccuracy);
    }

    /// Per training epoch (first mini-batch to last, evaluation left out): wall, CPU, faults.
    private sealed class EpochProbe : ITrainingObserver
    {
        private Usage start;
        public List<(double Wall, double Cpu, long Faults)> Epochs { get; } = new();
        public void OnStart(int epochs, int batchesPerEpoch) => start = Usage.Now();
        public void OnBatch(int epoch, int batch, int batchesPerEpoch)
        {
            if (batch != batchesPerEpoch) return;
            var end = Usage.Now();
            Epochs.Add(end.Minus(start));
        }
        public void OnEpoch(EpochMetrics metrics) => start = Usage.Now();
    }

    /// Why the engine floor cannot mirror `program` (null when it can): the floor is a plain
    /// TorchSharp `nn.Sequential` of the program's chain of dense, conv, pooling, flatten and
    /// relu/tanh/sigmoid layers with a cross-entropy loss.
    public static string? FloorUnavailable(NestedProgram program)
    {
        if (program.Loss.Name != "cross-entropy") return $"the loss is {program.Loss.Name}, the floor's is cross-entropy";
        foreach (var node in program.Nodes)
        {
            if (node.Inputs.Count != 1 || node.Inputs[0] != node.Value - 1) return $"'{node.Name}' is not a chain step";
            if (FloorModule(node) is null) return $"'{node.Name}' ({node.Operation.Name}) has no plain TorchSharp module here";
        }
        return null;
    }

    private static nn.Module<Tensor, Tensor>? FloorModule(Node node) => node.Layer switch
    {
        Dense d => nn.Linear(d.Inputs, d.Outputs, hasBias: d.HasBias),
        Conv2d c => nn.Conv2d(c.InputShape[0], c.Channels, c.Kernel, stride: c.Stride, padding: c.Padding),
        Pool2d { IsMax: true } p => nn.MaxPool2d(p.Kernel, p.Stride),
        Pool2d p => nn.AvgPool2d(p.Kernel, p.Stride),
        Flatten => nn.Flatten(),
        _ => node.Activation?.Name switch
        {
            "relu" => nn.ReLU(),
            "tanh" => nn.Tanh(),
            "sigmoid" => nn.Sigmoid(),
            _ => null,
        },
    };

    /// The engine floor: the program's layers as a TorchSharp `nn.Sequential`, `optim.Adam`
    /// (lr 1e-3), cross-entropy, on the same training tensors and the same mini-batches as the
    /// methods, each step in a dispose scope. What a hand-written TorchSharp loop costs.
    private static Figures FloorRun(NestedProgram program, DataSplit data, Experiment experiment, Device device)
    {
        ResetPeakMemory();
        torch.manual_seed(experiment.Seed);
        var layers = program.Nodes.Select((n, i) => ($"{i}", FloorModule(n)!)).ToArray();
        using var model = nn.Sequential(layers);
        model.to(device);
        using var optimizer = optim.Adam(model.parameters(), lr: 1e-3);
        var train = data.Train;
        var epochs = new List<(double Wall, double Cpu, long Faults)>();
        for (int epoch = 1; epoch <= experiment.Epochs; epoch++)
        {
            var start = Usage.Now();
            model.train();
            foreach (var batch in MiniBatches.Epoch(train, experiment.Batch, experiment.Seed, epoch))
            {
                using var scope = NewDisposeScope();
                using (batch)
                {
                    var x = batch.Inputs.to(ScalarType.Float32).to(device);
                    var y = batch.Labels.to(device);
                    optimizer.zero_grad();
                    var loss = nn.functional.cross_entropy(model.forward(x), y);
                    loss.backward();
                    optimizer.step();
                }
            }
            epochs.Add(Usage.Now().Minus(start));
        }
        var timed = epochs.Skip(1).ToArray();
        return new Figures(Median(timed.Select(t => t.Wall)), Median(timed.Select(t => t.Cpu)), Median(timed.Select(t => (double)t.Faults)),
            PeakMemoryBytes() / 1048576.0, 0, new Dictionary<string, long>(), double.NaN);
    }

    // ---- process figures ----------------------------------------------------------------------

    /// Wall clock, process CPU time (user + system) and minor page faults at one moment.
    private readonly record struct Usage(double Wall, double Cpu, long Faults)
    {
        public static Usage Now()
        {
            var wall = System.Diagnostics.Stopwatch.GetTimestamp() / (double)System.Diagnostics.Stopwatch.Frequency;
            if (OperatingSystem.IsLinux())
                try
                {
                    if (GetRUsage(0, out var u) == 0)
                        return new Usage(wall, u.UserSeconds + u.UserMicroseconds * 1e-6 + u.SystemSeconds + u.SystemMicroseconds * 1e-6, u.MinorFaults);
                }
                catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
            return new Usage(wall, System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds, 0);
        }

        public (double Wall, double Cpu, long Faults) Minus(Usage start) => (Wall - start.Wall, Cpu - start.Cpu, Faults - start.Faults);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RUsage
    {
        public long UserSeconds, UserMicroseconds, SystemSeconds, SystemMicroseconds;
        public long MaxRss, SharedRss, UnsharedData, UnsharedStack, MinorFaults, MajorFaults, Swaps, BlockIn, BlockOut, MessagesSent, MessagesReceived, Signals, VoluntarySwitches, InvoluntarySwitches;
    }

    [DllImport("libc", EntryPoint = "getrusage")]
    private static extern int GetRUsage(int who, out RUsage usage);

    /// " (lambda1 1024 B)": what the per-example figure holds, each variable with its step-rule state.
    private static string Contents(IReadOnlyDictionary<string, long> variables) =>
        variables.Count == 0 ? "" : $" ({string.Join(", ", variables.Select(v => $"{v.Key} {v.Value} B"))})";

    /// The epochs after the first in which no player's schedule holds it (the trainer's rule).
    private static int LearningEpochsAfterFirst(ResolvedMethod method, int epochs)
    {
        int learning = 0;
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            bool held = false;
            foreach (var player in method.Formulation.PlayerNames)
                if (method.StepRules(player) is Lifting.Solvers.IScheduledStepRule scheduled)
                {
                    scheduled.Advance(epoch, epochs);
                    held |= scheduled.Holding;
                }
            if (epoch > 1 && !held) learning++;
        }
        return learning;
    }

    private static string I(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

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
