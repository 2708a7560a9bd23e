using System.Globalization;
using Lifting.Distributed;
using ScottPlot;

namespace Lifting.Examples;

/// Issue 28's model of throughput on 2–64 machines, from measured per-step compute and bytes:
/// synchronous data-parallel backprop (ring all-reduce of the weights every step) against
/// synchronous layer-parallel DistProp (a balanced split of the blocks, `LayerPlan.Split`; the
/// boundary Gaussians' gradient parts every evaluation), at 1, 10 and 100 Gbit/s. Writes a markdown
/// table and a PNG (docs/results/layer-parallel-model.*).
///
///   scaling-model bp-step=S weights=BYTES blocks=S0,S1,... boundary=BYTES evaluations=E batch=B
///                 [latency-us=100] [deep=64] out=PATH.md
///
/// bp-step: backprop's seconds per step in one process of one thread; blocks: DistProp's seconds
/// per step of each block (one thread); boundary: bytes of one cut's gradient part (one way, one
/// evaluation); deep: also the same model for a chain of that many blocks whose hidden blocks each
/// cost the measured second block (and backprop's step scaled by the chain's multiply-adds).
public static class ScalingModel
{
    private static readonly int[] Machines = { 1, 2, 4, 8, 16, 32, 64 };
    private static readonly double[] Gbits = { 1, 10, 100 };

