using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Solvers;

/// One code sub-problem of online alternating minimisation (seed 004 eqs. 4–5): the codes of one
/// block (a row-indexed player) and the descent direction of its own objective at the current values.
public sealed record CodeProblem(Player Player, Func<IReadOnlyList<Tensor>> Direction);

/// One weight sub-problem (seed 004 eq. 6 / Algorithm 3): the parameters of one block and the
/// descent direction of its local objective at the current weights, with the codes fixed. `Memory`
/// is non-null for a block whose objective is the co-activation surrogate of AM-mem (eq. 7); it
/// brings the memories up to date the first time it is read in an iteration.
public sealed record WeightProblem(Player Player, Func<IReadOnlyList<Tensor>> Direction, Func<CoActivationMemory?> Memory);

/// The co-activation memories of one fully connected block, A = Σ ã ãᵀ and B = Σ c ãᵀ over the
/// inputs ã = [a; 1] (the bias is the last column of W̃ = [W | b]) and the codes c: the quadratic
/// surrogate ½ tr(W̃ A W̃ᵀ) − tr(W̃ Bᵀ) of Mairal et al. (2009), whose minimiser is W̃ = B A⁻¹.
public sealed record CoActivationMemory(Tensor A, Tensor B);

/// A game made of the local sub-problems of online alternating minimisation (seed 004 §2,
/// Algorithms 1–3): the codes are re-initialised by a forward pass, visited top-down, and then the
/// weight sub-problems, which no longer share a variable, are solved independently.
public interface IAlternatingMinimisationGame : IGame
{
    /// encodeInput (Algorithm 2): the codes become the forward pass's pre-activations at the current
    /// weights, and their step state (momentum) is reset. Does nothing when that is already so.
    void Encode();

    /// updateCodes (Algorithm 1): the code sub-problems in the order they are visited, top-down.
    IReadOnlyList<CodeProblem> CodeProblems { get; }

    /// updateWeights (Algorithm 3): one sub-problem per block once the codes are fixed. Empty when
    /// the weights do not move after this iteration (offline AM before the training set is complete).
    IReadOnlyList<WeightProblem> WeightProblems();

    /// Called once the weights have moved: records the iteration's objective; the codes are stale.
    void EndIteration();
}

/// Options of the alternating-minimisation solver.
public sealed record AlternatingMinimisationSolverOptions
{
    /// Gradient steps on each code sub-problem per iteration (seed 004 appendix B: 1 for LeNet-5;
    /// the authors' code: 5 for MLPs).
    public int CodeSteps { get; init; } = 1;
    /// Steps of the weights' step rule on each gradient-based weight sub-problem per iteration.
    public int WeightSteps { get; init; } = 1;
    /// Block-coordinate-descent sweeps over the columns of W̃ for a memory sub-problem (AM-mem).
    public int Sweeps { get; init; } = 1;
    /// Solve the weight sub-problems of the blocks concurrently, one thread per block.
    public bool Parallel { get; init; }

    public void Validate()
    {
        if (CodeSteps < 1) throw new ArgumentOutOfRangeException(nameof(CodeSteps), $"Invalid code steps: {CodeSteps} (expected >= 1).");
        if (WeightSteps < 1) throw new ArgumentOutOfRangeException(nameof(WeightSteps), $"Invalid weight steps: {WeightSteps} (expected >= 1).");
        if (Sweeps < 1) throw new ArgumentOutOfRangeException(nameof(Sweeps), $"Invalid sweeps: {Sweeps} (expected >= 1).");
    }
}

/// Online alternating minimisation (Choromanska et al. 2019; seed 004 Algorithms 1–3). One
/// iteration on a mini-batch:
///
///   encodeInput   c_l ← f_l^lin(σ(c_{l−1})), l = 1 … L−1 (the forward pass's pre-activations)
///   updateCodes   for l = L−1 down to 1: `CodeSteps` steps c_l ← c_l − d(∇ E_l(c_l)), d the codes'
///                 step rule (SGD with Nesterov momentum), E_l the code's own sub-problem
///   updateWeights for every block, independently: `WeightSteps` steps W_l ← W_l − d(∇ L_l(W_l)) with
///                 the weights' step rule (Adam: AM-Adam), or, for a memory sub-problem (AM-mem),
///                 `Sweeps` sweeps of block-coordinate descent over the columns j of W̃ = [W | b]:
///                 w̃_j ← w̃_j + (b_j − W̃ a_j) / A_jj  (Mairal et al. 2009, Algorithm 2)
///
/// With `Parallel` the weight sub-problems run concurrently, one thread per block. They share no
/// variable and no step state, every tensor a block creates lives in that thread's dispose scope,
/// LibTorch's autograd runs independent graphs on independent threads, and every thread runs the
/// same kernels with the same intra-op thread count as the sequential order (LibTorch sets a new
/// thread's count from the global setting at its first parallel kernel), so the weights are
/// bit-identical to the sequential order's (tested). `CodePhaseSeconds` and `WeightPhaseSeconds`
/// accumulate the time of the two phases.
///
/// On a game that is not an alternating-minimisation game the solver is plain block-coordinate
/// descent over its players: every player but the weights for `CodeSteps` steps, then the weights
/// for `WeightSteps` steps (the same alternation without the layer structure).
public sealed class AlternatingMinimisationSolver : ISolver
{
    private readonly Stopwatch codePhase = new(), weightPhase = new();

