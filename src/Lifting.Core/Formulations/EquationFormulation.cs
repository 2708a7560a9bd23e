using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Options of a formulation written as an equation.
public sealed record EquationOptions
{
    /// The schedule of the alternating solver (null: one step of every player in turn).
    public IReadOnlyList<SubProblem>? Schedule { get; init; }

    /// End training with the feasibility pass h_v ← f_v(inputs of v) for every example (the
    /// penalty method's last step: the states are then the forward pass of the final weights).
    public bool FeasibilityPass { get; init; }

    /// Where the states h_v live: per example and stored across epochs (multiple shooting), or per
    /// mini-batch, started at the batch's forward pass and discarded after it (nothing is kept:
    /// the lifting then only reshapes each step, as an inference phase does). A state is one
    /// example's value of v, so it cannot be placed per class.
    public Placement States { get; init; } = Placement.Example;
}

/// A lifted formulation derived from its objective written as a `Term` (issue 29): the equation
/// names the loss, Σ_v over the multiple-shooting constraints g_v = h_v − f_v(inputs of v), and
/// what enters per constraint; everything else follows from it:
///
/// - players: the weights and the per-example states h_v (minimised, started at the forward
///   pass, `h1`, `h2`, … in the store), and the per-example multipliers λ_v (`lambda1`, …) when the
///   equation has `Term.Multiplier` (maximised; boxed when capped);
/// - the batch game (the lifted graph's constraints visited once in topological order, like the
///   hand-written Lagrangian and penalty), the recorded defects and multipliers, `MeasureDefects`;
/// - checkpoints (the store, the weights, and every `Term.Schedule`'s current value), the
///   schedules' per-epoch update, the printed objective (`Description`).
///
/// Refused before training, with one line naming the term: an equation that is not a number
/// summed over the batch, no or more than one Σ_v, g_v or λ_v outside Σ_v, a term under Σ_v that is
/// still per example, a product of two batch sums, a maximised λ_v entering non-linearly (the
/// game would not be a saddle point of a Lagrangian), two different caps, two schedules of one name.
public sealed class EquationFormulation : IFormulation
{
    private readonly ConstraintSum constraints;
    private readonly ScheduleTerm[] schedules;

