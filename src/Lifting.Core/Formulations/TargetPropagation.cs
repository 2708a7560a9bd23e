using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Target propagation and difference target propagation (Lee, Zhang, Fischer & Bengio 2015,
/// "Difference Target Propagation", ECML-PKDD): every hidden layer gets a target instead of a
/// gradient, the targets are carried down by learned approximate inverses, and each layer
/// regresses onto its own target.
///
/// On a chain of the program's segments, h_0 = x, h_l = f_l(h_{l−1}; W_l) for l = 1 … L (1-based
/// here, as in the paper; h_L = ŷ), with one learned inverse per segment l = 2 … L−1
///
///   g_l(h_l) = σ_{l−1}(V_l h_l + c_l)       (σ_{l−1} the activation that ends segment l−1, so g_l's
///                                           range is h_{l−1}'s; flattened and reshaped as needed)
///
/// the targets are, from the top,
///
///   ĥ_{L−1} = h_{L−1} − η̂ ∂ℓ_i/∂h_{L−1}                     (one example's loss ℓ_i)
///   DTP:  ĥ_{l−1} = h_{l−1} + g_l(ĥ_l) − g_l(h_l)           (the difference correction)
///   TP:   ĥ_{l−1} = g_l(ĥ_l)
///
/// and the weights' direction is, per segment, the gradient of a local loss at the forward input
/// h_{l−1} (held fixed):
///
///   l < L:  ∇_{W_l} (1/B) Σ_i ½‖f_l(h_{l−1,i}; W_l) − ĥ_{l,i}‖²
///   l = L:  ∇_{W_L} (1/B) Σ_i ℓ(f_L(h_{L−1,i}; W_L), y_i)            (the top layer trains on the loss)
///
/// The inverses are a second player ("inverses") whose direction is the gradient of the
/// noise-regularised reconstruction loss
///
///   ∇_{V_l, c_l} (1/B) Σ_i ½‖g_l(f_l(h_{l−1,i} + ε_i)) − (h_{l−1,i} + ε_i)‖²,   ε ~ N(0, σ² I),
///
/// f_l at the current weights; ε is drawn from a generator seeded by the run's seed and the step
/// (so a run is deterministic and a resumed run draws what the uninterrupted one drew). Both
/// directions are taken at the same point and the solver steps both players (Adam by default);
/// `--solver alternating` steps them one after the other. With σ = 0 the inverse is trained only
/// on the forward values.
///
/// Why the difference correction: if g_l inverts f_l at h_l (g_l(h_l) = h_{l−1}) the DTP target is
/// TP's, and whatever g_l is, ĥ_l = h_l gives ĥ_{l−1} = h_{l−1} (TP's target of the forward value
/// is g_l(h_l), off by the inverse's error). With exact inverses and small η̂,
/// ĥ_{l−1} − h_{l−1} ≈ J_{f_l}^{−1}(ĥ_l − h_l), a Gauss–Newton-like step rather than the gradient;
/// on an invertible linear net it is W_l^{−1}(ĥ_l − h_l) exactly. So DTP has no back-propagation
/// limit: its top two layers get the gradient (the second scaled by η̂), the lower ones do not.
///
/// The layers' state (V_l, c_l and their step state) is shared state of the lifted problem, saved in
/// checkpoints as `shared/inverseL.weight`, `shared/inverseL.bias` (L the 1-based segment whose
/// output the inverse reads). The formulation needs a chain: a program whose segments read anything
/// but the segment below, or share a weight, is refused.
///
/// Source: the targets, layer losses and noise-regularised inverse loss are the paper's (its
/// eqs. for ĥ, L_i and L_i^inv), as recalled, not checked against the text here. The paper
/// updates the top layer by the loss (as here) and uses tanh layers with an inverse of the same
/// form; its step sizes and σ were tuned per data set.
public sealed class TargetPropagation : IFormulation
{
    /// The approximate inverses' player.
    public const string Inverses = "inverses";

    public TargetPropagation(double targetStep, double noise, bool difference = true, string? name = null)
    {
        if (!(targetStep > 0) || !double.IsFinite(targetStep)) throw new ArgumentOutOfRangeException(nameof(targetStep), $"Invalid target step: {targetStep} (expected a finite value > 0).");
        if (!(noise >= 0) || !double.IsFinite(noise)) throw new ArgumentOutOfRangeException(nameof(noise), $"Invalid noise: {noise} (expected a finite value >= 0).");
        TargetStep = targetStep;
        Noise = noise;
        Difference = difference;
        Name = name ?? (difference ? "dtp" : "tp");
    }

    /// η̂: the top target's step along −∂ℓ_i/∂h_{L−1}.
    public double TargetStep { get; }
    /// σ: the standard deviation of the noise the inverses are trained on.
    public double Noise { get; }
    /// DTP's difference correction (false: plain target propagation).
    public bool Difference { get; }
    public string Name { get; }

    public string Description =>
        $"{(Difference ? "difference target propagation" : "target propagation")}: layer-local targets carried down by learned inverses, " +
        $"target step {MethodParameter.Format(TargetStep)}, inverse noise {MethodParameter.Format(Noise)} (Lee, Zhang, Fischer & Bengio 2015)";

    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, Inverses };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new TargetPropagationProblem(this, context, weights);

    /// Refuses a program that is not a chain of segments with weights of their own (one line, naming why).
    public static void Validate(NestedProgram program, string name)
    {
        var segments = program.Segments;
        var owner = new Dictionary<int, int>();
        foreach (var s in segments)
        {
            if (s.InputSegments.Count != 1 || s.InputSegments[0] != s.Index - 1)
                throw new ArgumentException($"{name} propagates targets down a chain of layers; segment {s.Index + 1} reads {(s.InputSegments.Count == 1 ? "a value other than the segment below" : $"{s.InputSegments.Count} values")} (skip connections are not supported).");
            foreach (var p in s.Parameters)
                if (owner.TryGetValue(p, out var other) && other != s.Index)
                    throw new ArgumentException($"{name} propagates targets down a chain of layers with weights of their own; segments {other + 1} and {s.Index + 1} share parameter '{program.ParameterNames[p]}' (tied weights are not supported).");
                else owner[p] = s.Index;
        }
    }

    /// The targets of the hidden values h_1 … h_{L−1} (0-based: of segments 0 … L−2) from the top
    /// target ĥ_{L−1}: DTP ĥ_{l−1} = h_{l−1} + g_l(ĥ_l) − g_l(h_l), TP ĥ_{l−1} = g_l(ĥ_l), where
    /// `inverse(l, h)` is g_l for the 0-based segment l (1 … L−2) reading h.
    public static Tensor[] Targets(IReadOnlyList<Tensor> hidden, Tensor topTarget, Func<int, Tensor, Tensor> inverse, bool difference)
    {
        int n = hidden.Count;
        var targets = new Tensor[n];
        if (n == 0) return targets;
        targets[n - 1] = topTarget;
        for (int l = n - 1; l >= 1; l--)
        {
            var down = inverse(l, targets[l]);
            targets[l - 1] = difference ? hidden[l - 1].Plus(down) - inverse(l, hidden[l]) : down;
        }
        return targets;
    }
}

