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

    /// β of every block (segment of the lifted graph): `beta` holds one value for all blocks or one
    /// per block. Also checks that every activation of the program has a convex potential.
    public static double[] BetaPerBlock(NestedProgram program, IReadOnlyList<double> beta)
    {
        int blocks = program.Segments.Count;
        if (beta.Count != 1 && beta.Count != blocks)
            throw new ArgumentException($"Invalid beta: {beta.Count} values for a program of {blocks} blocks (expected 1, or {blocks}: one per block from the input).");
        foreach (var b in beta)
            if (!(b > 0) || !double.IsFinite(b)) throw new ArgumentOutOfRangeException(nameof(beta), $"Invalid beta: {b} (expected a finite value > 0).");
        foreach (var node in program.Nodes)
            if (node.Activation is { } activation && activation.Potential is null)
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
        var b = Scalars.Of(beta);
        if (a.dtype == ScalarType.Float64) return (z ?? activation.Apply(a)).sub(activation.Apply(a - b * g)).div_(b);
        var wide = a.to_type(ScalarType.Float64);
        var shifted = wide - b * g.to_type(ScalarType.Float64);
        return activation.Apply(wide).sub_(activation.Apply(shifted)).div_(b).to_type(a.dtype);
    }

    /// One forward and one Fenchel backward pass on a batch: the weight direction for the batch's
    /// mean loss (one tensor per parameter, in the program's order; back-propagation's gradient as
    /// β → 0) and each example's loss. On a graph the backward pass visits the nodes in reverse
    /// topological order and a value's signal is the sum of the targets its consumers send; an
    /// activation uses the β of its segment, a tied parameter sums its uses.
    public static FenchelBackpropPass Backward(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, IReadOnlyList<double> betaPerBlock, ForwardPass? pass = null)
    {
        if (betaPerBlock.Count != program.Segments.Count)
            throw new ArgumentException($"Expected one beta per block ({program.Segments.Count}), got {betaPerBlock.Count}.");
        if (weights.Count != program.ParameterSpecs.Count)
            throw new ArgumentException($"Expected {program.ParameterSpecs.Count} parameter tensors, got {weights.Count}.");

        var nodes = program.Nodes;
        int n = nodes.Count;
        // The β of each node: its segment's (the first segment holding it).
        var beta = new double[n + 1];
        for (int s = program.Segments.Count - 1; s >= 0; s--)
            foreach (var node in program.Segments[s].Nodes) beta[node.Value] = betaPerBlock[s];
        // A value needs a signal when some node with parameters computes it or lies above it.
        var learns = new bool[n + 1];
        foreach (var node in nodes) learns[node.Value] = node.Parameters.Count > 0 || node.Inputs.Any(i => learns[i]);

        IReadOnlyList<Tensor> Params(Node node) => node.Parameters.Select(i => weights[i]).ToArray();

        // Forward pass: every value; nodes without closed-form derivatives keep a one-node graph for
        // their local vector–Jacobian product.
        var values = new Tensor[n + 1];
        var local = new (Tensor[] Inputs, Tensor Output)?[n + 1];
        values[0] = inputs;
        using (no_grad())
            foreach (var node in nodes)
            {
                var args = node.Inputs.Select(i => values[i]).ToArray();
                if (node.Derivatives is not null || node.Activation is not null || !learns[node.Value])
                {
                    values[node.Value] = program.Apply(node, args, weights, pass);
                    continue;
                }
                using (enable_grad())
                {
                    var leaves = node.Inputs.Select((i, k) => learns[i] ? args[k].detach().requires_grad_(true) : args[k].detach()).ToArray();
                    var output = program.Apply(node, leaves, weights, pass);
                    local[node.Value] = (leaves, output);
                    values[node.Value] = output.detach();
                }
            }
        var h = values[n];

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
        var gradients = new Tensor?[weights.Count];
        double scale = 1.0 / inputs.shape[0];
        var signals = new Tensor?[n + 1];
        signals[n] = g;
        void Send(int value, Tensor signal) => signals[value] = signals[value] is { } existing ? existing.Plus(signal) : signal;
        for (int j = n - 1; j >= 0; j--)
        {
            var node = nodes[j];
            var signal = signals[node.Value];
            if (signal is null || !learns[node.Value]) continue;
            signals[node.Value] = null;
            if (node.Activation is { } activation)
            {
                if (learns[node.Inputs[0]]) Send(node.Inputs[0], Signal(activation, values[node.Inputs[0]], signal, beta[node.Value], values[node.Value]));
                continue;
            }
            if (node.Derivatives is { } derivatives)
            {
                var parameters = Params(node);
                var call = new LocalCall(i => values[node.Inputs[i]], node.Inputs.Count, parameters, () => values[node.Value]);
                using (no_grad())
                {
                    if (node.Parameters.Count > 0)
                    {
                        var into = node.Parameters.Select(i => gradients[i] ??= zeros_like(weights[i])).ToArray();
                        derivatives.AddParameterVjp(call, signal, into, scale);
                    }
                    for (int i = 0; i < node.Inputs.Count; i++)
                        if (learns[node.Inputs[i]]) Send(node.Inputs[i], derivatives.InputVjp(i, call, signal));
                }
                continue;
            }
            var (leaves, output) = local[node.Value]!.Value;
            var wanted = Enumerable.Range(0, leaves.Length).Where(i => learns[node.Inputs[i]]).ToArray();
            var wrt = wanted.Select(i => leaves[i]).Concat(Params(node)).ToArray();
            var vjp = autograd.grad(new[] { output }, wrt, grad_outputs: new[] { signal });
            int k = 0;
            foreach (var i in wanted) Send(node.Inputs[i], vjp[k++].detach());
            using (no_grad())
                for (int p = 0; p < node.Parameters.Count; p++, k++)
                {
                    var contribution = vjp[k].detach().mul(Scalars.Of(scale));
                    var index = node.Parameters[p];
                    gradients[index] = gradients[index] is { } sum ? sum.PlusInPlace(contribution) : contribution;
                }
        }
        using (no_grad())
            for (int i = 0; i < gradients.Length; i++) gradients[i] ??= zeros_like(weights[i]);
        return new FenchelBackpropPass(gradients!, perExample);
    }

    private sealed class Problem : LiftedProblem
    {
        public Problem(IFormulation formulation, LiftContext context, Weights weights, double[] beta) : base(formulation, context, weights) => Beta = beta;

        public double[] Beta { get; }

        /// A back-propagation-like pass: batch statistics recomputed at the step's one evaluation.
        public ForwardPass? Pass(MiniBatch batch) => PassFor(batch, holdFixed: false);

        public override IBatchGame Batch(MiniBatch batch) => new Game(this, batch);

        public override IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double>();
    }

    /// The game on one mini-batch: one player, the weights, whose operator is the Fenchel
    /// back-propagation direction. Nothing is lifted: the lifted objective is the loss.
    private sealed class Game : ForwardLossGame
    {
        private readonly Problem problem;

        public Game(Problem problem, MiniBatch batch) : base(problem, batch, problem.Pass(batch), new[] { problem.WeightsPlayer() }) =>
            this.problem = problem;

        public override IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            foreach (var p in players)
                if (p.Name != Formulations.PlayerNames.Weights) throw new ArgumentException($"Fenchel back-propagation has no player '{p.Name}'.");
            var result = Backward(problem.Program, problem.Weights.Tensors, Batch.Inputs, Batch.Labels, problem.Beta, Pass);
            RecordLosses(result.Losses);
            return players.Select(_ => (IReadOnlyList<Tensor>)result.Gradients).ToArray();
        }

    }
}

/// One Fenchel back-propagation pass: the weight direction for the batch's mean loss (one tensor
/// per parameter) and the loss of every example at the forward pass.
public sealed record FenchelBackpropPass(IReadOnlyList<Tensor> Gradients, Tensor Losses);
