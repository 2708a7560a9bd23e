using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Turns a nested program into a lifted problem: which variables exist (weights, per-example
/// states, multipliers, …), how they are initialised, and the game evaluated on a mini-batch.
/// A new surrogate is one new class implementing this interface.
public interface IFormulation
{
    string Name { get; }
    /// One line for `lifting methods`.
    string Description { get; }
    /// The players the lifted problem creates, in order (e.g. weights, states, multipliers).
    IReadOnlyList<string> PlayerNames { get; }
    /// True when some player maximises (a saddle-point problem) rather than all minimising.
    bool HasMaximisingPlayers { get; }

    /// The sub-problems an alternating solver visits by default, in order.
    IReadOnlyList<SubProblem> DefaultSchedule { get; }

    /// Lifts `context.Program` over the training set `context.Train`, starting from `weights`
    /// (which the lifted problem takes over and updates in place).
    ILiftedProblem Lift(LiftContext context, Weights weights);
}

/// Everything a formulation needs to allocate its variables.
public sealed record LiftContext(
    NestedProgram Program,
    Dataset Train,
    Device Device,
    ScalarType DType,
    int Seed,
    Func<string, IStepRule> StepRuleFor,
    int SolverMemorySlots)
{
    public int ExampleCount => Train.Count;

    /// The forward-pass values of every lifted value (the chain's block outputs h_1 … h_{L−1}) for
    /// every training example, in segment order, computed in chunks without a graph; the caller
    /// owns the returned [N, …] tensors. With `newtonIterations` > 0 the values of each chunk are
    /// that many Newton multiple-shooting iterations from zero (`NewtonShooting`: every segment
    /// evaluated at once per iteration; the forward pass itself from the graph's depth on).
    public Tensor[] ForwardStates(Weights weights, int chunk = 1024, int newtonIterations = 0)
    {
        if (newtonIterations < 0) throw new ArgumentOutOfRangeException(nameof(newtonIterations), $"Invalid Newton iterations: {newtonIterations} (expected >= 0; 0 = a sequential forward pass).");
        using var _ = no_grad();
        return OverChunks(weights, chunk, (inputs, _, pass) =>
        {
            var newton = newtonIterations > 0 ? NewtonShooting.Solve(Program, weights.Tensors, inputs, newtonIterations, pass: pass).States : null;
            var values = new Tensor[Program.Segments.Count - 1];
            for (int l = 0; l < values.Length; l++)
            {
                var segment = Program.Segments[l];
                values[l] = newton is not null ? newton[l] : segment.Forward(segment.InputsFrom(inputs, values), weights.Tensors, pass);
            }
            return values.Select(v => v.detach().clone()).ToArray();
        });
    }

    /// The multipliers that satisfy the adjoint equations at the forward-pass states of every
    /// training example, λ_v = −d(Σ_i ℓ_i)/dh_v through every consumer of v (LeCun 1988;
    /// `MultipleShooting.AdjointMultipliers` for one batch), in chunks of `chunk` examples (each
    /// example's row depends on that example only), one per lifted value.
    public Tensor[] AdjointMultipliers(Weights weights, int chunk = 1024) =>
        OverChunks(weights, chunk, (inputs, labels, pass) => MultipleShooting.AdjointMultipliers(Program, weights.Tensors, inputs, labels, pass));

    /// One value per lifted value for every training example: `perChunk` on each chunk of `chunk`
    /// examples (inputs in the problem's dtype, labels, a pass holding the chunk's batch statistics),
    /// its rows joined in example order.
    private Tensor[] OverChunks(Weights weights, int chunk, Func<Tensor, Tensor, ForwardPass?, Tensor[]> perChunk)
    {
        var parts = Enumerable.Range(0, Program.Segments.Count - 1).Select(_ => new List<Tensor>()).ToArray();
        var x = Train.Inputs;
        for (long start = 0; start < x.shape[0]; start += chunk)
        {
            using var scope = NewDisposeScope();
            using var pass = ForwardPass.Measuring(Program, weights, Seed); // batch statistics of the chunk
            long count = Math.Min(chunk, x.shape[0] - start);
            var values = perChunk(x.narrow(0, start, count).to(DType), Train.Labels.narrow(0, start, count), pass);
            for (int l = 0; l < parts.Length; l++) parts[l].Add(values[l].MoveToOuterDisposeScope());
        }
        return ConcatenateChunks(parts);
    }

    /// One [N, …] tensor per lifted value from its per-chunk parts (the parts are disposed).
    private static Tensor[] ConcatenateChunks(List<Tensor>[] parts) => parts.Select(p =>
    {
        var all = cat(p.ToArray(), 0).DetachFromDisposeScope();
        foreach (var t in p) t.Dispose();
        return all;
    }).ToArray();

    /// Allocates the step-rule state (plus solver memory) for one variable of player `player`.
    public StepState NewState(string player, Tensor variable, bool rowIndexed)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var slots = StepRuleFor(player).Init(variable, rowIndexed);
        var memory = Enumerable.Range(0, SolverMemorySlots).Select(_ => zeros_like(variable).DetachFromDisposeScope()).ToArray();
        return new StepState(slots.Slots, memory, slots.Workspace) { Persistent = !rowIndexed };
    }
}

