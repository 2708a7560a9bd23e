using System.Text.Json.Nodes;
using ScottPlot;

namespace Lifting.Host;

/// One curve: a label and its points (epoch, value); points whose value is missing or not finite
/// are left out. `Style` picks its colour, line pattern and marker (`Plots.Palette`, ...): the same
/// quantity or run keeps its style in every plot, also where other curves are left out.
public sealed record Curve(string Label, double[] Epochs, double[] Values)
{
    public int? Style { get; init; }
}

/// The PNG plots of run folders (ScottPlot), 800×500 pixels:
///
///   a run's plots/:  loss.png (training loss of the plain forward pass, validation and test loss,
///                    the lifted objective), accuracy.png (validation and test accuracy),
///                    defect.png (mean |h_l − f_l(h_{l−1})| per block, log scale) and
///                    multipliers.png (mean |λ_l|² per block, log scale) for methods that have them;
///   compare / demo:  the same quantities overlaid, one curve per run.
///
/// A curve's style (`Curve.Style`, else its place in the plot) fixes its colour, `Palette[k]`, its
/// line pattern and its marker; in a run's plots the style follows the quantity (training,
/// validation, test, lifted objective; block k), in overlays the run. Curves are drawn widest
/// first, so a curve lying exactly under a later one still shows at its edges. Log axes are
/// labelled at decades (1e-3, 1e-2, ...) with minor ticks at 2–9 × 10^k.
public static class Plots
{
    public const int Width = 800, Height = 500;

    /// Category10, fixed so that a series' colour is known.
    public static readonly string[] Palette = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" };

    /// Line patterns and markers by style, cycled: neighbours differ in both.
    private static readonly LinePattern[] Patterns = { LinePattern.Solid, LinePattern.Dashed, LinePattern.Dotted, LinePattern.DenselyDashed };
    private static readonly MarkerShape[] Markers = { MarkerShape.FilledCircle, MarkerShape.OpenSquare, MarkerShape.FilledTriangleUp, MarkerShape.OpenDiamond, MarkerShape.Eks, MarkerShape.FilledSquare, MarkerShape.OpenCircle };

    /// Colour, pattern and marker of style k.
    public static (string Colour, LinePattern Pattern, MarkerShape Marker) StyleOf(int k) =>
        (Palette[k % Palette.Length], Patterns[k % Patterns.Length], Markers[k % Markers.Length]);

