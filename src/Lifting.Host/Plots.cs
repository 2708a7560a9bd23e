using System.Text.Json.Nodes;
using ScottPlot;

namespace Lifting.Host;

/// One curve: a label and its points (epoch, value); points whose value is missing or not finite
/// are left out.
public sealed record Curve(string Label, double[] Epochs, double[] Values);

/// The PNG plots of run folders (ScottPlot), 800×500 pixels:
///
///   a run's plots/:  loss.png (training loss of the plain forward pass, validation and test loss,
///                    the lifted objective), accuracy.png (validation and test accuracy),
///                    defect.png (mean |h_l − f_l(h_{l−1})| per block, log scale) and
///                    multipliers.png (mean |λ_l|² per block, log scale) for methods that have them;
///   compare / demo:  the same quantities overlaid, one curve per run.
///
/// Series k of a plot is drawn in `Palette[k]`.
public static class Plots
{
    public const int Width = 800, Height = 500;

    /// Category10, fixed so that a series' colour is known.
    public static readonly string[] Palette = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" };

    /// Draws a run's plots from its metrics.jsonl into RUN/plots; returns the files written.
    public static IReadOnlyList<string> ForRun(RunFolder folder)
    {
        var metrics = folder.ReadMetrics();
        var written = new List<string>();
        if (metrics.Count == 0) return written;
        var dir = folder.PlotsFolder;
        void Draw(string name, string title, string yLabel, IReadOnlyList<Curve> curves, bool log)
        {
            if (curves.All(c => c.Values.Length == 0)) return;
            var path = Path.Combine(dir, name);
            Save(path, title, yLabel, curves, log);
            written.Add(path);
        }
        var run = Path.GetFileName(folder.Path);
        Draw("loss.png", $"{run}: loss", "loss", new[]
        {
            Series(metrics, "training loss", "train_loss"),
            Series(metrics, "validation loss", "validation_loss"),
            Series(metrics, "test loss", "test_loss"),
            Series(metrics, "lifted objective (mean over mini-batches)", "objective"),
        }, log: false);
        Draw("accuracy.png", $"{run}: accuracy", "accuracy", new[]
        {
            Series(metrics, "validation accuracy", "validation_accuracy"),
            Series(metrics, "test accuracy", "test_accuracy"),
        }, log: false);
        int blocks = metrics.Max(m => (m["defects"] as JsonArray)?.Count ?? 0);
        Draw("defect.png", $"{run}: mean |defect| per block, all training examples", "mean |h_l - f_l(h_l-1)|",
            Enumerable.Range(0, blocks).Select(l => Series(metrics, $"block {l + 1}", "defects", l)).ToArray(), log: true);
        int multipliers = metrics.Max(m => (m["multiplier_norms"] as JsonArray)?.Count ?? 0);
        Draw("multipliers.png", $"{run}: mean |λ_l|² per block (last mini-batch)", "mean |λ_l|²",
            Enumerable.Range(0, multipliers).Select(l => Series(metrics, $"block {l + 1}", "multiplier_norms", l)).ToArray(), log: true);
        return written;
    }

    /// Overlays of several runs (label, metrics) into `dir`: validation accuracy, training loss and
    /// mean defect; returns the files written.
    public static IReadOnlyList<string> Overlay(string dir, IReadOnlyList<(string Label, IReadOnlyList<JsonObject> Metrics)> runs)
    {
        Directory.CreateDirectory(dir);
        var written = new List<string>();
        void Draw(string name, string title, string yLabel, IReadOnlyList<Curve> curves, bool log)
        {
            if (curves.All(c => c.Values.Length == 0)) return;
            var path = Path.Combine(dir, name);
            Save(path, title, yLabel, curves.Where(c => c.Values.Length > 0).ToArray(), log);
            written.Add(path);
        }
        Draw("accuracy.png", "validation accuracy", "accuracy", runs.Select(r => Series(r.Metrics, r.Label, "validation_accuracy")).ToArray(), log: false);
        Draw("test-accuracy.png", "test accuracy", "accuracy", runs.Select(r => Series(r.Metrics, r.Label, "test_accuracy")).ToArray(), log: false);
        Draw("loss.png", "training loss (plain forward pass)", "loss", runs.Select(r => Series(r.Metrics, r.Label, "train_loss")).ToArray(), log: false);
        Draw("defect.png", "mean |defect| over blocks, all training examples", "mean |h_l - f_l(h_l-1)|",
            runs.Select(r => MeanSeries(r.Metrics, r.Label, "defects")).ToArray(), log: true);
        return written;
    }

