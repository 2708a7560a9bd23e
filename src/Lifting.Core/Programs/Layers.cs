using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Programs;

/// Fully connected layer f(h; W, b) = W h + b on flat inputs. Declares its local derivatives:
/// (∂f/∂h)ᵀv = v W, ∂⟨v, f⟩/∂W = vᵀh, ∂⟨v, f⟩/∂b = Σ_batch v.
public sealed class Dense : ILayer, ILocalDerivatives, IFullyConnected
{
    public Dense(long inputs, long outputs, bool bias = true)
    {
        if (inputs <= 0) throw new ArgumentOutOfRangeException(nameof(inputs), $"Dense layer needs a positive input size, got {inputs}.");
        if (outputs <= 0) throw new ArgumentOutOfRangeException(nameof(outputs), $"Dense layer needs a positive output size, got {outputs}.");
        Inputs = inputs;
        Outputs = outputs;
        HasBias = bias;
        var weight = new ParameterSpec("weight", new[] { outputs, inputs }, Initialisers.UniformFanIn(inputs));
        Parameters = bias ? new[] { weight, new ParameterSpec("bias", new[] { outputs }, Initialisers.UniformFanIn(inputs)) } : new[] { weight };
    }

    public long Inputs { get; }
    public long Outputs { get; }
    public bool HasBias { get; }
    public string Name => HasBias ? $"dense({Inputs}→{Outputs})" : $"dense({Inputs}→{Outputs}, no bias)";
    public long[] InputShape => new[] { Inputs };
    public long[] OutputShape => new[] { Outputs };
    public IReadOnlyList<ParameterSpec> Parameters { get; }
    public Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters) => F.linear(input, parameters[0], HasBias ? parameters[1] : null);

    public Tensor InputVjp(int input, LocalCall call, Tensor v) => v.mm(call.Parameters[0]);

    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale)
    {
        var alpha = Scalars.Of(scale);
        into[0].add_(v.t().mm(call.Input(0)), alpha: alpha);
        if (HasBias) into[1].add_(v.sum(0, keepdim: false), alpha: alpha);
    }
}

/// 2-D convolution over [C, H, W] inputs, with bias.
public sealed class Conv2d : ILayer
{
    public Conv2d(long[] inputShape, long channels, long kernel, long stride = 1, long padding = 0)
    {
        if (inputShape.Length != 3) throw new ArgumentException($"Conv2d needs a [channels, height, width] input, got [{Shapes.Show(inputShape)}].");
        if (channels <= 0 || kernel <= 0 || stride <= 0 || padding < 0)
            throw new ArgumentOutOfRangeException(nameof(channels), $"Conv2d needs channels, kernel, stride > 0 and padding >= 0, got {channels}, {kernel}, {stride}, {padding}.");
        InputShape = inputShape;
        Channels = channels; Kernel = kernel; Stride = stride; Padding = padding;
        long h = (inputShape[1] + 2 * padding - kernel) / stride + 1, w = (inputShape[2] + 2 * padding - kernel) / stride + 1;
        if (h <= 0 || w <= 0) throw new ArgumentException($"Conv2d kernel {kernel} does not fit input [{Shapes.Show(inputShape)}].");
        OutputShape = new[] { channels, h, w };
        var fanIn = inputShape[0] * kernel * kernel;
        Parameters = new[]
        {
            new ParameterSpec("weight", new[] { channels, inputShape[0], kernel, kernel }, Initialisers.UniformFanIn(fanIn)),
            new ParameterSpec("bias", new[] { channels }, Initialisers.UniformFanIn(fanIn)),
        };
    }

    public long Channels { get; }
    public long Kernel { get; }
    public long Stride { get; }
    public long Padding { get; }
    public string Name => $"conv2d({InputShape[0]}→{Channels}, k={Kernel}, s={Stride}, p={Padding})";
    public long[] InputShape { get; }
    public long[] OutputShape { get; }
    public IReadOnlyList<ParameterSpec> Parameters { get; }
    public Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters) =>
        F.conv2d(input, parameters[0], parameters[1], strides: new[] { Stride, Stride }, padding: new[] { Padding, Padding });
}

