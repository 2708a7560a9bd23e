using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// What Newton multiple shooting did on a batch: the value of every segment (the lifted values in
/// segment order, the output last), the iterations run, and after each iteration the largest
/// change of any state, max_v ‖h_v⁺ − h_v‖_∞.
public sealed record NewtonShootingResult(IReadOnlyList<Tensor> States, int Iterations, IReadOnlyList<double> Changes);

/// Newton multiple shooting (seed 000, "Multiple Shooting"): the forward pass as the root of
///
///     H(h) = (h_v − f_v(h_in(v)))_v = 0,     one block per segment v (lifted value or output), h_x = x,
///
/// whose Jacobian H′ = I − ∂f/∂h is block lower triangular with identity blocks on the diagonal
/// (for a chain, block bidiagonal: −∂f_l/∂h_{l−1} below the diagonal). One Newton iteration
/// H′(h) Δ = −H(h) is, written as the new iterate h⁺ = h + Δ,
///
///     h_v⁺ = f_v(h_in(v)) + Σ_{u ∈ in(v)} (∂f_v/∂h_u)(h_u⁺ − h_u),
///
/// 1. every segment evaluated at the current iterate, f_v(h_in(v)), with its linearisation — all
///    at once, independent of each other (all blocks in parallel; all steps of an unrolled RNN in
///    parallel in time);
/// 2. the block-triangular linear system solved by forward substitution in topological order, one
///    Jacobian–vector product per segment (the linear part: no evaluation of f).
///
/// Exact after at most depth(v) iterations for segment v, depth(v) = 1 + max_{u ∈ in(v)} depth(u)
/// (depth(x) = 0): once the inputs of v are exact they no longer move (Δ_u = 0, bit for bit), so the
/// next iteration sets h_v⁺ = f_v(h_in(v)) exactly. A chain of L segments is exact after L
/// iterations and a graph after its longest path; from a good start (h near the solution) Newton's
/// quadratic convergence reaches a tolerance sooner. A segment whose inputs were already exact is
/// not evaluated again (`skipSettled`; its iterate cannot change), so a run to exactness evaluates
/// L(L+1)/2 segments on a chain, not L².
///
/// The Jacobian–vector products J v = ∂/∂u ⟨Jᵀu, v⟩ are taken by differentiating the segment's
/// vector–Jacobian product once more (double back-propagation through a one-segment autograd
/// graph; TorchSharp has no forward mode), for any operation. On a serial CPU this costs more than
/// the sequential forward pass it replaces; the point is the structure: step 1 has no sequential
/// dependency, and step 2 is linear.
public static class NewtonShooting
{
    /// depth(v) for every segment: 1 for a segment reading only the input, else 1 + the largest
    /// depth of the segments it reads.
    public static int[] Depths(NestedProgram program)
    {
        var segments = program.Segments;
        var depth = new int[segments.Count];
        for (int v = 0; v < segments.Count; v++)
            depth[v] = 1 + segments[v].InputSegments.Select(s => s < 0 ? 0 : depth[s]).DefaultIfEmpty(0).Max();
        return depth;
    }

    /// The longest path of the lifted graph (the number of segments of a chain): the iterations
    /// after which Newton multiple shooting is exact from any start.
    public static int Depth(NestedProgram program) => Depths(program).Max();

