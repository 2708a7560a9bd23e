using Lifting.Data;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// The batch loop every constrained lifting shares (the Lagrangian, the augmented Lagrangian, the
/// penalty and DistProp): the lifted graph's constraints, visited once in topological order,
///
///     for every lifted value v:   f_v = f_segment(values of v's inputs),  g_v = Defect(v, f_v),
///     objective = Combine(ℓ(f_output(…)), Σ_v term(v, g_v)),
///
/// where a formulation says what a lifted value's successors read (`Value`: a state, or DistProp's
/// class samples), what its constraint is (`Defect`), how the constraint enters the objective
/// (`AddTerm`: ⟨λ, c(g)⟩ + (c/2)‖c(g)‖², or ‖g‖²) and how the loss is taken (`LossSum`). A segment that
/// reads nothing but the batch's inputs (a chain's first block) is evaluated once while the
/// weights are held fixed.
public abstract class ConstraintGame : BatchGame
{
    private ForwardPass? pass;
    private bool passMade;

    protected ConstraintGame(MiniBatch batch, LiftedProblem problem) : base(batch) => Problem = problem;

    protected LiftedProblem Problem { get; }
    protected virtual NestedProgram Program => Problem.Program;
    /// The step's forward pass for programs with batch normalisation or dropout (statistics and masks
    /// of its first evaluation held for the step); null for the others.
    protected ForwardPass? Pass
    {
        get
        {
            if (!passMade) (pass, passMade) = (ForwardPass.For(Program, Problem.Weights, Problem.Context.Seed, Batch.Step, holdFixed: true), true);
            return pass;
        }
    }

    public override void Dispose()
    {
        pass?.Dispose();
        base.Dispose();
    }

    private Tensor?[] current = Array.Empty<Tensor?>();

    /// What the segments reading lifted value `segment` (its index) see of it; computed once per
    /// evaluation (`ValueOf`).
    protected abstract Tensor Value(int segment);

    /// `Value(segment)` of the current evaluation.
    protected Tensor ValueOf(int segment) => current[segment] ??= Value(segment);

    /// The constraint of lifted value `segment` given f_v evaluated at its inputs.
    protected abstract Tensor Defect(int segment, Tensor f);

    /// `total` plus how the constraint enters the objective (summed over the batch).
    protected abstract Tensor AddTerm(Tensor total, int segment, Tensor defect);

    /// ℓ summed over the batch, at the output segment's value.
    protected abstract Tensor LossSum(Tensor output);

    /// The objective from the loss sum and the sum of the constraints' terms.
    protected virtual Tensor Combine(Tensor lossSum, Tensor terms) => terms.Plus(lossSum);

    /// The multipliers to record for diagnostics (null: none).
    protected virtual IReadOnlyList<Tensor>? RecordedMultipliers => null;

    /// The defect to record for lifted value `segment` (by default the constraint itself).
    protected virtual Tensor Recorded(int segment, Tensor defect) => defect;

    /// f_v at the given inputs; for a segment reading only the batch's inputs, reused while the
    /// weights are held fixed (inner iterations on the per-example players).
    protected Tensor Forward(Segment segment, Tensor[] inputs)
    {
        var weights = Problem.Weights.Tensors;
        if (!segment.ReadsOnlyInput) return segment.Forward(inputs, weights, Pass);
        var own = new Tensor[segment.Parameters.Count];
        for (int i = 0; i < own.Length; i++) own[i] = weights[segment.Parameters[i]];
        return Reuse($"f{segment.Index + 1}", PlayerNames.Weights, own, () => segment.Forward(inputs, weights, Pass));
    }

    /// The inputs a segment reads: the batch's inputs, or the lifted values' `Value`s.
    protected virtual Tensor[] InputsOf(Segment segment)
    {
        var inputs = new Tensor[segment.InputSegments.Count];
        for (int i = 0; i < inputs.Length; i++) inputs[i] = segment.InputSegments[i] < 0 ? Batch.Inputs : ValueOf(segment.InputSegments[i]);
        return inputs;
    }

    /// The segments whose terms this game evaluates, [First, End) (every segment by default; a
    /// segment of a layer-parallel run evaluates its own blocks only, the output's loss only if the
    /// range holds the output segment). A value outside the range is read through `Value` as usual.
    protected virtual (int First, int End) Blocks => (0, Program.Segments.Count);

    protected override Tensor EvaluateSum()
    {
        var segments = Program.Segments;
        int hidden = segments.Count - 1;
        var (first, end) = Blocks;
        var defects = new Tensor[hidden];
        current = new Tensor?[hidden];
        Tensor total = zeros(1, dtype: Batch.Inputs.dtype, device: Batch.Inputs.device).squeeze();
        var zero = total;
        for (int l = 0; l < hidden; l++)
        {
            if (l < first || l >= end)
            {
                defects[l] = zero; // not evaluated here: recorded as 0
                continue;
            }
            var g = Defect(l, Forward(segments[l], InputsOf(segments[l])));
            defects[l] = Recorded(l, g);
            total = AddTerm(total, l, g);
        }
        if (end <= hidden)
        {
            // A range below the output: no loss, the terms combined as the whole objective combines them.
            Record(zero, defects, RecordedMultipliers);
            current = Array.Empty<Tensor?>();
            return Combine(zero, total);
        }
        var output = segments[hidden].Forward(InputsOf(segments[hidden]), Problem.Weights.Tensors, Pass);
        var loss = LossSum(output);
        Record(loss, defects, RecordedMultipliers);
        current = Array.Empty<Tensor?>();
        return Combine(loss, total);
    }
}