/// A lifted problem whose batch game draws random numbers of its own per mini-batch (seeded by the
/// run's seed and the step), over the whole batch: split into shards, the draws would differ from
/// the one-process run's, so data-parallel training refuses it.
public interface IDrawsPerBatch
{
    /// What is drawn, for the refusal's message.
    string Draws { get; }
}

/// The lifted problem: all tensors the formulation owns (problem state).
public interface ILiftedProblem : IDisposable
{
    IFormulation Formulation { get; }
    /// The program's weights, updated in place by training; evaluation is a plain forward pass.
    Weights Weights { get; }

    /// The per-example variables and their optimiser state (empty when nothing is per example).
    ExampleStore Store { get; }

    /// Bytes of every auxiliary tensor the formulation keeps for the run, beyond the network's
    /// weights and their optimiser state: the per-example store (with its optimiser state) plus
    /// shared auxiliary variables (e.g. DistProp's per-class means, scales and multipliers). Per-batch
    /// variables, which die with the batch game, do not count.
    long StateBytes { get; }

    /// Gathers the mini-batch's rows of every per-example variable into a game. The solver
    /// updates the game's variables; `Commit` scatters the rows (and their optimiser state) back.
    IBatchGame Batch(MiniBatch batch);

    /// Called after each epoch (1-based), e.g. to advance a penalty schedule.
    void EndEpoch(int epoch);

    /// Called once after training, before the final measurements (e.g. the final feasibility pass
    /// of MAC, whose effect on the defect the trainer reports).
    void Finish();

    /// Per block l = 1 … L−1, the mean |h_l − f_l(h_{l−1})| at the current variables (no graph)
    /// over the examples at `rows`, or over the whole training set when `rows` is null; empty when
    /// nothing is lifted.
    IReadOnlyList<double> MeasureDefects(Tensor? rows = null);

    /// Scalars worth logging (e.g. the current μ); may be empty.
    IReadOnlyDictionary<string, double> Diagnostics { get; }
}

/// A game on one mini-batch.
public interface IBatchGame : IGame, IDisposable
{
    /// Per block l = 1 … L−1, the mean |defect| g_l = h_l − f_l(h_{l−1}) at the last operator
    /// evaluation (before any ε-shrinkage); empty when nothing is lifted.
    IReadOnlyList<double> Defects { get; }

    /// Per block, the mean squared norm per example of the multipliers as they are when read;
    /// empty without multipliers.
    IReadOnlyList<double> MultiplierNorms { get; }

    /// The loss term ℓ at the last operator evaluation (mean over the batch).
    double Loss { get; }

    /// The lifted objective (the function the solver descends and ascends, e.g. ℓ + Σ⟨λ, g⟩) at the
    /// last operator evaluation (mean over the batch).
    double LiftedObjective { get; }

    /// Writes the batch's rows of per-example variables and their optimiser state back.
    void Commit();
}

/// Standard player names, shared by formulations so that per-player settings carry across them.
public static class PlayerNames
{
    public const string Weights = "weights";
    public const string States = "states";
    public const string Multipliers = "multipliers";
    /// Per-batch activations of an inference-learning method (the free and clamped solutions of a contrastive surrogate).
    public const string Activations = "activations";
}

/// A formulation whose games have no operator: its own solver solves every sub-problem in closed
/// form (Taylor et al.'s ADMM). Diagnostics that need the weights' direction (`--cosine`) refuse it.
public interface IClosedFormFormulation { }
