using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Base of lifted problems: owns the weights with their (persistent) step-rule state and a
/// per-example store. Subclasses add per-example players and build the batch game.
public abstract class LiftedProblem : ILiftedProblem
{
    private readonly Dictionary<string, Tensor> shared = new();

    protected LiftedProblem(IFormulation formulation, LiftContext context, Weights weights)
    {
        Formulation = formulation;
        Context = context;
        Weights = weights;
        WeightStates = weights.Tensors.Select(w => context.NewState(PlayerNames.Weights, w, rowIndexed: false)).ToArray();
        Store = new ExampleStore(context.ExampleCount);
    }

    public IFormulation Formulation { get; }
    public LiftContext Context { get; }
    public NestedProgram Program => Context.Program;
    public Weights Weights { get; }
    protected IReadOnlyList<StepState> WeightStates { get; }
    /// The per-example variables (read access for diagnostics and tests).
    public ExampleStore Store { get; }

    /// A new weights player (the weights minimise).
    public Player WeightsPlayer() =>
        new(PlayerNames.Weights, Role.Minimise, Weights.Tensors, Context.StepRuleFor(PlayerNames.Weights), WeightStates);

    public abstract IBatchGame Batch(MiniBatch batch);

    /// The per-example store's bytes plus every shared auxiliary tensor's (`AddShared`).
    public virtual long StateBytes => Store.Bytes + shared.Values.Sum(t => t.NumberOfElements * t.ElementSize);

    /// The shared auxiliary tensors by name (variables, their step-rule state and solver memory).
    public IReadOnlyDictionary<string, Tensor> SharedState => shared;

    /// Registers a shared auxiliary tensor: one kept for the run but not per example (e.g.
    /// DistProp's per-class means and scales). The problem owns it: it counts in `StateBytes` and
    /// is disposed with the problem.
    protected Tensor AddShared(string name, Tensor value)
    {
        if (shared.ContainsKey(name)) throw new ArgumentException($"Shared variable '{name}' is already registered.");
        var t = value.DetachFromDisposeScope();
        shared[name] = t;
        return t;
    }

    /// A shared variable of player `player` (a leaf that requires grad) with its step-rule state,
    /// all registered with `AddShared` under `name`, `name#slotK` and `name#memoryK`.
    protected (Tensor Variable, StepState State) AddSharedVariable(string player, string name, Tensor initial)
    {
        Tensor variable;
        using (no_grad()) variable = AddShared(name, initial.detach().clone().requires_grad_(true));
        var state = Context.NewState(player, variable, rowIndexed: false);
        for (int s = 0; s < state.Slots.Count; s++) AddShared($"{name}#slot{s}", state.Slots[s]);
        for (int m = 0; m < state.Memory.Count; m++) AddShared($"{name}#memory{m}", state.Memory[m]);
        return (variable, state);
    }

    public virtual IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => Array.Empty<double>();

    /// Mean |state_l − f_l(state_{l−1})| over the examples at `rows` (all when null), where
    /// `state(l, indices)` returns the stored state of block l (0-based) for those examples.
    protected IReadOnlyList<double> MeasureDefects(Func<int, Tensor, Tensor> state, Tensor? rows, int chunk = 2048)
    {
        using var _ = no_grad();
        int hidden = Program.Blocks.Count - 1;
        var sums = new double[hidden];
        long elements = 0;
        var x = Context.Train.Inputs;
        using var everyExample = rows is null ? arange(x.shape[0], dtype: ScalarType.Int64, device: x.device) : null;
        var all = rows ?? everyExample!;
        var n = all.shape[0];
        for (long start = 0; start < n; start += chunk)
        {
            using var scope = NewDisposeScope();
            var idx = all.narrow(0, start, Math.Min(chunk, n - start));
            var previous = x.index_select(0, idx).to(Context.DType);
            for (int l = 0; l < hidden; l++)
            {
                var h = state(l, idx);
                sums[l] += (h - Program.ForwardBlock(l, previous, Weights.Block(l))).abs().sum().ToDouble();
                previous = h;
            }
            elements += idx.shape[0];
        }
        return sums.Select((s, l) => s / (elements * Program.Blocks[l].OutputShape.Aggregate(1L, (a, b) => a * b))).ToArray();
    }

    public virtual void EndEpoch(int epoch) { }
    public virtual void Finish() { }
    public virtual IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double>();

    /// The forward-pass block outputs h_1 … h_{L−1} for every training example (states
    /// initialised by one forward pass, seed 001 §3.1).
    protected Tensor[] ForwardStatesOfTrainingSet(int chunk = 1024) => Context.ForwardStates(Weights, chunk);

    public virtual void Dispose()
    {
        foreach (var t in shared.Values) t.Dispose();
        shared.Clear();
        Store.Dispose();
        foreach (var s in WeightStates) s.Dispose();
    }
}
