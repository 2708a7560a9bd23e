using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// The inner problem E(z; θ) of a bilevel program min_θ ℓ(z*(θ)), z*(θ) = argmin_z E(z; θ), on one
/// mini-batch (seed 002 eq. 2). The variables are per-batch tensors whose leading dimension indexes
/// the batch's examples; the last one holds the output level (the argument of ℓ). Directions are
/// descent directions of E(z) + ⟨pull, output⟩ for each variable, per example: the gradient with
/// respect to each level's activation, divided by the level's weight, applied to the level's
/// variable — the activation itself (Euclidean steps) or its dual coordinate u = ∇G(z) (mirror
/// steps in the geometry of the activation's potential G).
public interface IContrastiveEnergy : IDisposable
{
    /// Where every phase starts (fresh tensors the caller owns), e.g. a forward pass.
    IReadOnlyList<Tensor> Start();

    /// True when `Start()` is the free solution ž = argmin_z E(z; θ) exactly (closed form): the free
    /// phase then needs no inference.
    bool StartIsFreeSolution { get; }

    /// True when E(ž(θ); θ) = 0 for every θ (a gap such as the penaliser or the Fenchel–Young
    /// coupling, whose minimum 0 is attained at the forward pass), so ∇_θE(ž) = 0 and the free term
    /// of the gradient drops.
    bool VanishesAtFreeSolution { get; }

    /// The output level read from the variables, the argument of ℓ.
    Tensor Output(IReadOnlyList<Tensor> variables);

    /// Per-example descent directions of E(z) + ⟨pull, output⟩, one per variable (pull = s·∇ℓ).
    IReadOnlyList<Tensor> Directions(IReadOnlyList<Tensor> variables, Tensor? pull);

    /// into += coefficient · ∇_θ Σ_i E(z_i; θ), one tensor per weight.
    void AddWeightGradient(IReadOnlyList<Tensor> variables, double coefficient, IReadOnlyList<Tensor> into);

    /// E(z_i; θ) for every example.
    Tensor Energy(IReadOnlyList<Tensor> variables);

    /// The weights are about to change: drop whatever was computed from them.
    void WeightsChanged();
}

/// The contrastive surrogate of a bilevel program on one mini-batch (seed 002 Definition 1):
///
///     L_β(θ) = (1/β) [ β ℓ(ẑ_β) + E(ẑ_β; θ) − E(ž; θ) ],
///     ž = argmin_z E(z; θ)                (free solution),
///     ẑ_β = argmin_z β ℓ(z) + E(z; θ)     (clamped solution),
///     ∇_θ L_β = (1/β) (∇_θE(ẑ_β) − ∇_θE(ž)),
///
/// which tends to the gradient of ℓ(z*(θ)) as β → 0 (Prop. 1) with a bias O(β). Options:
/// symmetric — clamped at +β and −β, ∇ = (1/2β)(∇_θE(ẑ_{+β}) − ∇_θE(ẑ_{−β})), bias O(β²); linearised
/// — ℓ(z) replaced by ℓ(ž) + ⟨∇ℓ(ž), z − ž⟩ (Definition 2).
///
/// A game with two players: the weights θ (minimise L_β) and the per-batch activations, every
/// phase's variables (free when it needs inference, clamped, clamped at −β), each descending its own
/// phase's energy s·ℓ + E. That is the surrogate's min-min-max structure (the free solution enters
/// L_β with a minus sign) with each activation direction scaled by β, so that an inference step size
/// does not depend on β. The operator is closed form (`IContrastiveEnergy`), not autograd of one
/// objective, which is why this game does not derive from `BatchGame`. The activations are created
/// from the batch's forward pass and die with the game; nothing is kept per example. The game
/// assumes the weights change only after their direction has been handed out (as every solver does).
public sealed class ContrastiveSurrogate : IBatchGame
{
    private sealed record Phase(string Name, double Nudge, double Coefficient, IReadOnlyList<Tensor> Variables);

