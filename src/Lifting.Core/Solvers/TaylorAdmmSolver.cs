using System.Diagnostics;
using Lifting.Formulations;

namespace Lifting.Solvers;

/// The solver of Taylor et al.'s ADMM (`TaylorAdmm`): its sub-problems are solved exactly in
/// closed form (least squares, a linear system per layer, an entrywise ReLU case split, Newton on
/// the output), so there is no step rule and nothing for a gradient solver to do. On the chunk that
/// completes the training set it runs one iteration, in the order of `TaylorAdmm`'s class
/// comment (`TaylorAdmmProblem.Iterate`); on the other chunks it only counts them. `Seconds`
/// accumulates the iterations' time.
public sealed class TaylorAdmmSolver : ISolver
{
    private readonly Stopwatch watch = new();

    public string Name => "taylor-admm (closed-form sweeps, one per epoch)";
    public int MemorySlots => 0;
    public double Seconds => watch.Elapsed.TotalSeconds;

    public void Step(IGame game)
    {
        if (game is not TaylorAdmmGame admm)
            throw new ArgumentException($"The Taylor ADMM solver runs the games of Taylor's ADMM only; got {game.GetType().Name}.");
        watch.Start();
        try { admm.Step(); }
        finally { watch.Stop(); }
    }
}
