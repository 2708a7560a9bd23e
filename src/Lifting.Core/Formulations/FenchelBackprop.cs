using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Fenchel back-propagation (seed 002 §4.2): the linearised contrastive surrogate (Definition 2)
/// unrolled top-down (Prop. 7) with the Fenchel coupling E_k(z_k; a_k) = G_k(z_k) + G_k*(a_k) −
/// ⟨z_k, a_k⟩ of each activation's convex potential G (∇G* = σ), a_k being the activation's input.
///
/// Forward pass as usual: a_k, z_k = σ(a_k). Backward pass of finite targets: with g_k the signal
/// arriving at z_k (at the top g = ∂ℓ/∂ŷ of one example's loss), the clamped solution of the
/// linearly perturbed forward problem is
///
///   ẑ_k = argmin_z β_k⟨g_k, z⟩ + G(z) − ⟨z, a_k⟩ = ∇G*(a_k − β_k g_k) = σ(a_k − β_k g_k)   (eq. 49)
///
/// and the surrogate of level k is (1/β_k)[G*(a_k) − G*(a_k − β_k g_k)], whose gradient in a_k is
///
///   δ_k = (z_k − ẑ_k) / β_k = (σ(a_k) − σ(a_k − β_k g_k)) / β_k,
///
/// for ReLU (relu(a) − relu(a − βg))/β (eq. 51). δ_k travels to the layer below through the local
/// vector–Jacobian product of what computed a_k (Dense: g_{k−1} = Wᵀδ_k), and the weight gradient is
/// taken at the forward inputs, ∇_W = δ_k z_{k−1}ᵀ, not at the targets (Remark 2: the linearisation
/// terms of eq. 49 belong to the lower level's variable, not to W). As β → 0, δ_k → σ'(a_k) g_k and
/// the pass is back-propagation (Cor. 2); at a ReLU kink it is the one-sided derivative.
///
/// β is per block (the program's nesting levels, from the input): one value for all blocks or one
/// per block; every activation of block l uses β_l. β scales one example's loss gradient, so it does
/// not depend on the batch size. (Seed 002's code applies β to the gradient of the batch-mean
/// loss, i.e. its β corresponds to β·B here: its β = 0.01 at batch 50 is β = 2e-4 here.)
///
/// Dense layers and activations have closed-form backward steps and flatten is a reshape, so the
/// builder's MLPs need no autograd graph; any other layer (conv, pooling, custom layers) is passed
/// through its own local vector–Jacobian product (a one-layer autograd graph), which for max-pooling
/// and convolutions, piecewise-linear and linear maps, is exact. An activation without a convex
/// potential has no Fenchel coupling; lifting refuses it.
///
/// The method keeps nothing beyond the weights: the forward values and targets live and die
/// within the batch.
public sealed class FenchelBackprop : IFormulation
{
    public FenchelBackprop(IReadOnlyList<double> beta, string name = "fenchel-bp")
    {
        if (beta.Count == 0) throw new ArgumentException("Invalid beta: no value (expected one, or one per block).", nameof(beta));
        foreach (var b in beta)
            if (!(b > 0) || !double.IsFinite(b)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {b} (expected a finite value > 0).");
        Beta = beta.ToArray();
        Name = name;
    }

    /// One β for every block, or one per block from the input.
    public IReadOnlyList<double> Beta { get; }
    public string Name { get; }
    public string Description =>
        $"Fenchel back-propagation: forward pass, backward pass of finite targets sigma(a - beta g), beta = {string.Join(",", Beta.Select(b => MethodParameter.Format(b)))} (seed 002 §4.2)";
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights };
    public IReadOnlyList<SubProblem> DefaultSchedule => PlayerNames.Select(p => new SubProblem(new[] { p }, 1)).ToArray();
    public bool HasMaximisingPlayers => false;

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new Problem(this, context, weights, BetaPerBlock(context.Program, Beta));

