using System.Globalization;
using System.Text;
using Lifting.Data;

namespace Lifting.Examples;

/// Do the default settings carry over? Methods at their defaults (no per-network tuning; by default
/// ExtraProp and DistProp, `methods=` any list) against back-propagation (Adam, its default) on
/// other networks, MNIST-10k unless `data=` says otherwise: two and
/// three hidden layers, ReLU and tanh (cut after every hidden activation, the builder's default;
/// DistProp's states are the pre-activations), and seed 001's conv net. A run carries over when its
/// final mean defect is below 1e-2 and its validation-selected test accuracy is within 2 points of
/// back-propagation's.
///
///   distprop-carry [nets=NET,NET,...] [methods=extraprop,distprop] [seeds=0] [epochs=20] [out=...]
/// A method may carry settings (`extraprop:lr=1e-3;settle=0.2`) as in `distprop-table`'s rows.
public static class DistPropCarryOver
{
    public static readonly string[] DefaultNets =
    {
        "dense:256/relu/dense:256/relu/dense:10",
        "dense:256/tanh/dense:256/tanh/dense:10",
        "dense:256/relu/dense:256/relu/dense:256/relu/dense:10",
        "dense:256/tanh/dense:256/tanh/dense:256/tanh/dense:10",
        "seed001-conv",
    };

    public static int Run(Settings settings)
    {
        var nets = settings.TryGetValue("nets", out var n) ? n.Split(',', StringSplitOptions.TrimEntries) : DefaultNets;
        var methods = settings.Text("methods", "extraprop,distprop").Split(',', StringSplitOptions.TrimEntries);
        var seeds = settings.Ints("seeds", "0");
        int epochs = settings.Int("epochs", 20);
        int patience = settings.Int("patience", 5);
        var output = settings.Text("out", "docs/results/distprop-carry-over.md");
        var dataName = settings.Text("data", "mnist-10k");
        using var data = DatasetCatalog.Load(dataName);

        var md = new StringBuilder();
        md.AppendLine("| network | method | test acc. (selected), mean over seeds (± sd with several) | backprop's | difference (points) | final mean defect, worst seed | carries over (defect < 1e-2, within 2 points) | s per learning epoch, × backprop |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var net in nets)
        {
            var rows = new[] { DistPropTable.Row.Parse($"backprop=backprop@{net}") }
                .Concat(methods.Select(m => DistPropTable.Row.Parse($"{m.Split(':')[0]}={m}@{net}"))).ToArray();
            var outcomes = DistPropTable.RunRows(rows, data, seeds, epochs, 128, patience);
            double Mean(IEnumerable<DistPropTable.Outcome> o) => o.Any(x => x.Failure is not null) ? double.NaN : o.Average(x => x.Test);
            string Spread(IReadOnlyList<DistPropTable.Outcome> o)
            {
                if (o.Count < 2 || o.Any(x => x.Failure is not null)) return "";
                var mean = o.Average(x => x.Test);
                return string.Create(CultureInfo.InvariantCulture, $" ± {Math.Sqrt(o.Sum(x => (x.Test - mean) * (x.Test - mean)) / (o.Count - 1)):F4}");
            }
            var reference = Mean(outcomes[0]);
            for (int r = 1; r < rows.Length; r++)
            {
                var o = outcomes[r];
                var accuracy = Mean(o);
                var defect = o.Any(x => x.Failure is not null) ? double.NaN : o.Max(x => x.Defect);
                var gap = 100 * (accuracy - reference);
                bool carries = defect < 1e-2 && gap >= -2;
                var ratio = o.Where(x => x.Failure is null).Select(x => x.Ratio).DefaultIfEmpty(double.NaN).Average();
                md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {net} | {rows[r].Settings} | {(double.IsNaN(accuracy) ? "diverged" : accuracy.ToString("F4", CultureInfo.InvariantCulture) + Spread(o))} | {reference:F4}{Spread(outcomes[0])} | " +
                    $"{gap:+0.00;-0.00} | {defect:E1} | {(carries ? "yes" : "no")} | {o.Where(x => x.Failure is null).Select(x => x.Seconds).DefaultIfEmpty(double.NaN).Average():F2}, ×{ratio:F2} |"));
            }
            Console.WriteLine(md.ToString());
        }
        var command = $"dotnet run --project src/Lifting.Examples -c Release -- distprop-carry {string.Join(" ", settings.Select(kv => DistPropTable.Quoted($"{kv.Key}={kv.Value}")))}";
        var header = $"<!-- produced by: {command} -->\n" +
                     $"{dataName} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), batch 128, seeds {string.Join(", ", seeds)}, at most {epochs} epochs (constant-step methods stop after {patience} epochs " +
                     $"without a better validation accuracy), {Threads.Count} LibTorch thread(s). Defaults only: no per-network setting. Test accuracy at the " +
                     "validation-selected epoch. The defect is the formulation's mean constraint violation at the end (ExtraProp's |h − f(h_prev)|, the penalty's after its feasibility pass, DistProp's z-score violation |g_ε(z)|; 0 where the method reports none).\n\n";
        DistPropTable.Write(output, header + md);
        return 0;
    }
}
