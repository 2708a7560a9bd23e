using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// Options of Taylor et al.'s ADMM (`TaylorAdmm`).
public sealed record TaylorAdmmOptions
{
    /// β: weight of every ‖z_l − W_l a_{l−1} − b_l‖² term (the output layer's included).
    public double Beta { get; init; } = 0.1;
    /// γ: weight of every ‖a_l − h(z_l)‖² term.
    public double Gamma { get; init; } = 10;
    /// Iterations (epochs) at the start without the multiplier update (Taylor et al.'s warm start).
    /// The defaults (β 0.1, γ 10, 50) were chosen on MNIST-10k validation accuracy (docs/methods.md).
    public int WarmStart { get; init; } = 50;
    /// Newton steps on the output's sub-problem per iteration (cross-entropy has no closed form;
    /// ignored for the squared loss, whose minimiser is closed form).
    public int OutputSteps { get; init; } = 5;
    /// Ridge of the weights' least squares, relative to the mean diagonal of the Gram matrix:
    /// (G + ε·tr(G)/n I) keeps the solve defined where inputs never vary (e.g. MNIST's border pixels).
    public double Ridge { get; init; } = 1e-6;
    /// Threads the sweeps' passes over the training set are split across (data parallelism: each
    /// thread takes every `SweepThreads`-th chunk of `ChunkRows` rows). The weights' sums
    /// are added chunk by chunk in chunk order whatever the count, so the iterates do not depend on
    /// it (tested bit for bit); each thread runs LibTorch at the caller's intra-op thread count.
    public int SweepThreads { get; init; } = 1;
    /// Rows per chunk of a pass over the training set: the unit of the weights' sums (so a change
    /// moves the iterates by rounding) and of the work the `SweepThreads` share.
    public int ChunkRows { get; init; } = 8192;

    public void Validate()
    {
        if (!(Beta > 0) || double.IsInfinity(Beta)) throw new ArgumentOutOfRangeException(nameof(Beta), $"Invalid beta: {Beta} (expected a finite value > 0).");
        if (!(Gamma > 0) || double.IsInfinity(Gamma)) throw new ArgumentOutOfRangeException(nameof(Gamma), $"Invalid gamma: {Gamma} (expected a finite value > 0).");
        if (WarmStart < 0) throw new ArgumentOutOfRangeException(nameof(WarmStart), $"Invalid warm start: {WarmStart} (expected >= 0).");
        if (OutputSteps < 1) throw new ArgumentOutOfRangeException(nameof(OutputSteps), $"Invalid output steps: {OutputSteps} (expected >= 1).");
        if (!(Ridge >= 0) || double.IsInfinity(Ridge)) throw new ArgumentOutOfRangeException(nameof(Ridge), $"Invalid ridge: {Ridge} (expected a finite value >= 0).");
        if (ChunkRows < 1) throw new ArgumentOutOfRangeException(nameof(ChunkRows), $"Invalid chunk rows: {ChunkRows} (expected >= 1).");
        if (SweepThreads < 1) throw new ArgumentOutOfRangeException(nameof(SweepThreads), $"Invalid sweep threads: {SweepThreads} (expected >= 1).");
    }
}

/// One dense layer of the chain ADMM trains: the parameter indices of W (and b), its sizes, and
/// whether the activation after it is ReLU (false: identity, or nothing for the output layer).
public sealed record AdmmLayer(int Weight, int? Bias, long Inputs, long Outputs, bool Relu);