    public AlternatingMinimisationSolver(AlternatingMinimisationSolverOptions? options = null)
    {
        Options = options ?? new AlternatingMinimisationSolverOptions();
        Options.Validate();
    }

    public AlternatingMinimisationSolverOptions Options { get; }

    public string Name =>
        $"alternating-minimisation(codes ×{Options.CodeSteps} top-down, weights ×{Options.WeightSteps}, sweeps ×{Options.Sweeps}{(Options.Parallel ? ", layers in parallel" : "")})";

    public int MemorySlots => 0;

    /// Seconds spent in updateCodes (with encodeInput) and in updateWeights since construction.
    public double CodePhaseSeconds => codePhase.Elapsed.TotalSeconds;
    public double WeightPhaseSeconds => weightPhase.Elapsed.TotalSeconds;

    public void Step(IGame game)
    {
        if (game is not IAlternatingMinimisationGame am)
        {
            var others = game.Players.Where(p => p.Name != "weights").Select(p => new SubProblem(new[] { p.Name }, Options.CodeSteps));
            var weights = game.Players.Where(p => p.Name == "weights").Select(p => new SubProblem(new[] { p.Name }, Options.WeightSteps));
            new AlternatingSolver(others.Concat(weights).ToArray()).Step(game);
            return;
        }
        codePhase.Start();
        try
        {
            am.Encode();
            UpdateCodes(am);
        }
        finally { codePhase.Stop(); }
        weightPhase.Start();
        try { UpdateWeights(am); }
        finally { weightPhase.Stop(); }
        am.EndIteration();
    }

    /// updateCodes: the code sub-problems top-down, `CodeSteps` steps each.
    public void UpdateCodes(IAlternatingMinimisationGame game)
    {
        foreach (var problem in game.CodeProblems)
            for (int k = 0; k < Options.CodeSteps; k++)
            {
                using var scope = NewDisposeScope();
                Solvers.Descend(problem.Player, problem.Direction());
            }
    }

    /// updateWeights: every block's weight sub-problem, in block order or concurrently.
    public void UpdateWeights(IAlternatingMinimisationGame game)
    {
        var problems = game.WeightProblems();
        if (!Options.Parallel || problems.Count < 2)
        {
            foreach (var p in problems) Solve(p);
            return;
        }
        Lifting.Threads.RunConcurrently(problems.Count, i => Solve(problems[i]), "Weight updates");
    }

    private void Solve(WeightProblem problem)
    {
        using var scope = NewDisposeScope();
        if (problem.Memory() is { } memory)
        {
            CoordinateDescent(problem.Player.Variables, memory, Options.Sweeps);
            return;
        }
        for (int k = 0; k < Options.WeightSteps; k++)
        {
            using var step = NewDisposeScope();
            Solvers.Descend(problem.Player, problem.Direction());
        }
    }

    /// Block-coordinate descent on ½ tr(W̃ A W̃ᵀ) − tr(W̃ Bᵀ) over the columns of W̃ = [W | b]
    /// (Mairal et al. 2009, Algorithm 2, without the projection onto the unit ball): column j, in
    /// order j = 1 … n, is set to its exact minimiser with the others fixed,
    ///     w̃_j ← (b_j − Σ_{i<j} w̃_i⁺ A_ij − Σ_{i>j} w̃_i A_ij) / A_jj,
    /// where w̃_i⁺ are the columns already updated in this sweep. Writing A = L + D + U (strictly
    /// lower, diagonal, strictly upper), a whole sweep is W̃⁺ (D + U) = B − W̃ L: one triangular solve
    /// (a Gauss–Seidel sweep for every row of W̃ at once) instead of n dependent column updates; the
    /// iterates are the column loop's up to rounding (tested). A column whose input never fired
    /// (A_jj = 0, hence A's row and column j and B's column j are 0) is left as it is.
    public static void CoordinateDescent(IReadOnlyList<Tensor> variables, CoActivationMemory memory, int sweeps)
    {
        if (variables.Count is < 1 or > 2 || variables[0].dim() != 2)
            throw new ArgumentException("Block-coordinate descent on co-activation memories needs a fully connected layer: a weight matrix and an optional bias.");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var weight = variables[0];
        long inputs = weight.shape[1];
        var augmented = variables.Count == 2 ? cat(new[] { weight, variables[1].unsqueeze(1) }, 1) : weight.clone();
        long columns = augmented.shape[1];
        if (memory.A.shape[0] != columns || memory.B.shape[1] != columns)
            throw new ArgumentException($"Co-activation memories of {memory.A.shape[0]} inputs for a layer with {columns} columns.");
        var a = memory.A;
        var dead = a.diagonal() <= Scalars.OfInteger(0);
        var keep = dead.to_type(a.dtype);
        // D + U with a unit diagonal for dead columns; L; the right-hand side keeps dead columns.
        var upper = a.triu().PlusInPlace(diag(keep));
        var lower = a.tril(-1);
        for (int sweep = 0; sweep < sweeps; sweep++)
        {
            using var step = NewDisposeScope();
            var rhs = (memory.B - augmented.mm(lower)).Plus(augmented * keep);
            augmented.copy_(linalg.solve_triangular(upper, rhs, upper: true, left: false));
        }
        weight.copy_(augmented.narrow(1, 0, inputs));
        if (variables.Count == 2) variables[1].copy_(augmented.select(1, inputs));
    }
}
