using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Testing;

/// A formulation in the suite: how to make it, the constant step size of all its players, and
/// whether it is an undamped Lagrangian (multipliers without augmentation), on which plain
/// gradient descent–ascent rotates instead of converging (seed 001 §2.1, Fig. 2).
public sealed record FormulationCase(string Name, Func<IFormulation> Create, double StepSize, bool UndampedLagrangian = false)
{
    /// The loss the formulation lowers is its batch game's loss term, not the forward pass's
    /// (DistProp: the last block's loss on the synthetic class samples; on the suite's random labels
    /// the forward loss of f_1 mapped onto class means can rise). The suite then checks that loss.
    public bool LowersGameLoss { get; init; }
}

/// A solver in the suite: how to make it from the formulation's default schedule, whether it
/// solves saddle-point problems (not only minimisations), and whether it is stable on rotations
/// (undamped bilinear couplings, where gradient descent–ascent spirals out).
public sealed record SolverCase(string Name, Func<IReadOnlyList<SubProblem>, ISolver> Create, bool SolvesSaddlePoints = true, bool ConvergesOnRotations = true)
{
    /// A solver of the catalog (`SolverCatalog`), built-in or registered, by name.
    public static SolverCase FromCatalog(string name, bool solvesSaddlePoints = true, bool convergesOnRotations = true) =>
        new(name, schedule => SolverCatalog.Create(name, schedule), solvesSaddlePoints, convergesOnRotations);
}

/// A formulation's back-propagation limit (seed 000 §3–4): `Reach` moves a batch game's
/// variables other than the weights to the limit point (e.g. the multipliers to the adjoints, or
/// the states to their equilibrium for a large penalty); there the weights' direction must equal
/// the back-propagation gradient of the mean loss within `Tolerance` (relative error).
public sealed record LimitCase(string Name, Func<IFormulation> Create, Action<LimitPoint> Reach, double Tolerance, double StepSize = 0.1);

/// A lifted batch game over a whole random program's batch, for `LimitCase.Reach`.
public sealed record LimitPoint(RandomProgram Case, Weights Weights, IBatchGame Game)
{
    /// The lifted problem the game belongs to, for limits reached through its shared state (e.g.
    /// feedback alignment's feedback matrices set to the forward weights).
    public ILiftedProblem? Problem { get; init; }

    public Player Player(string name) => Game.Players.FirstOrDefault(p => p.Name == name)
        ?? throw new ConformanceException($"The game has no player '{name}' (players: {string.Join(", ", Game.Players.Select(p => p.Name))}).");

    /// Sets a player's variables to `values` (same order and shapes).
    public void Set(string player, IReadOnlyList<Tensor> values)
    {
        using var _ = no_grad();
        var p = Player(player);
        for (int i = 0; i < p.Variables.Count; i++) p.Variables[i].copy_(values[i]);
    }

    /// `steps` iterations of `solver` on the named players alone, the others held fixed.
    public void Solve(IReadOnlyList<string> players, ISolver solver, int steps)
    {
        using var view = new Restricted(Game, players);
        for (int k = 0; k < steps; k++) solver.Step(view);
    }
}

/// What one formulation × solver run did.
public sealed record PairOutcome(string Formulation, string Solver, double LossBefore, double LossAfter,
    double DefectBefore, double DefectAfter, bool DefectChecked, bool Finite)
{
    /// Why the pair fails; null when it passes.
    public string? Failure =>
        !Finite ? $"{Formulation} × {Solver}: a variable became NaN or infinite"
        : !(LossAfter < LossBefore) ? $"{Formulation} × {Solver}: the forward loss did not fall ({LossBefore:G6} → {LossAfter:G6})"
        : DefectChecked && DefectBefore > 0 && !(DefectAfter < DefectBefore) ? $"{Formulation} × {Solver}: the mean defect did not fall ({DefectBefore:G6} → {DefectAfter:G6})"
        : null;

    public bool Passed => Failure is null;
}

/// One compatible formulation × solver pair of the suite, to run as one test.
public sealed record ConformancePair(FormulationCase Formulation, SolverCase Solver, bool CheckDefect, ConformanceOptions Options)
{
    public string Name => $"{Formulation.Name} × {Solver.Name}";
    /// This pair with the defect checked or not.
    public ConformancePair WithDefectChecked(bool check) => this with { CheckDefect = check };
    public PairOutcome Run() => Conformance.Run(this);
    /// Runs the pair; throws `ConformanceException` with the numbers when it fails.
    public PairOutcome Check()
    {
        var outcome = Run();
        return outcome.Failure is { } failure ? throw new ConformanceException(failure) : outcome;
    }
}

