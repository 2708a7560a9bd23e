using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Training;

namespace Lifting.Host;

/// A grid of experiments as data: base settings and axes, each axis a setting (or a method
/// parameter) with its values:
///
///     { "base": { "data": "digits", "net": "64-64-10", "epochs": 10 },
///       "axes": { "seed": [0, 1, 2], "method": ["backprop", "extraprop"] } }
///
/// The grid is the product of the axes, the seed axis outermost: each seed is one round that runs
/// every other point in turn, so a drift in the machine's speed reaches all methods alike and
/// each time ratio is taken within a round. Every point is resolved and checked before anything
/// is written. Each run gets its own run folder under OUT/runs/; OUT/results.md and
/// OUT/results.json hold one row per point of the non-seed axes: mean ± sd over the seeds of the
/// test accuracy at the validation-selected epoch, the validation accuracy and the final defect,
/// and the median over the rounds of s/epoch and of its ratio to backprop's in the same round
/// (to the round's first point when backprop is not on the grid); OUT/plots/ overlays the
/// rows' curves averaged over the seeds.
public sealed record SweepDefinition(JsonObject Base, IReadOnlyList<(string Key, IReadOnlyList<JsonNode> Values)> Axes)
{
    public static SweepDefinition FromFile(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"sweep file not found: {path}");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException x) { throw new UsageException($"{path}: malformed JSON: {x.Message.Split('\n')[0]}"); }
        if (root is not JsonObject o) throw new UsageException($"{path}: a sweep file is a JSON object with \"base\" and \"axes\"");
        var unknown = o.Select(p => p.Key).FirstOrDefault(k => k is not ("base" or "axes"));
        if (unknown is not null) throw new UsageException($"{path}: unknown key '{unknown}' (a sweep file has \"base\" and \"axes\")");
        var @base = o["base"] as JsonObject ?? (o["base"] is null ? new JsonObject() : throw new UsageException($"{path}: \"base\" must be an object of settings"));
        if (o["axes"] is not JsonObject axes || axes.Count == 0) throw new UsageException($"{path}: \"axes\" must be an object of at least one setting and its values, e.g. {{\"seed\": [0, 1, 2]}}");
        var list = new List<(string, IReadOnlyList<JsonNode>)>();
        foreach (var (key, node) in axes)
        {
            if (node is not JsonArray { Count: > 0 } values || values.Any(v => v is null))
                throw new UsageException($"{path}: axis '{key}' must be a non-empty array of values");
            if (key is "out" or "environment") throw new UsageException($"{path}: '{key}' cannot be an axis");
            list.Add((key, values.Select(v => v!.DeepClone()).ToArray()));
        }
        return new SweepDefinition((JsonObject)@base.DeepClone(), list);
    }

    /// The grid's points: (label, experiment, round), the seed axis outermost.
    public IReadOnlyList<(string Label, Experiment Experiment, int Round)> Points(string source)
    {
        var ordered = Axes.Where(a => a.Key == "seed").Concat(Axes.Where(a => a.Key != "seed")).ToArray();
        Experiment start;
        try { start = Experiment.FromJson(Base, new Experiment()); }
        catch (UsageException u) { throw new UsageException($"{source}: base: {u.Message}"); }
        var points = new List<(string, Experiment, int)>();
        var indices = new int[ordered.Length];
        while (true)
        {
            var e = start;
            var label = new List<string>();
            // The method first, so that its parameters on other axes are read against it.
            foreach (var k in Enumerable.Range(0, ordered.Length).OrderBy(k => ordered[k].Key == "method" ? 0 : 1))
            {
                var (key, values) = ordered[k];
                var text = Experiment.Text(key, values[indices[k]]);
                try { e = e.Set(key, text, fromFlag: false); }
                catch (UsageException u) { throw new UsageException($"{source}: axis {key}: {u.Message}"); }
            }
            for (int k = 0; k < ordered.Length; k++)
                if (ordered[k].Values.Count > 1) label.Add($"{ordered[k].Key}={Experiment.Text(ordered[k].Key, ordered[k].Values[indices[k]])}");
            int round = ordered.Length > 0 && ordered[0].Key == "seed" ? indices[0] : 0;
            points.Add((label.Count == 0 ? "run" : string.Join(",", label), e, round));
            int d = ordered.Length - 1;
            while (d >= 0 && ++indices[d] == ordered[d].Values.Count) indices[d--] = 0;
            if (d < 0) break;
        }
        return points;
    }
}

