using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Where DistProp keeps the Lagrange multipliers of its constraints.
public enum MultiplierPlacement
{
    /// One multiplier per class and cut, λ_l(c) (seed 001 Algorithm 1 writes λ_{y⁽ⁱ⁾}): shared
    /// variables whose size does not depend on the dataset.
    Class,
    /// One multiplier per constraint: per training example for the first cut (in the per-example
    /// store, so it grows with the dataset), per synthetic sample (class, s) for deeper cuts.
    Example,
}

/// Options of DistProp (seed 001 §3, §3.1, §5).
public sealed record DistPropOptions
{
    /// ε of the ε-insensitive z-score constraint g_ε(z) (seed 001 eq. 3: soft thresholding, 0
    /// inside [−ε, ε]), in standard deviations; with `ReducedConstraint`, the threshold of
    /// ReLU(‖z‖₁ − ε). The authors' code uses 1; at σ = 1 that leaves the first cut feasible from
    /// the start, so nothing trains f_1 (docs/methods.md), hence 0.1 here.
    public double Epsilon { get; init; } = 0.1;

    /// S: synthetic samples per class and cut, h̃_l(c, s) = μ_l(c) + e_l(c, s) ⊙ σ_l(c).
    public int SamplesPerClass { get; init; } = 16;

    /// Multipliers per constraint (per example for the first cut, as seed 001 §5's |D| × H
    /// multipliers and the authors' code) or per class (Algorithm 1).
    public MultiplierPlacement Multipliers { get; init; } = MultiplierPlacement.Example;

    /// Replace each constraint vector by the scalar ReLU(‖z‖₁ − ε), one multiplier per example
    /// (or class, or sample) instead of one per feature: seed 001 §5's ImageNet memory reduction.
    public bool ReducedConstraint { get; init; }

    /// A hidden block that ends in an activation keeps its state before that activation, which
    /// moves to the start of the next block: the network computes the same function, and the
    /// Gaussian states live in the unbounded range of the pre-activation (seed 001 §5: "for
    /// DistProp, we remove the ReLU non-linearity" at the cut).
    public bool PreActivationStates { get; init; } = true;

    /// Draw the variates anew for every step k (Algorithm 1's ε_k, one per iteration, which the
    /// authors' code realises with `rsample`) instead of one fixed set of S per class for the whole
    /// run (§3.1's snapshot read narrowly). The draw of step k comes from a generator seeded by the
    /// run's seed and k, so the program stays fully determined (§3.1) and a resumed run draws what
    /// the uninterrupted one would have.
    public bool ResampleVariates { get; init; } = true;

    /// One scale σ_l per cut and feature, shared by the classes, instead of one per class: the
    /// classes' synthetic states then differ only in their means. With a scale per class the last
    /// block can tell the classes apart by their scales alone, which a constraint on each example's
    /// distance to its mean does not carry to the real features: a strong constraint then holds
    /// every f_1(x) at one label-free point (docs/methods.md, "Where the class goes").
    public bool SharedScale { get; init; }

    /// Means initialised at random points on the sphere of radius √H (H the cut's width), each
    /// feature of the size of σ = 1, instead of on the unit sphere (seed 001 §4): at H = 256 the
    /// unit sphere puts the classes' means about √2/16 ≈ 0.09 apart per feature, inside every class's
    /// ε-band of 0.1σ, so one label-free point satisfies every class's constraint from the start.
    public bool FeatureScaleMeans { get; init; }

    /// Hold the means where they start (fixed class prototypes) and learn only the scales: the
    /// means then cannot drift towards each other when examples of two classes overlap in f_1.
    public bool FixedMeans { get; init; }

    /// Hold every σ at 1 and learn only the means: the constraint can then be met only by moving
    /// f_1 and the means, not by widening the classes' bands.
    public bool FixedScales { get; init; }

    /// Coefficient c of the augmented Lagrangian term (c/2)‖g_ε(z)‖² added to every constraint's
    /// λ·g_ε(z) (seed 001 §2.1 and §5, "Augmented Lagrangian"); 0 = the plain Lagrangian.
    public double Augmentation { get; init; }

    public void Validate()
    {
        if (!(Epsilon >= 0) || double.IsInfinity(Epsilon)) throw new ArgumentOutOfRangeException(nameof(Epsilon), $"Invalid epsilon: {Epsilon} (expected a finite value >= 0).");
        if (!(Augmentation >= 0) || double.IsInfinity(Augmentation)) throw new ArgumentOutOfRangeException(nameof(Augmentation), $"Invalid augmentation c: {Augmentation} (expected a finite value >= 0).");
        if (FixedMeans && FixedScales) throw new ArgumentException("Invalid DistProp options: fixed means and fixed scales together leave no Gaussian parameter to learn (choose at most one).");
        if (SamplesPerClass < 1) throw new ArgumentOutOfRangeException(nameof(SamplesPerClass), $"Invalid samples per class: {SamplesPerClass} (expected >= 1).");
        if (!Enum.IsDefined(Multipliers)) throw new ArgumentOutOfRangeException(nameof(Multipliers), $"Invalid multiplier placement: {Multipliers} (expected Class or Example).");
    }
}

