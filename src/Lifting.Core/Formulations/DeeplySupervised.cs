using System.Globalization;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Deeply supervised nets (Lee, Xie, Gallagher, Zhang & Tu 2015, "Deeply-supervised nets",
/// AISTATS; seed 000 §"Deeply Supervised Networks"): every cut of the program (the output h_l of
/// each block but the last) feeds a companion classifier, here a linear head
/// head_l(h_l) = V_l flatten(h_l) + c_l with as many outputs as the program, and the network is
/// trained by back-propagation on
///
///   L(w, V) = ℓ(ŷ, y) + Σ_l λ_l(t) ℓ(head_l(h_l), y),
///
/// ℓ the program's own loss, the heads' gradients flowing into every block below their cut. The
/// companion weights are annealed to 0 over the epochs, linearly:
///
///   λ_l(t) = λ_l · max(0, 1 − (t − 1)/T)   in epoch t = 1, 2, …,
///
/// so the companions guide the early epochs and the last ones train the plain objective; T = 0
/// keeps λ_l constant. Lee et al. decay their companion weights α_m with the epoch and also drop a
/// companion once its loss falls below a threshold γ; their released code removes the companion
/// classifiers after a number of iterations chosen on validation data. The schedule here is the
/// linear decay alone, its horizon T a parameter (the formulation does not know the run's epoch
/// count); the companions are linear heads on the program's loss, where Lee et al. use squared
/// hinge (SVM) companions on conv nets.
///
/// The heads are a second player ("heads"), shared variables of the lifted problem with their own
/// step rule, saved in checkpoints (`shared/headL.weight`, `shared/headL.bias` with their step
/// state); the schedule's state (the completed epochs) is a checkpoint scalar. The heads are not
/// part of the program: evaluation is the plain forward pass. With every λ_l = 0 the weights'
/// direction is back-propagation's gradient.
public sealed class DeeplySupervised : IFormulation
{
    /// The companion classifiers' player.
    public const string Heads = "heads";

    public DeeplySupervised(IReadOnlyList<double> companionWeights, int annealEpochs, string name = "dsn")
    {
        if (companionWeights.Count == 0) throw new ArgumentException("Invalid lambda: no value (expected one, or one per cut).", nameof(companionWeights));
        foreach (var l in companionWeights)
            if (!(l >= 0) || !double.IsFinite(l)) throw new ArgumentOutOfRangeException(nameof(companionWeights), $"Invalid lambda: {l} (expected a finite value >= 0).");
        if (annealEpochs < 0) throw new ArgumentOutOfRangeException(nameof(annealEpochs), $"Invalid anneal: {annealEpochs} (expected an integer >= 0).");
        CompanionWeights = companionWeights.ToArray();
        AnnealEpochs = annealEpochs;
        Name = name;
    }

    /// λ_l at the start: one value for every cut, or one per cut from the input.
    public IReadOnlyList<double> CompanionWeights { get; }
    /// T: the epochs over which λ falls linearly to 0 (0: constant).
    public int AnnealEpochs { get; }
    public string Name { get; }
    public string Description =>
        $"deeply supervised nets: loss + sum_l lambda_l l(head_l(h_l)) by backprop, a linear head per cut, lambda = {string.Join(",", CompanionWeights.Select(l => MethodParameter.Format(l)))} " +
        (AnnealEpochs == 0 ? "constant" : $"falling linearly to 0 over {AnnealEpochs} epochs") + " (Lee et al. 2015)";
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, Heads };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new DeeplySupervisedProblem(this, context, weights);

    /// The factor of every λ_l in the epoch after `completedEpochs` epochs: max(0, 1 − completed/T).
    public double Scale(int completedEpochs) => AnnealEpochs == 0 ? 1 : Math.Max(0, 1 - (double)completedEpochs / AnnealEpochs);

    /// λ_l per cut (the outputs of blocks 1 … L−1) from one value or one per cut.
    public static double[] WeightsPerCut(NestedProgram program, IReadOnlyList<double> lambda)
    {
        int cuts = program.Segments.Count - 1;
        if (cuts == 0)
            throw new ArgumentException("Deeply supervised nets need a program with at least one cut (a block output for a companion classifier); this one is one block.");
        if (lambda.Count != 1 && lambda.Count != cuts)
            throw new ArgumentException($"Invalid lambda: {lambda.Count} values for a program of {cuts} cuts (expected 1, or {cuts}: one per cut from the input).");
        return Enumerable.Range(0, cuts).Select(l => lambda.Count == 1 ? lambda[0] : lambda[l]).ToArray();
    }
}