    /// Newton iterations on H(h) = 0 for the batch `x`, from `start` (one tensor per segment shaped
    /// like its value; zeros when null), at most `iterations` (≥ 1) of them, stopping after an
    /// iteration in which no state moved by more than `tolerance` (0: only when none moved at all).
    /// The states are detached; the caller owns them (inside its dispose scope).
    public static NewtonShootingResult Solve(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor x, int iterations,
        double tolerance = 0, IReadOnlyList<Tensor>? start = null, ForwardPass? pass = null, bool skipSettled = true)
    {
        if (iterations < 1) throw new ArgumentOutOfRangeException(nameof(iterations), $"Invalid Newton iterations: {iterations} (expected >= 1).");
        if (!(tolerance >= 0) || double.IsInfinity(tolerance)) throw new ArgumentOutOfRangeException(nameof(tolerance), $"Invalid Newton tolerance: {tolerance} (expected a finite value >= 0).");
        var segments = program.Segments;
        int n = segments.Count;
        if (start is not null && start.Count != n)
            throw new ArgumentException($"Invalid Newton start: {start.Count} tensors for a program of {n} segments (expected one per segment, the output last).");
        var batch = x.shape[0];
        var h = new Tensor[n];
        using (no_grad())
            for (int v = 0; v < n; v++)
                h[v] = start is null
                    ? zeros(new[] { batch }.Concat(segments[v].OutputShape).ToArray(), dtype: x.dtype, device: x.device)
                    : start[v].detach();
        var settled = new bool[n]; // h_v = f_v(exact inputs), bit for bit
        var changes = new List<double>();
        int done = 0;
        while (done < iterations)
        {
            var before = (bool[])settled.Clone();
            var next = new Tensor[n];
            var linear = new Linearisation?[n];
            // 1. Every segment at the current iterate, independently of the others.
            for (int v = 0; v < n; v++)
            {
                if (skipSettled && before[v]) { next[v] = h[v]; continue; }
                linear[v] = new Linearisation(segments[v], segments[v].InputsFrom(x, h), weights, pass);
            }
            // 2. Forward substitution: h_v⁺ = f_v + Σ_u J_vu (h_u⁺ − h_u).
            double change = 0;
            using (no_grad())
                for (int v = 0; v < n; v++)
                {
                    if (linear[v] is not { } lin) continue;
                    var sources = segments[v].InputSegments;
                    var deltas = new Tensor?[sources.Count];
                    bool any = false;
                    for (int i = 0; i < sources.Count; i++)
                    {
                        var s = sources[i];
                        if (s < 0 || (skipSettled && before[s])) continue; // the input, or an input that can no longer move
                        deltas[i] = next[s] - h[s];
                        any = true;
                    }
                    next[v] = any ? lin.Value.Plus(lin.Jvp(deltas)) : lin.Value;
                    settled[v] = sources.All(s => s < 0 || before[s]);
                    change = Math.Max(change, (next[v] - h[v]).abs().max().ToDouble());
                }
            h = next;
            done++;
            changes.Add(change);
            if (change <= tolerance) break;
        }
        return new NewtonShootingResult(h, done, changes);
    }

    /// f_v at the iterate and the graph for its Jacobian–vector products.
    private sealed class Linearisation
    {
        private readonly Tensor[] leaves;
        private readonly Tensor? output;

        public Linearisation(Segment segment, Tensor[] inputs, IReadOnlyList<Tensor> weights, ForwardPass? pass)
        {
            var lifted = segment.InputSegments.Select(s => s >= 0).ToArray();
            if (!lifted.Any(b => b))
            {
                using (no_grad()) Value = segment.Forward(inputs, weights, pass);
                leaves = inputs;
                return;
            }
            using var _ = enable_grad();
            leaves = inputs.Select((t, i) => lifted[i] ? t.detach().requires_grad_(true) : t.detach()).ToArray();
            output = segment.Forward(leaves, weights, pass);
            Value = output.detach();
        }

        /// f_v at the iterate (detached).
        public Tensor Value { get; }

        /// Σ_i (∂f_v/∂input_i) δ_i over the inputs with a δ: ∂/∂u ⟨Σ_i J_iᵀu, δ_i⟩ at u = 0.
        public Tensor Jvp(IReadOnlyList<Tensor?> deltas)
        {
            if (output is null) return zeros_like(Value);
            var which = Enumerable.Range(0, deltas.Count).Where(i => deltas[i] is not null).ToArray();
            using var _ = enable_grad();
            var u = zeros_like(output).requires_grad_(true);
            var vjps = autograd.grad(new[] { output }, which.Select(i => leaves[i]).ToArray(), new[] { u },
                retain_graph: true, create_graph: true, allow_unused: true);
            var products = new List<Tensor>();
            var directions = new List<Tensor>();
            for (int k = 0; k < which.Length; k++)
            {
                if (vjps[k] is null || vjps[k].IsInvalid || !vjps[k].requires_grad) continue; // f_v does not depend on this input
                products.Add(vjps[k]);
                directions.Add(deltas[which[k]]!);
            }
            if (products.Count == 0) return zeros_like(Value);
            var jv = autograd.grad(products, new[] { u }, directions, allow_unused: true)[0];
            return jv is null || jv.IsInvalid ? zeros_like(Value) : jv.detach();
        }
    }
}