/// DistProp (seed 001 §3, §3.1 and Algorithm 1): a multiple-shooting Lagrangian whose auxiliary
/// variables do not grow with the dataset. Per cut l = 1 … L−1 and class c a Gaussian with mean
/// and scale linear in the one-hot label,
///
///     μ_l(c) = W_μ,lᵀ onehot(c),    σ_l(c) = softplus(W_σ,lᵀ onehot(c))
///
/// (stored as the M rows of W_μ,l and W_σ,l; means initialised at random points on the unit
/// sphere, σ = 1). The first block's output of every example is held within ε standard deviations
/// of its class's mean by the ε-insensitive z-score constraint; deeper blocks and the loss see
/// only synthetic states h̃_l(c, s) = μ_l(c) + e_l(c, s) ⊙ σ_l(c), with S Normal variates e per
/// class: by default drawn anew for every step k from a generator seeded by (seed, k), Algorithm 1's
/// ε_k, a pre-generated sequence that keeps the program fully determined (derandomisation by
/// reparametrisation, §3.1); optionally one set drawn at initialisation and fixed for the run:
///
///     z_1(i)    = (f_1(x_i; w_1) − μ_1(y_i)) / σ_1(y_i)
///     z_l(c, s) = (f_l(h̃_{l−1}(c, s); w_l) − μ_l(c)) / σ_l(c),           l = 2 … L−1
///     L_i = ⟨λ_1, g_ε(z_1(i))⟩ + (1/S) Σ_s [ Σ_{l≥2} ⟨λ_l, g_ε(z_l(y_i, s))⟩ + ℓ(f_L(h̃_{L−1}(y_i, s)), y_i) ]
///
/// with λ_1 = λ_1(y_i) or λ_1[i] and λ_l = λ_l(y_i) or λ_l(y_i, s) by `MultiplierPlacement`, and
/// g_ε the soft threshold (eq. 3) or the reduced ReLU(‖z‖₁ − ε) (§5). L_i is Algorithm 1's
/// per-example Lagrangian ℓ_i(y_i, f(h̃(y_i))) + λ_{y_i} g⁽ⁱ⁾ extended to S samples and deeper cuts.
///
/// The mini-batch game is Σ_i L_i over the batch, so the class-conditional terms of class c enter
/// with weight n_c, the number of the batch's examples of class c: every batch evaluates the M·S
/// synthetic samples once (cheap: M·S rows against B examples) and weights each class's terms by
/// its count. Classes absent from the batch contribute nothing; over an epoch each class is
/// weighted by its frequency in the training set, which makes the batch game an unbiased estimate
/// of (1/|D|) Σ_i L_i. As everywhere in the engine, shared players (weights, the Gaussians'
/// parameters, per-class multipliers) receive the batch mean (1/B) Σ_i ∂L_i/∂v, per-example
/// multipliers their own example's ∂L_i/∂λ_1[i].
///
/// Players: weights (min), states (min: W_μ,l and W_σ,l of every cut), multipliers (max). Memory
/// beyond the weights: M·H_l means and scales and M·S·H_l variates per cut (the fixed set, or the current step's), and the
/// multipliers (M·H_l per cut, or N·H_1 for per-example placement). Evaluation is the plain
/// forward pass through the real blocks.
public sealed class DistProp : IFormulation
{
    public DistProp(DistPropOptions? options = null, string name = "distprop")
    {
        Options = options ?? new DistPropOptions();
        Options.Validate();
        Name = name;
    }

