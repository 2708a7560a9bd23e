using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Whether a player descends or ascends the objective.
public enum Role { Minimise, Maximise }

/// One player of a game: a group of tensors updated together.
///
/// Variables are leaf tensors owned by whoever built the game (a formulation); solvers update them
/// in place under no_grad. `StepStates` holds one step-rule state per variable, in the same order.
/// For per-example players (`RowIndexed`), the leading dimension of every variable and every
/// state slot indexes the examples of the mini-batch, so a formulation can scatter both back to
/// its per-example store after the step.
public sealed class Player
{
    public Player(string name, Role role, IReadOnlyList<Tensor> variables, IStepRule stepRule,
        IReadOnlyList<StepState> stepStates, bool rowIndexed = false,
        IProjection? projection = null, IMirrorMap? geometry = null, IReadOnlyList<IProjection>? projections = null)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A player needs a name.", nameof(name));
        if (variables.Count == 0) throw new ArgumentException($"Player '{name}' has no variables.", nameof(variables));
        if (stepStates.Count != variables.Count)
            throw new ArgumentException($"Player '{name}' has {variables.Count} variables but {stepStates.Count} step states.", nameof(stepStates));
        Name = name;
        Role = role;
        Variables = variables;
        StepRule = stepRule;
        StepStates = stepStates;
        RowIndexed = rowIndexed;
        if (projection is not null && projections is not null)
            throw new ArgumentException($"Player '{name}': give one projection for every variable or a list, not both.");
        if (projections is not null && projections.Count != variables.Count)
            throw new ArgumentException($"Player '{name}' has {variables.Count} variables but {projections.Count} projections.", nameof(projections));
        Projections = projections ?? Enumerable.Repeat(projection ?? Lifting.Solvers.Projections.None, variables.Count).ToArray();
        Geometry = geometry ?? MirrorMaps.Euclidean;
    }

    public string Name { get; }
    public Role Role { get; }
    public IReadOnlyList<Tensor> Variables { get; }
    public IStepRule StepRule { get; }
    public IReadOnlyList<StepState> StepStates { get; }
    /// True when the leading dimension of each variable indexes examples of the mini-batch.
    public bool RowIndexed { get; }
    /// Per variable, the projection applied after every update (Stampacchia's projection method,
    /// projected extragradient); `Projections.None` by default.
    public IReadOnlyList<IProjection> Projections { get; }
    /// The mirror map used by mirror-prox for this player; Euclidean by default.
    public IMirrorMap Geometry { get; }

    public override string ToString() => $"{Name} ({Role}, {StepRule.Name})";
}

/// A game over players with roles: the operator F = (∇_θ L, −∇_λ L) of seed 000 §5.
public interface IGame
{
    IReadOnlyList<Player> Players { get; }

    /// Evaluates F for the given players at the current values of all variables: for each requested
    /// player (in order) and each of its variables, the *descent direction*: ∇L for a minimising
    /// player, −∇L for a maximising one. Returned tensors are detached and owned by the caller.
    IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players);

    /// The objective L at the current variable values (a plain number, for diagnostics).
    double Objective();
}

/// A game that can reuse work while some players are held fixed: a caller that promises not to
/// change those players' variables lets the game evaluate once whatever depends only on them and on
/// the data (e.g. the first block's output f_1(x; w_1) while the weights are fixed). While a player
/// is held, asking for its part of the operator is an error.
public interface IHoldFixed
{
    /// Holds the named players fixed until the returned handle is disposed.
    IDisposable HoldFixed(IReadOnlyCollection<string> players);
}

/// State of a step rule for one variable (AdaGrad accumulator, Adam moments, …), plus the memory a
/// solver keeps between iterations (extragradient from the past keeps the last extrapolated
/// direction). Every tensor here is shaped so that, for row-indexed players, its leading dimension
/// indexes examples: a formulation gathers and scatters them together with the variable.
public sealed class StepState : IDisposable
{
    public StepState(IReadOnlyList<Tensor> slots, IReadOnlyList<Tensor>? memory = null, IReadOnlyList<Tensor>? workspace = null)
    {
        Slots = slots;
        Memory = memory ?? Array.Empty<Tensor>();
        Workspace = workspace ?? Array.Empty<Tensor>();
    }