/// Settings of the formulation × solver suite.
public sealed record ConformanceOptions
{
    /// Solver iterations on the one batch.
    public int Steps { get; init; } = 300;
    /// The program and batch (default: `RandomPrograms.Standard()`).
    public Func<RandomProgram> Program { get; init; } = RandomPrograms.Standard;
    public int WeightSeed { get; init; } = 3;
    /// Standard deviation of the noise added to the per-example states, so every lifted method starts infeasible.
    public double Perturbation { get; init; } = 0.3;
}

/// The conformance suite every formulation and solver of Lifting passes, for users' own ones
/// (docs/extending.md). Each check either returns what it measured or throws
/// `ConformanceException` naming the check and the numbers; no test framework is needed.
///
/// Formulation × solver: on a small program whose per-example states (store entries named h1, h2, …)
/// start perturbed, `Steps` iterations on one batch keep every variable finite and lower the forward
/// loss and the mean defect. The defect is not checked for plain gradient descent–ascent on an
/// undamped Lagrangian (it rotates: seed 001 §2.1); the augmented Lagrangian's (c/2)‖g‖² damps it.
public static class Conformance
{
    /// The compatible pairs (saddle-point formulations only with saddle-point solvers), one test each.
    public static IReadOnlyList<ConformancePair> Pairs(IEnumerable<FormulationCase> formulations, IEnumerable<SolverCase> solvers, ConformanceOptions? options = null)
    {
        var o = options ?? new ConformanceOptions();
        var list = new List<ConformancePair>();
        var solverList = solvers.ToArray();
        foreach (var f in formulations)
        {
            var maximising = f.Create().HasMaximisingPlayers;
            foreach (var s in solverList)
                if (s.SolvesSaddlePoints || !maximising)
                    list.Add(new ConformancePair(f, s, s.ConvergesOnRotations || !f.UndampedLagrangian, o));
        }
        return list;
    }

    /// Runs every compatible pair; throws one `ConformanceException` listing every failure.
    public static IReadOnlyList<PairOutcome> CheckAll(IEnumerable<FormulationCase> formulations, IEnumerable<SolverCase> solvers, ConformanceOptions? options = null)
    {
        var outcomes = Pairs(formulations, solvers, options).Select(p => p.Run()).ToArray();
        var failures = outcomes.Where(o => !o.Passed).Select(o => o.Failure!).ToArray();
        if (outcomes.Length == 0) throw new ConformanceException("No compatible formulation × solver pair to run.");
        return failures.Length == 0 ? outcomes
            : throw new ConformanceException($"{failures.Length} of {outcomes.Length} pairs failed:\n  " + string.Join("\n  ", failures));
    }

    /// Runs one formulation with one solver (see the class comment).
    public static PairOutcome Run(ConformancePair pair)
    {
        using var scope = NewDisposeScope();
        var o = pair.Options;
        var data = o.Program();
        var formulation = pair.Formulation.Create();
        var solver = pair.Solver.Create(formulation.DefaultSchedule);
        var weights = data.Initialise(o.WeightSeed);
        var lr = pair.Formulation.StepSize;
        var context = new LiftContext(data.Program, new Dataset("conformance", data.Inputs, data.Labels, data.Classes), CPU,
            ScalarType.Float64, 0, _ => StepRules.Constant(lr), solver.MemorySlots);
        using var problem = formulation.Lift(context, weights);
        using (no_grad())
        using (var generator = new Generator(99))
            foreach (var name in problem.Store.Names.Where(n => n.StartsWith('h') && !n.Contains('#')).ToArray())
            {
                var t = problem.Store[name];
                t.add_(o.Perturbation * randn(t.shape, dtype: ScalarType.Float64, generator: generator));
            }
        double Defect() { var d = problem.MeasureDefects(); return d.Count == 0 ? 0 : d.Average(); }
        var n = data.Inputs.shape[0];
        var batch = new MiniBatch(arange(n, dtype: ScalarType.Int64), data.Inputs, data.Labels);
        double Loss()
        {
            if (!pair.Formulation.LowersGameLoss) return ForwardLoss(data, problem.Weights);
            using var lossScope = NewDisposeScope();
            using var game = problem.Batch(batch);
            game.Objective();
            return game.Loss;
        }
        var (loss0, defect0) = (Loss(), Defect());
        for (int k = 0; k < o.Steps; k++)
        {
            using var step = NewDisposeScope();
            using var game = problem.Batch(batch);
            solver.Step(game);
            game.Commit();
        }
        var (loss1, defect1) = (Loss(), Defect());
        bool finite;
        using (no_grad())
            finite = problem.Weights.Tensors.All(t => t.isfinite().all().ToBoolean())
                     && problem.Store.Names.All(name => problem.Store[name].isfinite().all().ToBoolean());
        return new PairOutcome(pair.Formulation.Name, pair.Solver.Name, loss0, loss1, defect0, defect1, pair.CheckDefect, finite);
    }