/// Taylor, Burmeister, Xu, Singh, Patel & Goldstein, "Training Neural Networks Without Gradients:
/// A Scalable ADMM Approach", ICML 2016 (seed 004 compares with it). The equations are the paper's
/// as recalled, not checked against its text here.
///
/// A chain of L dense layers, pre-activations z_l, activations a_l = h(z_l) (ReLU or identity),
/// a_0 = x. Every training example keeps z_1 … z_L, a_1 … a_{L−1} and one Lagrange multiplier λ on
/// the output layer (`ExampleStore`: z1…, a1…, lambda). With m_l = W_l a_{l−1} + b_l, the objective
/// over the training set (summed over the examples) is
///
///     ℓ(z_L, y) + ⟨λ, z_L⟩ + β‖z_L − m_L‖² + Σ_{l<L} [ γ‖a_l − h(z_l)‖² + β‖z_l − m_l‖² ].
///
/// The multiplier enters as ⟨λ, z_L⟩ (the paper's Bregman form, as recalled), not ⟨λ, z_L − m_L⟩:
/// with that term the updates below are exact minimisers of their blocks (W_L a least-squares fit
/// of z_L, a_{L−1} without λ); with ⟨λ, z_L − m_L⟩ they would not be (both terms differ by
/// ⟨λ, W_L a_{L−1} + b_L⟩).
///
/// One iteration (`TaylorAdmmSolver`; one per epoch, the training set is one batch):
///
///     for l = 1 … L−1:
///         W̃_l ← argmin ‖z_l − W̃_l ã_{l−1}‖²      ã = [a; 1], W̃ = [W | b]: least squares, a Cholesky solve of
///                                                 the Gram matrix Σ ã ãᵀ (+ ridge ε·tr/n, `Ridge`) in float64
///         a_l ← (β W_{l+1}ᵀW_{l+1} + γ I)⁻¹ (β W_{l+1}ᵀ(z_{l+1} − b_{l+1}) + γ h(z_l))   (W_{l+1} and z_{l+1} of the last iteration)
///         z_l ← argmin_z γ(a_l − h(z))² + β(z − m_l)², entrywise (ReLU: the better of the z ≥ 0 candidate
///               max(0, (γa + βm)/(γ + β)) and the z ≤ 0 candidate min(0, m); identity: (γa + βm)/(γ + β))
///     W̃_L ← argmin ‖z_L − W̃_L ã_{L−1}‖²
///     z_L ← argmin_z ℓ(z, y) + ⟨λ, z⟩ + β‖z − m_L‖²   (cross-entropy: `OutputSteps` Newton steps from the
///           current z_L, Hessian diag(p) − ppᵀ + 2βI, per example; squared loss ½‖z − e_y‖²: closed form)
///     λ ← λ + β(z_L − m_L)                           (skipped for the first `WarmStart` iterations)
///
/// Initialisation: z and a from the forward pass at the initial weights, λ = 0.
///
/// Offline: the trainer's mini-batches are chunks of the training set; they only count the
/// examples (`Seen`, a checkpoint scalar, so an interrupted epoch resumes exactly), and the chunk
/// that completes the training set runs the iteration over every example (in chunks of
/// `ChunkRows` rows: the weights' sub-problems need sums over the whole set, so the sweep makes one
/// pass over the data per layer; `SweepThreads` threads split each pass's chunks, data-parallel as in
/// Taylor et al., whose updates are sums over examples). The first layer's Gram matrix Σ x̃ x̃ᵀ does not change and is
/// factorised once per run.
public sealed class TaylorAdmm : IFormulation, IClosedFormFormulation
{
    public TaylorAdmm(TaylorAdmmOptions? options = null, string name = "taylor-admm")
    {
        Options = options ?? new TaylorAdmmOptions();
        Options.Validate();
        Name = name;
    }

    public TaylorAdmmOptions Options { get; }
    public string Name { get; }
    public string Description =>
        $"Taylor et al.'s ADMM: per-example pre-activations z, activations a and an output multiplier λ, closed-form sweeps, β = {Options.Beta}, γ = {Options.Gamma}, warm start {Options.WarmStart}";
    /// States (z and a per example) and multipliers (λ per example) are named for the memory
    /// estimate; no generic solver moves them.
    public IReadOnlyList<string> PlayerNames { get; } = new[] { Formulations.PlayerNames.Weights, Formulations.PlayerNames.States, Formulations.PlayerNames.Multipliers };
    public bool HasMaximisingPlayers => false;
    public IReadOnlyList<SubProblem> DefaultSchedule => Array.Empty<SubProblem>();