    public static StepState Empty { get; } = new(Array.Empty<Tensor>());
    /// The step rule's own tensors.
    public IReadOnlyList<Tensor> Slots { get; }
    /// Solver memory: `ISolver.MemorySlots` tensors shaped like the variable, zero at the start.
    public IReadOnlyList<Tensor> Memory { get; }
    /// Every tensor of this state, slots then memory (for gathering and scattering rows).
    public IEnumerable<Tensor> Tensors => Slots.Concat(Memory);

    /// Scratch tensors the step rule writes its temporaries into at every step instead of
    /// allocating them (Adam's denominator and displacement): allocated by `Init` for a variable
    /// that lives for the run (not per example), never saved, gathered or read across steps.
    /// A displacement returned in one of them is valid until the rule's next call on this state.
    public IReadOnlyList<Tensor> Workspace { get; }

    /// The step rule's host-side memory (e.g. Adam's step count as a number, so that no step reads
    /// a count back from the device); null until the rule first uses it, when it reads its slots
    /// once (which a checkpoint restores before training continues).
    public object? Host { get; set; }


    /// True for the state of a variable that lives for the run (weights, shared variables), false
    /// for a batch's gathered rows: only a persistent state keeps a solver's snapshot tensor.
    public bool Persistent { get; init; }

    private Tensor? snapshot;

    /// For a persistent state, a tensor shaped like `variable` that a solver copies the variable
    /// into before an extrapolation and restores it from (allocated once, disposed with the
    /// workspace); null otherwise.
    public Tensor? SnapshotBuffer(Tensor variable)
    {
        if (!Persistent) return null;
        if (snapshot is null || !snapshot.shape.SequenceEqual(variable.shape) || snapshot.dtype != variable.dtype)
        {
            snapshot?.Dispose();
            using var _ = no_grad();
            snapshot = empty_like(variable).DetachFromDisposeScope();
        }
        return snapshot;
    }

    /// Disposes the workspace only (for a state whose slots and memory another owner disposes).
    public void DisposeWorkspace()
    {
        foreach (var w in Workspace) w.Dispose();
        snapshot?.Dispose();
        snapshot = null;
    }

    public void Dispose()
    {
        foreach (var s in Slots) s.Dispose();
        foreach (var m in Memory) m.Dispose();
        DisposeWorkspace();
    }
}

/// A step-size rule (optax-style transform): turns a descent direction into a displacement.
/// The update is x ← x − d in Euclidean geometry, or x ← mirror(x, d) in mirror-prox.
public interface IStepRule
{
    string Name { get; }

    /// Allocates the state for one variable. `rowIndexed`: the variable's leading dimension indexes
    /// examples, so every slot must share that leading dimension (per-example optimiser state).
    StepState Init(Tensor variable, bool rowIndexed);

    /// The displacement d for descent direction `direction`; updates `state` in place (unless the
    /// rule is frozen). Called under no_grad.
    Tensor Displacement(Tensor direction, StepState state);

    /// The displacement of `variable` (its value before the step): what the solvers call. A rule
    /// that reads the variable (decoupled weight decay) overrides this; by default it is the
    /// displacement of the direction alone.
    Tensor Displacement(Tensor direction, StepState state, Tensor variable) => Displacement(direction, state);

    /// A player's directions, transformed jointly before each variable's displacement (a clip to
    /// a global norm over all of them); by default unchanged. Called under no_grad, once per step
    /// of the player, with the directions in the player's variable order.
    IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> directions) => directions;

    /// True when `Directions` couples the variables (a global norm): a player whose variables are
    /// split over processes would then step differently from the whole player.
    bool CouplesVariables => false;
}

/// A projection onto a convex set, applied in place after an update (Stampacchia).
public interface IProjection
{
    string Name { get; }
    void ProjectInPlace(Tensor variable);
}

/// A mirror map (Bregman geometry) for mirror-prox: the prox step
/// argmin_x' ⟨d, x'⟩ + D_φ(x', x) for a scaled direction d.
public interface IMirrorMap
{
    string Name { get; }
    Tensor Step(Tensor x, Tensor displacement);
}

/// Updates the variables of a game in place: one call is one solver iteration.
public interface ISolver
{
    string Name { get; }

    /// How many tensors shaped like each variable this solver keeps between iterations
    /// (in `StepState.Memory`); 0 for most solvers, 1 for extragradient from the past.
    int MemorySlots { get; }

    void Step(IGame game);
}