    private readonly IContrastiveEnergy energy;
    private readonly ILoss loss;
    private readonly MiniBatch batch;
    private readonly ContrastiveOptions options;
    private readonly Phase free;
    private readonly Phase[] phases, iterated;
    private readonly StepState[] states;
    private readonly List<Tensor> owned = new();
    private readonly Tensor? frozenPull; // ∇ℓ(ž) when the linearisation point is fixed
    private double lastLoss = double.NaN, lastObjective = double.NaN;

    /// `beta` is the outer spacing β (for a nested program, the output level's β_L).
    public ContrastiveSurrogate(IContrastiveEnergy energy, ILoss loss, MiniBatch batch, Player weights, double beta,
        ContrastiveOptions options, IStepRule activationsRule, int memorySlots = 0)
    {
        if (!(beta > 0) || double.IsInfinity(beta)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {beta} (expected a finite value > 0).");
        this.energy = energy;
        this.loss = loss;
        this.batch = batch;
        this.options = options;
        Beta = beta;
        using var _ = no_grad();
        var start = Own(energy.Start());
        // The free phase is inferred when it has no closed form and the gradient or the
        // linearisation point needs it (the symmetric gradient does not).
        bool inferFree = (!energy.StartIsFreeSolution || options.InferFreePhase) && (!options.Symmetric || options.Linearised);
        var clampedCoefficient = options.Symmetric ? 1 / (2 * beta) : 1 / beta;
        var freeCoefficient = options.Symmetric || (energy.VanishesAtFreeSolution && !inferFree) ? 0 : -1 / beta;
        free = new Phase("free", 0, freeCoefficient, inferFree ? Own(start.Select(t => t.clone()).ToArray()) : start);
        if (options.Linearised && !inferFree) frozenPull = Own(new[] { LossGradient(free) })[0];
        var list = new List<Phase> { free };
        list.Add(new Phase("clamped", beta, clampedCoefficient, Clamped(start, beta)));
        if (options.Symmetric) list.Add(new Phase("clamped at −β", -beta, -clampedCoefficient, Clamped(start, -beta)));
        phases = list.ToArray();
        iterated = phases.Where(p => p != free || inferFree).ToArray();
        var variables = iterated.SelectMany(p => p.Variables).ToArray();
        foreach (var v in variables) v.requires_grad_(false);
        states = variables.Select(v =>
        {
            var slots = activationsRule.Init(v, rowIndexed: true);
            foreach (var t in slots.Slots) t.DetachFromDisposeScope();
            var memory = Enumerable.Range(0, memorySlots).Select(_ => zeros_like(v).DetachFromDisposeScope()).ToArray();
            return new StepState(slots.Slots, memory);
        }).ToArray();
        Players = new[]
        {
            weights,
            new Player(PlayerNames.Activations, Role.Minimise, variables, activationsRule, states, rowIndexed: true),
        };
    }

    public double Beta { get; }
    public IReadOnlyList<Player> Players { get; }
    public MiniBatch Batch => batch;

    /// The free solution's variables (the forward pass when it is closed form).
    public IReadOnlyList<Tensor> FreeSolution => free.Variables;
    /// The clamped solution's variables (at +β).
    public IReadOnlyList<Tensor> ClampedSolution => phases[1].Variables;
    /// The clamped solution at −β (symmetric variant only; empty otherwise).
    public IReadOnlyList<Tensor> NegativeClampedSolution => options.Symmetric ? phases[2].Variables : Array.Empty<Tensor>();

    private Tensor[] Own(IEnumerable<Tensor> tensors)
    {
        var list = tensors.Select(t => t.DetachFromDisposeScope()).ToArray();
        owned.AddRange(list);
        return list;
    }

    /// A clamped phase starts from the free start with the output level moved by one step on
    /// the nudge alone (so even a single solver step sees a non-zero weight direction).
    private Tensor[] Clamped(IReadOnlyList<Tensor> start, double nudge)
    {
        var v = start.Select(t => t.clone()).ToArray();
        v[^1].sub_(Pull(nudge, free));
        return Own(v);
    }

    private Tensor LossGradient(Phase phase) => LocalGradients.LossGradient(loss, energy.Output(phase.Variables), batch.Labels);

    private Tensor Pull(double nudge, Phase from) => (frozenPull ?? (options.Linearised ? LossGradient(free) : LossGradient(from))).mul(Scalars.Of(nudge));

    public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
    {
        using var _ = no_grad();
        var result = new IReadOnlyList<Tensor>[players.Count];
        bool weightsAsked = false;
        for (int p = 0; p < players.Count; p++)
        {
            if (players[p].Name == PlayerNames.Activations) result[p] = ActivationDirections();
            else if (players[p].Name == PlayerNames.Weights) weightsAsked = true;
            else throw new ArgumentException($"The contrastive surrogate has no player '{players[p].Name}'.");
        }
        // The weights last: after their direction is handed out they may move.
        for (int p = 0; p < players.Count; p++)
            if (players[p].Name == PlayerNames.Weights) result[p] = WeightDirection();
        if (weightsAsked) energy.WeightsChanged();
        return result;
    }

    private Tensor[] ActivationDirections() =>
        iterated.SelectMany(phase => energy.Directions(phase.Variables, phase.Nudge == 0 ? null : Pull(phase.Nudge, phase))).ToArray();

    /// (1/B) Σ_phases c_p ∇_θ E(z_p): the batch mean of the surrogate's gradient. Also records the
    /// loss at the free solution and the surrogate's value.
    private Tensor[] WeightDirection()
    {
        var weights = Players[0].Variables;
        var into = weights.Select(w => zeros_like(w)).ToArray();
        foreach (var phase in phases)
            if (phase.Coefficient != 0) energy.AddWeightGradient(phase.Variables, phase.Coefficient, into);
        foreach (var g in into) g.div_(Scalars.OfInteger(batch.Inputs.shape[0]));
        lastLoss = loss.PerExample(energy.Output(free.Variables), batch.Labels).mean().ToDouble();
        lastObjective = SurrogateValue();
        return into;
    }

    /// L_β = Σ_phases c_p [s_p ℓ(z_p) + E(z_p)] per example, batch mean (a vanishing free energy
    /// contributes nothing).
    private double SurrogateValue()
    {
        var total = zeros(batch.Inputs.shape[0], dtype: batch.Inputs.dtype, device: batch.Inputs.device);
        foreach (var phase in phases)
        {
            if (phase.Coefficient == 0) continue;
            var value = energy.Energy(phase.Variables);
            if (phase.Nudge != 0) value = value.Plus(OuterLoss(phase).mul(Scalars.Of(phase.Nudge)));
            total = total.Plus(value.mul(Scalars.Of(phase.Coefficient)));
        }
        return total.mean().ToDouble();
    }

    /// ℓ(z_p), or its linearisation at the free solution.
    private Tensor OuterLoss(Phase phase)
    {
        var output = energy.Output(phase.Variables);
        if (!options.Linearised) return loss.PerExample(output, batch.Labels);
        var freeOutput = energy.Output(free.Variables);
        var gradient = frozenPull ?? LossGradient(free);
        return loss.PerExample(freeOutput, batch.Labels).Plus((gradient * (output - freeOutput)).reshape(output.shape[0], -1).sum(1));
    }

    public double Objective()
    {
        using var _ = no_grad();
        return SurrogateValue();
    }

    public IReadOnlyList<double> Defects => Array.Empty<double>();
    public IReadOnlyList<double> MultiplierNorms => Array.Empty<double>();
    /// The loss at the free solution (the network's prediction), at the last weight direction.
    public double Loss => lastLoss;
    /// The surrogate L_β, at the last weight direction.
    public double LiftedObjective => lastObjective;

    /// Nothing per example to write back: the activations die with the game.
    public void Commit() { }

    public void Dispose()
    {
        foreach (var t in owned) t.Dispose();
        owned.Clear();
        foreach (var s in states) s.Dispose();
        energy.Dispose();
    }
}
