using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Solvers;

/// A bilevel solver step: first the inner players are solved for the current outer players, then
/// the outer players take one step at that solution (seed 002 §2: the inner minimisations of a
/// contrastive surrogate, then the step on θ):
///
///   repeat  x_in ← inner.Step(x_in)   (outer players held)
///   until   max |Δx_in| ≤ tolerance   or `maxIterations` iterations;
///   then    outer.Step(x_out)         (inner players held).
///
/// With tolerance 0 every step runs exactly `maxIterations` inner iterations (e.g. predictive
/// coding's T inference steps) and no convergence check is paid for.
public sealed class InnerSolve : ISolver
{
    private readonly ISolver inner, outer;
    private readonly IReadOnlyList<string> innerPlayers;

    public InnerSolve(ISolver inner, IReadOnlyList<string> innerPlayers, int maxIterations, double tolerance, ISolver outer)
    {
        if (maxIterations < 1) throw new ArgumentOutOfRangeException(nameof(maxIterations), $"Invalid inference steps: {maxIterations} (expected >= 1).");
        if (!(tolerance >= 0) || double.IsInfinity(tolerance)) throw new ArgumentOutOfRangeException(nameof(tolerance), $"Invalid tolerance: {tolerance} (expected a finite value >= 0).");
        if (innerPlayers.Count == 0) throw new ArgumentException("The inner problem needs at least one player.", nameof(innerPlayers));
        this.inner = inner;
        this.outer = outer;
        this.innerPlayers = innerPlayers;
        MaxIterations = maxIterations;
        Tolerance = tolerance;
    }

    public int MaxIterations { get; }
    public double Tolerance { get; }
    /// The solver of the inner iterations (read by data-parallel training, which runs them on each
    /// replica's shard of the batch).
    public ISolver Inner => inner;
    /// The solver of the outer step (read by data-parallel training, which runs it on the summed
    /// directions of the replicas).
    public ISolver Outer => outer;
    /// The players the inner iterations move.
    public IReadOnlyList<string> InnerPlayers => innerPlayers;

    public string Name => $"{outer.Name} after {inner.Name} on {string.Join("+", innerPlayers)} "
        + (Tolerance > 0 ? $"(to max|Δ| <= {Tolerance:G3}, at most {MaxIterations} iterations)" : $"({MaxIterations} iterations)");

    public int MemorySlots => Math.Max(inner.MemorySlots, outer.MemorySlots);

    /// Inner iterations taken by the last step (for diagnostics and tests).
    public int LastIterations { get; private set; }

    public void Step(IGame game)
    {
        using (var view = new Restricted(game, innerPlayers))
            LastIterations = Solve(inner, view, MaxIterations, Tolerance);
        var others = game.Players.Select(p => p.Name).Where(n => !innerPlayers.Contains(n)).ToArray();
        if (others.Length == 0) return;
        using var rest = new Restricted(game, others);
        outer.Step(rest);
    }

    /// Iterates `solver` on `game` until no variable moves by more than `tolerance` in one iteration
    /// (checked only when tolerance > 0) or `maxIterations` iterations; returns the count.
    public static int Solve(ISolver solver, IGame game, int maxIterations, double tolerance)
    {
        for (int k = 1; k <= maxIterations; k++)
        {
            if (tolerance == 0)
            {
                solver.Step(game);
                continue;
            }
            using var scope = NewDisposeScope();
            var before = Solvers.Snapshot(game.Players);
            solver.Step(game);
            double change = 0;
            using (no_grad())
                for (int p = 0; p < game.Players.Count; p++)
                    for (int i = 0; i < game.Players[p].Variables.Count; i++)
                        change = Math.Max(change, (game.Players[p].Variables[i] - before[p][i]).abs().max().ToDouble());
            if (!double.IsFinite(change)) throw new InvalidOperationException($"The inner solve diverged at iteration {k} (a variable moved by {change}).");
            if (change <= tolerance) return k;
        }
        return maxIterations;
    }
}
