using static TorchSharp.torch;

namespace Lifting.Programs;

/// Whether a forward pass trains (batch statistics, dropout) or evaluates (running statistics, no dropout).
public enum ProgramMode { Evaluate, Train }

/// One forward pass's mode and state: the program's buffers, seeded generators and the values it
/// holds fixed. A training pass of back-propagation computes batch statistics and dropout masks
/// anew at every call; a lifted step's pass (`holdFixed`) computes them at its first evaluation
/// and holds them for the rest of the step, so that the step's game is one deterministic function
/// of its variables. With `recomputeStatistics` a held pass still holds its dropout masks but
/// computes batch statistics anew, with their gradient, at every evaluation (online alternating
/// minimisation: seed 004's reference code evaluates its BatchNorm layers in training mode in
/// every sub-problem). Programs without buffers or randomness need no pass (null).
public sealed class ForwardPass : IDisposable
{
    private readonly Dictionary<(int Node, string Key), Tensor> held = new();
    private readonly Dictionary<int, Generator> generators = new();
    private readonly HashSet<(int Node, string Key)> seen = new();
    private readonly bool holdFixed, recomputeStatistics;
    private readonly int seed;
    private readonly long step;

    public ForwardPass(ProgramMode mode, IReadOnlyList<Tensor> buffers, int seed = 0, long step = 0, bool holdFixed = false, bool updatesStatistics = true,
        bool recomputeStatistics = false)
    {
        this.recomputeStatistics = recomputeStatistics;
        UpdatesStatistics = updatesStatistics;
        Mode = mode;
        Buffers = buffers;
        this.seed = seed;
        this.step = step;
        this.holdFixed = holdFixed;
    }

    /// An evaluation pass over `weights`' buffers.
    public static ForwardPass Evaluation(Weights weights) => new(ProgramMode.Evaluate, weights.Buffers);

    /// A training pass over `weights`' buffers at training step `step` (the generators' seed).
    public static ForwardPass Training(Weights weights, int seed, long step, bool holdFixed, bool recomputeStatistics = false) =>
        new(ProgramMode.Train, weights.Buffers, seed, step, holdFixed, recomputeStatistics: recomputeStatistics);

    /// A pass that computes batch statistics (held for the pass) without touching the running
    /// statistics: the forward pass that initialises lifted states over the training set chunk by
    /// chunk, and the defect measured there, see what a lifted step sees.
    public static ForwardPass? Measuring(NestedProgram program, Weights weights, int seed) =>
        program.HasModes ? new(ProgramMode.Train, weights.Buffers, seed, -1, holdFixed: true, updatesStatistics: false) : null;

    /// A training pass of `program` at training step `batch.Step`, or null when the program has no
    /// operation with a mode (most programs): what a batch game evaluates the program through.
    public static ForwardPass? For(NestedProgram program, Weights weights, int seed, long step, bool holdFixed, bool recomputeStatistics = false) =>
        program.HasModes ? Training(weights, seed, step, holdFixed, recomputeStatistics) : null;

    /// False for a pass that must leave the running statistics alone (a diagnostic's forward pass).
    public bool UpdatesStatistics { get; }

    public ProgramMode Mode { get; }
    /// Every buffer of the program, in `NestedProgram.BufferSpecs` order.
    public IReadOnlyList<Tensor> Buffers { get; }

    internal Generator Generator(int node)
    {
        if (!generators.TryGetValue(node, out var g))
        {
            // Derived arithmetically (HashCode is randomised per process).
            var mixed = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)step * 0xBF58476D1CE4E5B9UL ^ (ulong)(node + 1) * 0x94D049BB133111EBUL);
            generators[node] = g = new Generator(mixed);
        }
        return g;
    }

    internal (Tensor Value, bool Fresh) Hold(int node, string key, Func<Tensor> compute)
    {
        if (!holdFixed) return (compute(), true);
        if (held.TryGetValue((node, key), out var value)) return (value, false);
        using (no_grad()) value = compute().detach().DetachFromDisposeScope();
        held[(node, key)] = value;
        return (value, true);
    }

    /// A batch statistic: held like `Hold`, unless the pass recomputes statistics.
    internal (Tensor Value, bool Fresh) HoldStatistic(int node, string key, Func<Tensor> compute) =>
        recomputeStatistics ? (compute(), true) : Hold(node, key, compute);

    internal bool FirstTime(int node, string key) => UpdatesStatistics && seen.Add((node, key));

    public void Dispose()
    {
        foreach (var t in held.Values) t.Dispose();
        held.Clear();
        foreach (var g in generators.Values) g.Dispose();
        generators.Clear();
    }
}