    public static int Run(Settings s)
    {
        var inv = CultureInfo.InvariantCulture;
        double bpStep = s.Real("bp-step", double.NaN), weights = s.Real("weights", double.NaN), boundary = s.Real("boundary", double.NaN);
        var blocks = s.Reals("blocks", "");
        int evaluations = s.Int("evaluations", 2), batch = s.Int("batch", 128), deep = s.Int("deep", 64);
        double latency = s.Real("latency-us", 100) * 1e-6, deepScale = s.Real("deep-bp-scale", double.NaN);
        var output = s.Text("out", "layer-parallel-model.md");
        if (double.IsNaN(bpStep) || double.IsNaN(weights) || double.IsNaN(boundary) || blocks.Length < 2)
            throw new ArgumentException("scaling-model needs bp-step=S weights=BYTES blocks=S0,S1,... boundary=BYTES (see docs/results/layer-parallel-model.md)");

        // Data-parallel backprop: the batch's compute split P ways, then a ring all-reduce of the
        // weights' gradient: 2(P−1)/P·W bytes and 2(P−1) messages per machine.
        double DataParallel(double step, double w, int p, double bytesPerSecond) =>
            step / p + (p == 1 ? 0 : 2.0 * (p - 1) / p * w / bytesPerSecond + 2.0 * (p - 1) * latency);
        // Layer-parallel: the slowest segment of the balanced split of min(P, L) segments, plus the
        // exchanges on the critical path (each evaluation one message each way per boundary, in
        // parallel over boundaries) and the coordinator's message with the batch's indices.
        double LayerParallel(double[] costs, int p, double bytesPerSecond)
        {
            int k = Math.Min(p, costs.Length);
            var ranges = LayerPlan.Split(costs, k);
            double slowest = ranges.Max(r => costs.Skip(r.First).Take(r.End - r.First).Sum());
            return slowest + (k == 1 ? 0 : evaluations * (latency + boundary / bytesPerSecond) + latency + 8.0 * batch / bytesPerSecond);
        }

        var hidden = blocks[1];
        var deepBlocks = new[] { blocks[0] }.Concat(Enumerable.Repeat(hidden, deep - 2)).Append(blocks[^1]).ToArray();
        double deepBp = bpStep * (double.IsNaN(deepScale) ? deepBlocks.Sum() / blocks.Sum() : deepScale);
        double deepWeights = weights * (double.IsNaN(deepScale) ? deepBlocks.Sum() / blocks.Sum() : deepScale);

        var lines = new List<string>
        {
            $"<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- scaling-model {string.Join(" ", s.Select(p => $"{p.Key}={p.Value}"))} -->",
            "# A model of throughput on 2–64 machines: layer-parallel DistProp against data-parallel backprop",
            "",
            "Examples per second of one synchronous training step, from the measured inputs below (docs/results/layer-parallel-speed.md and the command line above), " +
            $"batch {batch}, a per-message latency of {latency * 1e6:F0} µs. Data-parallel backprop: {bpStep * 1e3:F2} ms of compute per step split over P machines, then a ring all-reduce " +
            $"of the {weights / 1e6:F2} MB gradient (2(P−1)/P of it per machine, 2(P−1) messages). Layer-parallel DistProp: the blocks' measured {string.Join(" + ", blocks.Select(b => (b * 1e3).ToString("F2", inv)))} ms " +
            $"split over min(P, blocks) machines as `LayerPlan` balances them, plus {evaluations} exchanges of {boundary / 1e3:F1} KB per boundary per step on the critical path. " +
            $"A segment cannot be split further (the model gives layer parallelism at most one machine per block), so the measured {blocks.Length}-block network stops scaling at {blocks.Length} machines; " +
            $"the deep rows take a chain of {deep} blocks whose hidden blocks each cost the measured second block (backprop's step and weights scaled by the chain's cost, {deepBp * 1e3:F1} ms and {deepWeights / 1e6:F1} MB). " +
            "Not modelled: pipelining, overlap of communication with compute, stragglers, the coordinator's own per-step overhead (measured on this machine in layer-parallel-speed.md).",
            "",
            "| network | Gbit/s | method | " + string.Join(" | ", Machines.Select(m => $"P = {m}")) + " |",
            "|---|---:|---|" + string.Concat(Machines.Select(_ => "---:|")),
        };
        var series = new List<(string Label, double[] Values, int Style)>();
        foreach (var (name, costs, step, w) in new[] { ($"measured ({blocks.Length} blocks)", blocks, bpStep, weights), ($"chain of {deep} blocks", deepBlocks, deepBp, deepWeights) })
            foreach (var g in Gbits)
            {
                double bytesPerSecond = g * 1e9 / 8;
                var dp = Machines.Select(p => batch / DataParallel(step, w, p, bytesPerSecond)).ToArray();
                var lp = Machines.Select(p => batch / LayerParallel(costs, p, bytesPerSecond)).ToArray();
                lines.Add($"| {name} | {g:G3} | data-parallel backprop | " + string.Join(" | ", dp.Select(x => x.ToString("F0", inv))) + " |");
                lines.Add($"| {name} | {g:G3} | layer-parallel DistProp | " + string.Join(" | ", lp.Select(x => x.ToString("F0", inv))) + " |");
                if (name.StartsWith("chain", StringComparison.Ordinal))
                {
                    series.Add(($"data-parallel backprop, {g:G3} Gbit/s", dp, (int)Math.Log10(g)));
                    series.Add(($"layer-parallel DistProp, {g:G3} Gbit/s", lp, 3 + (int)Math.Log10(g)));
                }
            }
        lines.Add("");
        lines.Add($"![throughput of the {deep}-block chain]({Path.GetFileNameWithoutExtension(output)}.png)");
        File.WriteAllLines(output, lines);

        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        foreach (var (label, values, style) in series)
        {
            var line = plot.Add.Scatter(Machines.Select(m => Math.Log2(m)).ToArray(), values.Select(v => Math.Log10(v)).ToArray());
            line.LegendText = label;
            line.Color = palette.GetColor(style < 3 ? 0 : 1);
            line.LinePattern = (style % 3) switch { 0 => LinePattern.Dotted, 1 => LinePattern.Dashed, _ => LinePattern.Solid };
            line.LineWidth = 2;
        }
        plot.Axes.Bottom.Label.Text = "machines (log2)";
        plot.Axes.Left.Label.Text = "examples per second (log10)";
        plot.Title($"Model: {deep}-block chain, batch {batch}");
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(Path.ChangeExtension(output, ".png"), 800, 500);
        Console.WriteLine(string.Join(Environment.NewLine, lines));
        return 0;
    }
}