public static class Sweep
{
    public static Command Create(CliContext context)
    {
        var command = new Command("sweep", "Run a grid of experiments from a JSON file (base settings and axes) and write one results table (results.md, results.json) with plots.");
        var file = new Argument<string>("FILE") { Description = "the sweep file: {\"base\": {settings}, \"axes\": {\"setting\": [values]}}" };
        var output = new Option<string>("--out") { Description = "the sweep's folder (default runs/DATE-TIME-sweep)", HelpName = "DIR" };
        var force = new Option<bool>("--force") { Description = "replace the contents of a non-empty --out folder" };
        var json = new Option<bool>("--json") { Description = "make the last line of output the results as JSON" };
        var plain = new Option<bool>("--plain") { Description = "plain lines instead of live progress bars" };
        command.Add(file);
        foreach (var o in new Option[] { output, force, json, plain }) command.Add(o);
        command.SetAction(parsed =>
        {
            var path = parsed.GetValue(file)!;
            var definition = SweepDefinition.FromFile(path);
            using var folder = RunFolder.ForOutput(parsed.GetValue(output), parsed.GetValue(force), "sweep");
            return Run(definition, path, folder, context, parsed.GetValue(json), parsed.GetValue(plain), title: $"sweep {path}");
        });
        return command;
    }

    private sealed record Done(string Label, int Round, Experiment Experiment, RunOutcome Outcome, string Folder, double SecondsPerEpoch);