    /// The relative error ‖d − ∇ℓ‖ / ‖∇ℓ‖ between the weights' direction at the limit point of
    /// `limit` and the back-propagation gradient of the mean loss, on one program.
    public static double LimitError(LimitCase limit, RandomProgram program)
    {
        using var scope = NewDisposeScope();
        var weights = program.Initialise(program.Seed);
        var reference = BackpropGradient(program, weights);
        var formulation = limit.Create();
        var context = new LiftContext(program.Program, new Dataset("limit", program.Inputs, program.Labels, program.Classes), CPU,
            ScalarType.Float64, 0, _ => StepRules.Constant(limit.StepSize), 0);
        using var problem = formulation.Lift(context, weights);
        var batch = new MiniBatch(arange(program.Inputs.shape[0], dtype: ScalarType.Int64), program.Inputs, program.Labels);
        using var game = problem.Batch(batch);
        var point = new LimitPoint(program, weights, game) { Problem = problem };
        limit.Reach(point);
        var direction = game.Operator(new[] { point.Player(PlayerNames.Weights) })[0];
        return RelativeError(direction, reference);
    }

    /// Checks the limit on `programs` random programs, MLPs and graphs in turn (`RandomPrograms.Mlp`
    /// and `RandomPrograms.Graph` of seed + i: residual MLPs with skips across cuts, Elman RNNs with
    /// tied weights); returns the largest relative error, or throws naming the program where it
    /// exceeds the tolerance.
    public static double CheckLimit(LimitCase limit, int programs = 10, int seed = 0)
    {
        double worst = 0;
        for (int i = 0; i < programs; i++)
        {
            var program = i % 2 == 0 ? RandomPrograms.Mlp(seed + i) : RandomPrograms.Graph(seed + i);
            var error = LimitError(limit, program);
            if (!(error <= limit.Tolerance))
                throw new ConformanceException($"{limit.Name}: at its limit the weights' direction differs from back-propagation by {error:G3} (relative; tolerance {limit.Tolerance:G3}) on {program}");
            worst = Math.Max(worst, error);
        }
        return worst;
    }

    /// A solver on random games (seed 000 §5): on `games` strongly monotone quadratic games
    /// (`RandomGames.StronglyMonotone`; strongly convex minimisations, `RandomGames.StronglyConvex`,
    /// for a solver of minimisations only) it must bring the iterates within 1e-4 of the initial
    /// distance to the solution in `iterations` constant steps of `stepSize`; and, when it claims
    /// stability on rotations, keep the distance on random bilinear games (pure rotations) below
    /// twice its start over 1000 steps of 0.1 (gradient descent–ascent multiplies it by about 145).
    /// Returns the worst final/initial distance ratio over those games.
    public static double CheckSolver(SolverCase solver, int games = 3, int seed = 0, double stepSize = 0.03, int iterations = 2000)
    {
        double worst = 0;
        for (int g = 0; g < games; g++)
        {
            using var scope = NewDisposeScope();
            var s = solver.Create(Array.Empty<SubProblem>());
            var game = solver.SolvesSaddlePoints
                ? RandomGames.StronglyMonotone(seed + g, () => new TensorStep(stepSize), s.MemorySlots)
                : RandomGames.StronglyConvex(seed + g, () => new TensorStep(stepSize), s.MemorySlots);
            var kind = solver.SolvesSaddlePoints ? "strongly monotone game" : "strongly convex minimisation";
            var ratio = Iterate(s, game, iterations);
            if (!(ratio < 1e-4))
                throw new ConformanceException($"{solver.Name}: on {kind} {seed + g} the distance to the solution fell only to {ratio:G3} of its start in {iterations} steps of {stepSize}");
            worst = Math.Max(worst, ratio);
            if (!solver.ConvergesOnRotations || !solver.SolvesSaddlePoints) continue;
            var rotation = RandomGames.Bilinear(seed + g, () => new TensorStep(0.1), s.MemorySlots);
            var spun = Iterate(solver.Create(Array.Empty<SubProblem>()), rotation, 1000);
            if (!(spun < 2))
                throw new ConformanceException($"{solver.Name}: on bilinear game {seed + g} (a rotation) the distance to the saddle point grew to {spun:G3} times its start in 1000 steps of 0.1; a solver that spirals out on rotations must say so (ConvergesOnRotations = false)");
        }
        return worst;
    }

