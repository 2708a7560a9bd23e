using Lifting.Data;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// Base of lifted problems: owns the weights with their (persistent) step-rule state and a
/// per-example store. Subclasses add per-example players and build the batch game.
///
/// Checkpoints come for free: `StateTensors` names every tensor the problem keeps for the run (the
/// weights and their step states, the per-example store, the shared variables registered with
/// `AddShared`), and a formulation with scalar state of its own (e.g. the penalty's μ) overrides
/// `StateScalars` and `RestoreScalars`. Anything a subclass keeps elsewhere is not saved.
public abstract class LiftedProblem : ILiftedProblem, ICheckpointable
{
    private readonly Dictionary<string, Tensor> shared = new();
    private readonly List<StepState> sharedStates = new();

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

    /// A weights player over the parameters at `parameters` only (a layer-parallel segment's blocks').
    public Player WeightsPlayer(IReadOnlyList<int> parameters) =>
        new(PlayerNames.Weights, Role.Minimise, parameters.Select(p => Weights.Tensors[p]).ToArray(), Context.StepRuleFor(PlayerNames.Weights),
            parameters.Select(p => WeightStates[p]).ToArray());

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
        sharedStates.Add(state); // its slots and memory are disposed as shared tensors, its workspace with it
        return (variable, state);
    }

    /// Every tensor of the run's state by a stable name: `weights/P`, `weights/P#slotK` and
    /// `weights/P#memoryK` for parameter P, `store/K` for the per-example store's entries and
    /// `shared/K` for the shared ones.
    public IReadOnlyDictionary<string, Tensor> StateTensors
    {
        get
        {
            var all = new Dictionary<string, Tensor>();
            var names = Program.ParameterNames;
            for (int i = 0; i < Weights.Buffers.Count; i++) all[$"buffers/{Program.BufferNames[i]}"] = Weights.Buffers[i];
            for (int i = 0; i < Weights.Tensors.Count; i++)
            {
                all[$"weights/{names[i]}"] = Weights.Tensors[i];
                for (int s = 0; s < WeightStates[i].Slots.Count; s++) all[$"weights/{names[i]}#slot{s}"] = WeightStates[i].Slots[s];
                for (int m = 0; m < WeightStates[i].Memory.Count; m++) all[$"weights/{names[i]}#memory{m}"] = WeightStates[i].Memory[m];
            }
            foreach (var key in Store.Names) all[$"store/{key}"] = Store[key];
            foreach (var (key, t) in shared) all[$"shared/{key}"] = t;
            return all;
        }
    }

    /// The formulation's scalar state (none here); override together with `RestoreScalars`.
    public virtual IReadOnlyDictionary<string, double> StateScalars => new Dictionary<string, double>();

    /// Restores what `StateScalars` returned.
    public virtual void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
    {
        var expected = StateScalars.Keys.ToHashSet();
        var unknown = scalars.Keys.FirstOrDefault(k => !expected.Contains(k));
        if (unknown is not null) throw new ArgumentException($"The checkpoint holds scalar '{unknown}', which {Formulation.Name} does not keep.");
        var missing = expected.FirstOrDefault(k => !scalars.ContainsKey(k));
        if (missing is not null) throw new ArgumentException($"The checkpoint lacks scalar '{missing}' of {Formulation.Name}.");
    }

    public virtual IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => Array.Empty<double>();

    /// Mean |state_v − f_v(inputs of v)| per lifted value v (segment order) over the examples at
    /// `rows` (all when null), where `state(l, indices)` returns the stored value of segment l
    /// (0-based) for those examples.
    protected IReadOnlyList<double> MeasureDefects(Func<int, Tensor, Tensor> state, Tensor? rows, int chunk = 2048)
    {
        using var _ = no_grad();
        int hidden = Program.Segments.Count - 1;
        var sums = new double[hidden];
        long elements = 0;
        var x = Context.Train.Inputs;
        using var everyExample = rows is null ? ScalarFactories.Arange(x.shape[0], ScalarType.Int64, x.device) : null;
        var all = rows ?? everyExample!;
        var n = all.shape[0];
        for (long start = 0; start < n; start += chunk)
        {
            using var scope = NewDisposeScope();
            var idx = all.narrow(0, start, Math.Min(chunk, n - start));
            var input = x.index_select(0, idx).to(Context.DType);
            using var pass = ForwardPass.Measuring(Program, Weights, Context.Seed); // batch statistics of the chunk
            var values = new Tensor[hidden];
            for (int l = 0; l < hidden; l++)
            {
                var segment = Program.Segments[l];
                values[l] = state(l, idx);
                sums[l] += (values[l] - segment.Forward(segment.InputsFrom(input, values), Weights.Tensors, pass)).abs().sum().ToDouble();
            }
            elements += idx.shape[0];
        }
        return sums.Select((s, l) => s / (elements * Program.Segments[l].OutputShape.Aggregate(1L, (a, b) => a * b))).ToArray();
    }

    /// The forward pass a batch game evaluates the program through (`ForwardPass.For`): null for a
    /// program without batch normalisation or dropout; otherwise the batch's training pass, holding
    /// its batch statistics and dropout masks fixed for the step when `holdFixed` (a lifted step).
    protected ForwardPass? PassFor(MiniBatch batch, bool holdFixed) => ForwardPass.For(Program, Weights, Context.Seed, batch.Step, holdFixed);

    private ForwardPass? evaluation;

    /// An evaluation pass over the weights' buffers (running statistics, no dropout) for
    /// measurements outside a batch game; null for a program without modes.
    protected ForwardPass? EvaluationPass => Program.HasModes ? evaluation ??= ForwardPass.Evaluation(Weights) : null;

    public virtual void EndEpoch(int epoch) { }
    public virtual void Finish() { }
    public virtual IReadOnlyDictionary<string, double> Diagnostics => new Dictionary<string, double>();

    /// The forward-pass block outputs h_1 … h_{L−1} for every training example (states
    /// initialised by one forward pass, seed 001 §3.1).
    protected Tensor[] ForwardStatesOfTrainingSet(int chunk = 1024, int newtonIterations = 0) => Context.ForwardStates(Weights, chunk, newtonIterations);

    /// The feasibility pass: the stored states under `keys` (one per lifted value, segment order)
    /// set to the forward pass of the current weights, h_v ← f_v(inputs of v), for every example.
    protected void FeasibilityPass(IReadOnlyList<string> keys)
    {
        var forward = ForwardStatesOfTrainingSet();
        for (int l = 0; l < forward.Length; l++)
        {
            using (no_grad()) Store[keys[l]].copy_(forward[l]);
            forward[l].Dispose();
        }
    }

    public virtual void Dispose()
    {
        evaluation?.Dispose();
        foreach (var t in shared.Values) t.Dispose();
        shared.Clear();
        foreach (var s in sharedStates) s.DisposeWorkspace();
        sharedStates.Clear();
        Store.Dispose();
        foreach (var s in WeightStates) s.Dispose();
    }
}