    /// Runs the grid into `folder`; returns the exit code (130 when interrupted, after writing the
    /// results of the runs done).
    public static int Run(SweepDefinition definition, string source, RunFolder folder, CliContext context, bool json, bool plain, string title)
    {
        var output = context.Output;
        var points = definition.Points(source);
        // Every point is resolved and checked before anything is written.
        var warnings = new List<string>();
        foreach (var (label, e, _) in points)
        {
            try
            {
                using var prepared = PreparedRun.Prepare(e);
                warnings.AddRange(prepared.Warnings.Where(w => !warnings.Contains(w)));
            }
            catch (Exception x) when (x is UsageException or ArgumentException or Lifting.Data.DataFormatException)
            {
                throw new UsageException($"{source}: point {label}: {x.Message}");
            }
        }
        folder.Create();
        folder.WriteJson("sweep.json", new JsonObject
        {
            ["base"] = definition.Base.DeepClone(),
            ["axes"] = new JsonObject(definition.Axes.Select(a => KeyValuePair.Create(a.Key, (JsonNode?)new JsonArray(a.Values.Select(v => v.DeepClone()).ToArray())))),
        });
        output.WriteLine($"{title}: {points.Count} runs into {folder.Path}");
        foreach (var warning in warnings) output.WriteLine(warning);
        var done = new List<Done>();
        var wall = System.Diagnostics.Stopwatch.StartNew();
        int exit = 0;
        for (int i = 0; i < points.Count; i++)
        {
            var (label, e, round) = points[i];
            using var runFolder = RunFolder.ForNewRun(Path.Combine(folder.Path, "runs", $"{i + 1:D3}-{Safe(label)}"), force: false);
            using var run = PreparedRun.Prepare(e);
            var progress = Progress.Create(output, context.Live && !plain, epochLines: false);
            var outcome = Runner.Execute(run, runFolder, progress, context.Cancellation, title: $"[{i + 1}/{points.Count}] {label}");
            var seconds = LearningSeconds(outcome.History);
            done.Add(new Done(label, round, e, outcome, runFolder.Path, seconds));
            var s = outcome.Summary;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"[{i + 1}/{points.Count}] {label}: {outcome.Status}, selected epoch {s["selected_epoch"]?.ToJsonString() ?? "–"}, validation {s["validation_accuracy"]?.ToJsonString() ?? "–"}, " +
                $"test {s["test_accuracy"]?.ToJsonString() ?? "–"}{(s["defect"] is { } d ? $", defect {d}" : "")}, {seconds:F3} s/epoch, {outcome.Wall.TotalSeconds:F1} s"));
            if (outcome.ExitCode == 130) { exit = 130; break; }
        }
        var (markdown, rows) = Results(done, definition);
        folder.WriteText("results.md", markdown);
        var results = new JsonObject
        {
            ["rows"] = rows,
            ["runs"] = new JsonArray(done.Select(d => (JsonNode)new JsonObject
            {
                ["label"] = d.Label, ["round"] = d.Round, ["folder"] = Path.GetRelativePath(folder.Path, d.Folder), ["status"] = d.Outcome.Status,
                ["summary"] = d.Outcome.Summary.DeepClone(), ["seconds_per_epoch"] = Round(d.SecondsPerEpoch), ["wall_seconds"] = Round(d.Outcome.Wall.TotalSeconds),
            }).ToArray()),
            ["wall_seconds"] = Round(wall.Elapsed.TotalSeconds),
            ["threads"] = EngineInfo.Current(TorchSharp.torch.CPU).Threads,
        };
        folder.WriteJson("results.json", results);
        try { Plots.Overlay(Path.Combine(folder.Path, "plots"), GroupCurves(done)); }
        catch (Exception x) when (x is not OutOfMemoryException) { output.WriteLine($"warning: plots not drawn ({x.GetType().Name}: {x.Message.ReplaceLineEndings(" ")})"); }
        output.WriteLine();
        output.Write(markdown);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{done.Count} runs in {wall.Elapsed.TotalSeconds:F0} s; table, runs and plots in {folder.Path}"));
        if (json) output.WriteLine(rows.ToJsonString(Cli.Json));
        if (exit == 0 && done.Any(d => d.Outcome.ExitCode == 1)) exit = 1;
        return exit;
    }

    /// The median training seconds of the learning epochs (those in which no player was held).
    private static double LearningSeconds(IReadOnlyList<EpochMetrics> history)
    {
        var s = history.Where(m => m.Held.Count == 0).Select(m => m.Seconds).OrderBy(v => v).ToArray();
        if (s.Length == 0) s = history.Select(m => m.Seconds).OrderBy(v => v).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }

    private static (string Markdown, JsonArray Rows) Results(IReadOnlyList<Done> done, SweepDefinition definition)
    {
        string Group(Done d) => string.Join(",", d.Label.Split(',').Where(p => !p.StartsWith("seed=", StringComparison.Ordinal)));
        string Key(Done d) => string.Join(",", d.Label.Split(',').Where(p => !p.StartsWith("seed=", StringComparison.Ordinal) && !p.StartsWith("method=", StringComparison.Ordinal)));
        double Ratio(Done d)
        {
            var round = done.Where(o => o.Round == d.Round && Key(o) == Key(d)).ToArray();
            var reference = round.FirstOrDefault(o => o.Experiment.Method == "backprop") ?? round[0];
            return d.SecondsPerEpoch / reference.SecondsPerEpoch;
        }
        var seeds = definition.Axes.FirstOrDefault(a => a.Key == "seed").Values?.Count ?? 1;
        var md = new StringBuilder();
        md.AppendLine($"| {(definition.Axes.Any(a => a.Key != "seed" && a.Values.Count > 1) ? "point" : "run")} | family | runs | test acc. at the validation-selected epoch (mean ± sd) | validation acc. | mean defect at the end (before any feasibility pass) | s/epoch | × backprop |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        var rows = new JsonArray();
        foreach (var group in done.GroupBy(Group))
        {
            var all = group.ToArray();
            var ok = all.Where(d => d.Outcome.Status == RunOutcome.Completed).ToArray();
            double[] Values(string key) => ok.Select(d => d.Outcome.Summary[key] is JsonValue v && v.TryGetValue<double>(out var x) ? x : double.NaN).Where(double.IsFinite).ToArray();
            var test = Values("test_accuracy");
            var validation = Values("validation_accuracy");
            var defect = Values("defect_before_finish");
            var seconds = Median(all.Select(d => d.SecondsPerEpoch));
            var ratio = Median(all.Select(Ratio));
            var method = all[0].Experiment.Method;
            var family = Methods.Find(method).Family;
            var statuses = all.Where(d => d.Outcome.Status != RunOutcome.Completed).GroupBy(d => d.Outcome.Status).Select(g => $"{g.Count()} {g.Key}").ToArray();
            var name = group.Key.Length == 0 ? method : group.Key.Replace("method=", "", StringComparison.Ordinal);
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {family} | {ok.Length}/{all.Length}{(statuses.Length > 0 ? $" ({string.Join(", ", statuses)})" : "")} | {MeanSd(test, "F4")} | {MeanSd(validation, "F4")} | {(defect.Length == 0 ? "–" : MeanSd(defect, Cli.SciFormat(1)))} | {seconds:F3} | {ratio:F2} |"));
            rows.Add(new JsonObject
            {
                ["point"] = name, ["method"] = method, ["family"] = family, ["runs"] = all.Length, ["completed"] = ok.Length,
                ["test_accuracy_mean"] = Mean(test), ["test_accuracy_sd"] = Sd(test), ["validation_accuracy_mean"] = Mean(validation), ["validation_accuracy_sd"] = Sd(validation),
                ["defect_mean"] = defect.Length == 0 ? null : Mean(defect), ["defect_sd"] = defect.Length == 0 ? null : Sd(defect),
                ["seconds_per_epoch"] = Round(seconds), ["ratio_to_backprop"] = Round(ratio),
            });
        }
        md.AppendLine();
        md.AppendLine($"Mean ± sd over {seeds} seed(s); accuracy on the test split at the epoch of best validation accuracy; defect = mean |h_l − f_l(h_(l−1))| over blocks and training examples after the last epoch (before the penalty's final feasibility pass, which sets it to 0; for DistProp the z-score violation |g_ε(z)| in units of σ); s/epoch = median over the learning epochs, × backprop = median over the rounds of the ratio to backprop's s/epoch in the same round.");
        return (md.ToString(), rows);
    }

    /// Per row, its runs' curves averaged over the seeds (epochs all its completed runs reached).
    private static IReadOnlyList<(string Label, IReadOnlyList<JsonObject> Metrics)> GroupCurves(IReadOnlyList<Done> done)
    {
        var curves = new List<(string, IReadOnlyList<JsonObject>)>();
        foreach (var group in done.GroupBy(d => string.Join(",", d.Label.Split(',').Where(p => !p.StartsWith("seed=", StringComparison.Ordinal)))))
        {
            var histories = group.Select(d => d.Outcome.History).Where(h => h.Count > 0).ToArray();
            if (histories.Length == 0) continue;
            int epochs = histories.Min(h => h.Count);
            var metrics = new List<JsonObject>();
            for (int k = 0; k < epochs; k++)
            {
                var at = histories.Select(h => h[k]).ToArray();
                var o = new JsonObject
                {
                    ["epoch"] = k + 1,
                    ["validation_accuracy"] = at.All(m => m.ValidationAccuracy is not null) ? at.Average(m => m.ValidationAccuracy!.Value) : null,
                    ["test_accuracy"] = at.Average(m => m.TestAccuracy),
                    ["train_loss"] = at.Average(m => m.TrainLoss),
                    ["defects"] = at[0].Defects.Count == 0 ? new JsonArray() : new JsonArray(at.Average(m => m.MeanDefect)),
                };
                metrics.Add(o);
            }
            var label = group.Key.Length == 0 ? group.First().Experiment.Method : group.Key.Replace("method=", "", StringComparison.Ordinal);
            curves.Add((histories.Length > 1 ? $"{label} (mean of {histories.Length})" : label, metrics));
        }
        return curves;
    }

    private static string Safe(string label) =>
        new string(label.Select(c => char.IsLetterOrDigit(c) || c is '-' or '.' or '=' or ',' ? c : '_').ToArray()).Replace('=', '-').Replace(',', '_');

    private static double Round(double v) => double.IsFinite(v) ? Math.Round(v, 6) : v;
    private static double Mean(double[] v) => v.Length == 0 ? double.NaN : Round(v.Average());
    private static double Sd(double[] v) => v.Length < 2 ? 0 : Round(Math.Sqrt(v.Sum(x => (x - v.Average()) * (x - v.Average())) / (v.Length - 1)));
    private static string MeanSd(double[] v, string format) => v.Length == 0 ? "–"
        : v.Length == 1 ? v[0].ToString(format, CultureInfo.InvariantCulture)
        : $"{v.Average().ToString(format, CultureInfo.InvariantCulture)} ± {Sd(v).ToString(format, CultureInfo.InvariantCulture)}";

    private static double Median(IEnumerable<double> values)
    {
        var s = values.Where(double.IsFinite).OrderBy(v => v).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }
}