    /// Styles of a run's own curves: one per quantity across loss.png and accuracy.png.
    private const int TrainingStyle = 0, ValidationStyle = 1, TestStyle = 2, ObjectiveStyle = 3;

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
            Series(metrics, "training loss", "train_loss") with { Style = TrainingStyle },
            Series(metrics, "validation loss", "validation_loss") with { Style = ValidationStyle },
            Series(metrics, "test loss", "test_loss") with { Style = TestStyle },
            Series(metrics, "lifted objective (mean over mini-batches)", "objective") with { Style = ObjectiveStyle },
        }, log: false);
        Draw("accuracy.png", $"{run}: accuracy", "accuracy", new[]
        {
            Series(metrics, "validation accuracy", "validation_accuracy") with { Style = ValidationStyle },
            Series(metrics, "test accuracy", "test_accuracy") with { Style = TestStyle },
        }, log: false);
        int blocks = metrics.Max(m => (m["defects"] as JsonArray)?.Count ?? 0);
        Draw("defect.png", $"{run}: mean |defect| per block, all training examples", "mean |h_l - f_l(h_l-1)|",
            Enumerable.Range(0, blocks).Select(l => Series(metrics, $"block {l + 1}", "defects", l) with { Style = l }).ToArray(), log: true);
        int multipliers = metrics.Max(m => (m["multiplier_norms"] as JsonArray)?.Count ?? 0);
        Draw("multipliers.png", $"{run}: mean |λ_l|² per block (last mini-batch)", "mean |λ_l|²",
            Enumerable.Range(0, multipliers).Select(l => Series(metrics, $"block {l + 1}", "multiplier_norms", l) with { Style = l }).ToArray(), log: true);
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
        // Run k keeps style k in every plot, also where runs without the quantity are left out.
        Draw("accuracy.png", "validation accuracy", "accuracy", runs.Select((r, k) => Series(r.Metrics, r.Label, "validation_accuracy") with { Style = k }).ToArray(), log: false);
        Draw("test-accuracy.png", "test accuracy", "accuracy", runs.Select((r, k) => Series(r.Metrics, r.Label, "test_accuracy") with { Style = k }).ToArray(), log: false);
        Draw("loss.png", "training loss (plain forward pass)", "loss", runs.Select((r, k) => Series(r.Metrics, r.Label, "train_loss") with { Style = k }).ToArray(), log: false);
        Draw("defect.png", "mean |defect| over blocks, all training examples", "mean |h_l - f_l(h_l-1)|",
            runs.Select((r, k) => MeanSeries(r.Metrics, r.Label, "defects") with { Style = k }).ToArray(), log: true);
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
    /// on an axis from the decade below the smallest to the decade above the largest, labelled at
    /// each decade (values ≤ 0 are left out).
    public static void Save(string path, string title, string yLabel, IReadOnlyList<Curve> curves, bool log, string xLabel = "epoch")
    {
        using var plot = new Plot();
        double low = double.PositiveInfinity, high = double.NegativeInfinity;
        var drawn = curves.Select((c, k) => (Curve: c, Style: c.Style ?? k)).ToArray();
        // Widest first: a curve lying exactly under a later, narrower one still shows at its edges.
        for (int order = 0; order < drawn.Length; order++)
        {
            var (c, style) = drawn[order];
            var keep = Enumerable.Range(0, c.Values.Length).Where(i => !log || c.Values[i] > 0).ToArray();
            if (keep.Length == 0) continue;
            var xs = keep.Select(i => c.Epochs[i]).ToArray();
            var ys = keep.Select(i => log ? Math.Log10(c.Values[i]) : c.Values[i]).ToArray();
            low = Math.Min(low, ys.Min());
            high = Math.Max(high, ys.Max());
            var (colour, pattern, marker) = StyleOf(style);
            var scatter = plot.Add.Scatter(xs, ys, Color.FromHex(colour));
            scatter.LegendText = c.Label;
            scatter.LineWidth = 2 + 1.5f * (drawn.Length - 1 - order);
            scatter.LinePattern = pattern;
            scatter.MarkerShape = marker;
            scatter.MarkerSize = xs.Length <= 40 ? 6 + 2 * (drawn.Length - 1 - order) : 0;
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        if (log && double.IsFinite(low))
        {
            var (from, to, ticks) = LogTicks(low, high);
            var manual = new ScottPlot.TickGenerators.NumericManual();
            foreach (var (position, label) in ticks)
                if (label is null) manual.AddMinor(position);
                else manual.AddMajor(position, label);
            plot.Axes.Left.TickGenerator = manual;
            plot.Axes.AutoScale();
            plot.Axes.SetLimitsY(from, to);
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel + (log ? " (log scale)" : ""));
        // The legend goes where the first curve is not: below a rising one, above a falling one.
        var first = curves.FirstOrDefault(c => c.Values.Length > 1);
        plot.ShowLegend(first is not null && first.Values[^1] > first.Values[0] ? Alignment.LowerRight : Alignment.UpperRight);
        var bytes = plot.GetImageBytes(Width, Height, ImageFormat.Png);
        var temp = path + ".tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, path, overwrite: true);
    }

    /// The log axis for log10 values in [low, high]: from the decade at or below `low` to the one
    /// at or above `high` (at least one decade apart), major ticks at each decade labelled "1e-3",
    /// "1e-2", ... (label "1e0" for 1), minor ticks (label null) at 2–9 × 10^k. Past 12 decades
    /// only every second (third, ...) decade is labelled.
    public static (double From, double To, IReadOnlyList<(double Position, string? Label)> Ticks) LogTicks(double low, double high)
    {
        var from = Math.Floor(low);
        var to = Math.Ceiling(high);
        if (to <= from) to = from + 1;
        int decades = (int)(to - from);
        int every = (decades + 11) / 12;
        var ticks = new List<(double, string?)>();
        for (int k = (int)from; k <= (int)to; k++)
        {
            ticks.Add((k, (k - (int)from) % every == 0 ? $"1e{k}" : null));
            if (k < (int)to && every == 1)
                for (int m = 2; m <= 9; m++) ticks.Add((k + Math.Log10(m), null));
        }
        return (from, to, ticks);
    }
}
