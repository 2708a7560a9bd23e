using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Training;

namespace Lifting.Distributed;

/// A layer-parallel run's split: which contiguous range of the lifted program's blocks each
/// segment process evaluates, chosen so that the most expensive range is as cheap as it can be.
///
/// Covered: problems whose objective splits by blocks (`ILayerSplittable`: DistProp, whose blocks
/// meet only at the class Gaussians of the cuts; online alternating minimisation, whose blocks meet
/// at the codes of the cuts; the multiple-shooting Lagrangian, whose blocks meet at the cuts'
/// per-example states). Refused in one line: any other formulation, batch
/// statistics or dropout, a step rule that couples a player's variables (a global-norm clip: each
/// segment would clip its own part), more segments than blocks.
public sealed class LayerPlan
{
    private LayerPlan(IReadOnlyList<BlockRange> ranges, IReadOnlyList<double> costs, string exchanges)
    {
        Ranges = ranges;
        Costs = costs;
        Exchanges = exchanges;
    }

    /// What crosses a cut between segments each step (`ILayerSplittable.Exchanges`).
    public string Exchanges { get; }

    /// Segment k's blocks, in order; together every block once.
    public IReadOnlyList<BlockRange> Ranges { get; }
    /// The cost model's multiply-adds per mini-batch of each block (the split balances their sums).
    public IReadOnlyList<double> Costs { get; }
    public int Segments => Ranges.Count;

    /// The segment whose range holds block `block`.
    public int SegmentOf(int block)
    {
        for (int k = 0; k < Ranges.Count; k++)
            if (Ranges[k].Contains(block)) return k;
        throw new ArgumentOutOfRangeException(nameof(block));
    }

    public static LayerPlan Of(ResolvedMethod method, ILiftedProblem problem, int segments, int batchSize)
    {
        var name = method.Name;
        if (problem is not ILayerSplittable split)
            throw new ArgumentException($"layer-parallel training: {name} does not split by blocks (covered: the distprop methods, whose blocks meet only at the class Gaussians of the cuts; the am methods, at the codes of the cuts; the multiple-shooting Lagrangians (extraprop, gda, auglag) and the quadratic penalty (penalty, regularized), at the states of the cuts; docs/distributed.md)");
        if (problem.Weights.Program.HasModes)
            throw new ArgumentException($"layer-parallel training: {name} on a program with batch normalisation or dropout is not covered (docs/distributed.md)");
        foreach (var player in method.Formulation.PlayerNames)
            if (method.StepRules(player).CouplesVariables)
                throw new ArgumentException($"layer-parallel training: the step rule of {player} ({method.StepRules(player).Name}) transforms all of the player's variables together; split over segments it would differ (drop --clip-norm)");
        var program = split.LiftedProgram;
        int blocks = program.Segments.Count;
        if (segments < 1) throw new ArgumentException("layer-parallel training: at least one segment is needed.");
        if (segments > blocks)
            throw new ArgumentException($"layer-parallel training: {segments} segments for a program of {blocks} blocks (at most one segment per block; add cuts)");
        var costs = Enumerable.Range(0, blocks).Select(l => MultiplyAdds(program, program.Segments[l]) * split.RowsOf(l, batchSize)).ToArray();
        var ranges = Split(costs, segments);
        split.Validate(ranges, method.Solver);
        return new LayerPlan(ranges, costs, split.Exchanges);
    }

    /// Multiply-adds per row of a block: each node's weight matrices times the positions its
    /// output has per channel (1 for a dense layer, H·W for a convolution); elementwise work is left out.
    public static double MultiplyAdds(NestedProgram program, Segment segment)
    {
        double total = 0;
        foreach (var node in segment.Nodes)
        {
            var shape = node.OutputShape;
            double positions = shape.Length <= 1 ? 1 : shape.Skip(1).Aggregate(1.0, (a, b) => a * b);
            foreach (var p in node.Parameters)
            {
                var ps = program.ParameterSpecs[p].Shape;
                if (ps.Length >= 2) total += ps.Aggregate(1.0, (a, b) => a * b) * positions;
            }
        }
        return Math.Max(total, 1);
    }

    /// Contiguous ranges minimising the largest range's cost (dynamic programming over cut points;
    /// ties go to the earliest split).
    public static IReadOnlyList<BlockRange> Split(IReadOnlyList<double> costs, int parts)
    {
        int n = costs.Count;
        var prefix = new double[n + 1];
        for (int i = 0; i < n; i++) prefix[i + 1] = prefix[i] + costs[i];
        // best[k, j]: the smallest largest cost of splitting blocks [0, j) into k ranges.
        var best = new double[parts + 1, n + 1];
        var from = new int[parts + 1, n + 1];
        for (int k = 0; k <= parts; k++)
            for (int j = 0; j <= n; j++) best[k, j] = double.PositiveInfinity;
        best[0, 0] = 0;
        for (int k = 1; k <= parts; k++)
            for (int j = k; j <= n; j++)
                for (int i = k - 1; i < j; i++)
                {
                    var c = Math.Max(best[k - 1, i], prefix[j] - prefix[i]);
                    if (c < best[k, j]) (best[k, j], from[k, j]) = (c, i);
                }
        var ranges = new BlockRange[parts];
        for (int k = parts, j = n; k >= 1; k--)
        {
            int i = from[k, j];
            ranges[k - 1] = new BlockRange(i, j);
            j = i;
        }
        return ranges;
    }
}