    /// The chain's dense layers, or an `ArgumentException` of one line naming what does not fit:
    /// every block one dense layer (a flatten may precede the first), hidden blocks ending in ReLU
    /// or identity, the output block in nothing; cross-entropy or squared loss.
    public static IReadOnlyList<AdmmLayer> Chain(NestedProgram program)
    {
        const string what = "Taylor's ADMM trains a chain of dense layers with ReLU or identity activations";
        var segments = program.Segments;
        if (segments.Count < 2) throw new ArgumentException($"{what}, at least one hidden layer; this program has one block.");
        if (program.Loss.Name is not ("cross-entropy" or "mse"))
            throw new ArgumentException($"{what} and a cross-entropy or squared loss; this program's loss is {program.Loss.Name}.");
        var layers = new List<AdmmLayer>();
        foreach (var s in segments)
        {
            if (s.InputSegments.Count != 1 || s.InputSegments[0] != s.Index - 1)
                throw new ArgumentException($"{what}; block {s.Index + 1} does not read block {s.Index}'s output alone.");
            Node? dense = null;
            bool relu = false, activated = false;
            foreach (var node in s.Nodes)
            {
                string Refuse(string why) => $"{what}; block {s.Index + 1} has {why}.";
                if (node.Layer is Flatten && s.Index == 0 && dense is null) continue;
                if (node.FullyConnected is not null && node.Layer is Dense && dense is null) { dense = node; continue; }
                if (node.Activation is { } act && dense is not null && !activated && !s.IsOutput)
                {
                    if (act.Name is not ("relu" or "identity")) throw new ArgumentException(Refuse($"activation {act.Name}"));
                    relu = act.Name == "relu";
                    activated = true;
                    continue;
                }
                throw new ArgumentException(Refuse($"{node.Operation.Name}{(node.FullyConnected is not null && dense is not null ? " after another dense layer (cut between them)" : "")}"));
            }
            if (dense is null) throw new ArgumentException($"{what}; block {s.Index + 1} has no dense layer.");
            var fc = dense.FullyConnected!;
            layers.Add(new AdmmLayer(dense.Parameters[0], fc.HasBias ? dense.Parameters[1] : null, fc.Inputs, fc.Outputs, relu));
        }
        return layers;
    }

    public ILiftedProblem Lift(LiftContext context, Weights weights) => new TaylorAdmmProblem(this, context, weights, Chain(context.Program));
}

/// The per-example objective's terms, summed over examples (`TaylorAdmmProblem.Terms`).
public sealed record AdmmTerms(double Loss, double Multiplier, double OutputResidual, double[] ActivationResiduals, double[] PreActivationResiduals, double Gamma, double Beta, long Examples)
{
    /// ℓ + ⟨λ, z_L⟩ + β‖z_L − m_L‖² + Σ γ‖a_l − h(z_l)‖² + β‖z_l − m_l‖² (sums).
    public double Total => Loss + Multiplier + Beta * OutputResidual + Gamma * ActivationResiduals.Sum() + Beta * PreActivationResiduals.Sum();
}

/// The lifted problem of `TaylorAdmm`: the per-example variables and the exact block updates the
/// solver calls in order (public for tests).
public sealed class TaylorAdmmProblem : LiftedProblem
{
    private readonly TaylorAdmmOptions options;
    private readonly Tensor[] z, a;
    private readonly Tensor lambda;
    private Tensor? inputFactor; // Cholesky factor of the first layer's Gram matrix (float64), fixed for the run
    private Dictionary<string, double> diagnostics = new();