    /// d = α g with α a tensor: `StepRules.Constant` multiplied by a double makes a temporary Scalar
    /// per step (see RandomGames.Objective).
    private sealed class TensorStep : IStepRule
    {
        private readonly double lr;
        private readonly Tensor rate;
        public TensorStep(double lr) { this.lr = lr; rate = tensor(lr, dtype: ScalarType.Float64).DetachFromDisposeScope(); }
        public string Name => $"constant(lr={lr})";
        public StepState Init(Tensor variable, bool rowIndexed) => new(Array.Empty<Tensor>());
        public Tensor Displacement(Tensor direction, StepState state) => direction.mul(rate);
    }

    private static double Iterate(ISolver solver, RandomGame game, int iterations)
    {
        var start = game.Distance();
        for (int k = 0; k < iterations; k++) solver.Step(game.Game);
        return game.Distance() / start;
    }

    /// An activation (docs/extending.md): its outputs, reparametrised values and preimages respect
    /// its range; its convex potential, if any, has a non-negative Fenchel–Young gap that vanishes at
    /// z = σ(a); and, if differentiable, a program using it has back-propagation gradients equal to
    /// finite differences and trains through the lifted suite (multiple shooting × extragradient).
    public static void CheckActivation(IActivation activation, int seed = 0)
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed);
        var a = randn(new long[] { 16, 5 }, dtype: ScalarType.Float64, generator: generator) * 3;
        var range = activation.Range;
        void InRange(Tensor t, string what)
        {
            using var _ = no_grad();
            double lo = t.min().ToDouble(), hi = t.max().ToDouble();
            if (lo < range.Lower - 1e-12 || hi > range.Upper + 1e-12)
                throw new ConformanceException($"{activation.Name}: {what} span [{lo:G6}, {hi:G6}], outside its range {range}");
        }
        InRange(activation.Apply(a), "its outputs");
        var h = activation.Reparametrise(a);
        InRange(h, "reparametrised values");
        var back = activation.Reparametrise(activation.Preimage(h));
        var roundTrip = (back - h).abs().max().ToDouble();
        if (!(roundTrip < 1e-5)) throw new ConformanceException($"{activation.Name}: Reparametrise(Preimage(h)) differs from h by {roundTrip:G3}");
        if (activation.Potential is { } potential)
        {
            var z = activation.Apply(a);
            var tight = (potential.G(z) + potential.Conjugate(a) - (z * a).reshape(16, -1).sum(1)).abs().max().ToDouble();
            if (!(tight < 1e-6)) throw new ConformanceException($"{activation.Name}: the Fenchel–Young gap G(σ(a)) + G*(a) − ⟨σ(a), a⟩ is {tight:G3}, not 0");
            var other = activation.Reparametrise(randn(new long[] { 16, 5 }, dtype: ScalarType.Float64, generator: generator));
            var gap = (potential.G(other) + potential.Conjugate(a) - (other * a).reshape(16, -1).sum(1)).min().ToDouble();
            if (!(gap >= -1e-9)) throw new ConformanceException($"{activation.Name}: the Fenchel–Young gap is negative ({gap:G3}) at a point of the range");
        }
        if (!activation.Differentiable) return;
        CheckProgram(Net.Input(5).Dense(6).Activation(activation).Dense(3).CrossEntropy(), $"a program with {activation.Name}", seed);
    }

    /// A layer (docs/extending.md): built for `inputShape` it keeps its declared shapes, and a
    /// program with it (cut after it, then a dense layer) has back-propagation gradients equal to
    /// finite differences and trains through the lifted suite (multiple shooting × extragradient).
    public static void CheckLayer(Func<long[], ILayer> make, long[] inputShape, int seed = 0)
    {
        using var scope = NewDisposeScope();
        var layer = make(inputShape);
        if (!layer.InputShape.SequenceEqual(inputShape))
            throw new ConformanceException($"{layer.Name}: built for [{string.Join("×", inputShape)}] it declares input [{string.Join("×", layer.InputShape)}]");
        var net = Net.Input(inputShape).Layer(make).Cut();
        if (layer.OutputShape.Length != 1) net = net.Flatten();
        var program = net.Dense(3).CrossEntropy();
        var data = RandomPrograms.On(program, seed, 6, 3);
        using var w = data.Initialise(seed);
        var output = layer.Forward(data.Inputs, w.Block(0).Take(layer.Parameters.Count).ToArray());
        if (!output.shape.Skip(1).SequenceEqual(layer.OutputShape))
            throw new ConformanceException($"{layer.Name}: its output is [{string.Join("×", output.shape.Skip(1))}] but it declares [{string.Join("×", layer.OutputShape)}]");
        CheckProgram(program, $"a program with {layer.Name}", seed);
    }

    /// Gradients against finite differences and the lifted suite on one program.
    public static void CheckProgram(NestedProgram program, string what, int seed = 0)
    {
        var data = RandomPrograms.On(program, seed, 6, (int)program.OutputShape[^1]);
        var error = FiniteDifferenceError(data, seed);
        if (!(error < 1e-5)) throw new ConformanceException($"{what}: back-propagation and finite differences differ by {error:G3} (relative)");
        if (program.Segments.Count < 2) return;
        var pair = new ConformancePair(new FormulationCase("multiple-shooting", () => new MultipleShooting(), 0.05, true),
            SolverCase.FromCatalog("extragradient"), true, new ConformanceOptions { Program = () => data, Steps = 200 });
        if (pair.Run().Failure is { } failure) throw new ConformanceException($"{what}: {failure}");
    }

    /// Relative error of the back-propagation gradient against central finite differences (float64).
    public static double FiniteDifferenceError(RandomProgram program, int weightSeed = 0)
    {
        using var scope = NewDisposeScope();
        var weights = program.Initialise(weightSeed);
        var analytic = BackpropGradient(program, weights);
        using var _ = no_grad();
        const double h = 1e-6;
        double LossAt() => ForwardLoss(program, weights);
        var numeric = weights.Tensors.Select(w =>
        {
            var flat = w.view(-1);
            var g = zeros_like(flat);
            for (long i = 0; i < flat.shape[0]; i++)
            {
                var v = flat[i].ToDouble();
                flat[i].fill_(v + h);
                var up = LossAt();
                flat[i].fill_(v - h);
                var down = LossAt();
                flat[i].fill_(v);
                g[i].fill_((up - down) / (2 * h));
            }
            return g.view(w.shape);
        }).ToArray();
        return RelativeError(analytic, numeric);
    }

    /// ∇_w of the mean loss by back-propagation.
    public static Tensor[] BackpropGradient(RandomProgram program, Weights weights)
    {
        using var _ = enable_grad();
        var loss = program.Program.Loss.PerExample(program.Program.Forward(program.Inputs, weights.Tensors), program.Labels).mean();
        return autograd.grad(new[] { loss }, weights.Tensors.ToArray()).ToArray();
    }

    /// ‖a − b‖ / max(‖b‖, 1e-30) over lists of tensors.
    public static double RelativeError(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        using var scope = NewDisposeScope();
        var da = cat(a.Select(t => t.flatten()).ToArray());
        var db = cat(b.Select(t => t.flatten()).ToArray());
        return (da - db).norm().ToDouble() / Math.Max(db.norm().ToDouble(), 1e-30);
    }

    private static double ForwardLoss(RandomProgram program, Weights weights)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return program.Program.Loss.PerExample(program.Program.Forward(program.Inputs, weights.Tensors), program.Labels).mean().ToDouble();
    }
}