    public EquationFormulation(string name, Term objective, EquationOptions? options = null)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A formulation needs a name.", nameof(name));
        ArgumentNullException.ThrowIfNull(objective);
        Name = name;
        Objective = objective;
        Options = options ?? new EquationOptions();
        constraints = Validate(objective);
        var occurrences = objective.Descendants().OfType<MultiplierTerm>().ToArray();
        var multipliers = occurrences.Select(m => m.Cap).Distinct().ToArray();
        if (multipliers.Length > 1) throw new ArgumentException($"Invalid equation '{objective}': λ_v appears with different caps ({string.Join(", ", multipliers.Select(Term.Number))}).");
        var placements = occurrences.Select(m => m.Placement).Distinct().ToArray();
        if (placements.Length > 1)
            throw new ArgumentException($"Invalid equation '{objective}': λ_v is placed {string.Join(" and ", placements.Select(Where))}; one multiplier per constraint has one placement.");
        HasMultipliers = multipliers.Length == 1;
        MultiplierCap = HasMultipliers ? multipliers[0] : double.PositiveInfinity;
        MultiplierPlacement = HasMultipliers ? placements[0] : Placement.Example;
        if (Options.States == Placement.Class)
            throw new ArgumentException($"Invalid placement of the states h_v of the equation '{objective}': per class; h_v is one example's value of v, so it is placed per example (stored) or per mini-batch.");
        if (Options.States == Placement.Batch && Options.FeasibilityPass)
            throw new ArgumentException($"Invalid feasibility pass for the equation '{objective}': its states h_v are placed per mini-batch, so no stored state is left to set to the forward pass.");
        schedules = objective.Descendants().OfType<ScheduleTerm>().DistinctBy(s => (s.Name, s.Plan)).ToArray();
        var clash = schedules.GroupBy(s => s.Name).FirstOrDefault(g => g.Count() > 1);
        if (clash is not null) throw new ArgumentException($"Invalid equation '{objective}': two schedules are named '{clash.Key}'.");
        PlayerNames = HasMultipliers
            ? new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States, Formulations.PlayerNames.Multipliers }
            : new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States };
        DefaultSchedule = Options.Schedule ?? PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    }

    public string Name { get; }
    public Term Objective { get; }
    public EquationOptions Options { get; }
    public bool HasMultipliers { get; }
    /// The multipliers' box [−cap, cap] (∞: none).
    public double MultiplierCap { get; }
    /// Where the multipliers live (per example when the equation has none).
    public Placement MultiplierPlacement { get; }
    public string Description => $"L = {Objective}, g_v = h_v − f_v(inputs of v)"
        + string.Concat(schedules.Select(s => ", " + s.Describe()))
        + (Options.States == Placement.Example && MultiplierPlacement == Placement.Example
            ? (HasMultipliers ? "; per-example states and multipliers" : "; per-example states")
            : $"; states {Where(Options.States)}" + (HasMultipliers ? $", multipliers {Where(MultiplierPlacement)}" : ""))
        + (Options.FeasibilityPass ? ", feasibility pass at the end" : "");

    private static string Where(Placement placement) => placement switch
    {
        Placement.Class => "per class",
        Placement.Batch => "per mini-batch",
        _ => "per example",
    };
    public IReadOnlyList<string> PlayerNames { get; }
    public IReadOnlyList<SubProblem> DefaultSchedule { get; }
    public bool HasMaximisingPlayers => HasMultipliers;

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        if (context.Program.Segments.Count < 2)
            throw new ArgumentException($"{Name} needs a program with at least two blocks; add a Cut().");
        return new Problem(this, context, weights);
    }

    private static ConstraintSum Validate(Term objective)
    {
        void Fail(Term term, string why) => throw new ArgumentException($"Invalid term '{term}' of the equation '{objective}': {why}.");
        var sums = objective.Descendants().OfType<ConstraintSum>().ToArray();
        if (sums.Length == 0) Fail(objective, "it has no Σ_v over the constraints (Term.OverConstraints); without one nothing is lifted");
        if (sums.Length > 1) Fail(sums[1], "the equation has more than one Σ_v; write one Σ_v of a sum");
        var sum = sums[0];
        foreach (var inner in sum.PerConstraint.Descendants())
            if (inner is LossTerm or ConstraintSum) Fail(inner, "the loss and Σ_v belong outside Σ_v");
        var outside = OutsideConstraints(objective, sum).FirstOrDefault(t => t is DefectTerm or MultiplierTerm);
        if (outside is not null) Fail(outside, "g_v and λ_v are defined per constraint: use them inside Σ_v");
        CheckKinds(objective, Fail);
        if (objective.Kind != TermKind.Summed) Fail(objective, $"the objective must be a number summed over the batch, not {Describe(objective.Kind)}");
        if (sum.PerConstraint.Kind != TermKind.Summed)
            Fail(sum.PerConstraint, $"under Σ_v each constraint's term must be summed over the batch (reduce it with Term.Inner, Term.SquaredNorm or Term.Norm1), not {Describe(sum.PerConstraint.Kind)}");
        var nonLinear = sum.PerConstraint.Descendants().FirstOrDefault(t => t.MultiplierDegree > 1 && t.Children.All(c => c.MultiplierDegree <= 1));
        if (nonLinear is not null) Fail(nonLinear, "it is not linear in the maximised multiplier λ_v (a Lagrangian is linear in its multipliers)");
        return sum;
    }

    /// The terms of `objective` that are not under `sum`.
    private static IEnumerable<Term> OutsideConstraints(Term objective, ConstraintSum sum) =>
        ReferenceEquals(objective, sum) ? Array.Empty<Term>() : new[] { objective }.Concat(objective.Children.SelectMany(c => OutsideConstraints(c, sum)));

    private static void CheckKinds(Term term, Action<Term, string> fail)
    {
        foreach (var child in term.Children) CheckKinds(child, fail);
        switch (term)
        {
            case Sum s when s.A.Kind != s.B.Kind:
                fail(term, $"it adds {Describe(s.A.Kind)} to {Describe(s.B.Kind)}");
                break;
            case Product { A.Kind: TermKind.Summed, B.Kind: not TermKind.Coefficient } or Product { B.Kind: TermKind.Summed, A.Kind: not TermKind.Coefficient }:
                fail(term, "it multiplies a batch sum by something other than a coefficient");
                break;
            case Quotient q when q.B.Kind != TermKind.Coefficient:
                fail(term, "it divides by something other than a coefficient");
                break;
            case Reduction r when r.A.Kind != TermKind.PerExample || r.B is { Kind: not TermKind.PerExample }:
                fail(term, "norms and inner products take per-example tensors (g_v, λ_v and what is made of them)");
                break;
            case ShrinkTerm s when s.A.Kind != TermKind.PerExample:
                fail(term, "shrinkage takes a per-example tensor");
                break;
        }
    }

    private static string Describe(TermKind kind) => kind switch
    {
        TermKind.Coefficient => "a coefficient",
        TermKind.PerExample => "a tensor per example",
        _ => "a batch sum",
    };

    private sealed class Problem : LiftedProblem
    {
        private readonly EquationFormulation formulation;
        /// The stored states (null when they are placed per mini-batch).
        private readonly RowGroup? states;
        /// The stored per-example multipliers (null when the equation has none or places them otherwise).
        private readonly RowGroup? multipliers;
        /// The per-class multipliers λ_v(c), [classes, value shape] per lifted value (null unless placed per class).
        private readonly Tensor[]? classMultipliers;
        private readonly StepState[]? classMultiplierStates;
        private readonly Dictionary<string, double> scheduleValues = new();

        public Problem(EquationFormulation formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
        {
            using var scope = NewDisposeScope(); // temporaries; the store keeps its own handles
            this.formulation = formulation;
            foreach (var s in formulation.schedules) scheduleValues[s.Name] = s.Plan.At(0);
            var stored = formulation.Options.States == Placement.Example;
            var initial = stored
                ? ForwardStatesOfTrainingSet()
                : Program.Segments.Take(Program.Segments.Count - 1).Select(s => empty(new[] { 0L }.Concat(s.OutputShape).ToArray(), dtype: context.DType, device: context.Device)).ToArray();
            using (no_grad())
            {
                if (stored) states = new RowGroup(Store, context, Formulations.PlayerNames.States, initial.Select((t, l) => ($"h{l + 1}", t)).ToArray());
                if (formulation.HasMultipliers && formulation.MultiplierPlacement == Placement.Example)
                    multipliers = new RowGroup(Store, context, Formulations.PlayerNames.Multipliers,
                        initial.Select((t, l) => ($"lambda{l + 1}", zeros(t.shape, dtype: context.DType, device: context.Device))).ToArray());
            }
            if (formulation.HasMultipliers && formulation.MultiplierPlacement == Placement.Class)
            {
                var shared = Program.Segments.Take(Program.Segments.Count - 1)
                    .Select((s, l) => AddSharedVariable(Formulations.PlayerNames.Multipliers, $"lambda{l + 1}",
                        zeros(new[] { (long)context.Train.ClassCount }.Concat(s.OutputShape).ToArray(), dtype: context.DType, device: context.Device)))
                    .ToArray();
                classMultipliers = shared.Select(v => v.Variable).ToArray();
                classMultiplierStates = shared.Select(v => v.State).ToArray();
            }
            foreach (var t in initial) t.Dispose();
            Values = new EquationValues { Schedule = name => scheduleValues[name] };
        }

        private EquationValues Values { get; }

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        /// Mean |h_v − f_v| over the stored states; none when the states are placed per mini-batch.
        public override IReadOnlyList<double> MeasureDefects(Tensor? rows = null) =>
            states is { } s ? MeasureDefects((l, indices) => Store.Gather(s.Keys[l], indices), rows) : Array.Empty<double>();

        public override void EndEpoch(int epoch)
        {
            foreach (var s in formulation.schedules) scheduleValues[s.Name] = s.Plan.At(epoch);
        }

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double>(scheduleValues);

        public override IReadOnlyDictionary<string, double> StateScalars => new Dictionary<string, double>(scheduleValues);

        public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
        {
            base.RestoreScalars(scalars);
            foreach (var (name, value) in scalars) scheduleValues[name] = value;
        }

        public override void Finish()
        {
            if (formulation.Options.FeasibilityPass) FeasibilityPass(states!.Keys);
        }

        private sealed class Game : ConstraintGame
        {
            private readonly Problem problem;
            private readonly Tensor[] h;
            private readonly Tensor[]? lambda;
            private readonly StepState[] hStates;
            private readonly StepState[]? lambdaStates;

            public Game(Problem problem, MiniBatch batch) : base(batch, problem)
            {
                this.problem = problem;
                var context = problem.Context;
                (h, hStates) = problem.states is { } stored ? stored.Gather(batch.Indices) : Fresh(ForwardStates(), Formulations.PlayerNames.States);
                var players = new List<Player>
                {
                    problem.WeightsPlayer(),
                    new(Formulations.PlayerNames.States, Role.Minimise, h, problem.states?.StepRule ?? context.StepRuleFor(Formulations.PlayerNames.States), hStates, rowIndexed: true),
                };
                if (problem.formulation.HasMultipliers)
                {
                    var cap = problem.formulation.MultiplierCap;
                    var box = double.IsPositiveInfinity(cap) ? null : Projections.Box(-cap, cap);
                    var rule = problem.multipliers?.StepRule ?? context.StepRuleFor(Formulations.PlayerNames.Multipliers);
                    if (problem.classMultipliers is { } table)
                        players.Add(new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, table, rule, problem.classMultiplierStates!, projection: box));
                    else
                    {
                        (lambda, lambdaStates) = problem.multipliers is { } m ? m.Gather(batch.Indices)
                            : Fresh(h.Select(t => zeros_like(t)).ToArray(), Formulations.PlayerNames.Multipliers);
                        players.Add(new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, lambda, rule, lambdaStates, rowIndexed: true, projection: box));
                    }
                }
                Players = players;
            }

            /// The batch's forward pass at the current weights, one value per lifted value.
            private Tensor[] ForwardStates()
            {
                using var _ = no_grad();
                var segments = problem.Program.Segments;
                var values = new Tensor[segments.Count - 1];
                for (int l = 0; l < values.Length; l++)
                    values[l] = segments[l].Forward(segments[l].InputsFrom(Batch.Inputs, values), problem.Weights.Tensors, Pass);
                return values;
            }

            /// Leaves started at `values` for this batch only, with fresh step-rule state.
            private (Tensor[], StepState[]) Fresh(Tensor[] values, string player)
            {
                var leaves = values.Select(v => v.detach().clone().requires_grad_(true)).ToArray();
                return (leaves, leaves.Select(v => problem.Context.NewState(player, v, rowIndexed: true)).ToArray());
            }

            public override IReadOnlyList<Player> Players { get; }

            protected override Tensor Value(int l) => h[l];

            protected override Tensor Defect(int l, Tensor f) => h[l] - f;

            protected override Tensor AddTerm(Tensor total, int l, Tensor g) =>
                problem.formulation.constraints.PerConstraint.AddTo(total, new EquationValues
                {
                    Schedule = problem.Values.Schedule,
                    Defect = g,
                    Multiplier = problem.classMultipliers is { } table ? table[l].index_select(0, Batch.Labels) : lambda?[l],
                });

            protected override Tensor LossSum(Tensor output) => problem.Program.Loss.PerExample(output, Batch.Labels).sum();

            protected override Tensor Combine(Tensor lossSum, Tensor terms) =>
                problem.formulation.Objective.Evaluate(new EquationValues { Schedule = problem.Values.Schedule, Loss = lossSum, Constraints = terms });

            /// The multipliers as kept: the batch's rows, or the class tables.
            protected override IReadOnlyList<Tensor>? RecordedMultipliers => problem.classMultipliers ?? (IReadOnlyList<Tensor>?)lambda;

            /// Stored rows go back to the store; per-class tables were stepped in place; per-batch
            /// variables are dropped.
            public override void Commit()
            {
                problem.states?.Scatter(Batch.Indices, h, hStates);
                if (lambda is not null) problem.multipliers?.Scatter(Batch.Indices, lambda, lambdaStates!);
            }
        }
    }
}