    public TaylorAdmmProblem(TaylorAdmm formulation, LiftContext context, Weights weights, IReadOnlyList<AdmmLayer> layers)
        : base(formulation, context, weights)
    {
        options = formulation.Options;
        Layers = layers;
        Hidden = layers.Count - 1;
        Tensor Empty(long width) => zeros(N, width, dtype: Context.DType, device: Context.Device);
        z = layers.Select((layer, l) => { using var t = Empty(layer.Outputs); return Store.Add($"z{l + 1}", t); }).ToArray();
        a = layers.Take(Hidden).Select((layer, l) => { using var t = Empty(layer.Outputs); return Store.Add($"a{l + 1}", t); }).ToArray();
        lambda = Store.Add("lambda", zeros_like(z[Hidden]));
        ForwardValues();
    }

    public IReadOnlyList<AdmmLayer> Layers { get; }
    /// L − 1.
    public int Hidden { get; }
    public TaylorAdmmOptions Options => options;
    /// Examples of the current epoch counted so far (chunks before the one that completes the set).
    public long Seen { get; set; }
    /// Iterations done (the warm start counts them).
    public long Iterations { get; private set; }
    /// Pre-activations z_1 … z_L, activations a_1 … a_{L−1}, multipliers λ: [N, …] (the store's tensors).
    public IReadOnlyList<Tensor> PreActivations => z;
    public IReadOnlyList<Tensor> Activations => a;
    public Tensor Multipliers => lambda;

    private long N => Context.ExampleCount;
    private IReadOnlyList<Tensor> W => Weights.Tensors;
    private Tensor Weight(int l) => W[Layers[l].Weight];
    private Tensor? Bias(int l) => Layers[l].Bias is { } b ? W[b] : null;

    public override IBatchGame Batch(MiniBatch batch) => new TaylorAdmmGame(this, batch);

    public override IReadOnlyDictionary<string, double> StateScalars => new Dictionary<string, double> { ["admm-seen"] = Seen, ["admm-iterations"] = Iterations };

    public override void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
    {
        base.RestoreScalars(scalars);
        Seen = (long)scalars["admm-seen"];
        Iterations = (long)scalars["admm-iterations"];
    }

    public override IReadOnlyDictionary<string, double> Diagnostics => diagnostics;

    /// Block l's stored output a_l against h(W_l a_{l−1} + b_l) (the forward map of the segment).
    public override IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => base.MeasureDefects((l, idx) => a[l].index_select(0, idx), rows);

    // ---- rows ---------------------------------------------------------------------------------

    /// a_0 = x of rows [start, start + count), flattened, in the run's dtype and device.
    private Tensor Input(long start, long count) =>
        Context.Train.Inputs.narrow(0, start, count).to_type(Context.DType).to(Context.Device).reshape(count, -1);

    private Tensor Input(Tensor rows) => Context.Train.Inputs.index_select(0, rows.to(Context.Train.Inputs.device)).to_type(Context.DType).to(Context.Device).reshape(rows.shape[0], -1);

    /// a_{l−1} of rows [start, start + count) (x for l = 0).
    private Tensor Below(int l, long start, long count) => l == 0 ? Input(start, count) : a[l - 1].narrow(0, start, count);

    private Tensor H(int l, Tensor pre) => Layers[l].Relu ? F.relu(pre) : pre;

    /// m_l = W_l a_{l−1} + b_l.
    private Tensor Affine(int l, Tensor below) => F.linear(below, Weight(l), Bias(l));

    private static IEnumerable<(long Start, long Count)> Chunks(long n, long chunk)
    {
        for (long s = 0; s < n; s += chunk) yield return (s, Math.Min(chunk, n - s));
    }