    public DistPropOptions Options { get; }
    public string Name { get; }
    public string Description =>
        $"class-conditional Gaussian states μ_l(c), {(Options.SharedScale ? "σ_l shared by the classes" : "σ_l(c)")}{(Options.FeatureScaleMeans ? ", means initialised at radius √H" : "")}{(Options.FixedMeans ? ", means fixed" : "")}{(Options.FixedScales ? ", σ fixed at 1" : "")}, {(Options.ReducedConstraint ? "reduced ReLU(‖z‖₁ − ε)" : "ε-insensitive z-score")} constraints " +
        $"(ε = {Options.Epsilon:G3}), {Options.SamplesPerClass} sample(s) per class {(Options.ResampleVariates ? "redrawn every step" : "fixed")}, multipliers per {(Options.Multipliers == MultiplierPlacement.Class ? "class" : "example")}" +
        (Options.Augmentation > 0 ? $", + (c/2)‖g‖², c = {Options.Augmentation:G3}" : "");
    public IReadOnlyList<string> PlayerNames { get; } =
        new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States, Formulations.PlayerNames.Multipliers };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => true;

    public ILiftedProblem Lift(LiftContext context, Weights weights)
    {
        if (context.Program.Segments.Count < 2)
            throw new ArgumentException("DistProp needs a program with at least two blocks; add a Cut().");
        CheckCuts(context.Program);
        return new Problem(this, context, weights);
    }

    /// DistProp's states are class distributions, not examples' values: a lifted value must be one
    /// that every path from the input to the output passes through, so that the segment after it
    /// reads nothing else (a skip across the cut would need the example). Refuses any other cut,
    /// naming it.
    public static void CheckCuts(NestedProgram program)
    {
        var segments = program.Segments;
        for (int l = 0; l < segments.Count; l++)
        {
            var expected = l == 0 ? 0 : segments[l - 1].Value;
            var other = segments[l].Inputs.FirstOrDefault(i => i != expected, -1);
            if (other < 0) continue;
            var bypassed = program.NodeOf(segments[l - 1 < 0 ? 0 : l - 1].Value);
            var reader = segments[l].Nodes.First(n => n.Inputs.Contains(other));
            throw new ArgumentException(
                $"DistProp lifts only values that every path to the output passes through; the cut at {bypassed.Name} ({bypassed.Operation.Name}) is bypassed: {reader.Name} reads {(other == 0 ? "the input" : program.NodeOf(other).Name)} past it.");
        }
    }

    /// The constraint function of a z-score: the soft threshold g_ε(z) (seed 001 eq. 3) elementwise,
    /// or, reduced, ReLU(‖z‖₁ − ε) per row (the leading dimension).
    public static Tensor Constraint(Tensor z, DistPropOptions options)
    {
        if (options.ReducedConstraint) return F.relu(z.abs().reshape(z.shape[0], -1).sum(1).Minus(options.Epsilon));
        return options.Epsilon > 0 ? F.softshrink(z, options.Epsilon) : z;
    }

    /// The program DistProp lifts: with `PreActivationStates`, every lifted value that is an
    /// activation's output computed inside its segment moves to that activation's input (the same
    /// function, the same weights; for a chain, each hidden block's trailing activation moves to
    /// the start of the next block).
    public static NestedProgram LiftedProgram(NestedProgram program, DistPropOptions options)
    {
        if (!options.PreActivationStates) return program;
        bool moved = false;
        var cuts = program.Segments.Take(program.Segments.Count - 1).Select(segment =>
        {
            var last = segment.Nodes[^1];
            if (segment.Nodes.Count < 2 || last.Activation is null || last.Inputs.Count != 1 || segment.Inputs.Contains(last.Inputs[0])) return segment.Value;
            moved = true;
            return last.Inputs[0];
        }).ToArray();
        return moved ? program.WithCuts(cuts) : program;
    }

    private static long[] Shape(long rows, long[] example) => new[] { rows }.Concat(example).ToArray();
    private static long[] Shape(long a, long b, long[] example) => new[] { a, b }.Concat(example).ToArray();

    /// `v` with its gradient scaled by `factor` and its value unchanged (v + (v − v)·factor is v).
    private static Tensor ScaleGradient(Tensor v, double factor)
    {
        var frozen = v.detach();
        return frozen.Plus((v - frozen).Times(factor));
    }

    private sealed class Problem : LiftedProblem, ILayerSplittable
    {
        private readonly DistPropOptions options;
        private readonly NestedProgram lifted;
        private readonly int classes, samples, hidden;
        private readonly long[][] stateShapes;
        private readonly Tensor[] meanWeights, scaleWeights, variates;
        private readonly StepState[] gaussianStates;
        private readonly Tensor[] gaussianVariables;
        /// Per learned Gaussian variable: its cut (0-based) and name (mu1, sigma1, …).
        private readonly int[] gaussianCuts;
        private readonly string[] gaussianNames;
        /// A layer-parallel segment's blocks and its link to the neighbouring segments.
        private readonly SplitState split;
        /// The first cut's multipliers per example (in the store), or null when per class.
        private readonly RowGroup? exampleMultipliers;
        /// Shared multipliers: every cut's when per class, the deeper cuts' when per example.
        private readonly Tensor[] sharedMultipliers;
        private readonly StepState[] sharedMultiplierStates;
        /// Mini-batch steps taken: k of Algorithm 1's ε_k when the variates are redrawn each step.
        private long step;

        public Problem(DistProp formulation, LiftContext context, Weights weights) : base(formulation, context, weights)
        {
            using var scope = NewDisposeScope(); // temporaries; long-lived tensors are registered below
            options = formulation.Options;
            lifted = LiftedProgram(Program, options);
            classes = context.Train.ClassCount;
            samples = options.SamplesPerClass;
            hidden = lifted.Segments.Count - 1;
            split = new SplitState(lifted);
            stateShapes = Enumerable.Range(0, hidden).Select(l => lifted.Segments[l].OutputShape).ToArray();

            // Means on the unit sphere (or the sphere of radius √H), σ = softplus(log(e − 1)) = 1, variates e ~ N(0, 1): drawn
            // once, from a generator seeded by the run's seed, on the CPU so every device agrees.
            using var generator = new Generator(unchecked((ulong)(context.Seed * 1_000_003L + 77)));
            var inverseSoftplusOne = Math.Log(Math.E - 1);
            meanWeights = new Tensor[hidden];
            scaleWeights = new Tensor[hidden];
            variates = new Tensor[hidden];
            var states = new List<StepState>();
            var learnedStates = new List<Tensor>();
            var learnedCuts = new List<int>();
            var learnedNames = new List<string>();
            for (int l = 0; l < hidden; l++)
            {
                var direction = randn(new[] { (long)classes, stateShapes[l].Aggregate(1L, (a, b) => a * b) }, dtype: context.DType, generator: generator);
                var unit = (direction / direction.Squared().sum(1, keepdim: true).sqrt()).reshape(Shape(classes, stateShapes[l]));
                if (options.FeatureScaleMeans) unit = unit.Times(Math.Sqrt(direction.shape[1]));
                if (options.FixedMeans) meanWeights[l] = AddShared($"mu{l + 1}", unit.to(context.Device));
                else
                {
                    var (mean, meanState) = AddSharedVariable(Formulations.PlayerNames.States, $"mu{l + 1}", unit.to(context.Device));
                    meanWeights[l] = mean;
                    states.Add(meanState);
                    learnedStates.Add(mean);
                    learnedCuts.Add(l);
                    learnedNames.Add($"mu{l + 1}");
                }
                var scaleStart = full(Shape(options.SharedScale ? 1 : classes, stateShapes[l]), Scalars.Of(inverseSoftplusOne), dtype: context.DType, device: context.Device);
                if (options.FixedScales) scaleWeights[l] = AddShared($"sigma{l + 1}", scaleStart);
                else
                {
                    var (scale, scaleState) = AddSharedVariable(Formulations.PlayerNames.States, $"sigma{l + 1}", scaleStart);
                    scaleWeights[l] = scale;
                    states.Add(scaleState);
                    learnedStates.Add(scale);
                    learnedCuts.Add(l);
                    learnedNames.Add($"sigma{l + 1}");
                }
                variates[l] = AddShared($"variates{l + 1}", randn(Shape(classes, samples, stateShapes[l]), dtype: context.DType, generator: generator).to(context.Device));
            }
            gaussianStates = states.ToArray();
            gaussianVariables = learnedStates.ToArray();
            gaussianCuts = learnedCuts.ToArray();
            gaussianNames = learnedNames.ToArray();

            long[] MultiplierShape(long rows, long[] state) => options.ReducedConstraint ? new[] { rows } : Shape(rows, state);
            long[] SampleMultiplierShape(long[] state) => options.ReducedConstraint ? new long[] { classes, samples } : Shape(classes, samples, state);
            var shared = new List<(Tensor, StepState)>();
            if (options.Multipliers == MultiplierPlacement.Example)
            {
                exampleMultipliers = new RowGroup(Store, context, Formulations.PlayerNames.Multipliers, new[]
                {
                    ("lambda1", zeros(MultiplierShape(context.ExampleCount, stateShapes[0]), dtype: context.DType, device: context.Device)),
                });
            }
            else shared.Add(AddSharedVariable(Formulations.PlayerNames.Multipliers, "lambda1",
                zeros(MultiplierShape(classes, stateShapes[0]), dtype: context.DType, device: context.Device)));
            for (int l = 1; l < hidden; l++)
            {
                var shape = options.Multipliers == MultiplierPlacement.Example ? SampleMultiplierShape(stateShapes[l]) : MultiplierShape(classes, stateShapes[l]);
                shared.Add(AddSharedVariable(Formulations.PlayerNames.Multipliers, $"lambda{l + 1}", zeros(shape, dtype: context.DType, device: context.Device)));
            }
            sharedMultipliers = shared.Select(s => s.Item1).ToArray();
            sharedMultiplierStates = shared.Select(s => s.Item2).ToArray();
        }

        /// The Gaussians' parameters, the fixed variates and the multipliers (for tests and diagnostics).
        public IReadOnlyList<Tensor> MeanWeights => meanWeights;
        public IReadOnlyList<Tensor> ScaleWeights => scaleWeights;
        public IReadOnlyList<Tensor> Variates => variates;

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        public NestedProgram LiftedProgram => lifted;

        public string Exchanges => "each step, the two segments of a cut send each other their parts of the gradient of the cut's class means and scales (M·H numbers each way, independent of the batch size) and step their own players";

        public long RowsOf(int block, long batchSize) => block == 0 ? batchSize : (long)classes * samples;

        public void Restrict(BlockRange blocks, IBoundaryExchange link) => split.Restrict(blocks, link);

        /// A range's blocks' weights and the Gaussians and multipliers of the cuts its blocks end
        /// in (a boundary cut belongs to the lower range); the per-example λ₁ rows for the first.
        public IReadOnlyList<string> Owned(BlockRange blocks)
        {
            var cuts = Enumerable.Range(blocks.First, blocks.End - blocks.First).Where(l => l < hidden)
                .SelectMany(l => new[] { "mu", "sigma", "variates", "lambda" }.Select(name => $"shared/{name}{l + 1}"));
            var keys = StateTensors.Keys.ToArray();
            var store = blocks.First == 0 ? keys.Where(k => k.StartsWith("store/", StringComparison.Ordinal)).Select(k => k.Split('#')[0]) : Enumerable.Empty<string>();
            return split.Owned(keys, blocks, cuts.Concat(store));
        }

        /// Overwrites the variates with step k's, ε_k, from a CPU generator seeded by (seed, k), so
        /// every device draws the same numbers. The step's game reads them as it would fixed ones.
        private void Redraw(long k)
        {
            using var _ = no_grad();
            using var generator = new Generator(unchecked((ulong)(Context.Seed * 1_000_003L + 78) * 0x9E3779B97F4A7C15UL + (ulong)k));
            foreach (var e in variates)
            {
                using var draw = randn(e.shape, dtype: e.dtype, generator: generator);
                e.copy_(draw);
            }
        }

        public override IReadOnlyDictionary<string, double> StateScalars =>
            options.ResampleVariates ? new Dictionary<string, double> { ["variate-step"] = step } : base.StateScalars;

        public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
        {
            base.RestoreScalars(scalars);
            if (options.ResampleVariates) step = (long)scalars["variate-step"];
        }

        private Tensor Forward(int block, Tensor h) => lifted.Segments[block].Forward(new[] { h }, Weights.Tensors, EvaluationPass);

        /// μ_l(c), σ_l(c) for every class: [M, …].
        private (Tensor Mean, Tensor Scale) Gaussian(int l) => (meanWeights[l],
            options.SharedScale ? Scalars.Softplus(scaleWeights[l]).expand(Shape(classes, stateShapes[l])) : Scalars.Softplus(scaleWeights[l]));

        /// h̃_l(c, s) = μ_l(c) + e_l(c, s) ⊙ σ_l(c): [M, S, …].
        private Tensor Samples(int l, Tensor mean, Tensor scale) => mean.unsqueeze(1).Plus(variates[l] * scale.unsqueeze(1));

        /// The first cut's z-scores of the examples with inputs `x` and labels `y`.
        private Tensor FirstZ(Tensor f1, Tensor labels, Tensor mean, Tensor scale) =>
            (f1 - mean.index_select(0, labels)) / scale.index_select(0, labels);

        /// z_l(c, s) for a deeper cut l ≥ 1 (0-based) given the previous cut's samples: [M, S, …].
        private Tensor DeeperZ(int l, Tensor previousSamples, Tensor mean, Tensor scale)
        {
            var f = Forward(l, previousSamples.reshape(Shape(classes * samples, stateShapes[l - 1])));
            return (f.reshape(Shape(classes, samples, stateShapes[l])) - mean.unsqueeze(1)) / scale.unsqueeze(1);
        }

        /// DistProp's defect per cut: the mean violation |g_ε(z)| of its constraints, 0 when they all
        /// hold. The first cut over the training examples at `rows` (every example when null), per
        /// feature; deeper cuts over the M·S synthetic samples (they involve no example). With the
        /// reduced constraint, ReLU(‖z‖₁ − ε) divided by the feature count. Unlike ExtraProp's
        /// |h − f(h_prev)|, this is in units of the class's standard deviation.
        public override IReadOnlyList<double> MeasureDefects(Tensor? rows = null)
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var result = new double[hidden];
            var perExample = stateShapes.Select(s => s.Aggregate(1L, (a, b) => a * b)).ToArray();
            var (mean1, scale1) = Gaussian(0);
            var x = Context.Train.Inputs;
            var labels = Context.Train.Labels;
            var all = rows ?? ScalarFactories.Arange(x.shape[0], ScalarType.Int64, x.device);
            double sum = 0;
            long n = all.shape[0];
            for (long start = 0; start < n; start += 2048)
            {
                using var chunkScope = NewDisposeScope();
                var idx = all.narrow(0, start, Math.Min(2048, n - start));
                var z = FirstZ(Forward(0, x.index_select(0, idx).to(Context.DType)), labels.index_select(0, idx), mean1, scale1);
                sum += Constraint(z, options).abs().sum().ToDouble();
            }
            result[0] = sum / (Math.Max(1, n) * perExample[0]);
            var previous = Samples(0, mean1, scale1);
            for (int l = 1; l < hidden; l++)
            {
                var (mean, scale) = Gaussian(l);
                var z = DeeperZ(l, previous, mean, scale);
                result[l] = Constraint(z.reshape(Shape(classes * samples, stateShapes[l])), options).abs().sum().ToDouble() / (classes * samples * perExample[l]);
                previous = Samples(l, mean, scale);
            }
            return result;
        }

        /// Per cut: the mean σ, the mean distance between two classes' means, the mean |λ|, the distance
        /// between each class's mean state and μ_l(c) (gap) and the within-class spread per feature;
        /// the real and synthetic distances to the first cut's means (radius); and the last block's
        /// accuracy on the synthetic samples and at the means.
        public override IReadOnlyDictionary<string, double> Diagnostics
        {
            get
            {
                using var _ = no_grad();
                using var scope = NewDisposeScope();
                var d = new Dictionary<string, double>();
                for (int l = 0; l < hidden; l++)
                {
                    var (mean, scale) = Gaussian(l);
                    d[$"sigma{l + 1}"] = scale.mean().ToDouble();
                    var flat = mean.reshape(classes, -1);
                    d[$"mean-distance{l + 1}"] = classes > 1 ? cdist(flat, flat).sum().ToDouble() / (classes * (classes - 1)) : 0;
                }
                // Does the first block's output look like the Gaussians it is held to? Per class, the
                // distance between the mean of f_1(x) over the class's training examples and μ_1(c)
                // (gap), and the within-class spread of f_1(x) per feature (to compare with σ_1).
                var x = Context.Train.Inputs;
                var labels = Context.Train.Labels;
                var (mean1, scale1) = Gaussian(0);
                var width = mean1.reshape(classes, -1).shape[1];
                var sums = zeros(new long[] { classes, width }, dtype: Context.DType, device: mean1.device);
                var squares = zeros(new long[] { classes, width }, dtype: Context.DType, device: mean1.device);
                long n = x.shape[0];
                double alignment = 0, opposed = 0, radius = 0, nearest = 0;
                var flatMeans = mean1.reshape(classes, -1);
                var flatScales = scale1.reshape(classes, -1);
                for (long start = 0; start < n; start += 2048)
                {
                    using var chunk = NewDisposeScope();
                    var count = Math.Min(2048, n - start);
                    var f = Forward(0, x.narrow(0, start, count).to(Context.DType)).reshape(count, -1);
                    var y = labels.narrow(0, start, count);
                    sums.index_add_(0, y, f, Scalars.IntOne);
                    squares.index_add_(0, y, f.Squared(), Scalars.IntOne);
                    radius += (f - flatMeans.index_select(0, y)).Squared().sum().ToDouble();
                    // Does the constraint carry the label? f_1(x) nearest, in z-score, to its own class's μ_1.
                    var zAll = (f.unsqueeze(1) - flatMeans.unsqueeze(0)) / flatScales.unsqueeze(0);
                    nearest += zAll.Squared().sum(2).argmin(1).eq(y).sum().ToDouble();
                    if (exampleMultipliers is not null && !options.ReducedConstraint)
                    {
                        // Does each example's multiplier still point along its current violation?
                        // λ_i moves once per epoch, the weights every batch: a stale λ_i keeps pushing
                        // f_1(x_i) the same way after it has passed μ_1(y_i) (cosine < 0).
                        var g = Constraint((f - mean1.reshape(classes, -1).index_select(0, y)) / scale1.reshape(classes, -1).index_select(0, y), options);
                        var lambda = Store[exampleMultipliers.Keys[0]].narrow(0, start, count).reshape(count, -1).to(g.device);
                        alignment += F.cosine_similarity(lambda, g, 1, 1e-12).sum().ToDouble();
                        opposed += (lambda * g).sum(1).lt(Scalars.OfInteger(0)).sum().ToDouble();
                    }
                }
                if (exampleMultipliers is not null && !options.ReducedConstraint)
                {
                    d["alignment1"] = alignment / n;
                    d["opposed1"] = opposed / n;
                }
                var counts = bincount(labels, minlength: classes).to_type(Context.DType).clamp_min(Scalars.OfInteger(1)).unsqueeze(1);
                var classMean = sums / counts;
                // Root mean square of f_1(x) − its class's mean, over every example and feature.
                var spread = (squares.sum() - (counts * classMean.Squared()).sum()).OverInteger(n * width).clamp_min(Scalars.OfInteger(0)).sqrt();
                d["gap1"] = (classMean - mean1.reshape(classes, -1)).Squared().sum(1).sqrt().mean().ToDouble();
                d["spread1"] = spread.ToDouble();
                // Where the last block is trained and where it is used: a synthetic sample lies about
                // ‖e ⊙ σ‖ ≈ σ√H from its mean (a shell), a real feature within about ε·σ√H (a ball
                // inside it). Root mean square distance to the class mean, real and synthetic.
                d["radius1"] = Math.Sqrt(radius / n);
                d["nearest-mean1"] = nearest / n;
                d["synthetic-radius1"] = (variates[0] * scale1.unsqueeze(1)).reshape(classes * samples, -1).Squared().sum(1).mean().sqrt().ToDouble();
                // The same for deeper cuts over the synthetic samples, and the last block's accuracy on them.
                var previous = Samples(0, mean1, scale1);
                for (int l = 1; l < hidden; l++)
                {
                    var (mean, scale) = Gaussian(l);
                    var f = Forward(l, previous.reshape(Shape(classes * samples, stateShapes[l - 1]))).reshape(classes, samples, -1);
                    d[$"gap{l + 1}"] = (f.mean(new long[] { 1 }) - mean.reshape(classes, -1)).Squared().sum(1).sqrt().mean().ToDouble();
                    d[$"spread{l + 1}"] = f.var(1, unbiased: false).mean().sqrt().ToDouble();
                    previous = Samples(l, mean, scale);
                }
                var output = Forward(hidden, previous.reshape(Shape(classes * samples, stateShapes[hidden - 1])));
                var sampleLabels = ScalarFactories.Arange(classes, ScalarType.Int64, output.device).repeat_interleave(samples);
                d["synthetic-accuracy"] = output.argmax(1).eq(sampleLabels).to_type(ScalarType.Float64).mean().ToDouble();
                // The last block at the last cut's means themselves (e = 0), the centre of each shell.
                var (lastMean, _) = Gaussian(hidden - 1);
                var atMeans = Forward(hidden, lastMean.reshape(Shape(classes, stateShapes[hidden - 1])));
                d["mean-accuracy"] = atMeans.argmax(1).eq(ScalarFactories.Arange(classes, ScalarType.Int64, atMeans.device)).to_type(ScalarType.Float64).mean().ToDouble();
                for (int l = 0; l < hidden; l++)
                {
                    var lambda = l == 0 && exampleMultipliers is not null ? Store[exampleMultipliers.Keys[0]] : sharedMultipliers[exampleMultipliers is null ? l : l - 1];
                    d[$"multiplier{l + 1}"] = lambda.abs().mean().ToDouble();
                }
                return d;
            }
        }

        /// Seed 001's Lagrangian through the shared constraint loop: what a deeper segment reads of a
        /// cut is its class samples h̃_l, the first cut's constraint is each example's z-score, a
        /// deeper cut's the samples' z-scores, each class's terms weighted by its count n_c.
        private sealed class Game : ConstraintGame
        {
            private readonly Problem problem;
            private readonly Tensor[] rows = Array.Empty<Tensor>();
            private readonly StepState[] rowStates = Array.Empty<StepState>();
            private readonly Tensor[] multipliers;
            /// n_c: how many of the batch's examples belong to class c, the weight of c's terms.
            private readonly Tensor counts;
            /// This evaluation's μ_l(c), σ_l(c) (each computed once, so each has one graph).
            private (Tensor Mean, Tensor Scale)?[] gaussians;
            private readonly Tensor[] recorded;

            public Game(Problem problem, MiniBatch batch) : base(batch, problem)
            {
                this.problem = problem;
                if (problem.options.ResampleVariates) problem.Redraw(problem.step++);
                var states = problem.gaussianVariables;
                var stateRules = problem.gaussianStates;
                StepState[] multiplierStates;
                var range = problem.split.Range;
                if (problem.exampleMultipliers is { } group && (range is null || range.Value.First == 0))
                {
                    (rows, rowStates) = group.Gather(batch.Indices);
                    multipliers = rows.Concat(problem.sharedMultipliers).ToArray();
                    multiplierStates = rowStates.Concat(problem.sharedMultiplierStates).ToArray();
                }
                else if (problem.exampleMultipliers is not null)
                {
                    // A later segment of a layer-parallel run: the first cut's rows are not its own.
                    multipliers = new Tensor[] { null! }.Concat(problem.sharedMultipliers).ToArray();
                    multiplierStates = new StepState[] { null! }.Concat(problem.sharedMultiplierStates).ToArray();
                }
                else
                {
                    multipliers = problem.sharedMultipliers;
                    multiplierStates = problem.sharedMultiplierStates;
                }
                counts = bincount(batch.Labels, minlength: problem.classes).to_type(problem.Context.DType).DetachFromDisposeScope();
                gaussians = new (Tensor, Tensor)?[problem.hidden];
                recorded = new Tensor[problem.hidden];
                var ctx = problem.Context;
                if (range is not { } r)
                {
                    Players = new[]
                    {
                        problem.WeightsPlayer(),
                        new Player(Formulations.PlayerNames.States, Role.Minimise, states, ctx.StepRuleFor(Formulations.PlayerNames.States), stateRules),
                        new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, multipliers, ctx.StepRuleFor(Formulations.PlayerNames.Multipliers),
                            multiplierStates, rowIndexed: problem.exampleMultipliers is not null),
                    };
                    return;
                }
                // A segment of a layer-parallel run: its blocks' weights, the Gaussians of the cuts it
                // touches, the multipliers of the cuts its blocks end in (players without any are left out).
                var own = problem.split.Parameters(r);
                var touched = Enumerable.Range(0, states.Length).Where(i => problem.split.Touches(problem.gaussianCuts[i])).ToArray();
                var ownCuts = Enumerable.Range(0, multipliers.Length).Where(c => c >= r.First && c < r.End && multipliers[c] is not null).ToArray();
                var players = new List<Player>();
                if (own.Length > 0) players.Add(problem.WeightsPlayer(own));
                if (touched.Length > 0)
                    players.Add(new Player(Formulations.PlayerNames.States, Role.Minimise, touched.Select(i => states[i]).ToArray(), ctx.StepRuleFor(Formulations.PlayerNames.States),
                        touched.Select(i => stateRules[i]).ToArray()));
                if (ownCuts.Length > 0)
                    players.Add(new Player(Formulations.PlayerNames.Multipliers, Role.Maximise, ownCuts.Select(c => multipliers[c]).ToArray(), ctx.StepRuleFor(Formulations.PlayerNames.Multipliers),
                        ownCuts.Select(c => multiplierStates[c]).ToArray(), rowIndexed: problem.exampleMultipliers is not null));
                Players = players;
            }

            protected override (int First, int End) Blocks => problem.split.Blocks;

            /// A segment adds the neighbours' parts of the gradient of its boundary cuts' Gaussians.
            protected override void CompleteGradients(IReadOnlyList<Tensor> inputs, Tensor?[] grads) =>
                problem.split.CompleteGradients(inputs, grads, problem.gaussianVariables, i => problem.gaussianCuts[i], i => problem.gaussianNames[i]);

            public override IReadOnlyList<Player> Players { get; }

            private (Tensor Mean, Tensor Scale) Gaussian(int l) => gaussians[l] ??= problem.Gaussian(l);

            protected override Tensor EvaluateSum()
            {
                gaussians = new (Tensor, Tensor)?[problem.hidden];
                return base.EvaluateSum();
            }

            /// h̃_l(c, s) as rows [M·S, …] for the segment after cut l.
            protected override Tensor Value(int l)
            {
                var (mean, scale) = Gaussian(l);
                return problem.Samples(l, mean, scale).reshape(Shape(problem.classes * problem.samples, problem.stateShapes[l]));
            }

            /// z_1(i) for the batch's examples; z_l(c, s) [M, S, …] for a deeper cut.
            protected override Tensor Defect(int l, Tensor f)
            {
                var (mean, scale) = Gaussian(l);
                if (l == 0) return problem.FirstZ(f, Batch.Labels, mean, scale);
                return (f.reshape(Shape(problem.classes, problem.samples, problem.stateShapes[l])) - mean.unsqueeze(1)) / scale.unsqueeze(1);
            }

            protected override Tensor AddTerm(Tensor total, int l, Tensor z)
            {
                var p = problem;
                var options = p.options;
                if (l == 0)
                {
                    var lambda1 = p.exampleMultipliers is not null ? multipliers[0] : multipliers[0].index_select(0, Batch.Labels);
                    recorded[0] = lambda1;
                    var g1 = Constraint(z, options);
                    total = total.Plus((lambda1 * g1).sum());
                    if (options.Augmentation > 0) total = total.Plus(g1.Squared().sum().mul(Scalars.Of(0.5 * options.Augmentation)));
                    return total;
                }
                var g = Constraint(z.reshape(Shape(p.classes * p.samples, p.stateShapes[l])), options);
                Tensor lambda = p.exampleMultipliers is not null
                    // Shared inside a row-indexed player: scale its operator to the batch mean.
                    ? ScaleGradient(multipliers[l], 1.0 / BatchSize)
                    : multipliers[l].unsqueeze(1).expand(Shape(p.classes, p.samples, options.ReducedConstraint ? Array.Empty<long>() : p.stateShapes[l]));
                recorded[l] = multipliers[l];
                var terms = lambda.reshape(p.classes * p.samples, -1) * g.reshape(p.classes * p.samples, -1);
                if (options.Augmentation > 0) terms = terms.Plus(g.reshape(p.classes * p.samples, -1).Squared().mul(Scalars.Of(0.5 * options.Augmentation)));
                var perClass = terms.sum(1).reshape((long)p.classes, p.samples).mean(new long[] { 1 });
                return total.Plus((counts * perClass).sum());
            }

            /// The last block on the samples of the last cut, class c's loss weighted by n_c.
            protected override Tensor LossSum(Tensor output)
            {
                var p = problem;
                var sampleLabels = ScalarFactories.Arange(p.classes, ScalarType.Int64, Batch.Labels.device).repeat_interleave(p.samples);
                var perClassLoss = p.Program.Loss.PerExample(output, sampleLabels).reshape((long)p.classes, p.samples).mean(new long[] { 1 });
                return (counts * perClassLoss).sum();
            }

            protected override IReadOnlyList<Tensor> RecordedMultipliers => problem.split.Range is null ? recorded : recorded.Where(t => t is not null).ToArray();

            /// The lifted program's segments (DistProp may have moved its cuts before activations).
            protected override NestedProgram Program => problem.lifted;

            public override void Commit()
            {
                if (problem.exampleMultipliers is { } group && rows.Length > 0) group.Scatter(Batch.Indices, rows, rowStates);
            }

            public override void Dispose()
            {
                counts.Dispose();
                base.Dispose();
            }

        }
    }
}