/// The lifted problem of deeply supervised nets: the weights, a linear head per cut (player
/// "heads") and the companion weights' schedule.
public sealed class DeeplySupervisedProblem : LiftedProblem
{
    private readonly DeeplySupervised formulation;
    private readonly double[] initial;
    private readonly Tensor[] heads; // V_1, c_1, V_2, c_2, …
    private readonly StepState[] headStates;
    private Tensor[] lambdaTensors = Array.Empty<Tensor>();
    private int completedEpochs;

    internal DeeplySupervisedProblem(DeeplySupervised formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
    {
        using var scope = NewDisposeScope(); // the draws' temporaries; the heads are registered below
        this.formulation = formulation;
        initial = DeeplySupervised.WeightsPerCut(context.Program, formulation.CompanionWeights);
        long outputs = context.Program.OutputShape.Aggregate(1L, (a, b) => a * b);
        using var generator = new Generator(unchecked((ulong)(uint)context.Seed * 2862933555777941757UL + 3037000493UL));
        var variables = new List<Tensor>();
        var states = new List<StepState>();
        for (int l = 0; l < initial.Length; l++)
        {
            long inputs = context.Program.Segments[l].OutputShape.Aggregate(1L, (a, b) => a * b);
            var init = Initialisers.UniformFanIn(inputs);
            foreach (var (name, shape) in new[] { ("weight", new[] { outputs, inputs }), ("bias", new[] { outputs }) })
            {
                var (variable, state) = AddSharedVariable(DeeplySupervised.Heads, $"head{l + 1}.{name}", init(shape, generator, context.DType, context.Device));
                variables.Add(variable);
                states.Add(state);
            }
        }
        heads = variables.ToArray();
        headStates = states.ToArray();
        UpdateLambda();
    }

    /// The heads' variables: V_1, c_1, V_2, c_2, … (one weight and one bias per cut).
    public IReadOnlyList<Tensor> HeadVariables => heads;

    /// λ_l of the current epoch, per cut.
    public IReadOnlyList<double> Lambda => initial.Select(l => l * formulation.Scale(completedEpochs)).ToArray();

    public Player HeadsPlayer() => new(DeeplySupervised.Heads, Role.Minimise, heads, Context.StepRuleFor(DeeplySupervised.Heads), headStates);

    public override IBatchGame Batch(MiniBatch batch) => new DsnGame(this, batch);

    public override void EndEpoch(int epoch)
    {
        completedEpochs = epoch;
        UpdateLambda();
    }

    public override IReadOnlyDictionary<string, double> StateScalars =>
        new Dictionary<string, double> { ["completed-epochs"] = completedEpochs };

    public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
    {
        base.RestoreScalars(scalars);
        var value = scalars["completed-epochs"];
        if (!(value >= 0) || value != Math.Floor(value))
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"Invalid completed-epochs in the checkpoint: {value} (expected an integer >= 0)."));
        completedEpochs = (int)value;
        UpdateLambda();
    }

    /// `lambda-L` per cut, the companion weight the epoch just ended used, and `angle-K` per layer
    /// with parameters: the angle between this method's weight direction at those λ and
    /// back-propagation's gradient on the probe batch (`LayerAngles`).
    public override IReadOnlyDictionary<string, double> Diagnostics
    {
        get
        {
            var d = new Dictionary<string, double>();
            var scale = formulation.Scale(Math.Max(0, completedEpochs - 1));
            var used = initial.Select(l => l * scale).ToArray();
            for (int l = 0; l < used.Length; l++) d[$"lambda-{l + 1}"] = used[l];
            using var scope = NewDisposeScope();
            var (x, y) = LayerAngles.ProbeBatch(Context);
            using var batch = new MiniBatch(ScalarFactories.Arange(x.shape[0], ScalarType.Int64, x.device), x, y);
            using var game = new DsnGame(this, batch, used, measuring: true);
            var direction = game.Operator(new[] { WeightsPlayer() })[0];
            using var measuring = ForwardPass.Measuring(Program, Weights, Context.Seed);
            foreach (var (k, v) in LayerAngles.ToBackprop(Program, Weights.Tensors, direction, x, y, measuring)) d[k] = v;
            return d;
        }
    }

    private void UpdateLambda()
    {
        foreach (var t in lambdaTensors) t.Dispose();
        var lambda = Lambda;
        lambdaTensors = lambda.Select(l => tensor(l, dtype: Context.DType, device: Context.Device).DetachFromDisposeScope()).ToArray();
    }

    public override void Dispose()
    {
        foreach (var t in lambdaTensors) t.Dispose();
        lambdaTensors = Array.Empty<Tensor>();
        base.Dispose();
    }

    /// The game on one mini-batch: the weights and the heads descend the deeply supervised
    /// objective Σ_i [ℓ(ŷ_i) + Σ_l λ_l ℓ(head_l(h_l,i))] by back-propagation; a head whose λ_l is
    /// 0 is not evaluated (its direction is 0).
    /// Back-propagation's pass for programs with batch normalisation or dropout.
    internal ForwardPass? TrainingPass(MiniBatch batch) => PassFor(batch, holdFixed: false);

    private sealed class DsnGame : BatchGame
    {
        private readonly DeeplySupervisedProblem problem;
        private readonly ForwardPass? pass;
        private readonly double[] lambda;
        private readonly Tensor[] lambdaTensors;

        public DsnGame(DeeplySupervisedProblem problem, MiniBatch batch, double[]? lambda = null, bool measuring = false) : base(batch)
        {
            this.problem = problem;
            // The problem's 0-d λ tensors for training; others (diagnostics) made here, in the caller's scope.
            this.lambda = lambda ?? problem.Lambda.ToArray();
            lambdaTensors = lambda is null ? problem.lambdaTensors
                : lambda.Select(l => tensor(l, dtype: problem.Context.DType, device: problem.Context.Device)).ToArray();
            // A diagnostic's game leaves the running statistics alone.
            pass = measuring ? ForwardPass.Measuring(problem.Program, problem.Weights, problem.Context.Seed) : problem.TrainingPass(batch);
            Players = new[] { problem.WeightsPlayer(), problem.HeadsPlayer() };
        }

        public override IReadOnlyList<Player> Players { get; }

        protected override Tensor EvaluateSum()
        {
            var program = problem.Program;
            var weights = problem.Weights.Tensors;
            var labels = Batch.Labels;
            var terms = new List<Tensor>();
            var x = Batch.Inputs;
            var h = x;
            var outputShape = new[] { x.shape[0] }.Concat(program.OutputShape).ToArray();
            var segments = program.Segments;
            var values = new Tensor[segments.Count];
            for (int l = 0; l < segments.Count; l++)
            {
                h = values[l] = segments[l].Forward(segments[l].InputsFrom(x, values), weights, pass);
                if (l == segments.Count - 1 || lambda[l] == 0) continue;
                var head = F.linear(h.reshape(h.shape[0], -1), problem.heads[2 * l], problem.heads[2 * l + 1]).reshape(outputShape);
                terms.Add(program.Loss.PerExample(head, labels).sum().mul(lambdaTensors[l]));
            }
            var loss = program.Loss.PerExample(h, labels).sum();
            Record(loss, Array.Empty<Tensor>());
            terms.Insert(0, loss);
            return terms.Count == 1 ? loss : stack(terms.ToArray()).sum();
        }

        public override void Commit() { }

        public override void Dispose()
        {
            pass?.Dispose();
            base.Dispose();
        }
    }
}