    /// One value per epoch from `key` (element `index` when the value is an array).
    public static Curve Series(IReadOnlyList<JsonObject> metrics, string label, string key, int? index = null)
    {
        var xs = new List<double>();
        var ys = new List<double>();
        foreach (var m in metrics)
        {
            var node = m[key];
            if (index is { } i) node = node is JsonArray a && i < a.Count ? a[i] : null;
            var y = Number(node);
            if (double.IsFinite(y))
            {
                xs.Add(Number(m["epoch"]));
                ys.Add(y);
            }
        }
        return new Curve(label, xs.ToArray(), ys.ToArray());
    }

    private static Curve MeanSeries(IReadOnlyList<JsonObject> metrics, string label, string key)
    {
        var xs = new List<double>();
        var ys = new List<double>();
        foreach (var m in metrics)
            if (m[key] is JsonArray { Count: > 0 } a)
            {
                var values = a.Select(Number).ToArray();
                if (values.All(double.IsFinite))
                {
                    xs.Add(Number(m["epoch"]));
                    ys.Add(values.Average());
                }
            }
        return new Curve(label, xs.ToArray(), ys.ToArray());
    }

    /// A JSON number (read from a file or built in memory) as a double; NaN for anything else.
    private static double Number(JsonNode? node) => node is not JsonValue v ? double.NaN
        : v.TryGetValue<double>(out var d) ? d
        : v.TryGetValue<int>(out var i) ? i
        : v.TryGetValue<long>(out var l) ? l
        : double.NaN;

    /// Draws `curves` and writes the PNG atomically. On a log scale the values are drawn as log10
    /// with ticks labelled 1e±k (values ≤ 0 are left out).
    public static void Save(string path, string title, string yLabel, IReadOnlyList<Curve> curves, bool log)
    {
        using var plot = new Plot();
        double low = double.PositiveInfinity, high = double.NegativeInfinity;
        for (int k = 0; k < curves.Count; k++)
        {
            var c = curves[k];
            var keep = Enumerable.Range(0, c.Values.Length).Where(i => !log || c.Values[i] > 0).ToArray();
            if (keep.Length == 0) continue;
            var xs = keep.Select(i => c.Epochs[i]).ToArray();
            var ys = keep.Select(i => log ? Math.Log10(c.Values[i]) : c.Values[i]).ToArray();
            low = Math.Min(low, ys.Min());
            high = Math.Max(high, ys.Max());
            var scatter = plot.Add.Scatter(xs, ys, Color.FromHex(Palette[k % Palette.Length]));
            scatter.LegendText = c.Label;
            scatter.LineWidth = 2;
            scatter.MarkerSize = xs.Length <= 40 ? 5 : 0;
        }
        if (log)
            // Decades when the values span two or more, else values at plain ticks of log10.
            plot.Axes.Left.TickGenerator = high - low >= 2
                ? new ScottPlot.TickGenerators.NumericAutomatic
                {
                    IntegerTicksOnly = true,
                    MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
                    LabelFormatter = y => $"1e{y:0}",
                }
                : new ScottPlot.TickGenerators.NumericAutomatic
                {
                    LabelFormatter = y => Math.Pow(10, y).ToString("G3", System.Globalization.CultureInfo.InvariantCulture),
                };
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        plot.Title(title);
        plot.XLabel("epoch");
        plot.YLabel(yLabel + (log ? " (log scale)" : ""));
        // The legend goes where the first curve is not: below a rising one, above a falling one.
        var first = curves.FirstOrDefault(c => c.Values.Length > 1);
        plot.ShowLegend(first is not null && first.Values[^1] > first.Values[0] ? Alignment.LowerRight : Alignment.UpperRight);
        var bytes = plot.GetImageBytes(Width, Height, ImageFormat.Png);
        var temp = path + ".tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, path, overwrite: true);
    }
}