    /// Runs `map` on every chunk of `n` rows and hands the tensors it returns to `reduce` in chunk
    /// order. With one thread (`TaylorAdmmOptions.SweepThreads`) each chunk is reduced as soon as it is
    /// mapped, inside the chunk's dispose scope. With more, thread k maps chunks k, k + threads, …
    /// (no grad, at the caller's intra-op thread count; the calling thread is thread 0), the tensors are kept until every chunk is
    /// mapped and then reduced in chunk order, so a sum comes out bit for bit the same. `map` may
    /// instead write its chunk's own rows of the store and return nothing (the entrywise updates).
    private void OverChunks(long n, Func<long, long, Tensor[]> map, Action<Tensor[]>? reduce = null)
    {
        var chunks = Chunks(n, options.ChunkRows).ToArray();
        int workers = Math.Min(options.SweepThreads, chunks.Length);
        if (workers <= 1)
        {
            foreach (var (start, count) in chunks)
            {
                using var scope = NewDisposeScope();
                var parts = map(start, count);
                reduce?.Invoke(parts);
            }
            return;
        }
        var results = new Tensor[]?[chunks.Length];
        try
        {
            Lifting.Threads.RunConcurrently(workers, first =>
            {
                // Gradients are per OS thread too: a new thread starts with them on.
                using var _ = no_grad();
                for (int k = first; k < chunks.Length; k += workers)
                {
                    using var scope = NewDisposeScope();
                    var parts = map(chunks[k].Start, chunks[k].Count);
                    foreach (var t in parts) t.DetachFromDisposeScope();
                    results[k] = parts;
                }
            }, "Taylor's ADMM");
            if (reduce is not null)
                foreach (var parts in results) reduce(parts!);
        }
        finally
        {
            foreach (var parts in results)
                if (parts is not null)
                    foreach (var t in parts) t.Dispose();
        }
    }

    /// z and a of the forward pass at the current weights, for every example.
    private void ForwardValues()
    {
        using var _ = no_grad();
        OverChunks(N, (start, count) =>
        {
            var below = Input(start, count);
            for (int l = 0; l < Layers.Count; l++)
            {
                var pre = Affine(l, below);
                z[l].narrow(0, start, count).copy_(pre);
                if (l < Hidden)
                {
                    below = H(l, pre);
                    a[l].narrow(0, start, count).copy_(below);
                }
            }
            return Array.Empty<Tensor>();
        });
    }

    // ---- the block updates --------------------------------------------------------------------

    private static Tensor Augment(Tensor below) =>
        cat(new[] { below, ones(below.shape[0], 1, dtype: below.dtype, device: below.device) }, 1);

    /// L with (G + ε·tr(G)/n I) = L Lᵀ, for a float64 Gram matrix G.
    private Tensor Factor(Tensor gram)
    {
        var n = gram.shape[0];
        var ridge = options.Ridge * gram.diagonal().sum().ToDouble() / n;
        var eye = torch.eye(n, dtype: gram.dtype, device: gram.device);
        return linalg.cholesky(gram.Plus(eye.mul(Scalars.Of(ridge))));
    }

