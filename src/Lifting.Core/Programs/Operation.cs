using static TorchSharp.torch;

namespace Lifting.Programs;

/// A tensor an operation keeps besides its parameters: state that is not trained by a gradient but
/// belongs to the model (batch normalisation's running statistics). Saved in weights files and
/// checkpoints under the operation's name, like a parameter.
public sealed record BufferSpec(string Name, long[] Shape, Func<long[], ScalarType, Device, Tensor> Init);

/// A node's computation in a graph program: y = f(x_1, …, x_k; w), with the shapes of its inputs
/// and output (without the batch dimension), its parameter tensors and its buffers. One-input
/// layers (`ILayer`) enter through an adapter; operations with several inputs (add, concat) or
/// with a train/evaluate mode (batch normalisation, dropout) implement this directly.
public interface IOperation
{
    string Name { get; }
    IReadOnlyList<long[]> InputShapes { get; }
    long[] OutputShape { get; }
    IReadOnlyList<ParameterSpec> Parameters { get; }
    IReadOnlyList<BufferSpec> Buffers { get; }

    /// True when the operation computes differently in training and evaluation or draws random
    /// numbers (batch normalisation, dropout): a program with such an operation is run through a
    /// `ForwardPass`.
    bool HasMode { get; }

    /// f on a batch: every input is [B, …InputShapes[i]], the result [B, …OutputShape].
    Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context);
}

/// What an operation's forward pass sees of the run besides its inputs and parameters: the mode,
/// its buffers, a seeded generator and a place to hold values fixed for a lifted step. Operations
/// without mode, buffers or randomness ignore it.
public readonly struct OperationContext
{
    private readonly ForwardPass? pass;
    private readonly int node;

    internal OperationContext(ForwardPass? pass, int node, IReadOnlyList<Tensor> buffers)
    {
        this.pass = pass;
        this.node = node;
        Buffers = buffers;
    }

    /// True in training (batch statistics, dropout), false in evaluation (running statistics, no dropout).
    public bool Training => pass?.Mode == ProgramMode.Train;

    /// This operation's buffers, in the order of `IOperation.Buffers` (empty outside a pass that has them).
    public IReadOnlyList<Tensor> Buffers { get; }

    /// A generator seeded by the run's seed, the training step and this node: the same draw in
    /// every process and after a resume.
    public Generator Random => pass?.Generator(node)
        ?? throw new InvalidOperationException("This forward pass has no generator (pass a training ForwardPass).");

    /// `compute()` the first time `key` is asked for in this pass, the same tensor afterwards when
    /// the pass holds values fixed (a lifted step: batch statistics and dropout masks of its first
    /// evaluation), a fresh `compute()` every time otherwise (back-propagation's forward pass). The
    /// second element is true when the value was computed by this call.
    public (Tensor Value, bool Fresh) Hold(string key, Func<Tensor> compute) =>
        pass is null ? (compute(), true) : pass.Hold(node, key, compute);

    /// A batch statistic of this node (BatchNorm's mean and variance): held as `Hold` holds, unless
    /// the pass recomputes statistics at every evaluation.
    public (Tensor Value, bool Fresh) HoldStatistic(string key, Func<Tensor> compute) =>
        pass is null ? (compute(), true) : pass.HoldStatistic(node, key, compute);

    /// True the first time `key` is asked for in this pass (e.g. to update running statistics once
    /// per training step however often the step is evaluated); false in a pass that updates no
    /// statistics.
    public bool FirstTime(string key) => pass is not null && pass.FirstTime(node, key);
}

/// An operation's closed-form local derivatives: the vector–Jacobian products of y = f(x; w) with
/// respect to each input and the parameters. The lifted families' fast paths (predictive coding,
/// LPOM, CHL, online alternating minimisation, Fenchel back-propagation) read this declaration;
/// an operation without it is differentiated by autograd, one local product at a time.
public interface ILocalDerivatives
{
    /// (∂y/∂x_input)ᵀ v, shaped like that input.
    Tensor InputVjp(int input, LocalCall call, Tensor v);

    /// into[j] += scale · ∂⟨v, y⟩/∂w_j for every parameter j, summed over the batch.
    void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale);
}

/// An elementwise activation as an operation: a node that declares it is σ(x). Formulations that
/// split a block into its affine part and its activation (LPOM, CHL, online alternating
/// minimisation, Fenchel back-propagation) recognise it by this declaration.
public interface IActivationOperation
{
    IActivation Activation { get; }
}

/// A fully connected map y = W x + b with parameters [W (outputs × inputs), b (outputs)]: online
/// alternating minimisation's co-activation memories (AM-mem) need this layout.
public interface IFullyConnected
{
    long Inputs { get; }
    long Outputs { get; }
    /// False for y = W x (parameters [W] only).
    bool HasBias { get; }
}

/// One call of an operation inside a local derivative: its inputs, parameters and output. Inputs
/// and the output are computed when first read, so a product that needs none of them (a dense
/// layer's input product, v W) costs no forward pass.
public sealed class LocalCall
{
    private readonly Func<int, Tensor> input;
    private readonly Func<Tensor>? output;
    private readonly Tensor?[] inputs;
    private Tensor? computed;

    public LocalCall(Func<int, Tensor> input, int inputCount, IReadOnlyList<Tensor> parameters, Func<Tensor>? output = null)
    {
        this.input = input;
        this.output = output;
        inputs = new Tensor?[inputCount];
        Parameters = parameters;
    }

    public IReadOnlyList<Tensor> Parameters { get; }
    public int InputCount => inputs.Length;
    public Tensor Input(int i) => inputs[i] ??= input(i);
    public Tensor Output => computed ??= output?.Invoke()
        ?? throw new InvalidOperationException("This local call has no output.");
}