    /// β of every block: `beta` holds one value for all blocks or one per block. Also checks that
    /// every activation of the program has a convex potential.
    public static double[] BetaPerBlock(NestedProgram program, IReadOnlyList<double> beta)
    {
        int blocks = program.Blocks.Count;
        if (beta.Count != 1 && beta.Count != blocks)
            throw new ArgumentException($"Invalid beta: {beta.Count} values for a program of {blocks} blocks (expected 1, or {blocks}: one per block from the input).");
        foreach (var b in beta)
            if (!(b > 0) || !double.IsFinite(b)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {b} (expected a finite value > 0).");
        foreach (var layer in program.Blocks.SelectMany(b => b.Layers))
            if (layer is ActivationLayer { Activation: var activation } && activation.Potential is null)
                throw new ArgumentException($"Fenchel back-propagation needs a convex potential G with ∇G* = σ for every activation; '{activation.Name}' has none.");
        return Enumerable.Range(0, blocks).Select(l => beta.Count == 1 ? beta[0] : beta[l]).ToArray();
    }

    /// The finite-target signal to an activation's input: δ = (σ(a) − σ(a − βg)) / β, where
    /// σ(a − βg) = ∇G*(a − βg) = argmin_z G(z) − ⟨z, a − βg⟩ is the target ẑ. With G = ½‖z‖² + ψ
    /// the target is prox_ψ(a − βg). Per built-in activation:
    ///
    ///   relu      G = ½z² + ι[z ≥ 0]        ẑ = max(a − βg, 0), the projection onto z ≥ 0;
    ///             δ = g where a > 0 and a > βg; a/β where 0 < a ≤ βg; g − a/β where βg < a ≤ 0; else 0
    ///   hardtanh  G = ½z² + ι[−1 ≤ z ≤ 1]   ẑ = clamp(a − βg, −1, 1)
    ///   identity  G = ½z²                    ẑ = a − βg, δ = g for every β
    ///   tanh      G = ½[(1+z)ln(1+z) + (1−z)ln(1−z)], G* = ln cosh   ẑ = tanh(a − βg)
    ///   sigmoid   G = z ln z + (1−z) ln(1−z), G* = softplus          ẑ = sigmoid(a − βg)
    ///   softmax   G = Σ z ln z on the simplex, G* = logsumexp        ẑ = softmax(a − βg)
    ///   sign      G = ι[−1 ≤ z ≤ 1], G* = ‖a‖₁   ẑ = sign(a − βg): δ ∈ {0, ±1/β, ±2/β}, non-zero only
    ///             where the shift crosses zero (back-propagation's signal is zero everywhere)
    ///   step      G = ι[0 ≤ z ≤ 1], G* = Σ relu  ẑ = step(a − βg), likewise
    ///
    /// Every one is closed form because the activation computes σ = ∇G* itself; `z` is σ(a) when
    /// the caller has it (the forward pass does).
    ///
    /// σ(a) − σ(a − βg) cancels: in float32 a shift β|g| below about 1e-7·|a| is lost to rounding,
    /// which happens late in training, when the loss gradient is small (measured: with β = 2e-4 the
    /// cosine to back-propagation fell from 1.000 to 0.70–0.95 once the training loss was below
    /// 1e-3; docs/methods.md). Below float64 the difference is therefore taken in float64 (σ(a)
    /// recomputed there too) and δ rounded back once.
    public static Tensor Signal(IActivation activation, Tensor a, Tensor g, double beta, Tensor? z = null)
    {
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {beta} (expected a finite value > 0).");
        using var _ = no_grad();
        if (a.dtype == ScalarType.Float64) return (z ?? activation.Apply(a)).sub(activation.Apply(a - beta * g)).div_(beta);
        var wide = a.to_type(ScalarType.Float64);
        var shifted = wide - beta * g.to_type(ScalarType.Float64);
        return activation.Apply(wide).sub_(activation.Apply(shifted)).div_(beta).to_type(a.dtype);
    }

    /// One forward and one Fenchel backward pass on a batch: the weight direction for the batch's
    /// mean loss (one tensor per parameter, in the program's order; back-propagation's gradient as
    /// β → 0) and each example's loss.
    public static FenchelBackpropPass Backward(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, IReadOnlyList<double> betaPerBlock)
    {
        if (betaPerBlock.Count != program.Blocks.Count)
            throw new ArgumentException($"Expected one beta per block ({program.Blocks.Count}), got {betaPerBlock.Count}.");
        if (weights.Count != program.ParameterSpecs.Count)
            throw new ArgumentException($"Expected {program.ParameterSpecs.Count} parameter tensors, got {weights.Count}.");

        // The layers in order, with their block, their parameters' first index and whether any
        // layer below has parameters (only then does the signal need to go further down).
        var steps = new List<(int Block, ILayer Layer, int First)>();
        int next = 0;
        for (int l = 0; l < program.Blocks.Count; l++)
            foreach (var layer in program.Blocks[l].Layers)
            {
                steps.Add((l, layer, next));
                next += layer.Parameters.Count;
            }
        int n = steps.Count;
        var below = new bool[n]; // a layer with parameters lies strictly below layer j
        for (int j = 1; j < n; j++) below[j] = below[j - 1] || steps[j - 1].Layer.Parameters.Count > 0;

        IReadOnlyList<Tensor> Params((int Block, ILayer Layer, int First) s) =>
            Enumerable.Range(s.First, s.Layer.Parameters.Count).Select(i => weights[i]).ToArray();

        // Forward pass: every layer's input; other layers keep a one-layer graph for their local
        // vector–Jacobian product.
        var inputsOf = new Tensor[n];
        var local = new (Tensor Input, Tensor Output)?[n];
        var h = inputs;
        using (no_grad())
            for (int j = 0; j < n; j++)
            {
                inputsOf[j] = h;
                var s = steps[j];
                switch (s.Layer)
                {
                    case Dense: h = F.linear(h, weights[s.First], weights[s.First + 1]); break;
                    case ActivationLayer act: h = act.Activation.Apply(h); break;
                    case Flatten: h = h.reshape(h.shape[0], -1); break;
                    default:
                        using (enable_grad())
                        {
                            var input = below[j] ? h.detach().requires_grad_(true) : h.detach();
                            var output = s.Layer.Forward(input, Params(s));
                            local[j] = (input, output);
                            h = output.detach();
                        }
                        break;
                }
            }

        // The loss and its gradient in the output, one example at a time (no 1/B: β scales one
        // example's gradient).
        Tensor perExample, g;
        using (enable_grad())
        {
            var output = h.detach().requires_grad_(true);
            var losses = program.Loss.PerExample(output, labels);
            g = autograd.grad(new[] { losses.sum() }, new[] { output })[0].detach();
            perExample = losses.detach();
        }

        // Backward pass of finite targets.
        var gradients = new Tensor[weights.Count];
        double scale = 1.0 / inputs.shape[0];
        for (int j = n - 1; j >= 0; j--)
        {
            var s = steps[j];
            if (s.Layer.Parameters.Count == 0 && !below[j]) break; // nothing below learns
            switch (s.Layer)
            {
                case Dense:
                    using (no_grad())
                    {
                        gradients[s.First] = g.t().mm(inputsOf[j]).mul_(scale);
                        gradients[s.First + 1] = g.sum(0L).mul_(scale);
                        if (below[j]) g = g.mm(weights[s.First]);
                    }
                    break;
                case ActivationLayer act:
                    g = Signal(act.Activation, inputsOf[j], g, betaPerBlock[s.Block], j + 1 < n ? inputsOf[j + 1] : h);
                    break;
                case Flatten:
                    g = g.reshape(inputsOf[j].shape);
                    break;
                default:
                    var (input, output) = local[j]!.Value;
                    var wrt = (below[j] ? new[] { input } : Array.Empty<Tensor>()).Concat(Params(s)).ToArray();
                    var vjp = autograd.grad(new[] { output }, wrt, grad_outputs: new[] { g });
                    int k = 0;
                    if (below[j]) g = vjp[k++].detach();
                    for (int p = 0; p < s.Layer.Parameters.Count; p++, k++)
                        using (no_grad()) gradients[s.First + p] = vjp[k].detach().mul(scale);
                    break;
            }
        }
        using (no_grad())
            for (int i = 0; i < gradients.Length; i++) gradients[i] ??= zeros_like(weights[i]);
        return new FenchelBackpropPass(gradients, perExample);
    }

    private sealed class Problem : LiftedProblem
    {
        public Problem(IFormulation formulation, LiftContext context, Weights weights, double[] beta) : base(formulation, context, weights) => Beta = beta;

        public double[] Beta { get; }

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double>();
    }

    /// The game on one mini-batch: one player, the weights, whose operator is the Fenchel
    /// back-propagation direction. Nothing is lifted: the lifted objective is the loss.
    private sealed class Game : IBatchGame
    {
        private readonly Problem problem;
        private readonly MiniBatch batch;
        private Tensor? lastLoss;

        public Game(Problem problem, MiniBatch batch)
        {
            this.problem = problem;
            this.batch = batch;
            Players = new[] { problem.WeightsPlayer() };
        }

        public IReadOnlyList<Player> Players { get; }

        public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights) throw new ArgumentException($"Fenchel back-propagation has no player '{p.Name}'.");
            var pass = Backward(problem.Program, problem.Weights.Tensors, batch.Inputs, batch.Labels, problem.Beta);
            lastLoss?.Dispose();
            using (no_grad()) lastLoss = pass.Losses.mean().DetachFromDisposeScope();
            return players.Select(_ => (IReadOnlyList<Tensor>)pass.Gradients).ToArray();
        }

        public double Objective()
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            return problem.Program.Loss.PerExample(problem.Program.Forward(batch.Inputs, problem.Weights.Tensors), batch.Labels).mean().ToDouble();
        }

        public IReadOnlyList<double> Defects => Array.Empty<double>();
        public IReadOnlyList<double> MultiplierNorms => Array.Empty<double>();
        public double Loss => lastLoss is null ? double.NaN : lastLoss.ToDouble();
        public double LiftedObjective => Loss;
        public void Commit() { }

        public void Dispose()
        {
            lastLoss?.Dispose();
            lastLoss = null;
        }
    }
}

/// One Fenchel back-propagation pass: the weight direction for the batch's mean loss (one tensor
/// per parameter) and the loss of every example at the forward pass.
public sealed record FenchelBackpropPass(IReadOnlyList<Tensor> Gradients, Tensor Losses);