/// Max or average pooling over [C, H, W] inputs.
public sealed class Pool2d : ILayer
{
    public Pool2d(long[] inputShape, long kernel, long stride, bool max)
    {
        if (inputShape.Length != 3) throw new ArgumentException($"Pooling needs a [channels, height, width] input, got [{Shapes.Show(inputShape)}].");
        if (kernel <= 0 || stride <= 0) throw new ArgumentOutOfRangeException(nameof(kernel), $"Pooling needs kernel and stride > 0, got {kernel}, {stride}.");
        long h = (inputShape[1] - kernel) / stride + 1, w = (inputShape[2] - kernel) / stride + 1;
        if (h <= 0 || w <= 0) throw new ArgumentException($"Pooling kernel {kernel} does not fit input [{Shapes.Show(inputShape)}].");
        InputShape = inputShape; Kernel = kernel; Stride = stride; IsMax = max;
        OutputShape = new[] { inputShape[0], h, w };
    }

    public long Kernel { get; }
    public long Stride { get; }
    public bool IsMax { get; }
    public string Name => $"{(IsMax ? "maxpool" : "avgpool")}(k={Kernel}, s={Stride})";
    public long[] InputShape { get; }
    public long[] OutputShape { get; }
    public IReadOnlyList<ParameterSpec> Parameters => Array.Empty<ParameterSpec>();
    public Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters) => IsMax
        ? F.max_pool2d(input, new[] { Kernel, Kernel }, new[] { Stride, Stride })
        : F.avg_pool2d(input, new[] { Kernel, Kernel }, new[] { Stride, Stride });
}

/// Flattens [B, …] to [B, prod(…)].
public sealed class Flatten : ILayer, ILocalDerivatives
{
    public Flatten(long[] inputShape)
    {
        InputShape = inputShape;
        OutputShape = new[] { Shapes.Size(inputShape) };
    }

    public string Name => "flatten";
    public long[] InputShape { get; }
    public long[] OutputShape { get; }
    public IReadOnlyList<ParameterSpec> Parameters => Array.Empty<ParameterSpec>();
    public Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters) => input.reshape(input.shape[0], -1);

    public Tensor InputVjp(int input, LocalCall call, Tensor v) => v.reshape(Shape(v.shape[0]));

    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }

    private long[] Shape(long batch)
    {
        var shape = new long[InputShape.Length + 1];
        shape[0] = batch;
        InputShape.CopyTo(shape, 1);
        return shape;
    }
}

/// An activation applied elementwise (or, for softmax, along the last dimension) as a layer. Its
/// local derivative is the activation's closed form (`IActivationDerivative`) where it has one,
/// autograd otherwise.
public sealed class ActivationLayer : ILayer, IActivationOperation, ILocalDerivatives
{
    public ActivationLayer(IActivation activation, long[] shape)
    {
        Activation = activation;
        InputShape = shape;
        OutputShape = shape;
    }

    public IActivation Activation { get; }
    public string Name => Activation.Name;
    public long[] InputShape { get; }
    public long[] OutputShape { get; }
    public IReadOnlyList<ParameterSpec> Parameters => Array.Empty<ParameterSpec>();
    public Tensor Forward(Tensor input, IReadOnlyList<Tensor> parameters) => Activation.Apply(input);

    public Tensor InputVjp(int input, LocalCall call, Tensor v) => Activations.Vjp(Activation, call.Input(0), call.Output, v);

    public void AddParameterVjp(LocalCall call, Tensor v, IReadOnlyList<Tensor> into, double scale) { }
}

/// A one-input layer as a graph operation (what a chain's nodes are).
public sealed class LayerOperation : IOperation
{
    public LayerOperation(ILayer layer)
    {
        Layer = layer;
        InputShapes = new[] { layer.InputShape };
    }

    public ILayer Layer { get; }
    public string Name => Layer.Name;
    public IReadOnlyList<long[]> InputShapes { get; }
    public long[] OutputShape => Layer.OutputShape;
    public IReadOnlyList<ParameterSpec> Parameters => Layer.Parameters;
    public IReadOnlyList<BufferSpec> Buffers => Array.Empty<BufferSpec>();
    public bool HasMode => false;
    public Tensor Forward(IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor> parameters, OperationContext context) => Layer.Forward(inputs[0], parameters);
    public override string ToString() => Name;
}