/// Back-propagation whose forward pass is Newton multiple shooting (seed 000): on each batch the
/// states are found by `Iterations` Newton iterations on H(h) = 0 from zero (`NewtonShooting`;
/// 0 = the depth of the lifted graph, where they are exact), and the gradient by the transposed
/// triangular system, back substitution from the output in reverse topological order:
///
///     λ_out = ∂ℓ/∂h_out,   λ_u = Σ_{v consumes u} (∂f_v/∂h_u)ᵀ λ_v,   ∇_w = Σ_v (∂f_v/∂w)ᵀ λ_v,
///
/// each product a segment's local vector–Jacobian product at the Newton states (closed form for the
/// builder's layers, `LocalGraph`). At exact states this is back-propagation's gradient of the mean
/// loss; with fewer iterations it is the gradient at the approximate states. Nothing is kept per
/// example. Programs with batch normalisation or dropout are refused: their batch statistics would
/// be taken at the iterates, not at the forward pass.
public sealed class NewtonBackprop : WeightDirectionFormulation
{
    public NewtonBackprop(int iterations = 0, double tolerance = 0, string name = "newton-backprop") : base(name)
    {
        if (iterations < 0) throw new ArgumentOutOfRangeException(nameof(iterations), $"Invalid Newton iterations: {iterations} (expected >= 0; 0 = the depth of the graph).");
        if (!(tolerance >= 0) || double.IsInfinity(tolerance)) throw new ArgumentOutOfRangeException(nameof(tolerance), $"Invalid Newton tolerance: {tolerance} (expected a finite value >= 0).");
        Iterations = iterations;
        Tolerance = tolerance;
    }

    /// Newton iterations per batch; 0 = the depth of the lifted graph (exact states).
    public int Iterations { get; }
    public double Tolerance { get; }

    public override string Description =>
        $"back-propagation with the forward pass by Newton multiple shooting, H(h) = h - f(h) = 0, {(Iterations == 0 ? "iterations = depth (exact)" : $"{Iterations} iterations")} (seed 000)";

    public override void Validate(NestedProgram program)
    {
        var moded = program.Nodes.FirstOrDefault(n => n.Operation.HasMode);
        if (moded is not null)
            throw new ArgumentException($"newton-backprop: {moded.Name} ({moded.Operation.Name}) has a training mode; Newton iterates would set its batch statistics (remove batch normalisation and dropout).");
    }

    public override WeightDirection Direction(NestedProgram program, IReadOnlyList<Tensor> weights, Tensor inputs, Tensor labels, ForwardPass? pass = null)
    {
        var iterations = Iterations == 0 ? NewtonShooting.Depth(program) : Iterations;
        var states = NewtonShooting.Solve(program, weights, inputs, iterations, Tolerance, pass: pass).States;
        using var _ = no_grad();
        var segments = program.Segments;
        var output = states[^1];
        var losses = program.Loss.PerExample(output, labels);
        var gradients = weights.Select(w => zeros_like(w)).ToArray();
        var adjoint = new Tensor?[segments.Count];
        adjoint[^1] = LocalGradients.LossGradient(program.Loss, output, labels);
        double scale = 1.0 / inputs.shape[0];
        for (int v = segments.Count - 1; v >= 0; v--)
        {
            if (adjoint[v] is not { } lambda) continue;
            var segment = segments[v];
            var segmentInputs = segment.InputsFrom(inputs, states);
            segment.Whole.AddParameterVjp(segmentInputs, lambda, weights, gradients, scale, pass);
            var wanted = segment.InputSegments.Select(s => s >= 0).ToArray();
            if (!wanted.Any(b => b)) continue;
            var products = segment.Whole.InputVjps(segmentInputs, lambda, weights, wanted, pass);
            for (int i = 0; i < products.Length; i++)
                if (products[i] is { } p)
                {
                    var s = segment.InputSegments[i];
                    adjoint[s] = adjoint[s] is { } sum ? sum.Plus(p) : p;
                }
        }
        return new WeightDirection(gradients, losses.detach());
    }
}
