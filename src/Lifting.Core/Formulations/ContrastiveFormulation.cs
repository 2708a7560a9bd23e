using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// What the inference-learning formulations of seed 002 §3 share: a deeply nested program whose
/// levels are the program's blocks, an energy over per-batch activations built from the batch's
/// forward pass, and the contrastive surrogate on top (`ContrastiveSurrogate`). Nothing is stored
/// per example and nothing is shared beyond the weights, so `StateBytes` is 0. Players: weights
/// (min) and the per-batch activations (min). The default schedule infers the activations for
/// `InferenceSteps` steps with the weights held, then steps the weights.
public abstract class ContrastiveFormulation : IFormulation
{
    protected ContrastiveFormulation(string name, ContrastiveOptions? options)
    {
        Options = options ?? new ContrastiveOptions();
        Options.Validate();
        Name = name;
    }

    public ContrastiveOptions Options { get; }
    public string Name { get; }
    public abstract string Description { get; }
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.Activations };
    public bool HasMaximisingPlayers => false;

    public IReadOnlyList<SubProblem> DefaultSchedule => new[]
    {
        new SubProblem(new[] { Formulations.PlayerNames.Activations }, Options.InferenceSteps),
        new SubProblem(new[] { Formulations.PlayerNames.Weights }, 1),
    };

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        var spacings = Options.Spacings(context.Program.Segments.Count);
        Check(context.Program);
        return new Problem(this, context, weights, spacings);
    }

    /// Refuses programs the energy cannot express (e.g. an activation without a convex potential).
    protected virtual void Check(NestedProgram program) { }

    /// Refuses, by name, a block whose activation has no convex potential G (the Fenchel couplings
    /// of CHL and LPOM need G and G*).
    protected static void RequirePotentials(NestedProgram program)
    {
        foreach (var segment in program.Segments) _ = new Level(segment, autograd: false).Potential;
    }

    /// The energy of `program` on one mini-batch at the given weights; `spacings` are β_1 … β_L.
    /// `pass`: the step's forward pass for programs with batch normalisation or dropout.
    public abstract IContrastiveEnergy Energy(NestedProgram program, IReadOnlyList<Tensor> weights, MiniBatch batch, IReadOnlyList<double> spacings, ForwardPass? pass = null);

    private sealed class Problem : LiftedProblem
    {
        private readonly ContrastiveFormulation formulation;
        private readonly IReadOnlyList<double> spacings;

        public Problem(ContrastiveFormulation formulation, LiftContext context, Weights weights, IReadOnlyList<double> spacings)
            : base(formulation, context, weights)
        {
            this.formulation = formulation;
            this.spacings = spacings;
        }

        public override IBatchGame Batch(MiniBatch batch) =>
            new ContrastiveSurrogate(formulation.Energy(Program, Weights.Tensors, batch, spacings, PassFor(batch, holdFixed: true)), Program.Loss, batch, WeightsPlayer(),
                spacings[^1], formulation.Options, Context.StepRuleFor(Formulations.PlayerNames.Activations), Context.SolverMemorySlots);

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double> { ["beta"] = spacings[^1] };
    }
}