    /// W̃_l ← argmin ‖z_l − W̃ ã_{l−1}‖² over the training set (l = Hidden: the output layer).
    public void UpdateWeights(int l)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        bool bias = Layers[l].Bias is not null;
        long inputs = Layers[l].Inputs + (bias ? 1 : 0);
        var gram = l == 0 && inputFactor is not null ? null : zeros(inputs, inputs, dtype: ScalarType.Float64, device: Context.Device);
        var rhs = zeros(Layers[l].Outputs, inputs, dtype: ScalarType.Float64, device: Context.Device);
        OverChunks(N, (start, count) =>
        {
            var below = Below(l, start, count);
            var augmented = bias ? Augment(below) : below;
            var r = z[l].narrow(0, start, count).t().mm(augmented).to_type(ScalarType.Float64);
            return gram is null ? new[] { r } : new[] { r, augmented.t().mm(augmented).to_type(ScalarType.Float64) };
        }, parts =>
        {
            rhs.PlusInPlace(parts[0]);
            gram?.PlusInPlace(parts[1]);
        });
        Tensor factor;
        if (l == 0)
        {
            if (inputFactor is null) inputFactor = Factor(gram!).DetachFromDisposeScope();
            factor = inputFactor;
        }
        else factor = Factor(gram!);
        // W̃ = R (L Lᵀ)⁻¹: solve L Y = Rᵀ, then Lᵀ W̃ᵀ = Y.
        var y = linalg.solve_triangular(factor, rhs.t(), upper: false);
        var solved = linalg.solve_triangular(factor.t(), y, upper: true).t().to_type(Context.DType);
        Weight(l).copy_(solved.narrow(1, 0, Layers[l].Inputs));
        if (bias) Bias(l)!.copy_(solved.select(1, Layers[l].Inputs));
    }

    /// a_l ← (β W_{l+1}ᵀW_{l+1} + γ I)⁻¹ (β W_{l+1}ᵀ(z_{l+1} − b_{l+1}) + γ h(z_l)), l < Hidden.
    public void UpdateActivations(int l)
    {
        if (l >= Hidden) throw new ArgumentOutOfRangeException(nameof(l), $"Layer {l + 1} has no activations to update (the output layer).");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var next = Weight(l + 1);
        var w64 = next.to_type(ScalarType.Float64);
        var n = Layers[l].Outputs;
        var system = w64.t().mm(w64).mul(Scalars.Of(options.Beta)).Plus(torch.eye(n, dtype: ScalarType.Float64, device: Context.Device).mul(Scalars.Of(options.Gamma)));
        var factor = linalg.cholesky(system);
        // (β WᵀW + γI)⁻¹, symmetric: rows a = rhs · M⁻¹.
        var inverse = linalg.solve_triangular(factor.t(), linalg.solve_triangular(factor, torch.eye(n, dtype: ScalarType.Float64, device: Context.Device), upper: false), upper: true).to_type(Context.DType);
        var nextBias = Bias(l + 1);
        OverChunks(N, (start, count) =>
        {
            var above = z[l + 1].narrow(0, start, count);
            if (nextBias is not null) above = above - nextBias;
            var rhs = above.mm(next).mul(Scalars.Of(options.Beta)).Plus(H(l, z[l].narrow(0, start, count)).mul(Scalars.Of(options.Gamma)));
            a[l].narrow(0, start, count).copy_(rhs.mm(inverse));
            return Array.Empty<Tensor>();
        });
    }

    /// The entrywise minimiser of γ(a − h(z))² + β(z − m)² (ReLU: the better of the two branches).
    public static Tensor MinimisePreActivation(Tensor act, Tensor m, bool relu, double gamma, double beta)
    {
        var mix = act.mul(Scalars.Of(gamma / (gamma + beta))).Plus(m.mul(Scalars.Of(beta / (gamma + beta))));
        if (!relu) return mix;
        var positive = mix.clamp_min(Scalars.Zero);
        var negative = m.clamp_max(Scalars.Zero);
        var g = Scalars.Of(gamma);
        var b = Scalars.Of(beta);
        var fPositive = (act - positive).Squared().mul(g).Plus((positive - m).Squared().mul(b));
        var fNegative = act.Squared().mul(g).Plus((negative - m).Squared().mul(b));
        return torch.where(fPositive.le(fNegative), positive, negative);
    }

    /// z_l ← argmin γ‖a_l − h(z)‖² + β‖z − W_l a_{l−1} − b_l‖², l < Hidden.
    public void UpdatePreActivations(int l)
    {
        if (l >= Hidden) throw new ArgumentOutOfRangeException(nameof(l), "The output's pre-activations are updated by UpdateOutput.");
        using var _ = no_grad();
        OverChunks(N, (start, count) =>
        {
            var m = Affine(l, Below(l, start, count));
            z[l].narrow(0, start, count).copy_(MinimisePreActivation(a[l].narrow(0, start, count), m, Layers[l].Relu, options.Gamma, options.Beta));
            return Array.Empty<Tensor>();
        });
    }

    /// z_L ← argmin_z ℓ(z, y) + ⟨λ, z⟩ + β‖z − m_L‖².
    public void UpdateOutput()
    {
        using var _ = no_grad();
        int L = Hidden;
        bool crossEntropy = Program.Loss.Name == "cross-entropy";
        var twoBeta = Scalars.Of(2 * options.Beta);
        OverChunks(N, (start, count) =>
        {
            var m = Affine(L, Below(L, start, count));
            var lam = lambda.narrow(0, start, count);
            var target = F.one_hot(Context.Train.Labels.narrow(0, start, count).to(Context.Device), m.shape[1]).to_type(m.dtype);
            var zL = z[L].narrow(0, start, count);
            if (!crossEntropy)
            {
                // ½‖z − t‖² + ⟨λ, z⟩ + β‖z − m‖²: z = (t − λ + 2βm) / (1 + 2β).
                zL.copy_((target - lam).Plus(m.mul(twoBeta)).div(Scalars.Of(1 + 2 * options.Beta)));
                return Array.Empty<Tensor>();
            }
            var current = zL.clone();
            var k = m.shape[1];
            var ridge = torch.eye(k, dtype: m.dtype, device: m.device).mul(twoBeta);
            for (int step = 0; step < options.OutputSteps; step++)
            {
                var p = F.softmax(current, 1);
                var gradient = (p - target).Plus(lam).Plus((current - m).mul(twoBeta));
                var hessian = (p.diag_embed() - p.unsqueeze(2) * p.unsqueeze(1)).Plus(ridge);
                current = current - linalg.solve(hessian, gradient.unsqueeze(2)).squeeze(2);
            }
            zL.copy_(current);
            return Array.Empty<Tensor>();
        });
    }

    /// λ ← λ + β(z_L − m_L).
    public void UpdateMultipliers()
    {
        using var _ = no_grad();
        OverChunks(N, (start, count) =>
        {
            var m = Affine(Hidden, Below(Hidden, start, count));
            lambda.narrow(0, start, count).add_(z[Hidden].narrow(0, start, count) - m, alpha: Scalars.Of(options.Beta));
            return Array.Empty<Tensor>();
        });
    }

    /// One iteration (the class comment of `TaylorAdmm`), then the objective's terms as diagnostics.
    public void Iterate()
    {
        for (int l = 0; l < Hidden; l++)
        {
            UpdateWeights(l);
            UpdateActivations(l);
            UpdatePreActivations(l);
        }
        UpdateWeights(Hidden);
        UpdateOutput();
        if (Iterations >= options.WarmStart) UpdateMultipliers();
        Iterations++;
        var t = Terms();
        var d = new Dictionary<string, double>
        {
            ["objective"] = t.Total / t.Examples,
            ["loss-z"] = t.Loss / t.Examples,
            ["residual-out"] = t.OutputResidual / t.Examples,
            ["lambda"] = LambdaNorm(),
        };
        for (int l = 0; l < Hidden; l++)
        {
            d[$"residual-z{l + 1}"] = t.PreActivationResiduals[l] / t.Examples;
            d[$"residual-a{l + 1}"] = t.ActivationResiduals[l] / t.Examples;
        }
        diagnostics = d;
    }

    private double LambdaNorm()
    {
        using var _ = no_grad();
        using var n = lambda.Squared().sum();
        return n.ToDouble() / N;
    }

    /// The objective's terms (sums over the examples at `rows`, or over the training set) at the
    /// current variables: ℓ(z_L, y), ⟨λ, z_L⟩, ‖z_L − m_L‖², ‖a_l − h(z_l)‖², ‖z_l − m_l‖².
    public AdmmTerms Terms(Tensor? rows = null)
    {
        using var _ = no_grad();
        double loss = 0, multiplier = 0, output = 0;
        var act = new double[Hidden];
        var pre = new double[Hidden];
        long n = rows?.shape[0] ?? N;
        // Per chunk: ‖z_l − m_l‖² and ‖a_l − h(z_l)‖² for each hidden layer, then ℓ, ⟨λ, z_L⟩, ‖z_L − m_L‖².
        OverChunks(n, (start, count) =>
        {
            var idx = rows?.narrow(0, start, count);
            Tensor Rows(Tensor t) => idx is null ? t.narrow(0, start, count) : t.index_select(0, idx);
            var below = idx is null ? Input(start, count) : Input(idx);
            var sums = new Tensor[2 * Hidden + 3];
            for (int l = 0; l < Hidden; l++)
            {
                var zl = Rows(z[l]);
                var al = Rows(a[l]);
                sums[2 * l] = (zl - Affine(l, below)).Squared().sum();
                sums[2 * l + 1] = (al - H(l, zl)).Squared().sum();
                below = al;
            }
            var zL = Rows(z[Hidden]);
            var labels = (idx is null ? Context.Train.Labels.narrow(0, start, count) : Context.Train.Labels.index_select(0, idx.to(Context.Train.Labels.device))).to(Context.Device);
            sums[2 * Hidden] = Program.Loss.PerExample(zL, labels).sum();
            sums[2 * Hidden + 1] = (Rows(lambda) * zL).sum();
            sums[2 * Hidden + 2] = (zL - Affine(Hidden, below)).Squared().sum();
            return sums;
        }, sums =>
        {
            for (int l = 0; l < Hidden; l++)
            {
                pre[l] += sums[2 * l].ToDouble();
                act[l] += sums[2 * l + 1].ToDouble();
            }
            loss += sums[2 * Hidden].ToDouble();
            multiplier += sums[2 * Hidden + 1].ToDouble();
            output += sums[2 * Hidden + 2].ToDouble();
        });
        return new AdmmTerms(loss, multiplier, output, act, pre, options.Gamma, options.Beta, n);
    }

    public override void Dispose()
    {
        inputFactor?.Dispose();
        inputFactor = null;
        base.Dispose();
    }
}

