using System.Globalization;
using System.Text;
using Lifting.Data;

namespace Lifting.Examples;

/// Robustness to hyperparameters (seed 001 §5.1: 103 of 170 DistProp configurations within 10 % of
/// the best). A two-level half-fraction factorial over six settings (the 32 corners of the 2⁶ cube
/// with an even number of high levels), for DistProp (ε, samples per class, the three step sizes,
/// multiplier placement) and, over a grid of the same size, for ExtraProp (the three step sizes, ε,
/// the inner iteration, settling). One seed per configuration; reported: the fraction of
/// configurations whose validation-selected test accuracy is within 10 % of the best (≥ 0.9 × best),
/// the same on validation accuracy, and every configuration.
///
///   distprop-sweep [methods=distprop,distprop-seed001,extraprop] [net=784-256-10] [epochs=10] [seed=0] [out=...]
public static class DistPropSweep
{
    /// The two levels of each factor, per method.
    public static readonly IReadOnlyDictionary<string, (string Name, string Low, string High)[]> Factors =
        new Dictionary<string, (string, string, string)[]>
        {
            ["distprop-seed001"] = new[]
            {
                ("eps", "0.1", "0.5"), ("samples", "1", "16"), ("lr", "0.003", "0.03"),
                ("lr-states", "0.03", "0.3"), ("lr-multipliers", "0.003", "0.03"), ("multipliers", "class", "example"),
            },
            // Centred on the default's settings (ε 0.2, S 16, Adam 0.001, Gaussian step 0.1,
            // multiplier step 0.1, per example); σ stays at 1.
            ["distprop"] = new[]
            {
                ("eps", "0.1", "0.4"), ("samples", "1", "16"), ("lr", "0.0003", "0.003"),
                ("lr-states", "0.03", "0.3"), ("lr-multipliers", "0.03", "0.3"), ("multipliers", "class", "example"),
            },
            ["extraprop"] = new[]
            {
                ("lr", "0.001", "0.004"), ("lr-states", "0.25", "1"), ("lr-multipliers", "0.5", "2"),
                ("eps", "0", "0.01"), ("inner", "0", "1"), ("settle", "0", "0.2"),
            },
        };

    /// The configurations of the half fraction: corners with an even number of high levels.
    public static IReadOnlyList<MethodSettings> Grid(string method)
    {
        if (!Factors.TryGetValue(method, out var factors))
            throw new ArgumentException($"Unknown sweep method '{method}' (expected one of: {string.Join(", ", Factors.Keys)}).");
        var grid = new List<MethodSettings>();
        for (int corner = 0; corner < 1 << factors.Length; corner++)
        {
            if (System.Numerics.BitOperations.PopCount((uint)corner) % 2 != 0) continue;
            var settings = new MethodSettings(method);
            for (int f = 0; f < factors.Length; f++) settings = settings.With(factors[f].Name, (corner >> f & 1) == 1 ? factors[f].High : factors[f].Low);
            grid.Add(settings);
        }
        return grid;
    }

    public static int Run(Settings settings)
    {
        var methods = settings.Text("methods", "distprop,extraprop").Split(',', StringSplitOptions.TrimEntries).Distinct().ToArray();
        var grids = methods.ToDictionary(m => m, Grid);
        var net = settings.Text("net", "784-256-10");
        int epochs = settings.Int("epochs", 10);
        int seed = settings.Int("seed", 0);
        var output = settings.Text("out", "docs/results/distprop-robustness.md");
        using var data = DatasetCatalog.Load(settings.Text("data", "mnist-10k"));

        var md = new StringBuilder();
        var summary = new StringBuilder();
        summary.AppendLine("| method | configurations | best test acc. (its validation acc.) | within 10 % of the best test acc. | within 10 % of the best validation acc. | diverged |");
        summary.AppendLine("|---|---|---|---|---|---|");
        foreach (var method in methods)
        {
            var rows = grids[method].Select((s, i) => new DistPropTable.Row($"{method} #{i + 1}", s, net)).ToArray();
            var outcomes = DistPropTable.RunRows(rows, data, new[] { seed }, epochs, 128, patience: 0).Select(o => o[0]).ToArray();
            var done = outcomes.Where(o => o.Failure is null).ToArray();
            var best = done.MaxBy(o => o.Test)!;
            var bestValidation = done.Max(o => o.Validation);
            int nearTest = done.Count(o => o.Test >= 0.9 * best.Test), nearValidation = done.Count(o => o.Validation >= 0.9 * bestValidation);
            summary.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {method} | {rows.Length} | {best.Test:F4} ({best.Validation:F4}) | {nearTest}/{rows.Length} = {(double)nearTest / rows.Length:P0} | " +
                $"{nearValidation}/{rows.Length} = {(double)nearValidation / rows.Length:P0} | {rows.Length - done.Length} |"));
            md.AppendLine($"\n### {method}: every configuration, by validation accuracy\n");
            md.AppendLine("| " + string.Join(" | ", Factors[method].Select(f => f.Name)) + " | validation acc. | test acc. (selected epoch) | final defect |");
            md.AppendLine("|" + string.Concat(Factors[method].Select(_ => "---|")) + "---|---|---|");
            foreach (var (row, o) in rows.Zip(outcomes).OrderByDescending(p => double.IsNaN(p.Second.Validation) ? -1 : p.Second.Validation))
                md.AppendLine("| " + string.Join(" | ", Factors[method].Select(f => row.Method.Values[f.Name])) + string.Create(CultureInfo.InvariantCulture,
                    $" | {(o.Failure is null ? o.Validation.ToString("F4", CultureInfo.InvariantCulture) : "diverged")} | {(o.Failure is null ? $"{o.Test:F4} ({o.Epoch})" : "–")} | {o.Defect:E1} |"));
            Console.WriteLine(summary.ToString());
        }
        var command = $"dotnet run --project src/Lifting.Examples -c Release -- distprop-sweep {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))}";
        var header = $"<!-- produced by: {command} -->\n" +
                     $"MNIST-10k, network {net}, batch 128, seed {seed}, {epochs} epochs, {Threads.Count} LibTorch thread(s). Test accuracy at the " +
                     "validation-selected epoch; every other setting at the method's default.\n\n";
        DistPropTable.Write(output, header + summary + md);
        return 0;
    }
}