/// One pass of (difference) target propagation on a batch: the weights' direction (one tensor per
/// parameter), the inverses' direction (V, c per inverse), each example's loss, the forward hidden
/// values and their targets.
public sealed record TargetPass(IReadOnlyList<Tensor> WeightGradients, IReadOnlyList<Tensor> InverseGradients, Tensor Losses,
    IReadOnlyList<Tensor> Hidden, IReadOnlyList<Tensor> Targets);

/// The lifted problem of (difference) target propagation: the weights and the approximate
/// inverses g_l (player "inverses", shared variables with their step state).
public sealed class TargetPropagationProblem : LiftedProblem, IDrawsPerBatch
{
    private readonly TargetPropagation formulation;

    public string Draws => "the inverses' reconstruction noise";

    private readonly Tensor[] inverses; // V_2, c_2, V_3, c_3, … (1-based segments 2 … L−1)
    private readonly StepState[] inverseStates;
    private readonly IActivation[] below; // σ_{l−1}: the activation ending the segment below segment l

    internal TargetPropagationProblem(TargetPropagation formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
    {
        TargetPropagation.Validate(context.Program, formulation.Name);
        using var scope = NewDisposeScope(); // the draws' temporaries; the inverses are registered below
        this.formulation = formulation;
        var segments = context.Program.Segments;
        using var generator = new Generator(unchecked((ulong)(uint)context.Seed * 0x9E3779B97F4A7C15UL + 0x2545F4914F6CDD1DUL));
        var variables = new List<Tensor>();
        var states = new List<StepState>();
        below = new IActivation[segments.Count];
        // One inverse per hidden segment above the first: 0-based l = 1 … L−2 maps h_l to h_{l−1}.
        for (int l = 1; l < segments.Count - 1; l++)
        {
            long inputs = Shapes.Size(segments[l].OutputShape), outputs = Shapes.Size(segments[l - 1].OutputShape);
            below[l] = segments[l - 1].OutputActivation ?? Activations.Identity;
            var init = Initialisers.UniformFanIn(inputs);
            foreach (var (name, shape) in new[] { ("weight", new[] { outputs, inputs }), ("bias", new[] { outputs }) })
            {
                var (variable, state) = AddSharedVariable(TargetPropagation.Inverses, $"inverse{l + 1}.{name}", init(shape, generator, context.DType, context.Device));
                variables.Add(variable);
                states.Add(state);
            }
        }
        // A program with fewer than two hidden segments has no inverse; the player keeps one empty
        // placeholder (direction 0), so that schedules and solvers naming it still find it.
        if (variables.Count == 0)
        {
            var (variable, state) = AddSharedVariable(TargetPropagation.Inverses, "inverse-none", zeros(0, dtype: context.DType, device: context.Device));
            variables.Add(variable);
            states.Add(state);
        }
        inverses = variables.ToArray();
        inverseStates = states.ToArray();
        InverseCount = segments.Count > 2 ? segments.Count - 2 : 0;
    }

    /// The number of inverses g_l (one per 1-based segment 2 … L−1).
    public int InverseCount { get; }

    /// The inverses' variables: V, c for 0-based segments 1 … L−2, in order (tests may overwrite them
    /// in place); one empty placeholder when there is no inverse.
    public IReadOnlyList<Tensor> InverseVariables => inverses;

    public Player InversesPlayer() => new(TargetPropagation.Inverses, Role.Minimise, inverses, Context.StepRuleFor(TargetPropagation.Inverses), inverseStates);

    /// g_l(h) = σ_{l−1}(V_l flatten(h) + c_l), reshaped to h_{l−1}'s shape, for the 0-based segment l ≥ 1.
    public Tensor Inverse(int l, Tensor h) => Inverse(l, h, inverses[2 * (l - 1)], inverses[2 * (l - 1) + 1]);

    private Tensor Inverse(int l, Tensor h, Tensor v, Tensor c)
    {
        var shape = new[] { h.shape[0] }.Concat(Program.Segments[l - 1].OutputShape).ToArray();
        return below[l].Apply(F.linear(h.reshape(h.shape[0], -1), v, c)).reshape(shape);
    }

    public override IBatchGame Batch(MiniBatch batch) => new TargetGame(this, batch);

    /// Back-propagation's pass for programs with batch normalisation or dropout, held for the step
    /// (every segment is evaluated more than once).
    internal ForwardPass? TrainingPass(MiniBatch batch) => PassFor(batch, holdFixed: true);

    /// One pass on a batch (see `TargetPropagation`): forward values, targets, the weights' and
    /// the inverses' directions. `step` seeds the inverses' noise.
    public TargetPass Pass(Tensor inputs, Tensor labels, long step, ForwardPass? pass = null)
    {
        var program = Program;
        var weights = Weights.Tensors;
        var segments = program.Segments;
        int n = segments.Count;
        long batch = inputs.shape[0];
        var gradients = new Tensor?[weights.Count];
        Tensor[] SegmentParameters(int l) => segments[l].Parameters.Select(p => weights[p]).ToArray();
        void Store(int l, IReadOnlyList<Tensor> g)
        {
            var indices = segments[l].Parameters;
            for (int i = 0; i < indices.Count; i++) gradients[indices[i]] = g[i].detach();
        }

        // Forward: h_l and, per segment, a one-segment graph from the detached input to its parameters.
        var hidden = new Tensor[n];
        var outputs = new Tensor[n];
        using (enable_grad())
            for (int l = 0; l < n; l++)
            {
                var input = l == 0 ? inputs : hidden[l - 1];
                var leaf = l == n - 1 ? input.detach().requires_grad_(true) : input.detach();
                outputs[l] = segments[l].Forward(new[] { leaf }, weights, pass);
                hidden[l] = l == n - 1 ? leaf : outputs[l].detach();
            }
        // hidden[n − 1] now holds the top segment's input leaf; the hidden values are hidden[0 … n−2].
        var top = hidden[n - 1];
        Tensor losses, topTarget;
        using (enable_grad())
        {
            var perExample = program.Loss.PerExample(outputs[n - 1], labels);
            losses = perExample.detach();
            var parameters = SegmentParameters(n - 1);
            var wrt = n > 1 ? new[] { top }.Concat(parameters).ToArray() : parameters;
            var g = autograd.grad(new[] { perExample.sum() }, wrt);
            var scale = Scalars.Of(1.0 / batch);
            Store(n - 1, g.Skip(n > 1 ? 1 : 0).Select(t => t.detach().mul_(scale)).ToArray());
            using (no_grad())
                topTarget = n > 1 ? top.detach() - g[0].detach().mul_(Scalars.Of(formulation.TargetStep)) : top.detach();
        }
        var values = hidden.Take(n - 1).ToArray();
        Tensor[] targets;
        using (no_grad())
            targets = TargetPropagation.Targets(values, topTarget, Inverse, formulation.Difference);

        // Layer losses: ∇_{W_l} (1/B) Σ ½‖f_l(h_{l−1}) − ĥ_l‖², the residual f_l(h_{l−1}) − ĥ_l the output's signal.
        for (int l = 0; l < n - 1; l++)
        {
            var parameters = SegmentParameters(l);
            if (parameters.Length == 0) continue;
            Tensor residual;
            using (no_grad()) residual = (values[l] - targets[l]).mul_(Scalars.Of(1.0 / batch));
            using (enable_grad())
                Store(l, autograd.grad(new[] { outputs[l] }, parameters, grad_outputs: new[] { residual }).ToArray());
        }

        // Inverses: ∇_{V,c} (1/B) Σ ½‖g_l(f_l(h_{l−1} + ε)) − (h_{l−1} + ε)‖².
        var inverseGradients = new Tensor[inverses.Length];
        if (InverseCount == 0)
            using (no_grad()) inverseGradients[0] = zeros_like(inverses[0]);
        else
        {
            using var generator = new Generator(NoiseSeed(Context.Seed, step));
            for (int l = 1; l < n - 1; l++)
            {
                Tensor corrupted, image;
                using (no_grad())
                {
                    corrupted = formulation.Noise > 0
                        ? values[l - 1].Plus(randn(values[l - 1].shape, dtype: values[l - 1].dtype, device: values[l - 1].device, generator: generator).mul_(Scalars.Of(formulation.Noise)))
                        : values[l - 1];
                    image = segments[l].Forward(new[] { corrupted }, weights, pass);
                }
                using (enable_grad())
                {
                    var v = inverses[2 * (l - 1)];
                    var c = inverses[2 * (l - 1) + 1];
                    var error = Inverse(l, image, v, c) - corrupted;
                    var loss = error.Squared().sum().mul(Scalars.Of(0.5 / batch));
                    var g = autograd.grad(new[] { loss }, new[] { v, c });
                    inverseGradients[2 * (l - 1)] = g[0].detach();
                    inverseGradients[2 * (l - 1) + 1] = g[1].detach();
                }
            }
        }
        using (no_grad())
            for (int i = 0; i < gradients.Length; i++) gradients[i] ??= zeros_like(weights[i]);
        return new TargetPass(gradients!, inverseGradients, losses, values, targets);
    }

    /// The noise generator's seed for a step, apart from the weights' and the inverses' initial draws.
    private static ulong NoiseSeed(int seed, long step) =>
        unchecked((ulong)(uint)seed * 0xD1B54A32D192ED03UL + (ulong)step * 0x9E3779B97F4A7C15UL + 0x94D049BB133111EBUL);

    /// `angle-K` per layer with parameters: the angle in degrees between the weights' direction and
    /// back-propagation's gradient on the probe batch (`LayerAngles`).
    public override IReadOnlyDictionary<string, double> Diagnostics
    {
        get
        {
            using var scope = NewDisposeScope();
            var (x, y) = LayerAngles.ProbeBatch(Context);
            using var measuring = ForwardPass.Measuring(Program, Weights, Context.Seed);
            var result = Pass(x, y, 0, measuring);
            return LayerAngles.ToBackprop(Program, Weights.Tensors, result.WeightGradients, x, y, measuring);
        }
    }

    /// The game on one mini-batch: the weights descend their layer losses, the inverses their
    /// reconstruction losses; nothing is lifted, the lifted objective is the loss.
    private sealed class TargetGame : ForwardLossGame
    {
        private readonly TargetPropagationProblem problem;

        public TargetGame(TargetPropagationProblem problem, MiniBatch batch)
            : base(problem, batch, problem.TrainingPass(batch), new[] { problem.WeightsPlayer(), problem.InversesPlayer() }) =>
            this.problem = problem;

        public override IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights && p.Name != TargetPropagation.Inverses)
                    throw new ArgumentException($"{problem.Formulation.Name} has no player '{p.Name}'.");
            Tensor[] weights, inverses;
            using (var scope = NewDisposeScope())
            {
                var result = problem.Pass(Batch.Inputs, Batch.Labels, Batch.Step, Pass);
                RecordLosses(result.Losses);
                weights = result.WeightGradients.Select(t => t.MoveToOuterDisposeScope()).ToArray();
                inverses = result.InverseGradients.Select(t => t.MoveToOuterDisposeScope()).ToArray();
            }
            return players.Select(p => (IReadOnlyList<Tensor>)(p.Name == TargetPropagation.Inverses ? inverses : weights)).ToArray();
        }

    }
}