/// One chunk of the training set for `TaylorAdmm`: counts the examples; the chunk that completes
/// the set lets the solver run the iteration (`Completes`). Loss, objective and defects are those
/// of the chunk's rows at the variables after the step.
public sealed class TaylorAdmmGame : IBatchGame
{
    private readonly MiniBatch batch;
    private bool stepped;
    private AdmmTerms? terms;

    internal TaylorAdmmGame(TaylorAdmmProblem problem, MiniBatch batch)
    {
        Problem = problem;
        this.batch = batch;
        long size = batch.Indices.shape[0];
        if (problem.Seen + size > problem.Context.ExampleCount)
            throw new InvalidOperationException($"Taylor's ADMM saw {problem.Seen + size} examples in an epoch of {problem.Context.ExampleCount}: every example once per epoch.");
        Completes = problem.Seen + size == problem.Context.ExampleCount;
        Players = new[] { problem.WeightsPlayer() };
    }

    public TaylorAdmmProblem Problem { get; }
    /// True when this chunk completes the training set: the iteration runs on it.
    public bool Completes { get; }
    public IReadOnlyList<Player> Players { get; }

    /// Runs the iteration if this chunk completes the training set (`TaylorAdmmSolver`).
    public void Step()
    {
        if (stepped) throw new InvalidOperationException("Taylor's ADMM takes one iteration per epoch (iterations per batch = 1).");
        stepped = true;
        terms = null;
        if (Completes) Problem.Iterate();
    }

    public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players) =>
        throw new InvalidOperationException("Taylor's ADMM solves its sub-problems in closed form; it runs with its own solver (method admm), not with a gradient solver.");

    private AdmmTerms Terms() => terms ??= Problem.Terms(batch.Indices);

    public double Objective() { var t = Terms(); return t.Total / t.Examples; }
    public double Loss { get { var t = Terms(); return t.Loss / t.Examples; } }
    public double LiftedObjective => Objective();
    public IReadOnlyList<double> Defects => Problem.MeasureDefects(batch.Indices);
    public IReadOnlyList<double> MultiplierNorms => Array.Empty<double>();

    public void Commit()
    {
        Problem.Seen = Completes ? 0 : Problem.Seen + batch.Indices.shape[0];
    }

    public void Dispose() { }
}
